"""Real calibrated artifacts with per-timestep scales (tfmq_released) and a temporal-feature cache (tfmq_cache) deploy
on ONNX Runtime / OpenVINO (and PT2E for the cache), matching their fake-quant model at every sampling timestep."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from tests.deploy.helpers import make_artifact, sqnr_db
from tfmq_exp.deploy.artifact_report import print_artifact, print_side_by_side
from tfmq_exp.deploy.from_artifact import benchmark_artifact, load_calibrated
from tfmq_exp.deploy.from_quantized import deployment_inputs
from tfmq_exp.deploy.grouped_onnx import WEIGHTS_FILE, GroupedDenoiser, export_grouped_onnx
from tfmq_exp.deploy.onnx_export import export_onnx
from tfmq_exp.deploy.temporal import cache_table, tib_layout
from tfmq_exp.deploy.timestep_groups import timestep_groups
from tfmq_exp.eval.sampling import sampling_timesteps

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
STEPS = 4


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("released"), "tfmq_released", STEPS)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("cached"), "tfmq_cache", STEPS)


def test_released_artifact_deploys_one_graph_per_timestep_group(released: Path, capsys) -> None:
    result = benchmark_artifact(released, batch_size=2, repeats=1, compile=False)
    assert result["kind"] == "per_timestep" and result["method"] == "tfmq_released"
    assert 1 <= result["groups"] <= STEPS
    sqnr = result["sqnr_db_vs_fake_quant_per_variant"]  # the minimum over every sampling timestep
    assert set(sqnr) == {"int8_ort_grouped", "int8_openvino_grouped"} and min(sqnr.values()) >= 30.0, result
    assert any("PT2E" in note for note in result["notes"])
    print_artifact(result)
    print_side_by_side([result, result])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tfmq_released |")]
    assert len(rows) == 4 and all("int8_" in row for row in rows)


def test_grouped_graphs_share_one_weights_file_and_dispatch_by_timestep(released: Path, tmp_path: Path) -> None:
    from tfmq_exp.deploy.runtimes import ort_runner

    unet_q, unet_fp, config = load_calibrated(released)
    float_unet, qparams = deployment_inputs(unet_q, unet_fp, allow_per_timestep=True)
    timesteps = [int(t) for t in sampling_timesteps(config.sampler, config.model)]
    groups = timestep_groups(qparams)
    assert sorted(t for group in groups for t in group) == sorted(timesteps)
    sample = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    exported = export_grouped_onnx(float_unet, tmp_path, (sample, torch.full((4,), float(timesteps[0]))), qparams)
    assert len(exported.paths) == len(groups) and exported.shared_tensors > 0
    for path in exported.paths:
        external = [init for init in onnx.load(str(path), load_external_data=False).graph.initializer
                    if init.data_location == onnx.TensorProto.EXTERNAL]
        assert len(external) == exported.shared_tensors
        assert {entry.value for init in external for entry in init.external_data if entry.key == "location"} == {
            WEIGHTS_FILE}
    denoiser = GroupedDenoiser(exported.groups, [ort_runner(path, 1) for path in exported.paths])
    mixed = torch.tensor([float(timesteps[i % len(timesteps)]) for i in range(4)])
    with torch.no_grad():
        reference = torch.cat([unet_q(sample[i:i + 1], torch.tensor(int(mixed[i]))).sample for i in range(4)])
        assert sqnr_db(denoiser(sample, mixed), reference) >= 30.0
    with pytest.raises(KeyError, match="no graph"):
        denoiser(sample, torch.full((4,), 1.0 + max(timesteps)))


def test_cache_artifact_deploys_with_its_own_features_as_inputs(cached: Path, tmp_path: Path) -> None:
    result = benchmark_artifact(cached, batch_size=2, repeats=1, compile=False)
    assert result["kind"] == "cache" and result["method"] == "tfmq_cache"
    sqnr = result["sqnr_db_vs_fake_quant_per_variant"]
    assert set(sqnr) == {"int8", "int8_ort", "int8_openvino"} and min(sqnr.values()) >= 30.0, result
    unet_q, unet_fp, _ = load_calibrated(cached)
    cache = cache_table(unet_q, unet_fp)
    core = dict(unet_q.named_modules())["mid_block.resnets.0.time_emb_proj"]
    rows = [cache.index(t) for t in core.cached_timesteps()]
    assert torch.equal(cache.features["mid_block.resnets.0"][rows], core.dequantized().float())  # not recomputed
    float_unet, qparams = deployment_inputs(unet_q, unet_fp, removed_by_cache=tib_layout(unet_fp).layer_names)
    sample = torch.randn(2, 1, 8, 8)
    path = export_onnx(float_unet, tmp_path / "cached.onnx", (sample, torch.tensor(cache.timesteps[:1], dtype=torch.float32)), qparams, cache=cache)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["sample", *sorted(cache.features)]
    assert not [node.name for node in graph.node if "time_embedding" in node.name or "time_emb_proj" in node.name]


@pytest.mark.slow
def test_tfmq_artifact_is_one_graph_fed_by_its_own_quantized_tib(tmp_path_factory: pytest.TempPathFactory) -> None:
    result = benchmark_artifact(make_artifact(tmp_path_factory.mktemp("tfmq"), "tfmq", STEPS), batch_size=2,
                                repeats=1, compile=False)
    assert result["kind"] == "tib_fsc" and result["groups"] is None
    sqnr = result["sqnr_db_vs_fake_quant_per_variant"]
    assert set(sqnr) == {"int8", "int8_ort", "int8_openvino"} and min(sqnr.values()) >= 30.0, result


def test_selected_artifact_deploys_with_its_own_mix_of_cache_rows_and_quantized_tib(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """W4A8, a 5-bit cache, per-timestep selection: the cache wins some (feature, timestep) pairs, the quantized TIB
    the rest;
    the deployed graphs take the model's own features as inputs and match its fake-quant output."""
    from tfmq_exp.deploy.artifact_variants import artifact_kind
    from tfmq_exp.deploy.temporal import quantized_tib_table
    from tfmq_exp.temporal.maintenance import iter_cache_modules

    artifact = make_artifact(tmp_path_factory.mktemp("selected"), "tfmq_select", STEPS, quant="w4a8",
                             extra=["method.select.per_timestep=true", "method.cache_bits=5"])
    unet_q, unet_fp, config = load_calibrated(artifact)
    assert config.method.maintenance == "select" and next(iter_cache_modules(unet_q), None) is not None
    float_unet, qparams = deployment_inputs(unet_q, unet_fp, removed_by_cache=tib_layout(unet_fp).layer_names,
                                            allow_per_timestep=True)
    assert artifact_kind(unet_q, unet_fp, qparams) == "selected"
    timesteps = [int(t) for t in sampling_timesteps(config.sampler, config.model)]
    table = quantized_tib_table(unet_q, unet_fp, timesteps)
    received: dict = {}
    hooks = [unet_q.get_submodule(projection).register_forward_hook(
        lambda _m, _i, output, name=name: received.__setitem__(name, output[0].detach()))
        for name, projection in tib_layout(unet_fp).projections.items()]  # fmt: skip
    with torch.no_grad():
        for t in timesteps:
            unet_q(torch.randn(1, 1, 8, 8), torch.tensor(t))
            for name, value in received.items():  # what the fake-quant model used at t, cache row or TIB output
                assert torch.allclose(table.features[name][table.index(t)], value, atol=1e-6), (t, name)
    for hook in hooks:
        hook.remove()
    result = benchmark_artifact(artifact, batch_size=2, repeats=1, compile=False)
    assert result["kind"] == "selected" and result["method"] == "tfmq_select"
    sqnr = result["sqnr_db_vs_fake_quant_per_variant"]
    assert set(sqnr) == {"int8", "int8_ort", "int8_openvino"} and min(sqnr.values()) >= 30.0, result
