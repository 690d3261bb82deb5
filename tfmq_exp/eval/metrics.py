"""Generation metrics (FID, KID, Inception Score, precision / recall) through torch-fidelity.

``fake`` is torch-fidelity's ``input1`` (the generated samples; IS is computed on it) and ``real`` its ``input2``.
Domain ``digits`` measures in the digits classifier's feature space (:mod:`tfmq_exp.eval.extractor`); domain
``rgb`` uses torch-fidelity's Inception-v3 (``inception-v3-compat``) for every metric, from a local weights file
(``eval.inception_weights``, else the torch hub cache): this module never downloads Inception weights.
For ``rgb``, ``real`` may also be a :class:`~tfmq_exp.eval.real_reference.RealReference` (``eval.reference``: an
image folder, a torch-fidelity registered input or a ``.npz`` statistics file), whose Inception features and
statistics are cached in torch-fidelity's file cache under ``cache_root``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.utils import (
    create_feature_extractor,
    get_featuresdict_from_dataset,
    resolve_feature_layer_for_metric,
)

from tfmq_exp.data.digits import load_digits_split, to_uint8
from tfmq_exp.errors import MissingWeightsError, UserError  # re-exported: the CLI prints UserErrors, no traceback
from tfmq_exp.eval.extractor import register_digits_extractor
from tfmq_exp.eval.real_reference import (
    RealReference,
    RegisteredInput,
    folder_images,
    load_reference_statistics,
    reference_cache_name,
)

__all__ = [
    "MissingWeightsError",
    "RealReference",
    "compute_metrics",
    "inception_weights_path",
    "real_digits_heldout",
    "resolve_inception_weights",
]

METRICS = ("fid", "kid", "isc", "prc")
DOMAINS = ("digits", "rgb")
INCEPTION_EXTRACTOR = "inception-v3-compat"
DEFAULT_INCEPTION_LAYER = "2048"  # the pool features of every published FID (eval.inception_layer)
RESULT_KEYS = {
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid",
    "kernel_inception_distance_std": "kid_std",
    "inception_score_mean": "isc",
    "inception_score_std": "isc_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}
"""torch-fidelity's result keys -> the flat keys :func:`compute_metrics` returns."""


class ImageTensorDataset(Dataset):
    """A uint8 image tensor [N, C, H, W] as the ``Dataset`` of single images torch-fidelity consumes."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images.cpu().contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def inception_weights_path() -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps torch-fidelity's Inception weights.

    ``<torch.hub.get_dir()>/checkpoints/<file name of URL_INCEPTION_V3>``; ``get_dir()`` is
    ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``) unless ``torch.hub.set_dir`` was called.
    """
    file_name = os.path.basename(urlparse(URL_INCEPTION_V3).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def resolve_inception_weights(inception_weights: str | os.PathLike | None = None) -> Path:
    """The Inception-v3 weights file of domain ``rgb``: ``inception_weights`` if given, else the hub cache's.

    Args:
        inception_weights: ``eval.inception_weights``, a local copy of torch-fidelity's Inception-v3 state dict
            (the file at :data:`URL_INCEPTION_V3`); ``None``: :func:`inception_weights_path`.

    Raises:
        MissingWeightsError: the file does not exist (one line: pass ``eval.inception_weights=FILE`` or place
            the file in the hub cache). Nothing is created or downloaded.
    """
    hub = inception_weights_path()
    if inception_weights is None:
        if not hub.is_file():
            raise MissingWeightsError(
                f"torch-fidelity's Inception-v3 weights '{hub.name}' are not in the local torch hub cache "
                f"'{hub.parent}': pass eval.inception_weights=FILE (a local copy of {URL_INCEPTION_V3}, fetched on a "
                f"machine with network access) or place the file in that directory; domain 'rgb' never downloads"
            )
        return hub
    path = Path(inception_weights).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"eval.inception_weights={inception_weights} is not a file: pass eval.inception_weights=FILE naming a "
            f"local copy of torch-fidelity's Inception-v3 weights ({URL_INCEPTION_V3}), or place that file in the "
            f"torch hub cache as '{hub}' and leave eval.inception_weights unset"
        )
    return path


def _inception_layers(layer: str) -> dict:
    """torch-fidelity's feature-layer arguments of FID and KID (IS keeps its logits, precision / recall theirs)."""
    return {"feature_layer_fid": str(layer), "feature_layer_kid": str(layer)}


def _extractor_kwargs(
    domain: str, inception_weights: str | os.PathLike | None = None, inception_layer: str = DEFAULT_INCEPTION_LAYER
) -> dict:
    if domain == "digits":
        return {"feature_extractor": register_digits_extractor()}
    weights = resolve_inception_weights(inception_weights)
    return {"feature_extractor": INCEPTION_EXTRACTOR, "feature_extractor_weights_path": str(weights),
            **_inception_layers(inception_layer)}  # fmt: skip


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _reference_metrics(
    fake: torch.Tensor,
    ref: RealReference,
    metrics: Sequence[str],
    weights: str,
    cache_root: str | os.PathLike | None,
    kid_subset_size: int,
    prc_neighborhood: int,
    device: str,
    batch_size: int,
    inception_layer: str = DEFAULT_INCEPTION_LAYER,
) -> dict:
    """torch-fidelity's raw result dict of ``fake`` against an ``eval.reference`` (domain ``rgb``)."""
    ref.check_metrics(metrics)
    common = dict(
        cuda=device == "cuda",
        batch_size=batch_size,
        verbose=False,
        save_cpu_ram=True,
        feature_extractor=INCEPTION_EXTRACTOR,
        feature_extractor_weights_path=weights,
        **_inception_layers(inception_layer),
    )
    fake_set = ImageTensorDataset(_rgb(fake))
    if ref.kind == "stats":
        return _statistics_file_metrics(fake_set, ref, metrics, common)
    if ref.kind == "folder":
        real: str | Dataset = ref.location  # torch-fidelity globs and decodes the folder itself
        subset_cap = [len(folder_images(ref.location))]
    else:
        real = RegisteredInput(ref.location)
        subset_cap = []  # its length would instantiate (download) the data set; registered sets have >= 5000 images
    if cache_root is None:
        cache = {"cache": False}
    else:
        # torch-fidelity's file cache: features and FID statistics of input2 only (input1, the generated set, is a
        # Dataset without a cache name), as <cache_root>/<name>-inception-v3-compat-{features-*,stat-fid-*}.pt
        cache = {"cache": True, "cache_root": str(cache_root), "input2_cache_name": reference_cache_name(ref, weights)}
    try:
        return torch_fidelity.calculate_metrics(
            input1=fake_set,
            input2=real if set(metrics) - {"isc"} else None,  # IS alone reads no reference
            kid_subset_size=min(kid_subset_size, len(fake_set), *subset_cap),
            prc_neighborhood=prc_neighborhood,
            **{metric: metric in metrics for metric in METRICS},
            **common,
            **cache,
        )
    except RuntimeError as error:  # the DataLoader's collate of a folder's images of several sizes
        if ref.kind == "folder" and "stack expects each tensor to be equal size" in str(error):
            raise UserError(
                f"eval.reference={ref.spec} holds images of different sizes: torch-fidelity batches them as they "
                f"are, so resize them to one size first"
            ) from error
        raise


def _statistics_file_metrics(fake_set: Dataset, ref: RealReference, metrics: Sequence[str], common: dict) -> dict:
    """FID (and IS) of the generated set against a ``.npz`` of ``mu`` / ``sigma``, with torch-fidelity's pieces.

    ``calculate_metrics`` cannot take statistics as an input, so the generated set's features are extracted the
    way it does (``create_feature_extractor`` + ``get_featuresdict_from_dataset``) and FID comes from its own
    ``fid_features_to_statistics`` / ``fid_statistics_to_metric`` (both sides in float64).
    """
    layers = {metric: resolve_feature_layer_for_metric(metric, **common) for metric in metrics}  # fid, isc
    reference = load_reference_statistics(ref.location, ref.spec) if "fid" in layers else None  # fail before work
    extractor = create_feature_extractor(INCEPTION_EXTRACTOR, sorted(set(layers.values())), **common)
    features = get_featuresdict_from_dataset(
        fake_set, extractor, common["batch_size"], common["cuda"], common["save_cpu_ram"], common["verbose"]
    )
    out: dict = {}
    if reference is not None:
        generated = fid_features_to_statistics(features[layers["fid"]])
        generated = {key: np.asarray(value, dtype=np.float64) for key, value in generated.items()}
        if generated["mu"].shape != reference["mu"].shape:
            raise UserError(
                f"eval.reference={ref.spec} holds statistics of {reference['mu'].shape[0]}-d features, but "
                f"{INCEPTION_EXTRACTOR}'s layer {layers['fid']} has {generated['mu'].shape[0]} dimensions"
            )
        out.update(fid_statistics_to_metric(generated, reference, False))
    if "isc" in layers:
        out.update(isc_featuresdict_to_metric(features, layers["isc"], **common))
    return out


def compute_metrics(
    fake: torch.Tensor,
    real: torch.Tensor | RealReference,
    domain: str,
    metrics: Sequence[str] = METRICS,
    kid_subset_size: int = 500,
    prc_neighborhood: int = 3,
    device: str = "cpu",
    batch_size: int = 250,
    inception_weights: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    inception_layer: str = DEFAULT_INCEPTION_LAYER,
) -> dict[str, float]:
    """FID / KID / IS / precision-recall of generated images against real ones.

    Args:
        fake: generated images, uint8 [N, C, H, W] (C = 1 or 3; the ``rgb`` domain repeats 1 channel to 3).
        real: reference images, uint8 [M, C, H, W]; for domain ``rgb`` also a
            :class:`~tfmq_exp.eval.real_reference.RealReference` (``eval.reference``: image folder, registered
            input, or ``.npz`` statistics, which serves ``fid`` and ``isc`` only).
        domain: ``"digits"`` (8x8 classifier features) or ``"rgb"`` (Inception-v3 from a local weights file).
        metrics: any of ``"fid"``, ``"kid"``, ``"isc"`` (on ``fake``), ``"prc"``.
        kid_subset_size: KID subset size, capped at ``min(N, M)`` (for a registered input at ``N`` only).
        prc_neighborhood: k of the k-NN manifolds of precision / recall.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: feature-extraction batch size.
        inception_weights: domain ``rgb``: ``eval.inception_weights`` (a local Inception-v3 weights file);
            ``None`` looks in the torch hub cache (:func:`inception_weights_path`). Ignored by ``digits``.
        cache_root: where torch-fidelity caches a ``RealReference``'s features and FID statistics (the caller's
            store dir / ``"fidelity"``); ``None`` caches nothing. Tensor references are never cached.
        inception_layer: domain ``rgb``: the Inception feature layer of FID and KID (``eval.inception_layer``).

    Returns:
        A subset of ``fid``, ``kid``, ``kid_std``, ``isc``, ``isc_std``, ``precision``, ``recall``, ``f_score``.

    Raises:
        MissingWeightsError: domain ``rgb`` and the Inception weights file does not exist.
        UserError: a statistics-file reference with ``kid`` or ``prc`` requested, or an unreadable one.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown metrics domain {domain!r}; valid: {DOMAINS}")
    unknown = [metric for metric in metrics if metric not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if isinstance(real, RealReference):
        if domain != "rgb":
            raise ValueError(f"a RealReference (eval.reference) is a real set for domain 'rgb', not {domain!r}")
        real.check_metrics(metrics)
        weights = str(resolve_inception_weights(inception_weights))
        raw = _reference_metrics(
            fake, real, metrics, weights, cache_root, kid_subset_size, prc_neighborhood, device, batch_size,
            inception_layer,
        )
        return {RESULT_KEYS[key]: float(value) for key, value in raw.items() if key in RESULT_KEYS}
    if domain == "rgb":
        fake, real = (_rgb(images) for images in (fake, real))
    raw = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(fake),
        input2=ImageTensorDataset(real),
        cuda=device == "cuda",
        batch_size=batch_size,
        cache=False,
        verbose=False,
        save_cpu_ram=True,  # num_workers=0: the data are tensors in memory; no worker processes
        kid_subset_size=min(kid_subset_size, len(fake), len(real)),
        prc_neighborhood=prc_neighborhood,
        **{metric: metric in metrics for metric in METRICS},
        **_extractor_kwargs(domain, inception_weights, inception_layer),
    )
    return {RESULT_KEYS[key]: float(value) for key, value in raw.items() if key in RESULT_KEYS}


def real_digits_heldout() -> torch.Tensor:
    """The held-out digits as uint8 [539, 1, 8, 8], the reference set of the benchmark's metrics."""
    return to_uint8(load_digits_split("heldout").images)
