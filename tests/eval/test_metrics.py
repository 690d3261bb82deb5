"""Generation metrics through torch-fidelity: digits domain numerics, the rgb domain's missing-weights error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from tfmq_exp.data.digits import load_digits_split, to_uint8
from tfmq_exp.errors import UserError
from tfmq_exp.eval.extractor import DigitsFeatureExtractor
from tfmq_exp.eval.metrics import (
    MissingWeightsError,
    compute_metrics,
    inception_weights_path,
    real_digits_heldout,
    resolve_inception_weights,
)

ALL_KEYS = {"fid", "kid", "kid_std", "isc", "isc_std", "precision", "recall", "f_score"}


@pytest.fixture(scope="module")
def heldout() -> torch.Tensor:
    return real_digits_heldout()


@pytest.fixture(scope="module")
def train() -> torch.Tensor:
    return to_uint8(load_digits_split("train").images)


@pytest.fixture(scope="module")
def noise(heldout: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 256, heldout.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.fixture(scope="module")
def real_vs_real(heldout: torch.Tensor) -> dict[str, float]:
    return compute_metrics(heldout, heldout, "digits")


@pytest.fixture(scope="module")
def train_vs_heldout(train: torch.Tensor, heldout: torch.Tensor) -> dict[str, float]:
    return compute_metrics(train, heldout, "digits")


@pytest.fixture(scope="module")
def noise_vs_heldout(noise: torch.Tensor, heldout: torch.Tensor) -> dict[str, float]:
    return compute_metrics(noise, heldout, "digits")


def test_heldout_is_the_fixed_uint8_reference(heldout: torch.Tensor) -> None:
    assert heldout.dtype == torch.uint8 and heldout.shape == (539, 1, 8, 8)
    assert torch.equal(heldout, real_digits_heldout())


def test_identical_sets_have_zero_fid_and_full_precision_recall(real_vs_real: dict[str, float]) -> None:
    assert set(real_vs_real) == ALL_KEYS
    assert abs(real_vs_real["fid"]) < 1e-3
    assert real_vs_real["precision"] == 1.0 and real_vs_real["recall"] == 1.0


def test_noise_is_far_from_digits(noise_vs_heldout: dict[str, float], train_vs_heldout: dict[str, float]) -> None:
    assert noise_vs_heldout["fid"] > 5.0
    assert noise_vs_heldout["fid"] > 30 * train_vs_heldout["fid"]
    assert noise_vs_heldout["recall"] < 0.2 and noise_vs_heldout["precision"] < 0.5
    assert noise_vs_heldout["isc"] < train_vs_heldout["isc"] - 3.0


def test_kid_is_near_zero_for_real_data_and_sane_in_magnitude(
    train_vs_heldout: dict[str, float], noise_vs_heldout: dict[str, float]
) -> None:
    # unit-RMS features keep the cubic kernel O(1): unscaled features gave KID ~ 1e4
    assert abs(train_vs_heldout["kid"]) < 3 * train_vs_heldout["kid_std"] + 1e-3
    assert 0.1 < noise_vs_heldout["kid"] < 10.0
    assert 0.0 < noise_vs_heldout["kid_std"] < noise_vs_heldout["kid"]


def test_inception_score_and_prc_in_range(train_vs_heldout: dict[str, float]) -> None:
    assert 8.0 < train_vs_heldout["isc"] <= 10.0  # 10 classes: 1 <= IS <= 10
    assert train_vs_heldout["isc_std"] >= 0.0
    for key in ("precision", "recall", "f_score"):
        assert 0.8 < train_vs_heldout[key] <= 1.0


def test_fid_matches_a_direct_computation(train: torch.Tensor, heldout: torch.Tensor) -> None:
    """FID = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) on the scaled 64-d features."""
    extractor = DigitsFeatureExtractor("digits-cnn", ["64"])
    with torch.no_grad():
        (features_train,), (features_heldout,) = extractor(train), extractor(heldout)
    a, b = features_train.double().numpy(), features_heldout.double().numpy()
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sigma_a @ sigma_b).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * covmean)
    assert compute_metrics(train, heldout, "digits", metrics=["fid"])["fid"] == pytest.approx(expected, rel=1e-4)


def test_metric_subset_small_sets_and_rgb_digits(heldout: torch.Tensor, train: torch.Tensor) -> None:
    small = compute_metrics(train[:60], heldout, "digits", metrics=["kid", "fid"])  # KID subset capped at 60
    assert set(small) == {"fid", "kid", "kid_std"}
    rgb = compute_metrics(train[:60].expand(-1, 3, -1, -1), heldout, "digits", metrics=["fid"])
    assert rgb["fid"] == pytest.approx(small["fid"], rel=1e-6)


def test_invalid_arguments_are_rejected(heldout: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="domain"):
        compute_metrics(heldout, heldout, "cifar")
    with pytest.raises(ValueError, match="subset"):
        compute_metrics(heldout, heldout, "digits", metrics=["sfid"])
    with pytest.raises(ValueError, match="uint8"):
        compute_metrics(heldout.float(), heldout, "digits")


def test_rgb_domain_without_cached_weights_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, heldout: torch.Tensor
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("TORCH_HUB", raising=False)
    expected = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert inception_weights_path() == expected
    with pytest.raises(MissingWeightsError) as error:
        compute_metrics(heldout, heldout, "rgb", metrics=["fid"])
    assert expected.name in str(error.value) and str(expected.parent) in str(error.value)
    assert not expected.parent.exists()  # nothing was created, nothing downloaded
    assert isinstance(error.value, UserError)  # the CLI prints it on one line


def test_rgb_domain_loads_the_cached_file_not_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, heldout: torch.Tensor
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = inception_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception) as error:  # torch.load of the placeholder fails; no download is tried
        compute_metrics(heldout, heldout, "rgb", metrics=["fid"])
    assert not isinstance(error.value, (MissingWeightsError, OSError))
    assert path.read_bytes() == b"not a checkpoint"


# --- eval.inception_weights and eval.reference (issue 15, item 6) -------------------------------------------------


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tfmq_exp.eval.tiny_fidelity import save_random_inception_weights

    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


def test_hub_cache_message_names_the_config_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(MissingWeightsError) as error:
        compute_metrics(images, images, "rgb", metrics=["fid"])
    message = str(error.value)
    assert "\n" not in message and "eval.inception_weights=FILE" in message and "hub cache" in message


def test_explicit_missing_inception_weights_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    missing = tmp_path / "nowhere" / "inception.pth"
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(MissingWeightsError) as error:
        compute_metrics(images, images, "rgb", metrics=["fid"], inception_weights=str(missing))
    message = str(error.value)
    assert "\n" not in message and f"eval.inception_weights={missing}" in message
    assert "eval.inception_weights=FILE" in message and str(inception_weights_path()) in message
    assert not (tmp_path / "torch").exists() and not missing.parent.exists()


def test_explicit_inception_weights_win_over_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_inception: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = inception_weights_path()
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"not a checkpoint")  # would fail to load if it were used
    assert resolve_inception_weights(str(random_inception)) == random_inception
    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (3, 3, 16, 16), generator=generator, dtype=torch.uint8)
    fake = torch.randint(0, 128, (3, 1, 16, 16), generator=generator, dtype=torch.uint8)  # 1 channel -> 3
    result = compute_metrics(fake, real, "rgb", metrics=["kid"], inception_weights=str(random_inception))
    assert set(result) == {"kid", "kid_std"} and np.isfinite(result["kid"])


def test_reference_metrics_are_checked_before_any_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tfmq_exp.eval.real_reference import resolve_reference

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache: the metric check must come first
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="metrics kid need an image reference"):
        compute_metrics(images, resolve_reference(stats), "rgb", metrics=["fid", "kid"])
    with pytest.raises(MissingWeightsError):
        compute_metrics(images, resolve_reference(stats), "rgb", metrics=["fid"])
    with pytest.raises(ValueError, match="domain 'rgb'"):
        compute_metrics(images, resolve_reference(stats), "digits", metrics=["fid"])


def test_the_inception_layer_reaches_fid_and_kid(random_inception: Path, tmp_path: Path) -> None:
    """``eval.inception_layer``: FID / KID on the 64-d and 192-d block features differ (the default 2048-d path is
    tests/eval/test_real_reference.py's), a statistics file of another dimension is refused, and the reference's
    key holds the layer only when not 2048."""
    from tfmq_exp.eval.protocol import protocol_payload
    from tfmq_exp.eval.real_reference import resolve_reference
    from tests.helpers import small_config
    from tfmq_exp.config.schema import MethodConfig, ModelConfig, QuantConfig

    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (4, 3, 16, 16), generator=generator, dtype=torch.uint8)
    fake = torch.randint(0, 128, (4, 3, 16, 16), generator=generator, dtype=torch.uint8)
    by_layer = {layer: compute_metrics(fake, real, "rgb", metrics=["fid", "kid"], kid_subset_size=4,
                                       inception_weights=str(random_inception), inception_layer=layer)
                for layer in ("64", "192")}  # fmt: skip
    assert by_layer["64"]["fid"] != by_layer["192"]["fid"] and by_layer["64"]["kid"] != by_layer["192"]["kid"]
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(UserError, match="2048-d features"):
        compute_metrics(fake, resolve_reference(str(stats)), "rgb", metrics=["fid"],
                        inception_weights=str(random_inception), inception_layer="64")  # fmt: skip
    config = small_config(QuantConfig(name="q"), MethodConfig(name="m"), model=ModelConfig(name="m", domain="rgb"))
    assert "inception_layer" not in protocol_payload(config, "w")
    config.eval.inception_layer = "64"
    assert protocol_payload(config, "w")["inception_layer"] == "64"
    with pytest.raises(ValueError, match="eval.inception_layer"):
        type(config.eval)(inception_layer="100")
