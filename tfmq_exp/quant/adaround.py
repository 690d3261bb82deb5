"""Per-channel weight quantizer with learned rounding (AdaRound, Nagel et al. 2020; DESIGN 1.1).

Rounding offsets are learned through the rectified sigmoid ``h(a) = clamp(sigmoid(a) (zeta - gamma) + gamma,
0, 1)`` with ``zeta = 1.1``, ``gamma = -0.1``:

- soft (while optimising): ``q = clamp(floor(w / s) + h(a) + z, 0, 2^b - 1)``;
- hard (afterwards):       ``q = clamp(floor(w / s) + 1[a >= 0] + z, 0, 2^b - 1)``;
- ``x_hat = s (q - z)`` in both cases; ``a`` starts where ``h(a) = frac(w / s)``, so the initial soft
  weight equals the float weight (inside the clamp range).

The regulariser ``lambda * sum(1 - |2 h(a) - 1|^beta)`` pushes ``h(a)`` to 0 or 1; :class:`RoundingSchedule`
keeps it off for the first ``warmup`` fraction of iterations and decays ``beta`` linearly from
``beta_start`` to ``beta_end`` over the rest. Freezing stores the hard-rounded integer codes and drops ``a``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from tfmq_exp.quant.quantizer import UniformAffineQuantizer, fake_quantize
from tfmq_exp.quant.weight_range import DEFAULT_LP, DEFAULT_SHRINK_STEPS, weight_range

ZETA = 1.1
GAMMA = -0.1


def rectified_sigmoid(alpha: torch.Tensor) -> torch.Tensor:
    """``h(a) = clamp(sigmoid(a) * (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def alpha_for_fraction(fraction: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rectified_sigmoid` on ``[0, 1)``: ``a`` with ``h(a) = fraction``.

    Args:
        fraction: values in ``[0, 1)`` (the fractional part of ``w / s``).

    Returns:
        ``a = -log((zeta - gamma) / (fraction - gamma) - 1)``.
    """
    return -torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1.0)


@dataclass
class RoundingSchedule:
    """When the rounding regulariser is on and its ``beta`` at each iteration (DESIGN 1.1).

    Attributes:
        iters: total optimisation iterations (steps ``0 .. iters - 1``).
        warmup: fraction of ``iters`` with the regulariser off.
        beta_start: ``beta`` at the first regularised step.
        beta_end: ``beta`` at the last step (``iters - 1``).
    """

    iters: int
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise ValueError(f"iters={self.iters} must be >= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup={self.warmup} is out of range: allowed [0, 1)")
        if self.beta_start <= 0 or self.beta_end <= 0:
            raise ValueError(f"beta_start={self.beta_start} and beta_end={self.beta_end} must be > 0")

    @classmethod
    def from_recon_config(cls, recon: "object", iters: Optional[int] = None) -> "RoundingSchedule":
        """Build from a ``ReconConfig`` (``iters``, ``warmup``, ``beta_start``, ``beta_end``).

        Args:
            recon: a :class:`tfmq_exp.config.schema.ReconConfig`.
            iters: overrides ``recon.iters`` when given.

        Returns:
            The schedule.
        """
        return cls(iters or recon.iters, recon.warmup, recon.beta_start, recon.beta_end)

    @property
    def warmup_iters(self) -> int:
        """Number of initial steps with the regulariser off."""
        return int(self.warmup * self.iters)

    def is_active(self, step: int) -> bool:
        """Whether the regulariser applies at ``step``."""
        return step >= self.warmup_iters

    def beta(self, step: int) -> float:
        """``beta`` at ``step``: ``beta_start`` until warmup ends, linear to ``beta_end`` at ``iters - 1``."""
        span = max(1, self.iters - 1 - self.warmup_iters)
        progress = min(1.0, max(0.0, (step - self.warmup_iters) / span))
        return self.beta_start + (self.beta_end - self.beta_start) * progress

    def loss(self, step: int, quantizers: Iterable["WeightQuantizer"], reg_lambda: float) -> torch.Tensor:
        """``lambda * sum_layers sum(1 - |2 h(a) - 1|^beta)`` at ``step`` (0 during warmup).

        Args:
            step: the current iteration.
            quantizers: weight quantizers with AdaRound enabled.
            reg_lambda: ``lambda`` (0.01 in the published runs).

        Returns:
            A 0-d tensor.
        """
        quantizers = list(quantizers)
        device = quantizers[0].scale.device if quantizers else None
        if not self.is_active(step):
            return torch.zeros((), device=device)
        beta = self.beta(step)
        total = torch.zeros((), device=device)
        for quantizer in quantizers:
            total = total + quantizer.regularizer(beta)
        return reg_lambda * total


class WeightQuantizer(UniformAffineQuantizer):
    """Per-output-channel weight quantizer: round to nearest, AdaRound (soft / hard), or frozen codes.

    Args:
        bits: weight bit-width.
        num_channels: output channels (axis 0 of the weight).

    Attributes:
        alpha: the AdaRound variables ``a`` (an ``nn.Parameter`` shaped like the weight) or ``None``.
        weight_codes: after :meth:`freeze`, the integer codes ``q`` of the hard-rounded weight, else ``None``.
        soft: use ``h(a)`` (optimisation) instead of ``1[a >= 0]``; ignored without AdaRound.
    """

    def __init__(self, bits: int, num_channels: int) -> None:
        super().__init__(bits, channel_axis=0, num_channels=num_channels)
        self.register_parameter("alpha", None)
        self.register_buffer("weight_codes", None)
        self.soft = False

    @property
    def rounding(self) -> str:
        """``nearest``, ``adaround`` or ``frozen``."""
        if self.weight_codes is not None:
            return "frozen"
        return "adaround" if self.alpha is not None else "nearest"

    @torch.no_grad()
    def init_range(
        self, weight: torch.Tensor, method: str = "shrink", p: float = DEFAULT_LP, steps: int = DEFAULT_SHRINK_STEPS
    ) -> None:
        """Set the per-channel range from the weight (``minmax`` or the ``shrink`` Lp search).

        Args:
            weight: the float weight ``[out_channels, ...]``.
            method: ``minmax`` or ``shrink``.
            p: Lp exponent of the shrink search.
            steps: shrink candidates.
        """
        w_min, w_max = weight_range(weight, self.bits, method=method, p=p, steps=steps)
        self.set_range(w_min, w_max)

    def _scaled(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.scale_for(weight)

    @torch.no_grad()
    def enable_adaround(self, weight: torch.Tensor, soft: bool = True) -> nn.Parameter:
        """Create ``a`` with ``h(a) = frac(w / s)`` (AdaRound initialisation).

        Args:
            weight: the float weight the quantizer will receive.
            soft: start in soft-rounding mode (for optimisation).

        Returns:
            The new parameter ``alpha``, to hand to the optimiser.
        """
        self.check_calibrated()
        if self.weight_codes is not None:
            raise RuntimeError("weights are frozen; call reset_rounding() before enabling AdaRound again")
        scaled = self._scaled(weight.detach())
        fraction = scaled - torch.floor(scaled)
        self.alpha = nn.Parameter(alpha_for_fraction(fraction).to(weight.dtype))
        self.soft = soft
        return self.alpha

    def allocate_adaround(self, shape: torch.Size) -> None:
        """Create a placeholder ``alpha`` of ``shape`` (to load a saved AdaRound state into)."""
        self.alpha = nn.Parameter(torch.zeros(shape, device=self.scale.device))
        self.soft = False

    def allocate_frozen(self, shape: torch.Size) -> None:
        """Create a placeholder ``weight_codes`` buffer of ``shape`` (to load frozen codes into)."""
        self.alpha = None
        self.weight_codes = torch.zeros(shape, dtype=self._codes_dtype(), device=self.scale.device)

    def _codes_dtype(self) -> torch.dtype:
        return torch.uint8 if self.bits <= 8 else torch.int32

    def reset_rounding(self) -> None:
        """Back to round-to-nearest: drop ``alpha`` and any frozen codes."""
        self.alpha = None
        self.weight_codes = None
        self.soft = False

    def soft_rounding_offset(self) -> torch.Tensor:
        """``h(a)`` (requires AdaRound)."""
        if self.alpha is None:
            raise RuntimeError("AdaRound is not enabled on this weight quantizer")
        return rectified_sigmoid(self.alpha)

    def regularizer(self, beta: float) -> torch.Tensor:
        """``sum(1 - |2 h(a) - 1|^beta)`` (without ``lambda``)."""
        h = self.soft_rounding_offset()
        return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()

    def _codes(self, weight: torch.Tensor, soft: bool) -> torch.Tensor:
        floor = torch.floor(self._scaled(weight))
        offset = self.soft_rounding_offset() if soft else (self.alpha >= 0).to(weight.dtype)
        return torch.clamp(floor + offset + self.zero_point_for(weight), 0, self.levels)

    @torch.no_grad()
    def freeze(self, weight: torch.Tensor) -> None:
        """Store the hard-rounded codes ``q`` of ``weight`` and drop ``alpha``.

        Afterwards the quantizer returns ``s (q - z)`` regardless of the weight it receives (which must
        keep its shape). With AdaRound off, the codes are those of round-to-nearest.

        Args:
            weight: the float weight.
        """
        self.check_calibrated()
        if self.alpha is not None:
            codes = self._codes(weight, soft=False)
        else:
            codes = torch.clamp(torch.round(self._scaled(weight)) + self.zero_point_for(weight), 0, self.levels)
        self.alpha = None
        self.soft = False
        self.weight_codes = codes.to(self._codes_dtype())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Quantized weight ``s (q - z)`` by the current rounding mode.

        Args:
            weight: the float weight ``[out_channels, ...]``.

        Returns:
            The fake-quantized weight, same shape and dtype.
        """
        self.check_calibrated()
        if self.weight_codes is not None:
            if self.weight_codes.shape != weight.shape:
                raise ValueError(f"frozen codes {tuple(self.weight_codes.shape)} vs weight {tuple(weight.shape)}")
            zero_point = self.zero_point_for(weight)
            return ((self.weight_codes.to(weight.dtype) - zero_point) * self.scale_for(weight)).to(weight.dtype)
        if self.alpha is None:
            return fake_quantize(weight, self.scale_for(weight), self.zero_point_for(weight), self.bits)
        codes = self._codes(weight, soft=self.soft)
        return (codes - self.zero_point_for(weight)) * self.scale_for(weight)

    def extra_repr(self) -> str:
        soft = ", soft" if self.soft and self.alpha is not None else ""
        return f"{super().extra_repr()}, rounding={self.rounding}{soft}"
