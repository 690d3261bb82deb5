"""QuantAttnProcessor: stock numerics with quantization off, quantizers in the module tree when on."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from tests.quant.helpers import digits_unet, sqnr_db, tiny_condition_unet
from tfmq_exp.quant.api import observing_activations, set_quant_state
from tfmq_exp.quant.attention import QuantAttnProcessor
from tfmq_exp.quant.spec import AttnQuantSpec

TOLERANCE = 1e-5


def install(model: torch.nn.Module, a_bits: int | None) -> int:
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(QuantAttnProcessor.for_attention(module, AttnQuantSpec(a_bits)))
            count += 1
    return count


def max_relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).abs().max() / reference.abs().max())


@pytest.mark.parametrize("a_bits", [None, 8], ids=["a_none", "a8_disabled"])
def test_matches_stock_on_unet2d(a_bits: int | None) -> None:
    stock = digits_unet()
    quant = copy.deepcopy(stock)
    assert install(quant, a_bits) == 4
    set_quant_state(quant, weight=False, act=False)
    sample, timestep = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 999])
    with torch.no_grad():
        assert max_relative_error(stock(sample, timestep).sample, quant(sample, timestep).sample) < TOLERANCE


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "encoder_mask"])
def test_matches_stock_on_unet2d_condition(with_mask: bool) -> None:
    stock = tiny_condition_unet()
    quant = copy.deepcopy(stock)
    assert install(quant, None) == 8  # self- and cross-attention of four transformer blocks
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    kwargs = {"encoder_attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])} if with_mask else {}
    with torch.no_grad():
        expected = stock(sample, 50, encoder_hidden_states=context, **kwargs).sample
        actual = quant(sample, 50, encoder_hidden_states=context, **kwargs).sample
    assert max_relative_error(expected, actual) < TOLERANCE


CHANNELS = 32  # SpatialNorm's GroupNorm has 32 groups
ATTENTION_VARIANTS = {
    "group_norm_residual_rescale": dict(
        heads=2, dim_head=8, norm_num_groups=4, residual_connection=True, rescale_output_factor=2.0, bias=True
    ),
    "cross_layer_norm": dict(cross_attention_dim=12, heads=2, dim_head=8, cross_attention_norm="layer_norm"),
    "cross_group_norm": dict(
        cross_attention_dim=12,
        heads=2,
        dim_head=8,
        cross_attention_norm="group_norm",
        cross_attention_norm_num_groups=4,
    ),
    "spatial_norm": dict(heads=1, dim_head=16, spatial_norm_dim=3, residual_connection=True),
    "no_qk_scale_upcast": dict(heads=4, dim_head=4, scale_qk=False, upcast_attention=True, upcast_softmax=True),
    "qk_layer_norm": dict(heads=2, dim_head=8, qk_norm="layer_norm"),
}


@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
@pytest.mark.parametrize("stock_class", [AttnProcessor2_0, AttnProcessor], ids=["sdpa", "classic"])
def test_matches_stock_attention_variants(variant: str, stock_class: type) -> None:
    options = ATTENTION_VARIANTS[variant]
    if stock_class is AttnProcessor and "qk_norm" in options:
        pytest.skip("the classic processor ignores qk_norm")
    if stock_class is AttnProcessor2_0 and options.get("scale_qk") is False:
        pytest.skip("AttnProcessor2_0 ignores attn.scale; diffusers picks AttnProcessor when scale_qk=False")
    attention = Attention(CHANNELS, **options, processor=stock_class()).eval()
    hidden = torch.randn(2, CHANNELS, 4, 4)  # 4-d input: reshaped to [B, HW, C] and back
    kwargs = {}
    if "cross_attention_dim" in options:
        kwargs["encoder_hidden_states"] = torch.randn(2, 6, 12)
        kwargs["attention_mask"] = torch.where(torch.rand(2, 1, 6) > 0.3, 0.0, -10000.0)
    if "spatial_norm_dim" in options:
        kwargs["temb"] = torch.randn(2, 3, 2, 2)
    with torch.no_grad():
        expected = attention(hidden, **kwargs)
        attention.set_processor(QuantAttnProcessor(AttnQuantSpec(None)))
        actual = attention(hidden, **kwargs)
    assert max_relative_error(expected, actual) < TOLERANCE


def test_quantizers_registered_and_effective() -> None:
    unet = digits_unet()
    stock = copy.deepcopy(unet)
    install(unet, 8)
    keys = unet.state_dict().keys()
    for name in ("query_quantizer", "key_quantizer", "softmax_quantizer", "value_quantizer"):
        assert f"mid_block.attentions.0.processor.{name}.scale" in keys
    processor = unet.mid_block.attentions[0].processor
    assert processor.softmax_quantizer.unsigned and not processor.query_quantizer.unsigned
    sample, timestep = torch.randn(4, 1, 8, 8), torch.tensor([100] * 4)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="not calibrated"):
            unet(sample, timestep)
        with observing_activations(unet):
            unet(sample, timestep)
        expected, actual = stock(sample, timestep).sample, unet(sample, timestep).sample
    assert processor.softmax_quantizer.zero_point == 0
    assert not torch.equal(expected, actual)  # the quantizers act
    assert sqnr_db(expected, actual) > 25
