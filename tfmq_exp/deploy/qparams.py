"""Quantization parameters handed to deployment, one :class:`LayerQParams` per Conv2d / Linear module name.

This is the deployment's own input format (the fake-quant modules of ``tfmq_exp.quant`` are adapted to it).
Both weights and activations use the unsigned affine grid of DESIGN 1.1:

    q = clamp(round(x / s) + z, 0, 2^b - 1),    x_hat = s * (q - z)

Weights: per output channel ``s_c, z_c`` (a symmetric quantizer is the case ``z_c = 2^(b-1)``).
Activations: per tensor, on the input of the layer. FSC (DESIGN 1.4) may give a layer per-timestep activation
parameters ``(s_t, z_t)``; they are kept in ``act_per_timestep``.

:func:`minmax_layer_qparams` calibrates such parameters from min/max statistics (used by the speed benchmark
and the tests, which calibrate on noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from tfmq_exp.quant.api import matches_patterns
from tfmq_exp.quant.quantizer import MIN_SCALE, range_to_qparams
from tfmq_exp.quant.weight_range import minmax_range

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


def select_layers(
    model: nn.Module, quant_patterns: Sequence[str] = ("*",), fp_patterns: Sequence[str] = ()
) -> List[str]:
    """Names of Conv2d / Linear modules the core's selection rule picks (:func:`~tfmq_exp.quant.api.matches_patterns`)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, QUANTIZABLE_TYPES) and matches_patterns(name, quant_patterns, fp_patterns)
    ]


def _weight_params(weight: torch.Tensor, bits: int, symmetric: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    w_min, w_max = minmax_range(weight)  # per output channel, as the core's weight quantizers
    if symmetric:  # the benchmark's option (the core's quantizers are asymmetric): the range made symmetric
        # z = 2^(b-1): codes minus z span [-(2^(b-1) - 1), 2^(b-1) - 1] around zero.
        half = 2 ** (bits - 1)
        scale = torch.clamp(torch.maximum(-w_min, w_max) / (half - 1), min=MIN_SCALE)
        return scale, torch.full_like(scale, half)
    return range_to_qparams(w_min, w_max, bits)


@torch.no_grad()
def minmax_layer_qparams(
    model: nn.Module,
    example_batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    w_bits: int = 8,
    a_bits: int = 8,
    quant_patterns: Sequence[str] = ("*",),
    fp_patterns: Sequence[str] = (),
    weight_symmetric: bool = False,
) -> Dict[str, LayerQParams]:
    """Min/max calibration of every selected Conv2d / Linear layer.

    Weights: per-channel min/max (asymmetric) or max-abs (``weight_symmetric``). Activations: the min and max
    of each layer's input over all ``example_batches`` (forward pre-hooks, removed afterwards).

    Args:
        model: a denoiser called as ``model(sample, timestep)`` (e.g. a diffusers ``UNet2DModel``).
        example_batches: ``(sample, timestep)`` pairs; pass float timesteps.
        w_bits / a_bits: bit-widths of the returned parameters.
        quant_patterns / fp_patterns: layer selection, as in ``ModelConfig`` (fnmatch on module names).
        weight_symmetric: symmetric weights (``z_c = 2^(w_bits-1)``) instead of asymmetric ones.

    Returns:
        ``{module name: LayerQParams}`` for every selected layer.
    """
    names = select_layers(model, quant_patterns, fp_patterns)
    modules = dict(model.named_modules())
    lows: Dict[str, torch.Tensor] = {}
    highs: Dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float()
            lows[name] = torch.minimum(lows[name], x.min()) if name in lows else x.min()
            highs[name] = torch.maximum(highs[name], x.max()) if name in highs else x.max()

        return hook

    handles = [modules[name].register_forward_pre_hook(make_hook(name)) for name in names]
    try:
        for sample, timestep in example_batches:
            model(sample, timestep)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in lows]
    if missing:
        raise RuntimeError(f"these layers never ran during calibration: {missing}")
    result: Dict[str, LayerQParams] = {}
    for name in names:
        weight_scale, weight_zero_point = _weight_params(modules[name].weight, w_bits, weight_symmetric)
        act_scale, act_zero_point = range_to_qparams(lows[name], highs[name], a_bits)
        result[name] = LayerQParams(
            weight_scale=weight_scale,
            weight_zero_point=weight_zero_point,
            w_bits=w_bits,
            act_scale=float(act_scale),
            act_zero_point=int(act_zero_point),
            a_bits=a_bits,
        )
    return result
