"""eval.reference: classification, fingerprints, and RGB metrics against a folder, a statistics file and a
registered input, through a random-init Inception-v3 file (offline, 16 x 16 images, a few seconds each)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.datasets import ImagesPathDataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import DATASETS_REGISTRY

from tfmq_exp.errors import UserError
from tfmq_exp.eval.metrics import compute_metrics
from tfmq_exp.eval.real_reference import (
    RealReference,
    RegisteredInput,
    folder_images,
    load_reference_statistics,
    reference_cache_name,
    reference_fingerprint,
    registered_inputs,
    resolve_reference,
)
from tfmq_exp.eval.tiny_fidelity import save_random_inception_weights

NUM_IMAGES = 4


def _images(seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (NUM_IMAGES, 3, 16, 16), generator=generator, dtype=torch.uint8)


def _write_pngs(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:03d}.png")
    return folder


def _extractor(weights: Path) -> FeatureExtractorInceptionV3:
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


@pytest.fixture(scope="module")
def real_images() -> torch.Tensor:
    return _images(1)


@pytest.fixture(scope="module")
def fake_images() -> torch.Tensor:
    return _images(2, high=128)  # darker than the real set


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, real_images: torch.Tensor) -> Path:
    folder = _write_pngs(tmp_path_factory.mktemp("reference") / "images", real_images)
    (folder / "notes.txt").write_text("not an image\n")
    _write_pngs(folder / "nested", real_images[:1])  # torch-fidelity does not descend into sub-folders
    return folder


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store") / "fidelity"


@pytest.fixture(scope="module")
def folder_result(folder: Path, fake_images: torch.Tensor, weights: Path, cache_root: Path) -> dict[str, float]:
    ref = resolve_reference(str(folder))
    return compute_metrics(
        fake_images, ref, "rgb", metrics=["fid", "kid"], inception_weights=str(weights), cache_root=cache_root
    )


def test_resolve_reference_classifies_the_three_forms(folder: Path, tmp_path: Path) -> None:
    ref = resolve_reference(str(folder))
    assert ref == RealReference("folder", str(folder.resolve()), str(folder))
    assert [Path(file).name for file in folder_images(folder)] == [f"{i:03d}.png" for i in range(NUM_IMAGES)]
    stats = tmp_path / "ref.NPZ"
    with open(stats, "wb") as handle:  # np.savez(path) would append ".npz" to "ref.NPZ"
        np.savez(handle, mu=np.zeros(3), sigma=np.eye(3))
    assert resolve_reference(stats) == RealReference("stats", str(stats.resolve()), str(stats))
    assert "cifar10-train" in registered_inputs()
    assert resolve_reference("cifar10-train") == RealReference("registered", "cifar10-train", "cifar10-train")


@pytest.mark.parametrize("spec", [None, "", "no-such-reference", "notes.txt", "empty"])
def test_bad_references_are_one_line_user_errors(spec: str | None, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as error:
        resolve_reference(spec)
    message = str(error.value)
    assert "\n" not in message and "eval.reference=" in message
    if spec == "empty":
        assert "without images" in message and ".png" in message
    else:
        assert "image folder" in message and "cifar10-train" in message and ".npz" in message
    if spec in (None, ""):
        assert "must be given for RGB models" in message


def test_fingerprints_track_what_the_reference_holds(tmp_path: Path, real_images: torch.Tensor) -> None:
    folder = _write_pngs(tmp_path / "a", real_images)
    ref = resolve_reference(folder)
    first = reference_fingerprint(ref)
    assert reference_fingerprint(ref) == first and len(first) == 64
    (folder / "readme.md").write_text("ignored: not an image torch-fidelity reads\n")
    assert reference_fingerprint(ref) == first
    os.utime(folder / "000.png", ns=(1, 1))
    touched = reference_fingerprint(ref)
    assert touched != first
    _write_pngs(folder / "more", real_images)  # a sub-folder: not read, not fingerprinted
    assert reference_fingerprint(ref) == touched
    Image.fromarray(real_images[0].permute(1, 2, 0).numpy()).save(folder / "extra.jpg")
    assert reference_fingerprint(ref) != touched
    names = {reference_fingerprint(resolve_reference(name)) for name in ("cifar10-train", "cifar10-val")}
    assert len(names) == 2


def test_cache_name_hashes_reference_and_weights(tmp_path: Path, folder: Path) -> None:
    ref = resolve_reference(folder)
    (tmp_path / "w1").write_bytes(b"one")
    (tmp_path / "w2").write_bytes(b"two")
    name = reference_cache_name(ref, tmp_path / "w1")
    assert name.startswith("tfmq-ref-folder-") and name == reference_cache_name(ref, tmp_path / "w1")
    assert reference_cache_name(ref, tmp_path / "w2") != name
    assert reference_cache_name(resolve_reference("cifar10-train"), tmp_path / "w1") != name


def test_random_inception_weights_load_strictly_and_are_seeded(weights: Path, tmp_path: Path) -> None:
    extractor = _extractor(weights)
    (features,) = extractor(_images(3))
    assert features.shape == (NUM_IMAGES, 2048) and torch.isfinite(features).all()
    assert features.std(0).mean() > 1e-4  # He init: features are not squashed to zero
    again = torch.load(save_random_inception_weights(tmp_path / "inception.pth"), weights_only=True)
    first = torch.load(weights, weights_only=True)
    assert again.keys() == first.keys() and all(torch.equal(again[key], first[key]) for key in first)


def test_folder_reference_gives_finite_fid_kid_and_caches_it(
    folder_result: dict[str, float],
    folder: Path,
    fake_images: torch.Tensor,
    weights: Path,
    cache_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert set(folder_result) == {"fid", "kid", "kid_std"}
    assert all(math.isfinite(value) for value in folder_result.values()) and folder_result["fid"] > 0
    ref = resolve_reference(folder)
    name = reference_cache_name(ref, weights)
    assert sorted(path.name for path in cache_root.iterdir()) == [
        f"{name}-inception-v3-compat-features-2048.pt",
        f"{name}-inception-v3-compat-stat-fid-2048.pt",
    ]
    stats = torch.load(cache_root / f"{name}-inception-v3-compat-stat-fid-2048.pt", weights_only=False)
    assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)

    def no_reading(self, index):  # the second call must not decode a single reference image
        raise AssertionError("reference folder re-read despite the cache")

    monkeypatch.setattr(ImagesPathDataset, "__getitem__", no_reading)
    again = compute_metrics(
        fake_images, ref, "rgb", metrics=["fid", "kid"], inception_weights=str(weights), cache_root=cache_root
    )
    assert again == folder_result


def test_statistics_file_fid_equals_the_folder_fid(
    folder_result: dict[str, float],
    folder: Path,
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    weights: Path,
    tmp_path: Path,
) -> None:
    extractor = _extractor(weights)
    with torch.no_grad():
        (features,) = extractor(real_images)
    features = features.double().numpy()
    stats = tmp_path / "reference_stats.npz"
    np.savez(stats, mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    ref = resolve_reference(stats)
    result = compute_metrics(fake_images, ref, "rgb", metrics=["fid"], inception_weights=str(weights))
    assert set(result) == {"fid"}
    assert result["fid"] == pytest.approx(folder_result["fid"], rel=1e-4, abs=1e-9)

    with pytest.raises(UserError) as error:
        compute_metrics(fake_images, ref, "rgb", metrics=["fid", "kid", "prc"], inception_weights=str(weights))
    message = str(error.value)
    assert "\n" not in message and "kid, prc" in message and "image reference" in message

    wrong = tmp_path / "wrong_dim.npz"
    np.savez(wrong, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(UserError, match="64-d features"):
        compute_metrics(fake_images, resolve_reference(wrong), "rgb", metrics=["fid"], inception_weights=str(weights))


def test_folder_of_mixed_sizes_is_a_user_error(tmp_path: Path, fake_images: torch.Tensor, weights: Path) -> None:
    folder = _write_pngs(tmp_path / "mixed", _images(5))
    Image.new("RGB", (8, 8)).save(folder / "small.png")
    with pytest.raises(UserError, match="different sizes"):
        compute_metrics(fake_images[:2], resolve_reference(folder), "rgb", ["kid"], inception_weights=str(weights))


def test_statistics_file_must_hold_mu_and_sigma(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, mu=np.ones(2, dtype=np.float32), sigma=np.eye(2))
    loaded = load_reference_statistics(good)
    assert loaded["mu"].dtype == np.float64 and loaded["sigma"].shape == (2, 2)
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(2))
    np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(2), sigma=np.eye(3))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    cases = (("no_sigma", "'mu' and 'sigma'"), ("bad_shape", r"\[D\] and \[D, D\]"), ("garbage", "readable"))
    for name, expected in cases:
        with pytest.raises(UserError, match=expected):
            load_reference_statistics(tmp_path / f"{name}.npz")


def test_registered_input_is_lazy_and_cached_under_the_weights_aware_name(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    weights: Path,
    folder_result: dict[str, float],
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    built: list[tuple[str, bool]] = []

    def build(root: str, download: bool) -> torch.utils.data.Dataset:
        built.append((root, download))
        return torch.utils.data.TensorDataset(real_images)  # items are 1-tuples: unwrapped below

    class Unwrapped(torch.utils.data.Dataset):
        def __init__(self, root: str, download: bool) -> None:
            self.inner = build(root, download)

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, index: int) -> torch.Tensor:
            return self.inner[index][0]

    monkeypatch.setitem(DATASETS_REGISTRY, "tfmq-test-set", Unwrapped)
    ref = resolve_reference("tfmq-test-set")
    assert ref.kind == "registered"
    lazy = RegisteredInput("tfmq-test-set")
    assert built == [] and lazy.datasets_root == str(tmp_path / "torch_home" / "fidelity_datasets")

    cache_root = tmp_path / "fidelity"
    run = lambda: compute_metrics(  # noqa: E731  (KID only: FID's 2048 x 2048 eigvals cost 2 s a call)
        fake_images, ref, "rgb", metrics=["kid"], inception_weights=str(weights), cache_root=cache_root
    )
    first = run()
    assert built == [(str(tmp_path / "torch_home" / "fidelity_datasets"), True)]
    assert first["kid"] == pytest.approx(folder_result["kid"], rel=1e-6)  # same images as the folder
    assert run() == first and len(built) == 1  # cache hit: the data set is not even instantiated
    name = reference_cache_name(ref, weights)
    # cached under the weights-aware name, not torch-fidelity's bare "tfmq-test-set-inception-v3-compat-..."
    assert [path.name for path in cache_root.iterdir()] == [f"{name}-inception-v3-compat-features-2048.pt"]
