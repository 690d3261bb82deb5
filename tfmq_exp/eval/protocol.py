"""Evaluation under one protocol: generate, score with torch-fidelity, and measure trajectories.

A *protocol* is everything that makes two runs' numbers comparable: the model weights, the sampler, the number
of samples, the evaluation noise set and the metric settings. The full-precision reference is computed once
per protocol (:mod:`tfmq_exp.eval.reference`) and every quantized run is scored against the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from tfmq_exp.config.schema import Config
from tfmq_exp.data.digits import to_uint8
from tfmq_exp.eval.sampling import generate
from tfmq_exp.errors import UserError


def metric_weights_fingerprint(config: Config) -> str:
    """A hash of the weights of the metrics' feature extractor (retraining it invalidates FP references)."""
    if config.model.domain == "digits":
        from tfmq_exp.eval.classifier import DEFAULT_DIR, WEIGHTS_FILE
        from tfmq_exp.store import file_sha256

        return file_sha256(DEFAULT_DIR / WEIGHTS_FILE)
    return "torch-fidelity-inception-v3"  # torch-fidelity's pinned release file


def protocol_payload(config: Config, weights_id: str) -> dict[str, Any]:
    """Everything that determines the evaluation numbers of a model (the FP reference's cache key)."""
    return {
        "model": config.model.name,
        "weights": weights_id,
        "metric_weights": metric_weights_fingerprint(config),
        "sampler": vars(config.sampler),
        "num_samples": config.eval.num_samples,
        "seed_set": config.eval.seed_set,
        "metrics": list(config.eval.metrics),
        "kid_subset_size": config.eval.kid_subset_size,
        "prc_neighborhood": config.eval.prc_neighborhood,
        "trajectory_samples": config.eval.trajectory_samples,
    }


def real_images(config: Config) -> torch.Tensor:
    """The real reference set as uint8 images: the digits held-out split for the embedded models."""
    if config.model.domain == "digits":
        from tfmq_exp.eval.metrics import real_digits_heldout

        return real_digits_heldout()
    raise UserError(
        f"model={config.model.name} (domain rgb) needs a real reference set for FID; the embedded benchmark only "
        "ships digits. Use model=digits / digits_ss, or score samples with torch-fidelity directly"
    )


@dataclass
class Evaluation:
    """Samples and metrics of one model under one protocol."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    metrics: dict[str, float]
    trajectory: Optional[torch.Tensor] = None  # [S, B, C, H, W] for the first eval.trajectory_samples samples


def evaluate(unet: torch.nn.Module, config: Config, real: torch.Tensor) -> Evaluation:
    """Generate ``eval.num_samples`` images with ``unet`` and score them against ``real``."""
    from tfmq_exp.eval.metrics import compute_metrics

    samples = generate(
        unet,
        config.sampler,
        config.model,
        config.eval.num_samples,
        config.eval.batch_size,
        config.eval.seed_set,
        device=config.runtime.device,
        progress=config.runtime.progress,
    )
    images = to_uint8(samples.images)
    metrics = compute_metrics(
        images,
        real,
        domain=config.model.domain,
        metrics=list(config.eval.metrics),
        kid_subset_size=config.eval.kid_subset_size,
        prc_neighborhood=config.eval.prc_neighborhood,
        device="cuda" if config.runtime.device == "cuda" else "cpu",
    )
    metrics["num_samples"] = config.eval.num_samples
    metrics["seed_set"] = config.eval.seed_set
    trajectory = record_trajectory(unet, config)
    return Evaluation(images=images, metrics=metrics, trajectory=trajectory)


def record_trajectory(unet: torch.nn.Module, config: Config) -> torch.Tensor:
    """``x_t`` at every step for the first ``eval.trajectory_samples`` samples of the protocol's noise set."""
    count = min(config.eval.trajectory_samples, config.eval.num_samples)
    samples = generate(
        unet,
        config.sampler,
        config.model,
        count,
        count,
        config.eval.seed_set,
        record_trajectory=True,
        device=config.runtime.device,
        progress=False,
    )
    assert samples.trajectory is not None
    final = samples.images.unsqueeze(0)
    return torch.cat([samples.trajectory, final])  # [S + 1, B, C, H, W]: x_T ... x_0
