"""Uniform affine (asymmetric) fake quantization with a straight-through round (DESIGN 1.1).

``q = clamp(round(x / s) + z, 0, 2^b - 1)`` and ``x_hat = s * (q - z)``. The range ``[x_min, x_max]`` is
widened to contain 0, so zero (padding, ReLU/SiLU floors) is exactly representable; then
``s = (x_max - x_min) / (2^b - 1)`` and ``z = round(-x_min / s)``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

MIN_SCALE = 1e-8
BITS_RANGE = (2, 16)


def validate_bits(bits: int, bounds: Tuple[int, int] = BITS_RANGE, what: str = "bits") -> int:
    """Check a bit-width.

    Args:
        bits: the bit-width to check.
        bounds: inclusive ``(low, high)``.
        what: name used in the error message.

    Returns:
        ``bits`` unchanged.

    Raises:
        ValueError: when ``bits`` is not an int within ``bounds``.
    """
    low, high = bounds
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"{what}={bits!r} is out of range: allowed integers {low}..{high}")
    return bits


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass (straight-through)."""
    return x + (torch.round(x) - x).detach()


def range_to_qparams(x_min: torch.Tensor, x_max: torch.Tensor, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric scale and zero point for a range (elementwise over per-channel ranges).

    Args:
        x_min: lower end(s) of the range.
        x_max: upper end(s), same shape as ``x_min``.
        bits: bit-width ``b``.

    Returns:
        ``(scale, zero_point)``: ``s = (max(x_max, 0) - min(x_min, 0)) / (2^b - 1)`` (at least
        ``MIN_SCALE``) and ``z = clamp(round(-min(x_min, 0) / s), 0, 2^b - 1)`` as a float tensor holding
        integers.
    """
    levels = 2**bits - 1
    x_min = torch.clamp(x_min.float(), max=0.0)
    x_max = torch.clamp(x_max.float(), min=0.0)
    scale = torch.clamp((x_max - x_min) / levels, min=MIN_SCALE)
    zero_point = torch.clamp(torch.round(-x_min / scale), 0, levels)
    return scale, zero_point


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """``s * (clamp(round(x / s) + z, 0, 2^b - 1) - z)`` with a straight-through round.

    Args:
        x: input.
        scale: step size ``s``, broadcastable to ``x``.
        zero_point: zero point ``z``, broadcastable to ``x``.
        bits: bit-width ``b``.

    Returns:
        The fake-quantized tensor, same shape as ``x``. Gradients pass ``round`` unchanged and are zero
        where the clamp is active.
    """
    q = torch.clamp(round_ste(x / scale) + zero_point, 0, 2**bits - 1)
    return (q - zero_point) * scale


def broadcast_to_axis(values: torch.Tensor, ndim: int, axis: Optional[int]) -> torch.Tensor:
    """View per-channel ``values`` ``[C]`` so they broadcast along ``axis`` of an ``ndim``-d tensor.

    Args:
        values: a 0-d tensor (per-tensor) or a 1-d ``[C]`` tensor (per-channel).
        ndim: rank of the tensor to broadcast against.
        axis: channel axis (negative allowed), ``None`` for per-tensor values.

    Returns:
        ``values`` unchanged when per-tensor, else ``values`` viewed as ``[1, .., C, .., 1]``.
    """
    if axis is None:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.view(shape)


class UniformAffineQuantizer(nn.Module):
    """Asymmetric uniform fake quantizer, per tensor or per channel.

    Buffers (all in ``state_dict``): ``scale`` and ``zero_point`` (0-d, or ``[num_channels]``), and
    ``calibrated`` (0-d bool), set by :meth:`set_range`. Calling the quantizer before that raises.

    Args:
        bits: bit-width ``b`` (2..16).
        channel_axis: axis holding the channels for per-channel parameters; ``None`` for per tensor.
        num_channels: number of channels; required with ``channel_axis``.
    """

    def __init__(self, bits: int, channel_axis: Optional[int] = None, num_channels: Optional[int] = None) -> None:
        super().__init__()
        self.bits = validate_bits(bits)
        if (channel_axis is None) != (num_channels is None):
            raise ValueError("channel_axis and num_channels must be given together (or both left out)")
        if num_channels is not None and num_channels < 1:
            raise ValueError(f"num_channels={num_channels} must be >= 1")
        self.channel_axis = channel_axis
        shape = () if num_channels is None else (num_channels,)
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape))
        self.register_buffer("calibrated", torch.tensor(False))
        self._calibrated = False  # host-side mirror of ``calibrated``: no device sync per forward

    def _mark_calibrated(self, value: bool) -> None:
        self.calibrated.fill_(value)
        self._calibrated = value

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(self.calibrated)

    @property
    def levels(self) -> int:
        """Largest integer code, ``2^b - 1``."""
        return 2**self.bits - 1

    @property
    def is_calibrated(self) -> bool:
        """Whether :meth:`set_range` (or a loaded state dict) has provided the parameters."""
        return self._calibrated

    @torch.no_grad()
    def set_range(self, x_min: torch.Tensor, x_max: torch.Tensor) -> None:
        """Set ``scale`` / ``zero_point`` from a range and mark the quantizer calibrated.

        Args:
            x_min: lower end(s): 0-d (or a float) per tensor, ``[num_channels]`` per channel.
            x_max: upper end(s), same shape.
        """
        x_min = torch.as_tensor(x_min, dtype=torch.float32, device=self.scale.device)
        x_max = torch.as_tensor(x_max, dtype=torch.float32, device=self.scale.device)
        if x_min.shape != self.scale.shape or x_max.shape != self.scale.shape:
            raise ValueError(
                f"range shapes {tuple(x_min.shape)} / {tuple(x_max.shape)} do not match the quantizer's "
                f"parameter shape {tuple(self.scale.shape)}"
            )
        if bool((x_min > x_max).any()):
            raise ValueError("x_min must not exceed x_max")
        scale, zero_point = range_to_qparams(x_min, x_max, self.bits)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self._mark_calibrated(True)

    def check_calibrated(self) -> None:
        """Raise ``RuntimeError`` unless the quantizer has parameters."""
        if not self.is_calibrated:
            raise RuntimeError(
                f"{type(self).__name__}({self.extra_repr()}) is not calibrated: call set_range() (or load a "
                "calibrated state dict) before quantizing"
            )

    def scale_for(self, x: torch.Tensor) -> torch.Tensor:
        """``scale`` shaped to broadcast against ``x``."""
        return broadcast_to_axis(self.scale, x.ndim, self.channel_axis)

    def zero_point_for(self, x: torch.Tensor) -> torch.Tensor:
        """``zero_point`` shaped to broadcast against ``x``."""
        return broadcast_to_axis(self.zero_point, x.ndim, self.channel_axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (``x_hat = s * (q - z)``, straight-through round)."""
        self.check_calibrated()
        return fake_quantize(x, self.scale_for(x), self.zero_point_for(x), self.bits)

    def extra_repr(self) -> str:
        granularity = "per_tensor" if self.channel_axis is None else f"per_channel(axis={self.channel_axis})"
        return f"bits={self.bits}, {granularity}"
