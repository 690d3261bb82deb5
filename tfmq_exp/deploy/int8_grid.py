"""Mapping our quantization grids onto the grids of the x86 int8 kernels, and observers that carry them.

oneDNN's quantized conv / linear take weights as int8, symmetric per output channel (zero point 0) and
activations as uint8, affine per tensor (codes in [0, 255]). Weight codes span [-128, 127] on CPUs with VNNI
or AMX. Without VNNI (e.g. AVX2-only CPUs) oneDNN multiplies u8 x s8 pairs with ``vpmaddubsw``, whose int16
sums saturate (255 * 127 * 2 > 32767): the weight codes are then kept in [-64, 63] (255 * 64 * 2 fits),
instead of reducing the activations to 7 bits as PyTorch's ``reduce_range`` does, so that 8-bit activation
grids stay exact. Our parameters (:class:`LayerQParams`) use an unsigned b-bit grid ``s * (q - z)``; this
module picks int8 / uint8 parameters that contain that grid:

- Weights: the grid points are ``s_c * (q - z_c)`` with ``q - z_c`` in ``[-z_c, 2^b - 1 - z_c]``. With the
  largest integer ``k_c >= 1`` such that ``k_c * (q - z_c)`` stays in ``[-(M + 1), M]`` (``M`` = 127 or 63),
  the int8 scale ``s_c / k_c`` represents every grid point exactly (int8 code ``k_c * (q - z_c)``). That
  holds for weights up to 7 bits (6 without VNNI) and for the symmetric ``z_c = 2^(b-1)`` case one bit more.
  Otherwise no such ``k_c`` exists; the int8 scale is then ``max(|lo|, |hi|) / M`` of the dequantized range
  and the weights are re-rounded (error at most half an int8 step).
- Activations: for ``b <= 8`` bits the uint8 parameters ``(s / k, z * k)`` with ``k = floor(255 / (2^b - 1))``
  cover the same range and contain every grid point; for 8 bits they are ``(s, z)`` themselves. A b < 8 grid
  is therefore deployed with finer (8-bit) steps. More than 8 activation bits cannot run on uint8 kernels.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torchao.quantization.pt2e import ObserverBase

from tfmq_exp.deploy.qparams import LayerQParams

INT8_CODE_MAX = 127
INT8_CODE_MAX_WITHOUT_VNNI = 63
UINT8_MAX = 255


def default_weight_code_max() -> int:
    """Largest int8 weight code safe on this CPU: 127 with VNNI / AMX, 63 without (int16 saturation)."""
    has_vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return INT8_CODE_MAX if (has_vnni or has_amx) else INT8_CODE_MAX_WITHOUT_VNNI


def int8_weight_scale(params: LayerQParams, code_max: int = INT8_CODE_MAX) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 scale per output channel that contains the weight grid of ``params``.

    Args:
        params: the layer's parameters.
        code_max: int8 codes are kept in ``[-(code_max + 1), code_max]``.

    Returns:
        ``(scale [C_out] float32, exact [C_out] bool)``: ``exact`` marks channels whose grid points are all
        representable (otherwise weights are re-rounded to ``scale``).
    """
    scale = params.weight_scale.double()
    below = params.weight_zero_point.double()  # codes below zero: q - z >= -z
    above = params.weight_qmax - below  # codes above zero: q - z <= 2^b - 1 - z
    infinity = torch.full_like(scale, float("inf"))
    k_below = torch.where(below > 0, torch.floor((code_max + 1) / below.clamp(min=1)), infinity)
    k_above = torch.where(above > 0, torch.floor(code_max / above.clamp(min=1)), infinity)
    k = torch.minimum(k_below, k_above)
    exact = k >= 1
    fallback = scale * torch.maximum(below, above) / code_max
    int8_scale = torch.where(exact, scale / k.clamp(min=1, max=2**16), fallback)
    return int8_scale.float(), exact


def int8_grid_weight(weight: torch.Tensor, params: LayerQParams, code_max: int = INT8_CODE_MAX) -> torch.Tensor:
    """The weight an int8 kernel multiplies: ``weight`` rounded onto the int8 scale of :func:`int8_weight_scale`.

    For an on-grid weight (``fake_quantize_weight``) of an ``exact`` channel this returns it unchanged (up to
    float rounding); otherwise it is the re-rounded weight the kernel uses."""
    scale, _exact = int8_weight_scale(params, code_max)
    scale = scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return torch.clamp(torch.round(weight / scale), -(code_max + 1), code_max) * scale


def uint8_act_params(scale: float, zero_point: int, bits: int) -> Tuple[float, int]:
    """uint8 per-tensor ``(scale, zero_point)`` containing the ``bits``-bit activation grid ``(scale, zero_point)``."""
    if bits > 8:
        raise ValueError(
            f"a_bits={bits}: the int8 kernels take uint8 activations; activations above 8 bits cannot be lowered"
        )
    k = UINT8_MAX // (2**bits - 1)
    return scale / k, zero_point * k


class KnownQParamsObserver(ObserverBase):
    """An observer whose quantization parameters are given, not observed.

    Replaces a PT2E observer after ``prepare_pt2e``: it keeps the template observer's dtype, scheme and code
    range (what ``convert_pt2e`` reads) and returns the given scale / zero point from ``calculate_qparams``.
    No calibration forward is needed.
    """

    def __init__(
        self,
        template: ObserverBase,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        quant_range: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__(dtype=template.dtype, is_dynamic=False)
        self.qscheme = template.qscheme
        self.quant_min, self.quant_max = quant_range or (template.quant_min, template.quant_max)
        self.ch_axis = getattr(template, "ch_axis", None)
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).reshape(-1).clone())
        self.register_buffer("zero_point", torch.as_tensor(zero_point, dtype=torch.int64).reshape(-1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, qscheme={self.qscheme}, channels={self.scale.numel()}"


def weight_observer(template: ObserverBase, params: LayerQParams, code_max: int) -> KnownQParamsObserver:
    """Observer for a weight: int8 symmetric per output channel (zero point 0), codes within ``code_max``."""
    scale, _exact = int8_weight_scale(params, code_max)
    zero_point = torch.zeros_like(scale, dtype=torch.int64)
    return KnownQParamsObserver(template, scale, zero_point, quant_range=(-(code_max + 1), code_max))


def act_observer(template: ObserverBase, scale: float, zero_point: int, bits: int) -> KnownQParamsObserver:
    """Observer for a layer input: uint8 affine per tensor."""
    uint8_scale, uint8_zero_point = uint8_act_params(scale, zero_point, bits)
    return KnownQParamsObserver(template, torch.tensor([uint8_scale]), torch.tensor([uint8_zero_point]))
