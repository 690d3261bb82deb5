"""Quantization parameters handed to deployment, one :class:`LayerQParams` per Conv2d / Linear module name.

This is the deployment's own input format (the fake-quant modules of ``tfmq_exp.quant`` are adapted to it).
Both weights and activations use the unsigned affine grid of DESIGN 1.1:

    q = clamp(round(x / s) + z, 0, 2^b - 1),    x_hat = s * (q - z)

Weights: per output channel ``s_c, z_c`` (a symmetric quantizer is the case ``z_c = 2^(b-1)``).
Activations: per tensor, on the input of the layer. FSC (DESIGN 1.4) may give a layer per-timestep activation
parameters ``(s_t, z_t)``; they are kept in ``act_per_timestep``.

They come from the core's quantizers: a calibrated run's (:mod:`tfmq_exp.deploy.from_quantized`) or, for a model
without one, the core's quantizers calibrated on noise (:mod:`tfmq_exp.deploy.noise_calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn


QUANTIZABLE_TYPES = (nn.Conv2d, nn.Linear)
W_BITS_RANGE = (2, 8)
A_BITS_RANGE = (2, 16)


@dataclass
class LayerQParams:
    """Quantization parameters of one Conv2d / Linear layer.

    Attributes:
        weight_scale: ``s_c`` per output channel, float ``[C_out]``, > 0.
        weight_zero_point: ``z_c`` per output channel, integer ``[C_out]`` in ``[0, 2^w_bits - 1]``.
        w_bits: weight bits, 2..8.
        act_scale: ``s`` of the layer's input activation (per tensor), > 0.
        act_zero_point: ``z`` of the input activation, in ``[0, 2^a_bits - 1]``.
        a_bits: activation bits, 2..16.
        act_per_timestep: optional FSC parameters, ``{timestep: (s_t, z_t)}``; ``None`` for static ones.
    """

    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    w_bits: int
    act_scale: float
    act_zero_point: int
    a_bits: int
    act_per_timestep: Optional[Dict[int, Tuple[float, int]]] = None

    def __post_init__(self) -> None:
        if not W_BITS_RANGE[0] <= self.w_bits <= W_BITS_RANGE[1]:
            raise ValueError(f"w_bits={self.w_bits} is out of range {W_BITS_RANGE}")
        if not A_BITS_RANGE[0] <= self.a_bits <= A_BITS_RANGE[1]:
            raise ValueError(f"a_bits={self.a_bits} is out of range {A_BITS_RANGE}")
        self.weight_scale = torch.as_tensor(self.weight_scale, dtype=torch.float32).detach().flatten()
        zero_point = torch.as_tensor(self.weight_zero_point).detach().flatten()
        if zero_point.is_floating_point() and not torch.equal(zero_point, zero_point.round()):
            raise ValueError("weight_zero_point must hold integers")
        self.weight_zero_point = zero_point.to(torch.int32)
        if self.weight_scale.shape != self.weight_zero_point.shape:
            raise ValueError(
                f"weight_scale {tuple(self.weight_scale.shape)} and weight_zero_point "
                f"{tuple(self.weight_zero_point.shape)} must both be [C_out]"
            )
        if not bool(torch.all(self.weight_scale > 0)) or not bool(torch.all(torch.isfinite(self.weight_scale))):
            raise ValueError("weight_scale must be finite and > 0")
        if int(self.weight_zero_point.min()) < 0 or int(self.weight_zero_point.max()) > self.weight_qmax:
            raise ValueError(f"weight_zero_point must lie in [0, {self.weight_qmax}]")
        self.act_scale, self.act_zero_point = _checked_act(float(self.act_scale), self.act_zero_point, self.act_qmax)
        if self.act_per_timestep is not None:
            self.act_per_timestep = {
                int(t): _checked_act(float(s), z, self.act_qmax) for t, (s, z) in self.act_per_timestep.items()
            }

    @property
    def weight_qmax(self) -> int:
        """Largest weight code ``2^w_bits - 1``."""
        return 2**self.w_bits - 1

    @property
    def act_qmax(self) -> int:
        """Largest activation code ``2^a_bits - 1``."""
        return 2**self.a_bits - 1

    @property
    def is_per_timestep(self) -> bool:
        """Whether the activation parameters depend on the timestep (FSC)."""
        return bool(self.act_per_timestep)


def _checked_act(scale: float, zero_point: int, qmax: int) -> Tuple[float, int]:
    if not scale > 0 or scale == float("inf"):
        raise ValueError(f"act_scale={scale} must be finite and > 0")
    if int(zero_point) != zero_point or not 0 <= int(zero_point) <= qmax:
        raise ValueError(f"act_zero_point={zero_point} must be an integer in [0, {qmax}]")
    return scale, int(zero_point)


def _channel_view(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reshape ``[C_out]`` to broadcast over a weight ``[C_out, ...]``."""
    return values.reshape(-1, *([1] * (weight.dim() - 1))).to(weight.device)


def quantize_weight_codes(weight: torch.Tensor, params: LayerQParams) -> torch.Tensor:
    """Integer codes ``q = clamp(round(w / s_c) + z_c, 0, 2^b - 1)`` of a weight, as int32 (same shape)."""
    if weight.shape[0] != params.weight_scale.numel():
        raise ValueError(f"weight has {weight.shape[0]} output channels, params have {params.weight_scale.numel()}")
    scale = _channel_view(params.weight_scale, weight)
    zero_point = _channel_view(params.weight_zero_point, weight)
    codes = torch.round(weight.detach().float() / scale) + zero_point
    return codes.clamp(0, params.weight_qmax).to(torch.int32)


def dequantize_weight_codes(codes: torch.Tensor, params: LayerQParams) -> torch.Tensor:
    """``w_hat = s_c * (q - z_c)`` in float32."""
    scale = _channel_view(params.weight_scale, codes)
    zero_point = _channel_view(params.weight_zero_point, codes)
    return scale * (codes.to(torch.float32) - zero_point.to(torch.float32))


def fake_quantize_weight(weight: torch.Tensor, params: LayerQParams) -> torch.Tensor:
    """Weight on its quantization grid, ``w_hat = s_c * (clamp(round(w / s_c) + z_c) - z_c)``.

    Idempotent: a weight already on the grid (e.g. rounded by AdaRound) comes back unchanged.
    """
    return dequantize_weight_codes(quantize_weight_codes(weight, params), params)


def fake_quantize_activation(x: torch.Tensor, scale: float, zero_point: int, bits: int) -> torch.Tensor:
    """Per-tensor affine fake quantization ``s * (clamp(round(x / s) + z, 0, 2^b - 1) - z)``.

    ``x / s`` is computed as ``x * (1 / s)``, as PT2E's ``quantize_per_tensor`` does, so that values near a
    rounding tie round the same way in the reference and in the lowered graph.
    """
    codes = torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, 0, 2**bits - 1)
    return (codes - zero_point) * scale
