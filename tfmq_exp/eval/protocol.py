"""Evaluation under one protocol: generate, score with torch-fidelity, and measure trajectories.

A *protocol* is everything that makes two runs' numbers comparable: the model weights, the sampler, the number
of samples, the evaluation noise set and the metric settings. The full-precision reference is computed once
per protocol (:mod:`tfmq_exp.eval.reference`) and every quantized run is scored against the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from tfmq_exp.config.schema import Config
from tfmq_exp.data.digits import to_uint8
from tfmq_exp.eval.sampling import GenerationParts, generate


def metric_weights_fingerprint(config: Config) -> str:
    """A hash of the weights of the metrics' feature extractor (retraining it invalidates FP references)."""
    if config.model.domain == "digits":
        from tfmq_exp.eval.classifier import DEFAULT_DIR, WEIGHTS_FILE
        from tfmq_exp.store import file_sha256

        return file_sha256(DEFAULT_DIR / WEIGHTS_FILE)
    return "torch-fidelity-inception-v3"  # torch-fidelity's pinned release file


def protocol_payload(config: Config, weights_id: str, conditions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that determines the evaluation numbers of a model (the FP reference's cache key).

    ``conditions``: what the family adds (:func:`~tfmq_exp.eval.families.conditioning_payload`, purpose
    ``eval``); ``None`` for pixel models, whose keys are unchanged.
    """
    payload = {
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
    if config.eval.fp_dtype != "float32":  # only then, so that float32 references keep their keys
        payload["fp_dtype"] = config.eval.fp_dtype
    if config.model.domain == "rgb" and str(config.eval.inception_layer) != "2048":  # likewise for 2048-d features
        payload["inception_layer"] = str(config.eval.inception_layer)
    if conditions:
        payload["conditions"] = conditions
    if config.model.domain == "rgb":
        payload["reference"] = config.eval.reference
        payload["clip_model"] = config.eval.clip_model
    return payload


def real_images(config: Config) -> Any:
    """The real reference set: the digits held-out split (uint8) for the embedded models, else ``eval.reference``.

    Raises:
        UserError: an RGB model without a usable ``eval.reference`` (the message lists the accepted forms).
    """
    if config.model.domain == "digits":
        from tfmq_exp.eval.metrics import real_digits_heldout

        return real_digits_heldout()
    from tfmq_exp.eval.real_reference import resolve_reference

    return resolve_reference(config.eval.reference)


def _rgb_kwargs(config: Config) -> dict[str, Any]:
    """Inception weights, and where torch-fidelity caches the reference statistics (computed once, then reused)."""
    from pathlib import Path

    return {"inception_weights": config.eval.inception_weights, "inception_layer": str(config.eval.inception_layer),
            "cache_root": str(Path(config.runtime.cache_dir) / "fidelity")}  # fmt: skip


def score(
    images: torch.Tensor, indices: torch.Tensor, config: Config, real: Any, parts: Optional[GenerationParts]
) -> dict[str, float]:
    """torch-fidelity's metrics of ``images`` against ``real``; the CLIP score of text-to-image samples."""
    from tfmq_exp.eval.metrics import compute_metrics

    metrics = compute_metrics(
        images,
        real,
        domain=config.model.domain,
        metrics=list(config.eval.metrics),
        kid_subset_size=config.eval.kid_subset_size,
        prc_neighborhood=config.eval.prc_neighborhood,
        device="cuda" if config.runtime.device == "cuda" else "cpu",
        **(_rgb_kwargs(config) if config.model.domain == "rgb" else {}),
    )
    if config.model.family == "text_to_image" and config.eval.clip_model:
        from tfmq_exp.eval.clip_score import clip_score

        assert parts is not None and parts.prompts is not None
        metrics["clip_score"] = clip_score(images, parts.prompts(indices), config.eval.clip_model)
    return metrics


@dataclass
class Evaluation:
    """Samples and metrics of one model under one protocol."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    metrics: dict[str, float]
    # [S + 1, B', C, h, w]: the UNet's x_t at each step, then x_0, for the first eval.trajectory_samples samples
    trajectory: Optional[torch.Tensor] = None
    # the UNet's conditioning of those rows, flat [B', ...] (empty for unconditional models)
    trajectory_conditioning: dict[str, torch.Tensor] = field(default_factory=dict)


def evaluate(
    unet: torch.nn.Module,
    config: Config,
    real: Any,
    parts: Optional[GenerationParts] = None,
    precision: str = "32-true",
) -> Evaluation:
    """Generate ``eval.num_samples`` images with ``unet`` and score them against ``real``.

    Args:
        parts: the family's evaluation parts (:func:`~tfmq_exp.eval.families.generation_parts`); ``None`` for an
            unconditional pixel model.
        precision: Lightning's precision of the sampling loops (:func:`~tfmq_exp.devices.sampling_precision`);
            the metrics always run in float32.
    """
    samples = generate(
        unet,
        config.sampler,
        config.model,
        config.eval.num_samples,
        config.eval.batch_size,
        config.eval.seed_set,
        device=config.runtime.device,
        devices=config.runtime.devices,
        progress=config.runtime.progress,
        parts=parts,
        precision=precision,
    )
    images = to_uint8(samples.images)
    metrics = score(images, samples.indices, config, real, parts)
    metrics["num_samples"] = config.eval.num_samples
    metrics["seed_set"] = config.eval.seed_set
    trajectory, conditioning = record_trajectory(unet, config, parts, precision)
    return Evaluation(images=images, metrics=metrics, trajectory=trajectory, trajectory_conditioning=conditioning)


def record_trajectory(
    unet: torch.nn.Module, config: Config, parts: Optional[GenerationParts] = None, precision: str = "32-true"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The UNet's ``x_t`` at every step (then ``x_0``) and its conditioning, for the first
    ``eval.trajectory_samples`` samples of the protocol's noise set."""
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
        devices=config.runtime.devices,
        progress=False,
        parts=parts,
        precision=precision,
    )
    assert samples.trajectory is not None and samples.final is not None
    # [S + 1, B', C, h, w]: x_T ... x_0
    return torch.cat([samples.trajectory, samples.final.unsqueeze(0)]), samples.conditioning
