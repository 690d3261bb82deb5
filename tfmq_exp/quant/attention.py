"""Attention processor that quantizes q, k, the softmax probabilities and v (DESIGN 1.1).

:class:`QuantAttnProcessor` computes what diffusers' ``AttnProcessor2_0`` (and ``AttnProcessor``) compute
for an ``Attention`` module, but with an explicit ``softmax(q k^T * scale + mask) v`` so that each operand
can be fake-quantized: q and k before ``q k^T``, the probabilities (unsigned, range ``[0, max]``) and v
before the second product. It is an ``nn.Module``, so ``attn.set_processor(processor)`` registers its
quantizers as ``<attention>.processor.*`` in the module tree and the state dict. No diffusers code is
edited: only the processor slot that diffusers provides is used.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.spec import AttnQuantSpec

ATTN_QUANTIZER_NAMES = ("query_quantizer", "key_quantizer", "softmax_quantizer", "value_quantizer")


class QuantAttnProcessor(nn.Module):
    """Explicit-matmul attention with activation quantizers on q, k, softmax(q k^T) and v.

    Args:
        spec: bits and range estimator of the four quantizers (``a_bits=None`` gives plain attention).
    """

    def __init__(self, spec: AttnQuantSpec) -> None:
        super().__init__()
        self.spec = spec
        bits, method, momentum = spec.a_bits, spec.act_range, spec.ema_momentum
        self.query_quantizer = ActQuantizer(bits, range_method=method, momentum=momentum)
        self.key_quantizer = ActQuantizer(bits, range_method=method, momentum=momentum)
        self.softmax_quantizer = ActQuantizer(
            spec.effective_softmax_bits, unsigned=True, range_method="minmax", momentum=momentum
        )
        self.value_quantizer = ActQuantizer(bits, range_method=method, momentum=momentum)

    @classmethod
    def for_attention(cls, attention: nn.Module, spec: AttnQuantSpec) -> "QuantAttnProcessor":
        """A processor for ``attention``, on the device of its parameters (then ``attention.set_processor``).

        Args:
            attention: the diffusers ``Attention`` module.
            spec: quantization settings.

        Returns:
            The processor (not yet installed).
        """
        parameter = next(attention.parameters(), None)
        processor = cls(spec)
        return processor if parameter is None else processor.to(parameter.device)

    def act_quantizers(self) -> List[Tuple[str, ActQuantizer]]:
        """``(attribute name, quantizer)`` for q, k, the probabilities and v."""
        return [(name, getattr(self, name)) for name in ATTN_QUANTIZER_NAMES]

    def set_quant_state(self, act: bool) -> None:
        """Switch the four activation quantizers on or off."""
        for _, quantizer in self.act_quantizers():
            quantizer.enabled = act

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # ``Attention.forward`` forwards only the keyword arguments named in the processor's ``__call__``
        # signature; ``nn.Module.__call__`` is ``(*args, **kwargs)``, which would drop ``temb``. This explicit
        # signature keeps it, and delegating to ``nn.Module.__call__`` keeps hooks working.
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    @staticmethod
    def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if mask.dtype == torch.bool:  # True = attend, as in scaled_dot_product_attention
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
        return mask

    def forward(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attention output, same as diffusers' processors (up to float rounding) with quantization off.

        Args:
            attn: the diffusers ``Attention`` module that owns this processor.
            hidden_states: ``[B, L, C]`` or ``[B, C, H, W]`` queries' source.
            encoder_hidden_states: ``[B, L_kv, C_kv]`` keys' / values' source (cross attention) or ``None``.
            attention_mask: additive (float) or boolean mask, as accepted by ``Attention``.
            temb: time embedding for ``spatial_norm`` (VAE decoders).

        Returns:
            The attention block output, same shape as ``hidden_states``.
        """
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)  # [B, HW, C]

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # [B * h, L or 1, L_kv] -> [B, h, L or 1, L_kv]
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # [B, L, h*d]
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)  # [B, L_kv, h*d]
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, L, d]
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, L_kv, d]
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, L_kv, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        dtype = query.dtype
        query, key, value = self.query_quantizer(query), self.key_quantizer(key), self.value_quantizer(value)
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale  # [B, h, L, L_kv]
        if attention_mask is not None:
            scores = scores + self._additive_mask(attention_mask, scores.dtype)
        if attn.upcast_softmax:
            scores = scores.float()
        probs = self.softmax_quantizer(scores.softmax(dim=-1)).to(value.dtype)
        hidden_states = torch.matmul(probs, value)  # [B, h, L, d]
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def extra_repr(self) -> str:
        return f"a_bits={self.spec.a_bits}, softmax_bits={self.spec.effective_softmax_bits}, act_range={self.spec.act_range}"
