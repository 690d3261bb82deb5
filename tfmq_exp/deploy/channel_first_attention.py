"""Spatial self-attention exported in channel-first form: its four projections as 1x1 convolutions.

Why: a UNet2DModel attention (DDPM CIFAR-10, the digits model) gets a ``[B, C, H, W]`` feature map, and the
processors transpose it to ``[B, HW, C]`` tokens for the ``Linear`` projections ``to_q``, ``to_k``, ``to_v`` and
``to_out.0``. In our QDQ export OpenVINO's CPU plugin runs those int8 ``MatMul`` nodes with its generic int8 GEMM
(``FullyConnectedQuantizedLegacy`` / ``jit_gemm_I8``): on the AVX2 EPYC, CIFAR-10 UNet at batch 8, the 24
projections took 74 ms, about 3.4 ms for 134 M multiply-adds each, while its u8 convolution kernel
(``jit_avx2_I8``) reaches about twice that rate (``experiments/results/deploy/avx2/profile_openvino_cifar10_b8.txt``).
A ``Linear`` on tokens is a 1x1 convolution on the map, so the exported copy computes each projection as a
``Conv2d`` with the same weights and keeps the map channel-first: k enters ``q k^T`` as ``[B, h, d, HW]`` (that is
``k^T``), the second product is computed transposed, ``(probs v)^T = v^T probs^T``, so v and the output stay
``[B, h, d, HW]`` and the output feeds ``to_out.0`` without a transpose; only q is transposed, before its quantizer
(on the digits UNet OpenVINO then keeps the attention matmuls in u8, as on the token form; with q's transpose inside the
product it ran them in f32). Measured there: 1x1 projections 1.6-1.7 ms each against 3.4 ms, the whole UNet
784 -> 752 ms, paired 0.952 (``experiments/deploy_profile.py --path openvino_attention_layout``).

Numerics: the same products as :class:`~tfmq_exp.quant.attention.QuantAttnProcessor` (the fake-quant model's
processor) in another layout: the per-tensor operand quantizers, the per-output-channel weight grid and the
group norm (over ``[B, C, HW]`` in both) do not depend on it; only float summation order differs. Nothing of
diffusers is edited: the export copy's attention modules get this processor through ``set_processor`` and their
projection submodules are replaced.

Applies to attentions called with a 4-D ``hidden_states`` and no ``encoder_hidden_states`` or mask
(:func:`spatial_self_attentions` records them in one forward) that have no spatial norm, no q / k norm and no added
key / value projections; any other attention keeps the token form.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from tfmq_exp.quant.attention import QuantAttnProcessor

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def _supported(attn: Attention) -> bool:
    """Whether the channel-first processor computes what ``attn``'s own processors compute (``getattr``: diffusers
    sets some of these attributes only in some configurations, e.g. ``add_q_proj`` with ``added_kv_proj_dim``)."""
    if any(getattr(attn, name, None) is not None
           for name in ("spatial_norm", "norm_q", "norm_k", "added_kv_proj_dim")):  # fmt: skip
        return False
    to_out = getattr(attn, "to_out", None)  # ``None`` for ``pre_only`` attentions
    projections = [getattr(attn, name, None) for name in ("to_q", "to_k", "to_v")]
    return (
        not getattr(attn, "only_cross_attention", False)
        and isinstance(to_out, nn.ModuleList)
        and len(to_out) == 2  # projection, dropout
        and all(isinstance(module, nn.Linear) for module in [*projections, to_out[0]])
    )


@torch.no_grad()
def spatial_self_attentions(model: nn.Module, run: Callable[[], object]) -> List[str]:
    """Names of the supported attention modules that ``run`` (a forward of ``model``) calls, every time, with a 4-D
    ``hidden_states`` and neither ``encoder_hidden_states`` nor a mask, in module order."""
    seen: set = set()
    other: set = set()  # called at least once in another way: keeps the token form
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, Attention) and _supported(module):
            def record(_module: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
                hidden = args[0] if args else kwargs.get("hidden_states")
                others = list(args[1:3]) + [kwargs.get("encoder_hidden_states"), kwargs.get("attention_mask")]
                spatial = hidden is not None and hidden.ndim == 4 and all(value is None for value in others)
                (seen if spatial else other).add(name)
            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [name for name, _ in model.named_modules() if name in seen - other]


def pointwise_conv(linear: nn.Linear) -> nn.Conv2d:
    """The 1x1 ``Conv2d`` computing ``linear`` on a channel-first map (same weights, same device and dtype)."""
    weight = linear.weight
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def to_channel_first(attn: Attention) -> None:
    """Replace ``attn``'s four projections by their 1x1 convolutions, in place (call before quantizing hooks or
    parametrizations are registered on them: those stay on the replaced ``Linear``)."""
    for name in PROJECTIONS:
        parent_name, _, child = name.rpartition(".")
        parent = attn.get_submodule(parent_name) if parent_name else attn
        setattr(parent, child, pointwise_conv(getattr(parent, child)))


class ChannelFirstAttnProcessor(QuantAttnProcessor):
    """:class:`~tfmq_exp.quant.attention.QuantAttnProcessor`'s computation on a ``[B, C, H, W]`` map whose
    projections are 1x1 convolutions (:func:`to_channel_first`); its four operand quantizers are used as they are.
    """

    def forward(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``to_out(softmax(q k^T * scale) v)`` (+ residual) / ``rescale_output_factor``, q / k / v from 1x1 convs.

        Raises:
            ValueError: the call is not a spatial self-attention (4-D input, no encoder states, no mask).
        """
        if hidden_states.ndim != 4 or encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("ChannelFirstAttnProcessor handles spatial self-attention only ([B, C, H, W], "
                             "no encoder_hidden_states, no attention_mask)")
        residual = hidden_states
        batch_size, _, height, width = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states)  # over [B, C, HW], as on the transposed tokens
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[1] // heads
        query_t, key_t, value_t = (x.reshape(batch_size, heads, head_dim, -1) for x in (query, key, value))
        dtype = query_t.dtype
        query = self.query_quantizer(query_t.transpose(-1, -2))  # [B, h, L, d]
        key_t, value_t = self.key_quantizer(key_t), self.value_quantizer(value_t)  # [B, h, d, L]
        if attn.upcast_attention:
            query, key_t = query.float(), key_t.float()
        scores = torch.matmul(query, key_t) * attn.scale  # [B, h, L, L]: q k^T
        if attn.upcast_softmax:
            scores = scores.float()
        probs = self.softmax_quantizer(scores.softmax(dim=-1)).to(value_t.dtype)
        hidden_states = torch.matmul(value_t, probs.transpose(-1, -2)).to(dtype)  # [B, h, d, L]: (probs v)^T
        hidden_states = hidden_states.reshape(batch_size, heads * head_dim, height, width)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # 1x1 projection, dropout
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
