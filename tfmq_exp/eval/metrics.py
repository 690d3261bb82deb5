"""Generation metrics (FID, KID, Inception Score, precision / recall) through torch-fidelity.

``fake`` is torch-fidelity's ``input1`` (the generated samples; IS is computed on it) and ``real`` its ``input2``.
Domain ``digits`` measures in the digits classifier's feature space (:mod:`tfmq_exp.eval.extractor`); domain
``rgb`` uses torch-fidelity's Inception-v3 (``inception-v3-compat``) for every metric, from weights that must
already be in the torch hub cache: this module never downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from tfmq_exp.data.digits import load_digits_split, to_uint8
from tfmq_exp.errors import MissingWeightsError  # re-exported: the CLI prints UserErrors without a traceback
from tfmq_exp.eval.extractor import register_digits_extractor

__all__ = ["MissingWeightsError", "compute_metrics", "inception_weights_path", "real_digits_heldout"]

METRICS = ("fid", "kid", "isc", "prc")
DOMAINS = ("digits", "rgb")
INCEPTION_EXTRACTOR = "inception-v3-compat"
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


def _require_inception_weights() -> Path:
    path = inception_weights_path()
    if not path.is_file():
        raise MissingWeightsError(
            f"torch-fidelity's Inception-v3 weights '{path.name}' are not in the local torch hub cache: place the "
            f"file in '{path.parent}' (it is {URL_INCEPTION_V3}; fetch it on a machine with network access), or point "
            f"TORCH_HOME at a directory whose hub/checkpoints/ holds it. Domain 'rgb' never downloads."
        )
    return path


def _extractor_kwargs(domain: str) -> dict:
    if domain == "digits":
        return {"feature_extractor": register_digits_extractor()}
    return {"feature_extractor": INCEPTION_EXTRACTOR, "feature_extractor_weights_path": str(_require_inception_weights())}


def compute_metrics(
    fake: torch.Tensor,
    real: torch.Tensor,
    domain: str,
    metrics: Sequence[str] = METRICS,
    kid_subset_size: int = 500,
    prc_neighborhood: int = 3,
    device: str = "cpu",
    batch_size: int = 250,
) -> dict[str, float]:
    """FID / KID / IS / precision-recall of generated images against real ones.

    Args:
        fake: generated images, uint8 [N, C, H, W] (C = 1 or 3; the ``rgb`` domain repeats 1 channel to 3).
        real: reference images, uint8 [M, C, H, W].
        domain: ``"digits"`` (8x8 classifier features) or ``"rgb"`` (Inception-v3, weights must be cached).
        metrics: any of ``"fid"``, ``"kid"``, ``"isc"`` (on ``fake``), ``"prc"``.
        kid_subset_size: KID subset size, capped at ``min(N, M)``.
        prc_neighborhood: k of the k-NN manifolds of precision / recall.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: feature-extraction batch size.

    Returns:
        A subset of ``fid``, ``kid``, ``kid_std``, ``isc``, ``isc_std``, ``precision``, ``recall``, ``f_score``.

    Raises:
        MissingWeightsError: domain ``rgb`` and the Inception weights are not in the torch hub cache.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown metrics domain {domain!r}; valid: {DOMAINS}")
    unknown = [metric for metric in metrics if metric not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if domain == "rgb":
        fake, real = (images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images for images in (fake, real))
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
        **_extractor_kwargs(domain),
    )
    return {RESULT_KEYS[key]: float(value) for key, value in raw.items() if key in RESULT_KEYS}


def real_digits_heldout() -> torch.Tensor:
    """The held-out digits as uint8 [539, 1, 8, 8], the reference set of the benchmark's metrics."""
    return to_uint8(load_digits_split("heldout").images)
