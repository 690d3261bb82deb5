"""Which calibration steps feed reconstruction, and the reconstruction sample set drawn from them (DESIGN 1.2).

Strategies (``method.calib_steps``), over step indices ``0 .. S-1`` in sampling order (0 is the noisiest step):

- ``all``: every step.
- ``uniform`` (Q-Diffusion): every ``k``-th step, ``0, k, 2k, ...`` with ``k = calib.uniform_every``.
- ``normal`` (PTQ4DM's normally distributed time-step calibration): the step position ``p = i / (S - 1)``
  follows a skew normal with location ``calib.normal_mean``, scale ``calib.normal_std`` and shape
  ``calib.normal_skew``. To be deterministic, its ``M = calib.recon_samples`` draws are the quantiles
  ``F^{-1}((j + 1/2) / M)``, ``j = 0 .. M-1``, clipped to ``[0, 1]`` and rounded to a step; a step is selected
  when at least one draw lands on it, and receives as many reconstruction samples as draws.

For ``all`` / ``uniform`` the ``M`` reconstruction samples are spread evenly over the selected steps (the
remainder goes to seeded-random steps). Within a step, trajectories are drawn without replacement (cycling
through fresh permutations when a step needs more samples than there are trajectories).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from scipy.stats import skewnorm
from torch import Tensor

from tfmq_exp.calib.trajectories import CalibrationData
from tfmq_exp.config.schema import CALIB_STEP_SELECTIONS, CalibConfig


def normal_step_draws(num_steps: int, calib: CalibConfig, count: int) -> list[int]:
    """``count`` deterministic draws of a step index from PTQ4DM's skew normal over the step position.

    Args:
        num_steps: ``S``.
        calib: ``normal_mean`` / ``normal_std`` / ``normal_skew`` (location, scale, shape on ``[0, 1]``).
        count: number of draws.

    Returns:
        Step indices in ``[0, S - 1]``, sorted ascending.
    """
    if calib.normal_std <= 0:
        raise ValueError(f"calib.normal_std={calib.normal_std} must be > 0")
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    quantiles = (np.arange(count) + 0.5) / count
    positions = skewnorm.ppf(quantiles, calib.normal_skew, loc=calib.normal_mean, scale=calib.normal_std)
    positions = np.clip(positions, 0.0, 1.0)
    return sorted(int(i) for i in np.rint(positions * (num_steps - 1)))


def _every_step(num_steps: int, calib: CalibConfig) -> list[int]:
    return list(range(num_steps))


def _every_kth_step(num_steps: int, calib: CalibConfig) -> list[int]:
    return list(range(0, num_steps, calib.uniform_every))


def _normal_steps(num_steps: int, calib: CalibConfig) -> list[int]:
    return sorted(set(normal_step_draws(num_steps, calib, calib.recon_samples)))


@dataclass(frozen=True)
class StepSelection:
    """One ``method.calib_steps`` strategy.

    Attributes:
        steps: ``(S, calib) -> selected step indices``, distinct and ascending.
        draws: ``(S, calib, M) -> M step indices with repetition`` when the strategy weights its steps (each step
            then gets as many reconstruction samples as draws); ``None`` spreads the ``M`` samples evenly.
    """

    steps: Callable[[int, CalibConfig], list[int]]
    draws: Optional[Callable[[int, CalibConfig, int], list[int]]] = None


STEP_SELECTIONS: dict[str, StepSelection] = {  # names: tfmq_exp.config.schema.CALIB_STEP_SELECTIONS
    "all": StepSelection(_every_step),
    "uniform": StepSelection(_every_kth_step),
    "normal": StepSelection(_normal_steps, draws=normal_step_draws),
}
assert tuple(STEP_SELECTIONS) == CALIB_STEP_SELECTIONS, "schema.CALIB_STEP_SELECTIONS and STEP_SELECTIONS must agree"
STRATEGIES = CALIB_STEP_SELECTIONS


def _strategy(name: str, num_steps: int) -> StepSelection:
    if name not in STEP_SELECTIONS:
        raise ValueError(f"calib_steps={name!r} is not valid; choose one of: {', '.join(STEP_SELECTIONS)}")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    return STEP_SELECTIONS[name]


def select_steps(strategy: str, num_steps: int, calib: CalibConfig) -> list[int]:
    """The step indices whose ``x_t`` feed reconstruction.

    Args:
        strategy: ``all``, ``uniform`` or ``normal`` (see the module docstring).
        num_steps: ``S``, the number of sampling steps.
        calib: the calibration settings.

    Returns:
        Distinct step indices, ascending (sampling order).
    """
    return _strategy(strategy, num_steps).steps(num_steps, calib)


def step_counts(strategy: str, num_steps: int, calib: CalibConfig, seed: int) -> dict[int, int]:
    """How many of the ``calib.recon_samples`` reconstruction samples each selected step contributes.

    Args:
        strategy: the step selection strategy.
        num_steps: ``S``.
        calib: the calibration settings.
        seed: decides which steps get the remainder for ``all`` / ``uniform``.

    Returns:
        step index -> count (every count >= 1 for ``normal``; counts sum to ``calib.recon_samples``).
    """
    selection = _strategy(strategy, num_steps)
    total = calib.recon_samples
    if total < 1:
        raise ValueError(f"calib.recon_samples={total} must be >= 1")
    if selection.draws is not None:
        counts: dict[int, int] = {}
        for step in selection.draws(num_steps, calib, total):
            counts[step] = counts.get(step, 0) + 1
        return counts
    steps = selection.steps(num_steps, calib)
    base, remainder = divmod(total, len(steps))
    generator = torch.Generator().manual_seed(seed)
    extra = set(torch.randperm(len(steps), generator=generator)[:remainder].tolist())
    counts = {step: base + (1 if position in extra else 0) for position, step in enumerate(steps)}
    return {step: count for step, count in counts.items() if count > 0}


def reconstruction_indices(
    strategy: str, num_steps: int, num_samples: int, calib: CalibConfig, seed: int
) -> tuple[Tensor, Tensor]:
    """Which ``(step, trajectory)`` pairs of the calibration data form the reconstruction set.

    Args:
        strategy: the step selection strategy.
        num_steps: ``S``.
        num_samples: ``N``, the recorded trajectories.
        calib: the calibration settings (``recon_samples`` is ``M``).
        seed: seed of the trajectory choice (and of the remainder for ``all`` / ``uniform``).

    Returns:
        ``(steps [M], samples [M])`` int64, grouped by step in sampling order.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    counts = step_counts(strategy, num_steps, calib, seed)
    steps, samples = [], []
    for step in sorted(counts):
        count = counts[step]
        rounds = -(-count // num_samples)  # ceil: fresh permutations when a step needs more than N samples
        chosen = torch.cat([torch.randperm(num_samples, generator=generator) for _ in range(rounds)])[:count]
        steps.append(torch.full((count,), step, dtype=torch.long))
        samples.append(chosen)
    return torch.cat(steps), torch.cat(samples)


def reconstruction_set(data: CalibrationData, strategy: str, calib: CalibConfig, seed: int) -> tuple[Tensor, Tensor]:
    """The reconstruction samples: ``x_t`` and ``t`` of ``calib.recon_samples`` pairs from the selected steps.

    Args:
        data: the calibration data.
        strategy: ``all``, ``uniform`` or ``normal``.
        calib: the calibration settings.
        seed: makes the draw deterministic.

    Returns:
        ``(x [M, C, H, W], t [M])``, grouped by step in sampling order.
    """
    steps, samples = reconstruction_indices(strategy, data.num_steps, data.num_samples, calib, seed)
    timesteps = torch.tensor(data.timesteps, dtype=torch.long)
    return data.x[steps, samples], timesteps[steps]
