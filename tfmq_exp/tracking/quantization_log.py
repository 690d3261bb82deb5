"""W&B records of how the quantized model was built: per-unit reconstruction evidence and the selection map.

- ``reconstruction/units``: one row per AdaRound unit (``loss_nearest``, ``loss_soft``, ``loss_hard``,
  ``undecided_fraction``, ``hard_soft_ratio``, ``converged``); ``reconstruction/converged`` and the worst unit's
  undecided share and hard / soft ratio as scalars (DESIGN 1.3: no reconstruction is called converged without them).
- ``act_reconstruction/units``: one row per unit of Q-Diffusion's activation pass (``loss_init``, ``loss_final``,
  ``plateau_ratio``).
- ``selection/choice``: one row per temporal feature (and timestep where the selection is per timestep) with the
  option chosen and the temporal-feature errors of both options behind it (DESIGN 1.6).
"""

from __future__ import annotations

from typing import Any

from tfmq_exp.stage_results import QuantizationResult, TimeEmbeddingSelection
from tfmq_exp.tracking.wandb_run import TrackingRun

RECON_COLUMNS = ("kind", "iters", "loss_nearest", "loss_soft", "loss_hard", "undecided_fraction", "hard_soft_ratio",
                 "converged", "resumed")
ACT_COLUMNS = ("kind", "iters", "loss_init", "loss_final", "plateau_ratio", "resumed")


def _rows(units: dict[str, dict[str, Any]], columns: tuple[str, ...]) -> list[list[Any]]:
    return [[name, *(entry.get(column) for column in columns)] for name, entry in units.items()]


def log_quantization(result: QuantizationResult, tracking: TrackingRun) -> None:
    """Log the reconstruction, activation-pass and selection reports of a quantized model's construction."""
    units = result.reconstruction.units if result.reconstruction is not None else {}
    if units:
        tracking.table("reconstruction/units", ["unit", *RECON_COLUMNS], _rows(units, RECON_COLUMNS))
        values = {
            "reconstruction/converged": all(entry["converged"] for entry in units.values()),
            "reconstruction/undecided_fraction_max": max(entry["undecided_fraction"] for entry in units.values()),
            "reconstruction/hard_soft_ratio_max": max(entry["hard_soft_ratio"] for entry in units.values()),
        }
        tracking.log(values)
        tracking.summary(values)
    act_units = result.act_reconstruction.units if result.act_reconstruction is not None else {}
    if act_units:
        tracking.table("act_reconstruction/units", ["unit", *ACT_COLUMNS], _rows(act_units, ACT_COLUMNS))
    selection = result.maintenance.selection
    if isinstance(selection, TimeEmbeddingSelection):  # one choice for the whole time embedding
        errors = selection.errors
        tracking.table("selection/choice", ["scope", "option", "tib_rel_mse", "cache_rel_mse"],
                       [[selection.SCOPE, selection.choice, errors["tib"]["rel_mse"], errors["cache"]["rel_mse"]]])
        tracking.summary({"selection/time_embedding_cached": selection.choice == "cache"})
    elif selection is not None:
        rows = []
        for feature, choice in selection.choice.items():
            per_t = choice if isinstance(choice, dict) else {"all": choice}
            for timestep, option in per_t.items():
                rows.append([feature, timestep, option, selection.errors[feature]["tib"][selection.score],
                             selection.errors[feature]["cache"][selection.score]])
        tracking.table("selection/choice", ["feature", "timestep", "option", "tib_error", "cache_error"], rows)
        tracking.summary({"selection/cached_features": sum(1 for row in rows if row[2] == "cache")})
