"""Calibration data: the full-precision sampler's ``x_t`` at every sampling step, recorded in one pass (DESIGN 1.2).

The published code re-ran the sampler once per calibration step; here one Lightning predict pass over
``calib.num_samples`` trajectories records ``x_t`` before every denoising step. The result is an artifact of the
shared :class:`~tfmq_exp.store.ArtifactStore` (kind ``calibration``), keyed by everything that produced it, so
every run of a sweep reuses it and a corrupt entry is rebuilt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tfmq_exp.calib.quiet import quiet_lightning
from tfmq_exp.config.schema import Config
from tfmq_exp.fingerprints import weights_fingerprint
from tfmq_exp.eval.sampling import GenerationParts, generate, sampling_timesteps
from tfmq_exp.store import ArtifactStore

CONDITIONING_PREFIX = "conditioning/"

CALIBRATION_KIND = "calibration"
CALIBRATION_FORMAT = 1
# Calibration noise uses seed sets far above the evaluation ones (``eval.seed_set`` is a small index), so the
# calibration trajectories never share their initial noise with evaluated samples.
CALIBRATION_SEED_SET_OFFSET = 1_000_000
_MODEL_FIELDS = ("name", "sample_size", "in_channels", "prediction_type", "num_train_timesteps", "beta_schedule",
                 "beta_start", "beta_end")


@dataclass
class CalibrationData:
    """Inputs the full-precision UNet received during one sampling pass.

    Attributes:
        x: ``[S, N, C, H, W]``: ``x_t`` fed to the UNet at each of the ``S`` sampling steps (sampling order,
            step 0 is the noisiest) for each of the ``N`` trajectories.
        timesteps: the ``S`` timesteps ``t`` of the steps, in sampling order (the sampler's finite set).
        conditioning: the UNet's conditioning keyword arguments per row, flat (``[N, ...]`` tensors, the same
            at every step; see :mod:`tfmq_exp.conditioning`); empty for unconditional models. Under
            classifier-free guidance a trajectory is two rows, ``[unconditional; conditional]``, as the UNet saw.
    """

    x: Tensor
    timesteps: list[int]
    conditioning: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.dim() != 5:
            raise ValueError(f"x must be [S, N, C, H, W], got shape {tuple(self.x.shape)}")
        if len(self.timesteps) != self.x.shape[0]:
            raise ValueError(f"{len(self.timesteps)} timesteps for {self.x.shape[0]} recorded steps")
        if len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError(f"timesteps must be distinct, got {self.timesteps}")
        for name, tensor in self.conditioning.items():
            if tensor.shape[0] != self.num_samples:
                raise ValueError(f"conditioning {name!r} has {tensor.shape[0]} rows for {self.num_samples} samples")

    @property
    def num_steps(self) -> int:
        """``S``, the number of sampling steps."""
        return self.x.shape[0]

    @property
    def num_samples(self) -> int:
        """``N``, the number of recorded trajectories."""
        return self.x.shape[1]


def calibration_seed_set(calib_seed: int) -> int:
    """The noise seed set of the calibration trajectories (disjoint from the evaluation seed sets)."""
    return CALIBRATION_SEED_SET_OFFSET + calib_seed


def calibration_payload(weights_id: str, config: Config, conditions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that determines the calibration data (its store key).

    Args:
        weights_id: :func:`~tfmq_exp.fingerprints.weights_fingerprint` of the full-precision UNet.
        config: the run's config (model, sampler and ``calib.num_samples`` / ``calib.seed`` are used).
        conditions: what the family's conditions add (:func:`~tfmq_exp.eval.families.conditioning_payload`:
            prompts' hash, label rule, guidance, the other components' weights); ``None`` for pixel models.

    Returns:
        A JSON-serialisable description.
    """
    payload = {
        "format": CALIBRATION_FORMAT,
        "weights": weights_id,
        "model": {name: getattr(config.model, name) for name in _MODEL_FIELDS},
        "sampler": asdict(config.sampler),
        "num_samples": config.calib.num_samples,
        "seed": config.calib.seed,
    }
    if conditions:
        payload["conditions"] = conditions
    return payload


def _capture(
    unet_fp: nn.Module, config: Config, parts: GenerationParts | None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    timesteps = sampling_timesteps(config.sampler, config.model)
    with quiet_lightning():
        batch = generate(
            unet_fp,
            config.sampler,
            config.model,
            num_samples=config.calib.num_samples,
            batch_size=min(config.eval.batch_size, config.calib.num_samples),
            seed_set=calibration_seed_set(config.calib.seed),
            record_trajectory=True,
            device=config.runtime.device,
            devices=config.runtime.devices,
            progress=config.runtime.progress,
            parts=parts,
        )
    assert batch.trajectory is not None
    if batch.trajectory.shape[0] != len(timesteps):
        raise RuntimeError(f"sampler recorded {batch.trajectory.shape[0]} steps, expected {len(timesteps)}")
    tensors = {"x": batch.trajectory.float(), "timesteps": torch.tensor(timesteps, dtype=torch.long)}
    tensors.update({CONDITIONING_PREFIX + name: value for name, value in batch.conditioning.items()})
    return tensors, {"timesteps": timesteps, "num_samples": config.calib.num_samples}


def load_or_capture(
    unet_fp: nn.Module,
    config: Config,
    store: ArtifactStore,
    parts: GenerationParts | None = None,
    conditions: dict[str, Any] | None = None,
) -> tuple[CalibrationData, bool]:
    """Return the calibration data of this model / sampler / calibration setting, capturing it on a miss.

    One full-precision sampling pass (:func:`~tfmq_exp.eval.sampling.generate` with ``record_trajectory``)
    over ``calib.num_samples`` trajectories drawn from seed set :func:`calibration_seed_set`. The store keys
    the entry by :func:`calibration_payload`; a hit is checksum-verified, a corrupt entry is rebuilt (with a
    warning from the store).

    Args:
        unet_fp: the full-precision UNet (not modified).
        config: the run's config; ``runtime.device`` / ``runtime.progress`` and ``eval.batch_size`` only
            affect how the pass runs, not its result.
        store: the shared artifact store.
        parts / conditions: the family's calibration parts (:func:`~tfmq_exp.eval.families.generation_parts`
            with purpose ``calib``) and their key (:func:`~tfmq_exp.eval.families.conditioning_payload`).

    Returns:
        ``(data, cache_hit)``.
    """
    payload = calibration_payload(weights_fingerprint(unet_fp), config, conditions)
    tensors, info, hit = store.get_or_build(CALIBRATION_KIND, payload, lambda: _capture(unet_fp, config, parts))
    timesteps = [int(t) for t in tensors["timesteps"].tolist()]
    if timesteps != [int(t) for t in info["timesteps"]]:
        raise RuntimeError(f"calibration entry is inconsistent: timesteps {timesteps} vs {info['timesteps']}")
    conditioning = {
        name[len(CONDITIONING_PREFIX):]: value for name, value in tensors.items() if name.startswith(CONDITIONING_PREFIX)
    }
    return CalibrationData(x=tensors["x"], timesteps=timesteps, conditioning=conditioning), hit
