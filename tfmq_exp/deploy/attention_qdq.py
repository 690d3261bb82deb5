"""Attention matmuls with our calibrated operand parameters, as torch fake-quant ops (no runtime dependency).

The fake-quant models quantize both products of every attention, ``q k^T`` and ``softmax(q k^T) v``, on their
four operands (:class:`~tfmq_exp.quant.attention.QuantAttnProcessor`, as Q-Diffusion's ``quant_act_attn``).
:func:`qdq_attention` gives a float model's attention modules that same processor with each quantizer replaced by
``torch.fake_quantize_per_tensor_affine`` with the calibrated parameters on the uint8 grid that holds them
(:func:`~tfmq_exp.deploy.int8_grid.uint8_act_params`). ``torch.onnx.export`` maps each such op to a
QuantizeLinear / DequantizeLinear pair (:mod:`tfmq_exp.deploy.onnx_export`: the runtimes then run the matmuls in
int8), and the plain-torch reference (:mod:`tfmq_exp.deploy.reference`) computes the same numbers.
"""

from __future__ import annotations

from typing import Collection, Dict

import torch
from torch import nn

from tfmq_exp.deploy.channel_first_attention import ChannelFirstAttnProcessor
from tfmq_exp.deploy.from_quantized import ATTENTION_OPERANDS, OperandQParams
from tfmq_exp.deploy.int8_grid import uint8_act_params
from tfmq_exp.quant.attention import ATTN_QUANTIZER_NAMES, QuantAttnProcessor
from tfmq_exp.quant.spec import AttnQuantSpec

UINT8_RANGE = (0, 255)


class ActQDQ(nn.Module):
    """``x -> fake_quantize_per_tensor_affine(x)`` on the uint8 grid holding a calibrated ``bits``-bit one."""

    def __init__(self, params: OperandQParams) -> None:
        super().__init__()
        self.scale, self.zero_point = uint8_act_params(*params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, *UINT8_RANGE)


def qdq_attention(
    model: nn.Module, attention: Dict[str, Dict[str, OperandQParams]], channel_first: Collection[str] = ()
) -> None:
    """Give each listed attention module (in place) the core's explicit-matmul processor with torch QDQ ops on its
    operands.

    The processor is the fake-quant model's own :class:`~tfmq_exp.quant.attention.QuantAttnProcessor` (so the
    graph computes what the evaluated model computes), its four quantizers replaced by ``fake_quantize`` ops with
    the calibrated parameters or by identities for the operands that stay in float.

    Args:
        model: a float UNet (modified).
        attention: attention module name -> operand -> ``(scale, zero_point, bits)``
            (:func:`~tfmq_exp.deploy.from_quantized.attention_inputs`).
        channel_first: attentions whose projections are 1x1 convolutions
            (:func:`~tfmq_exp.deploy.channel_first_attention.to_channel_first`): they get the same computation in
            channel-first layout (:class:`~tfmq_exp.deploy.channel_first_attention.ChannelFirstAttnProcessor`),
            with float operands where ``attention`` has none.
    """
    for name in dict.fromkeys([*attention, *channel_first]):
        operands = attention.get(name, {})
        processor_class = ChannelFirstAttnProcessor if name in channel_first else QuantAttnProcessor
        processor = processor_class(AttnQuantSpec(a_bits=None))
        for operand, attribute in zip(ATTENTION_OPERANDS, ATTN_QUANTIZER_NAMES):
            setattr(processor, attribute, ActQDQ(operands[operand]) if operand in operands else nn.Identity())
        model.get_submodule(name).set_processor(processor)
