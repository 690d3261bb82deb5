"""Temporal diagnostics the paper uses (DESIGN 1.7), on full-precision vs quantized features.

- Temporal-feature error per feature i and timestep t: MSE, relative MSE and cosine similarity of
  ``e_hat_i(t)`` against ``e_i(t)``.
- Temporal-information mismatch: for each (i, t), the timestep ``t*`` whose full-precision feature is
  nearest (L2) to the quantized ``e_hat_i(t)``; a mismatch is ``t* != t``.
- Trajectory deviation: cosine similarity of ``x_t`` between the full-precision and the quantized sampler
  started from the same noise, per step.

Every result is a plain dataclass whose ``to_summary()`` is JSON-serialisable (lists, floats, strings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from tfmq_exp.temporal.features import Number, TemporalFeatureSet

_TINY = torch.finfo(torch.float64).tiny


def _pairs(fp: TemporalFeatureSet, quant: TemporalFeatureSet) -> list[tuple[str, Tensor, Tensor]]:
    """(name, fp [T, C], quant [T, C]) in float64, after checking both sets describe the same things."""
    if fp.timesteps != quant.timesteps:
        raise ValueError(f"timesteps differ: full precision {fp.timesteps} vs quantized {quant.timesteps}")
    if set(fp.names) != set(quant.names):
        raise ValueError(f"features differ: {sorted(set(fp.names) ^ set(quant.names))}")
    pairs = []
    for name in fp.names:
        reference, quantized = fp[name].double(), quant[name].double().to(fp[name].device)
        if reference.shape != quantized.shape:
            raise ValueError(f"feature {name!r}: shape {tuple(reference.shape)} vs {tuple(quantized.shape)}")
        pairs.append((name, reference, quantized))
    return pairs


def _cosine_rows(reference: Tensor, quantized: Tensor) -> Tensor:
    """Row-wise cosine similarity; two all-zero rows count as identical (1)."""
    cosine = F.cosine_similarity(reference, quantized, dim=-1, eps=_TINY)
    both_zero = (reference.abs().amax(dim=-1) == 0) & (quantized.abs().amax(dim=-1) == 0)
    return torch.where(both_zero, torch.ones_like(cosine), cosine)


@dataclass
class TemporalFeatureErrors:
    """Per-feature, per-timestep error matrices ([F, T], float64, rows in ``feature_names`` order).

    ``rel_mse[i, t] = mse[i, t] / mean_c e_i(t)_c^2`` (0 where both are 0).
    """

    feature_names: list[str]
    timesteps: list[Number]
    mse: Tensor
    rel_mse: Tensor
    cosine: Tensor

    @property
    def mse_mean(self) -> float:
        return self.mse.mean().item()

    @property
    def rel_mse_mean(self) -> float:
        return self.rel_mse.mean().item()

    @property
    def cos_mean(self) -> float:
        return self.cosine.mean().item()

    @property
    def cos_min(self) -> float:
        return self.cosine.min().item()

    def to_summary(self) -> dict:
        return {
            "rel_mse_mean": self.rel_mse_mean,
            "mse_mean": self.mse_mean,
            "cos_mean": self.cos_mean,
            "cos_min": self.cos_min,
            "feature_names": list(self.feature_names),
            "timesteps": list(self.timesteps),
            "mse": self.mse.tolist(),
            "rel_mse": self.rel_mse.tolist(),
            "cosine": self.cosine.tolist(),
        }


@dataclass
class TemporalMismatch:
    """Nearest full-precision timestep of each quantized feature ([F, T] row indices into ``timesteps``)."""

    feature_names: list[str]
    timesteps: list[Number]
    nearest_index: Tensor

    @property
    def mismatch(self) -> Tensor:
        """Bool [F, T]: the nearest full-precision feature belongs to another timestep."""
        own = torch.arange(len(self.timesteps)).expand_as(self.nearest_index)
        return self.nearest_index != own

    @property
    def mismatch_rate(self) -> float:
        return self.mismatch.double().mean().item()

    def nearest_timesteps(self) -> list[list[Number]]:
        return [[self.timesteps[index] for index in row] for row in self.nearest_index.tolist()]

    def to_summary(self) -> dict:
        return {
            "mismatch_rate": self.mismatch_rate,
            "mismatch_rate_per_feature": dict(zip(self.feature_names, self.mismatch.double().mean(dim=1).tolist())),
            "feature_names": list(self.feature_names),
            "timesteps": list(self.timesteps),
            "nearest_timestep": self.nearest_timesteps(),
        }


@dataclass
class TemporalDiagnostics:
    """Errors and mismatch together; ``to_summary()`` merges both (scalars first)."""

    errors: TemporalFeatureErrors
    mismatch: TemporalMismatch

    def to_summary(self) -> dict:
        return {**self.errors.to_summary(), **self.mismatch.to_summary()}


def temporal_feature_errors(fp: TemporalFeatureSet, quant: TemporalFeatureSet) -> TemporalFeatureErrors:
    """MSE, relative MSE and cosine similarity of every quantized feature against full precision."""
    mse, rel_mse, cosine = [], [], []
    for _, reference, quantized in _pairs(fp, quant):
        error = (quantized - reference).pow(2).mean(dim=-1)  # [T]
        power = reference.pow(2).mean(dim=-1)
        mse.append(error)
        rel_mse.append(torch.where(error == 0, torch.zeros_like(error), error / power.clamp_min(_TINY)))
        cosine.append(_cosine_rows(reference, quantized))
    return TemporalFeatureErrors(
        fp.names, list(fp.timesteps), torch.stack(mse).cpu(), torch.stack(rel_mse).cpu(), torch.stack(cosine).cpu()
    )


def temporal_mismatch(fp: TemporalFeatureSet, quant: TemporalFeatureSet) -> TemporalMismatch:
    """For each feature and t, the timestep whose full-precision feature is nearest (L2) to ``e_hat_i(t)``.

    Ties with the own timestep are resolved in its favour, so identical features never count as mismatched.
    """
    nearest = []
    for _, reference, quantized in _pairs(fp, quant):
        # distance[t, s] = || e_hat_i(t) - e_i(s) ||_2, computed directly (no matmul shortcut) so ties are exact.
        distance = torch.cdist(quantized, reference, compute_mode="donot_use_mm_for_euclid_dist")  # [T, T]
        closest, best = distance.min(dim=1)
        own = torch.arange(distance.shape[0], device=distance.device)
        nearest.append(torch.where(distance.diagonal() <= closest, own, best))
    return TemporalMismatch(fp.names, list(fp.timesteps), torch.stack(nearest).cpu())


def diagnose_temporal_features(fp: TemporalFeatureSet, quant: TemporalFeatureSet) -> TemporalDiagnostics:
    """Both temporal diagnostics of DESIGN 1.7 for features over the same timesteps."""
    return TemporalDiagnostics(temporal_feature_errors(fp, quant), temporal_mismatch(fp, quant))


def trajectory_cosine(xs_fp: Sequence[Tensor], xs_q: Sequence[Tensor]) -> list[float]:
    """Per sampling step, the cosine similarity of flattened ``x_t`` per sample, averaged over the batch.

    Args:
        xs_fp: full-precision ``x_t`` per step, each [B, ...].
        xs_q: quantized ``x_t`` per step from the same noise, same shapes.
    """
    if len(xs_fp) != len(xs_q):
        raise ValueError(f"trajectories have {len(xs_fp)} and {len(xs_q)} steps")
    cosines = []
    for step, (reference, quantized) in enumerate(zip(xs_fp, xs_q)):
        if reference.shape != quantized.shape:
            raise ValueError(f"step {step}: shapes {tuple(reference.shape)} vs {tuple(quantized.shape)}")
        flat_reference = reference.detach().double().flatten(1)
        flat_quantized = quantized.detach().double().to(reference.device).flatten(1)
        cosines.append(_cosine_rows(flat_reference, flat_quantized).mean().item())
    return cosines
