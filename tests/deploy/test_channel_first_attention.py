"""Spatial self-attention in channel-first form (1x1-convolution projections) computes the token form's output."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from tests.deploy.helpers import digits_unet, sqnr_db
from tfmq_exp.deploy.attention_qdq import ActQDQ
from tfmq_exp.deploy.channel_first_attention import (
    ChannelFirstAttnProcessor,
    _supported,
    spatial_self_attentions,
    to_channel_first,
)
from tfmq_exp.quant.attention import ATTN_QUANTIZER_NAMES, QuantAttnProcessor
from tfmq_exp.quant.spec import AttnQuantSpec


def _unet2d_attention(heads: int) -> Attention:
    """An attention built as UNet2DModel's attention blocks build theirs (group norm, residual, 4-D input)."""
    torch.manual_seed(0)
    return Attention(16, heads=heads, dim_head=16 // heads, rescale_output_factor=2.0, eps=1e-6, norm_num_groups=4,
                     residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True).eval()


def _with_quantizers(processor: QuantAttnProcessor, operands: dict) -> QuantAttnProcessor:
    for attribute in ATTN_QUANTIZER_NAMES:
        setattr(processor, attribute, operands.get(attribute, torch.nn.Identity()))
    return processor


@pytest.mark.parametrize("heads", [1, 2])
def test_channel_first_form_computes_diffusers_attention(heads: int) -> None:
    """Float operands: the same output as diffusers' own processor on the token form."""
    attention = _unet2d_attention(heads)
    attention.set_processor(AttnProcessor2_0())
    x = torch.randn(3, 16, 4, 5, generator=torch.Generator().manual_seed(1))
    channel_first = copy.deepcopy(attention)
    to_channel_first(channel_first)
    channel_first.set_processor(ChannelFirstAttnProcessor(AttnQuantSpec(a_bits=None)))
    assert isinstance(channel_first.to_q, torch.nn.Conv2d) and isinstance(channel_first.to_out[0], torch.nn.Conv2d)
    with torch.no_grad():
        torch.testing.assert_close(channel_first(x), attention(x), atol=1e-5, rtol=1e-5)


def test_channel_first_form_quantizes_the_same_operands() -> None:
    """Quantized operands (per tensor, layout-free): the token form's fake-quant output up to rounding ties."""
    attention = _unet2d_attention(heads=2)
    x = torch.randn(3, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    operands = {"query_quantizer": ActQDQ((0.02, 128, 8)), "key_quantizer": ActQDQ((0.02, 100, 8)),
                "softmax_quantizer": ActQDQ((1 / 255, 0, 8)), "value_quantizer": ActQDQ((0.02, 120, 8))}
    attention.set_processor(_with_quantizers(QuantAttnProcessor(AttnQuantSpec(a_bits=None)), operands))
    channel_first = copy.deepcopy(attention)
    to_channel_first(channel_first)
    channel_first.set_processor(_with_quantizers(ChannelFirstAttnProcessor(AttnQuantSpec(a_bits=None)), operands))
    with torch.no_grad():
        reference, output = attention(x), channel_first(x)
        float_attention = copy.deepcopy(attention)
        float_attention.set_processor(AttnProcessor2_0())
        unquantized = float_attention(x)
    assert not torch.allclose(reference, unquantized, atol=1e-4)  # the quantizers act
    assert sqnr_db(output, reference) >= 60.0


def test_channel_first_processor_rejects_token_inputs() -> None:
    attention = _unet2d_attention(heads=1)
    to_channel_first(attention)
    attention.set_processor(ChannelFirstAttnProcessor(AttnQuantSpec(a_bits=None)))
    with pytest.raises(ValueError, match="spatial self-attention only"):
        attention(torch.randn(2, 9, 16))


def test_spatial_self_attentions_are_unet2d_blocks_not_transformer_attentions() -> None:
    """UNet2DModel's attention blocks get a [B, C, H, W] map; a transformer block's self- and cross-attentions get
    tokens (and encoder states), so they keep the token form."""
    unet = digits_unet()
    sample, timesteps = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    found = spatial_self_attentions(unet, lambda: unet(sample, timesteps))
    assert found == [name for name, module in unet.named_modules() if isinstance(module, Attention)] and found
    conditional = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).eval()  # fmt: skip
    with torch.no_grad():
        found = spatial_self_attentions(
            conditional, lambda: conditional(torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.randn(1, 5, 32)))
    assert found == []
    assert any(isinstance(module, Attention) for module in conditional.modules())


@pytest.mark.parametrize("options", [
    {"added_kv_proj_dim": 8},  # added key / value projections (no add_q_proj attribute without context_pre_only)
    {"added_kv_proj_dim": 8, "only_cross_attention": True},
    {"spatial_norm_dim": 4, "query_dim": 32},  # VAE decoders' spatial norm (its group norm has 32 groups)
    {"qk_norm": "layer_norm"},
    {"pre_only": True},  # no to_out
])  # fmt: skip
def test_unsupported_attentions_keep_the_token_form(options: dict) -> None:
    """Attentions the channel-first processor would not compute alike are refused, and their mere presence does not
    break the search (diffusers leaves some attributes undefined in these configurations)."""
    kwargs = {"query_dim": 16, "norm_num_groups": 4, **options}
    attention = Attention(heads=2, dim_head=8, residual_connection=True, bias=True, _from_deprecated_attn_block=True,
                          **kwargs).eval()
    assert _supported(_unet2d_attention(heads=2)) and not _supported(attention)
    model = torch.nn.ModuleDict({"attention": attention})
    assert spatial_self_attentions(model, lambda: None) == []


def test_attentions_also_called_on_tokens_keep_the_token_form() -> None:
    """One attention module called once on a map and once on tokens stays in the token form."""
    model = torch.nn.ModuleDict({"attention": _unet2d_attention(heads=1)})
    map_call = lambda: model["attention"](torch.randn(1, 16, 2, 2))  # noqa: E731
    assert spatial_self_attentions(model, map_call) == ["attention"]
    with torch.no_grad():
        both = spatial_self_attentions(model, lambda: (map_call(), model["attention"](torch.randn(1, 4, 16))))
    assert both == []
