"""Node-name to layer mapping of the grouped per-timestep export (the export itself: test_artifact_deploy.py)."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")

from onnx import helper  # noqa: E402

from tfmq_exp.deploy.grouped_onnx import _layer_of  # noqa: E402


@pytest.mark.parametrize(("name", "op", "layer"), [
    ("/unet/down_blocks.0/resnets.0/conv1/Conv", "Conv", "down_blocks.0.resnets.0.conv1"),
    # projections called by the channel-first attention processor (a module): the processor scope is dropped
    ("/unet/mid_block/attentions.0/processor/to_q/Conv", "Conv", "mid_block.attentions.0.to_q"),
    ("/unet/up_blocks.1/attentions.2/processor/to_out.0/MatMul", "MatMul", "up_blocks.1.attentions.2.to_out.0"),
    # a module that is itself named "processor" keeps its name
    ("/unet/processor/Conv", "Conv", "processor"),
    ("/unet/blocks.0/processor/Gemm", "Gemm", "blocks.0.processor"),
    ("/unet/conv_in/Add", "Add", None),  # not a layer op
    ("/other/conv/Conv", "Conv", None),  # outside the UNet scope
])  # fmt: skip
def test_layer_of_maps_node_names_to_module_paths(name: str, op: str, layer: str | None) -> None:
    assert _layer_of(helper.make_node(op, ["x"], ["y"], name=name)) == layer
