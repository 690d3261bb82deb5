"""Cache-based maintenance in deployment: the temporal features as graph inputs, the TIB removed."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.deploy.helpers import calibrated, digits_unet, example_inputs, sqnr_db
from tfmq_exp.deploy.lower import layer_name_of, lower_to_int8
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.deploy.reference import FakeQuantReference
from tfmq_exp.deploy.temporal import FeatureInputUNet, fp_feature_table, tib_layout
from tfmq_exp.errors import CacheMismatchError
from tfmq_exp.temporal.feature_cache import CachedTemporalFeature
from tfmq_exp.temporal.features import TemporalFeatureSet

TIMESTEPS = list(range(999, 0, -50))  # DDIM-20 style: 999, 949, ..., 49


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return digits_unet()


@pytest.fixture(scope="module")
def cache(unet: torch.nn.Module) -> TemporalFeatureSet:
    return fp_feature_table(unet, TIMESTEPS)


def test_layout_names_every_projection(unet: torch.nn.Module) -> None:
    layout = tib_layout(unet)
    assert len(layout.projections) == 8
    assert layout.projections["mid_block.resnets.1"] == "mid_block.resnets.1.time_emb_proj"
    assert {"time_embedding.linear_1", "time_embedding.linear_2"} <= set(layout.layer_names)


def test_supplied_features_reproduce_the_tib(unet: torch.nn.Module, cache: TemporalFeatureSet) -> None:
    sample, timestep = example_inputs()
    wrapper = FeatureInputUNet(copy.deepcopy(unet))
    with torch.no_grad():
        assert torch.allclose(wrapper(sample, cache.rows(timestep)), unet(sample, timestep).sample, atol=1e-5)
    with pytest.raises(KeyError, match="missing"):
        wrapper(sample, {})


def test_cached_int8_graph_has_no_tib_and_matches_reference(unet: torch.nn.Module, cache: TemporalFeatureSet) -> None:
    qparams = calibrated(unet, w_bits=4)
    sample, timestep = example_inputs()
    lowered = lower_to_int8(unet, qparams, (sample, timestep), compile=False, cache=cache)
    reference = FakeQuantReference(unet, qparams, cache=cache)
    assert sqnr_db(lowered(sample, timestep), reference(sample, timestep)) >= 30.0
    tib = set(tib_layout(unet).layer_names)
    graph_layers = {layer_name_of(node) for node in lowered.graph_module.graph.nodes if node.op == "call_function"}
    assert not graph_layers & (tib | {"time_proj"})
    assert set(lowered.layer_names) == set(qparams) - tib
    inputs = [node.name for node in lowered.graph_module.graph.nodes if node.op == "placeholder"]
    assert len(inputs) == 1 + len(cache.features)


def test_timestep_outside_the_cache_is_an_error(cache: TemporalFeatureSet) -> None:
    assert set(cache.rows(torch.tensor([949.0, 49.0]))) == set(cache.features)
    with pytest.raises(CacheMismatchError, match="500"):
        cache.rows(torch.tensor([949.0, 500.0]))


def _with_fsc(qparams: dict[str, LayerQParams], name: str) -> dict[str, LayerQParams]:
    params = qparams[name]
    per_timestep = {t: (params.act_scale * (1 + t / 1000), params.act_zero_point) for t in TIMESTEPS}
    fsc = LayerQParams(params.weight_scale, params.weight_zero_point, params.w_bits, params.act_scale,
                       params.act_zero_point, params.a_bits, act_per_timestep=per_timestep)
    return {**qparams, name: fsc}


def test_fsc_on_the_tib_is_irrelevant_with_a_cache(unet: torch.nn.Module, cache: TemporalFeatureSet) -> None:
    qparams = _with_fsc(calibrated(unet, w_bits=8), "up_blocks.0.resnets.1.time_emb_proj")
    lowered = lower_to_int8(unet, qparams, example_inputs(), compile=False, cache=cache)
    assert "up_blocks.0.resnets.1.time_emb_proj" not in lowered.layer_names


def test_fsc_outside_the_tib_is_unsupported(unet: torch.nn.Module, cache: TemporalFeatureSet) -> None:
    qparams = _with_fsc(calibrated(unet, w_bits=8), "mid_block.resnets.0.conv1")
    with pytest.raises(NotImplementedError, match="mid_block.resnets.0.conv1"):
        lower_to_int8(unet, qparams, example_inputs(), compile=False, cache=cache)


def test_quantized_table_is_the_core_cache_rows_and_close(unet: torch.nn.Module, cache: TemporalFeatureSet) -> None:
    quantized = fp_feature_table(unet, TIMESTEPS, bits=8)
    for name, values in cache.features.items():
        assert 35.0 <= sqnr_db(quantized.features[name], values) < 100.0  # quantized, and close
        table = CachedTemporalFeature.from_values(values, TIMESTEPS, bits=8)  # what method=tfmq_cache installs
        assert torch.equal(quantized.features[name], table.dequantized())
