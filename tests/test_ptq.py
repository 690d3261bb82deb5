"""The PTQ orchestrator: methods as released, maintenance before block reconstruction, keys that follow it."""

from __future__ import annotations

import pytest

from tests.helpers import composed_config, quantize_digits
from tfmq_exp.quant import iter_act_quantizers, iter_attn_processors
from tfmq_exp.recon.runner import reconstruction_settings
from tfmq_exp.store import content_key
from tfmq_exp.temporal.feature_cache import CachedTemporalFeature


def test_tfmq_released_has_per_timestep_parameters_on_every_activation_quantizer(conf_dir, tmp_path) -> None:
    config = composed_config(conf_dir, tmp_path / "cache", "method=tfmq_released")
    _, quantized = quantize_digits(config, tmp_path)
    quantizers = [q for _, q in iter_act_quantizers(quantized.unet) if not q.is_identity]
    assert quantizers and all(q.per_timestep for q in quantizers)
    timestep_sets = {tuple(q.calibrated_timesteps()) for q in quantizers}
    assert len(timestep_sets) == 1 and len(timestep_sets.pop()) == config.sampler.num_steps  # the sampler's set
    assert next(iter_attn_processors(quantized.unet), None) is None  # attention matmuls as released: not quantized
    paper = quantize_digits(composed_config(conf_dir, tmp_path / "cache", "method=tfmq"), tmp_path / "paper")[1]
    per_timestep = [q.per_timestep for _, q in iter_act_quantizers(paper.unet) if not q.is_identity]
    assert any(per_timestep) and not all(per_timestep)  # the paper's text: the temporal features only


def test_qdiffusion_runs_its_activation_pass_with_softmax_at_its_own_bits(conf_dir, tmp_path) -> None:
    config = composed_config(conf_dir, tmp_path / "cache", "method=qdiffusion", "quant=w8a4")
    _, quantized = quantize_digits(config, tmp_path)
    units = quantized.result.act_reconstruction.units
    assert units and all(entry["iters"] == 3 and "loss_final" in entry for entry in units.values())
    processors = [processor for _, processor in iter_attn_processors(quantized.unet)]
    assert processors and all(p.softmax_quantizer.bits == 8 and p.query_quantizer.bits == 4 for p in processors)


def test_the_cache_is_in_place_before_block_reconstruction(conf_dir, tmp_path) -> None:
    config = composed_config(conf_dir, tmp_path / "cache", "method=tfmq_cache")
    unet_fp, quantized = quantize_digits(config, tmp_path)
    units = quantized.result.reconstruction.units
    layers = [layer for entry in units.values() for layer in entry["layers"]]
    # Blocks were reconstructed with the cache standing in for their projections: no projection was a unit layer,
    # and no TIB unit ran (cached features need no TIAR).
    assert units and not any("time_emb_proj" in layer or layer.startswith("time_embedding") for layer in layers)
    assert "tib" not in units
    projections = [m for name, m in quantized.unet.named_modules() if name.endswith("time_emb_proj")]
    assert projections and all(isinstance(m, CachedTemporalFeature) for m in projections)
    assert "maintenance_s" not in quantized.result.to_dict()  # the result holds results, the timer holds times
    assert quantized.result.maintenance.cache.modules == len(projections)
    assert quantized.result.model_size.cache_bytes == quantized.result.maintenance.cache.cache_bytes > 0


def test_the_reconstruction_key_follows_maintenance(conf_dir, tmp_path) -> None:
    def key(method: str, phase: str, *overrides: str) -> str:
        return content_key(reconstruction_settings(composed_config(conf_dir, tmp_path, f"method={method}", *overrides), phase))

    assert key("tfmq", "blocks") != key("tfmq_cache", "blocks") != key("tfmq_select", "blocks")
    assert key("tfmq", "tiar") == key("tfmq_select", "tiar")  # TIAR comes before any maintenance
    assert key("tfmq", "blocks") == key("tfmq", "blocks", "method.fsc_scope=all")  # FSC acts after it
    assert key("tfmq_select", "blocks") != key("tfmq_select", "blocks", "method.fsc=false")  # the selection sees FSC
    assert key("tfmq_cache", "blocks") != key("tfmq_cache", "blocks", "quant=w4a8t4")  # 4-bit cache
    assert key("qdiffusion", "blocks") == key("qdiffusion", "blocks", "method.act_recon.iters=7")


def test_the_reconstruction_key_is_derived_from_field_metadata(conf_dir, tmp_path) -> None:
    from dataclasses import fields

    from tfmq_exp.config.schema import RECON_ROLE, MethodConfig, QuantConfig

    def key(*overrides: str) -> str:
        return content_key(reconstruction_settings(composed_config(conf_dir, tmp_path, "method=qdiffusion", *overrides), "blocks"))

    never = {f.name for cls in (MethodConfig, QuantConfig) for f in fields(cls) if f.metadata.get(RECON_ROLE) == "never"}
    assert {"act_recon", "attention_matmuls", "a_bits", "softmax_bits"} <= never
    base = key()
    for override in ("method.attention_matmuls=false", "quant.softmax_bits=6", "method.act_calib_steps=all",
                     "method.name=renamed", "quant.a_bits=6", "method.act_range=mse"):
        assert key(override) == base, override  # read only after reconstruction
    for override in ("method.recon.iters=11", "quant.w_bits=3", "method.weight_init=minmax", "calib.seed=5",
                     "method.recon.p=3.0", "method.calib_steps=all"):
        assert key(override) != base, override  # fields without a role always reach the key


@pytest.mark.parametrize("method", ["tfmq_select"])
def test_selection_runs_after_tiar_and_before_the_blocks(conf_dir, tmp_path, method: str) -> None:
    config = composed_config(conf_dir, tmp_path / "cache", f"method={method}")
    _, quantized = quantize_digits(config, tmp_path)
    selection = quantized.result.maintenance.selection
    assert selection.score == "feature_rel_mse"  # temporal-feature error by default
    units = quantized.result.reconstruction.units
    cached = {feature for feature, option in selection.choice.items() if option == "cache"}
    layers = {layer for entry in units.values() for layer in entry["layers"]}
    assert "tib" in units and list(units)[0] == "tib"
    assert not any(layer.endswith("time_emb_proj") for layer in layers - set(units["tib"]["layers"]))
    assert len(cached) == quantized.result.maintenance.cache.modules


@pytest.mark.parametrize(
    "overrides",
    [["method=tfmq_select", "method.select.per_timestep=true", "method.select.cache_budget_bytes=200"],
     ["method=tfmq_cache", "method.cache_fallback=true"]],
    ids=["select-per-timestep", "cache-fallback"],
)
def test_caches_that_keep_the_tib_as_fallback_reconstruct_and_calibrate(conf_dir, tmp_path, overrides) -> None:
    config = composed_config(conf_dir, tmp_path / "cache", *overrides)
    _, quantized = quantize_digits(config, tmp_path)
    fallbacks = [m for name, m in quantized.unet.named_modules() if isinstance(m, CachedTemporalFeature)
                 and m.fallback is not None]
    assert fallbacks  # the TIB path stays inside the cache modules for routed / missing timesteps
    units = quantized.result.reconstruction.units
    assert not any(".fallback." in layer for entry in units.values() for layer in entry["layers"])
    if config.method.select.per_timestep:  # a mix: some (feature, t) cached, the others routed to the TIB
        choice = quantized.result.maintenance.selection.choice
        options = {option for per_t in choice.values() for option in per_t.values()}
        assert options == {"cache", "tib"}
