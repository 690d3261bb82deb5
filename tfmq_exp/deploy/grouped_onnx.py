"""One QDQ ONNX graph per timestep group, all sharing one file of int8 weights; dispatch by timestep.

Each group of :func:`~tfmq_exp.deploy.timestep_groups.timestep_groups` (timesteps whose FSC activation parameters
are equal on every layer) gets the graph of :func:`~tfmq_exp.deploy.onnx_export.export_onnx` with that group's
static parameters (:func:`~tfmq_exp.deploy.timestep_groups.qparams_at`). The first group is exported; the others
are the same graph with other activation scales / zero points: every activation QuantizeLinear / DequantizeLinear
pair gets its own named scale and zero-point initializers (``act_qdq.<k>.scale``), set per group from the layers
that consume it (the layer of a Conv / Gemm / MatMul node is its scope name, ``/unet/<module path>/<Op>``). The
exporter merges the QuantizeLinear nodes of layers that read one tensor with equal parameters (``to_q`` /
``to_k`` / ``to_v``, every ``time_emb_proj``); a group whose parameters differ between such layers is exported
on its own instead. The groups' weights are the same int8 codes, so they are written once to ``weights.bin`` as
ONNX external data and every group's ``.onnx`` file refers to it; a weight that differs (none does) stays inside
its graph.

At run time :class:`GroupedDenoiser` runs, for each timestep of the batch, the group's compiled model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data
from torch import nn

from tfmq_exp.deploy.int8_grid import uint8_act_params
from tfmq_exp.deploy.onnx_export import export_onnx
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.deploy.temporal import as_float_timesteps
from tfmq_exp.deploy.timestep_groups import qparams_at, timestep_groups

WEIGHTS_FILE = "weights.bin"
MIN_SHARED_BYTES = 64  # scalars and tiny tensors stay inside each graph
LAYER_OPS = ("Conv", "Gemm", "MatMul")
SCOPE_PREFIX = "/unet/"  # SampleTimestepUNet.unet: node names are /unet/<module path>/<Op>
PROCESSOR_SCOPE = "processor"  # diffusers' Attention.processor, when the processor is a module
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GroupedExport:
    """The files of a grouped export.

    Attributes:
        groups: the timesteps of each group (sampling order).
        paths: the ``.onnx`` file of each group (same order).
        weights: the shared external-data file.
        shared_tensors: initializers stored once in ``weights`` (per graph).
        export_s: seconds spent exporting and writing.
    """

    groups: List[Tuple[int, ...]]
    paths: List[Path]
    weights: Path
    shared_tensors: int
    export_s: float
    file_bytes: Dict[str, int] = field(default_factory=dict)

    def total_bytes(self) -> int:
        """Bytes on disk: every graph file plus the shared weights."""
        return sum(self.file_bytes.values())


@dataclass
class ActSlot:
    """One activation QuantizeLinear of a graph, its DequantizeLinear nodes and the layers they feed."""

    quantize: onnx.NodeProto
    dequantize: List[onnx.NodeProto]
    layers: List[str]


def _layer_of(node: onnx.NodeProto) -> Optional[str]:
    if node.op_type not in LAYER_OPS or not node.name.startswith(SCOPE_PREFIX):
        return None
    # Scopes follow the call stack: an attention's projections called by its processor module (the export's
    # channel-first processor) are named /unet/<attention>/processor/<projection>/<Op>; only such an interior
    # processor scope is dropped.
    scopes = node.name[len(SCOPE_PREFIX):].split("/")[:-1]
    return ".".join(scope for i, scope in enumerate(scopes)
                    if not (scope == PROCESSOR_SCOPE and 0 < i < len(scopes) - 1))


def act_slots(model: onnx.ModelProto, layer_names: List[str]) -> List[ActSlot]:
    """The activation QDQ pairs of an exported QDQ graph and the quantized layers each one feeds.

    Raises:
        ValueError: a QuantizeLinear feeds no known layer, or a layer is fed by none.
    """
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    slots = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        dequantize = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        layers = sorted({_layer_of(c) for d in dequantize for c in consumers.get(d.output[0], [])} - {None})
        unknown = sorted(set(layers) - set(layer_names))
        if not layers or unknown:
            raise ValueError(f"{node.name}: activation QuantizeLinear feeds layers {layers} (unknown: {unknown})")
        slots.append(ActSlot(node, dequantize, layers))
    missing = sorted(set(layer_names) - {layer for slot in slots for layer in slot.layers})
    if missing:
        raise ValueError(f"no activation QuantizeLinear found for layers {missing}")
    return slots


def _slot_values(slot: ActSlot, qparams: Dict[str, LayerQParams]) -> Optional[Tuple[float, int]]:
    """The uint8 ``(scale, zero_point)`` of the slot's layers, or ``None`` when they differ."""
    values = {uint8_act_params(qparams[name].act_scale, qparams[name].act_zero_point, qparams[name].a_bits)
              for name in slot.layers}
    return next(iter(values)) if len(values) == 1 else None


def parametrize_act_qdq(model: onnx.ModelProto, qparams: Dict[str, LayerQParams]) -> List[ActSlot]:
    """Give every activation QDQ pair its own scale / zero-point initializers (in place); returns the slots.

    Raises:
        ValueError: the graph's scale or zero point of a slot is not the one ``qparams`` gives its layers (the
            node-to-layer mapping would be wrong), or the exporter merged layers with different parameters.
    """
    slots = act_slots(model, sorted(qparams))
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    constants.update({init.name: numpy_helper.to_array(init) for init in model.graph.initializer})
    for index, slot in enumerate(slots):
        scale, zero_point = (constants[name] for name in slot.quantize.input[1:3])
        expected = _slot_values(slot, qparams)
        if expected is None or not (np.float32(expected[0]) == scale and expected[1] == int(zero_point)):
            raise ValueError(f"{slot.quantize.name} ({slot.layers}): graph has ({scale}, {zero_point}), "
                             f"parameters give {expected}")
        names = (f"act_qdq.{index}.scale", f"act_qdq.{index}.zero_point")
        model.graph.initializer.extend([numpy_helper.from_array(scale, names[0]),
                                        numpy_helper.from_array(zero_point, names[1])])
        for node in (slot.quantize, *slot.dequantize):
            node.input[1], node.input[2] = names
    _drop_unused_constants(model)
    return slots


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    """Remove the ``Constant`` nodes nothing reads any more (the scales replaced by named initializers)."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    unused = [node for node in model.graph.node if node.op_type == "Constant" and node.output[0] not in used]
    for node in unused:
        model.graph.node.remove(node)


def set_act_qdq(model: onnx.ModelProto, slots: List[ActSlot], qparams: Dict[str, LayerQParams]) -> bool:
    """Write ``qparams``' activation parameters into a parametrized graph (in place).

    Returns:
        ``False`` (graph unchanged) when the layers of a merged QuantizeLinear have different parameters.
    """
    values = [_slot_values(slot, qparams) for slot in slots]
    if any(value is None for value in values):
        return False
    initializers = {init.name: init for init in model.graph.initializer}
    for index, (scale, zero_point) in enumerate(values):
        for name, value in ((f"act_qdq.{index}.scale", scale), (f"act_qdq.{index}.zero_point", zero_point)):
            old = numpy_helper.to_array(initializers[name])
            initializers[name].CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=old.dtype), name))
    return True


def _share_weights(models: List[onnx.ModelProto], weights: Path) -> int:
    """Move initializers equal in every model into one external-data file (in place); returns how many."""
    arrays = [{init.name: numpy_helper.to_array(init) for init in model.graph.initializer} for model in models]
    first = arrays[0]
    shared = [name for name, value in first.items() if value.nbytes >= MIN_SHARED_BYTES and all(
        name in other and other[name].dtype == value.dtype and np.array_equal(other[name], value)
        for other in arrays[1:])]
    offsets: Dict[str, Tuple[int, int]] = {}
    with open(weights, "wb") as handle:
        for name in shared:
            data = np.ascontiguousarray(first[name]).tobytes()
            offsets[name] = (handle.tell(), len(data))
            handle.write(data)
    for model, values in zip(models, arrays):
        for index, init in enumerate(model.graph.initializer):
            if init.name not in offsets:
                continue
            replacement = numpy_helper.from_array(values[init.name], init.name)
            offset, length = offsets[init.name]
            set_external_data(replacement, location=weights.name, offset=offset, length=length)
            replacement.ClearField("raw_data")
            replacement.data_location = onnx.TensorProto.EXTERNAL
            model.graph.initializer[index].CopyFrom(replacement)
    return len(shared)


@torch.no_grad()
def export_grouped_onnx(
    unet: nn.Module,
    directory: str | Path,
    example_inputs: Tuple[torch.Tensor, torch.Tensor],
    qparams: Dict[str, LayerQParams],
    weight_code_max: Optional[int] = None,
) -> GroupedExport:
    """Export one QDQ graph per timestep group of ``qparams`` into ``directory``, weights shared.

    Args:
        unet: the float UNet holding the quantized weights on their grid (:func:`deployment_inputs`).
        directory: created if needed; gets ``group_<k>.onnx`` files and ``weights.bin``.
        example_inputs: ``(sample, timestep)`` for tracing.
        qparams: parameters with per-timestep (FSC) activation parameters on some layers.
        weight_code_max: see :func:`~tfmq_exp.deploy.onnx_export.export_onnx`.
    """
    start = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    groups = timestep_groups(qparams)
    paths = [directory / f"group_{index}.onnx" for index in range(len(groups))]
    first = qparams_at(qparams, groups[0][0])
    # Unfolded zero points: the groups' graphs differ only in their activation QDQ parameters, which set_act_qdq
    # rewrites; a folded graph would carry them in shifts, biases and border maps too.
    export_onnx(unet, paths[0], example_inputs, first, weight_code_max, fold_zero_points=False)
    template = onnx.load(str(paths[0]))
    parametrize_act_qdq(template, first)
    models = [template]
    for group, path in zip(groups[1:], paths[1:]):
        model = onnx.ModelProto()
        model.CopyFrom(template)
        if not set_act_qdq(model, act_slots(model, sorted(first)), qparams_at(qparams, group[0])):
            model = onnx.load(str(export_onnx(unet, path, example_inputs, qparams_at(qparams, group[0]),
                                              weight_code_max, fold_zero_points=False)))
        models.append(model)
    weights = directory / WEIGHTS_FILE
    shared = _share_weights(models, weights)
    for model, path in zip(models, paths):
        onnx.save(model, str(path))
    file_bytes = {path.name: path.stat().st_size for path in (*paths, weights)}
    return GroupedExport(groups, paths, weights, shared, round(time.perf_counter() - start, 2), file_bytes)


class GroupedDenoiser:
    """``(sample, timesteps) -> eps`` dispatching each timestep to its group's denoiser.

    A batch whose samples have different timesteps is split by timestep; runners compiled for one batch size
    (OpenVINO with static shapes) need batches of one timestep, as a sampling loop gives them.

    Args:
        groups: the timesteps of each group.
        runners: one denoiser per group (same order), e.g. OpenVINO compiled models of the group files.

    Raises (on call):
        KeyError: a timestep belongs to no group (the graphs belong to one sampler's timesteps).
    """

    def __init__(self, groups: List[Tuple[int, ...]], runners: List[Denoiser]) -> None:
        self.groups = groups
        self.runner_of = {int(t): runner for group, runner in zip(groups, runners) for t in group}

    def first_timesteps(self) -> List[int]:
        """One timestep of every group (to run each graph once)."""
        return [group[0] for group in self.groups]

    def _runner(self, timestep: float) -> Denoiser:
        key = int(round(timestep))
        if key not in self.runner_of:
            raise KeyError(f"timestep {timestep} has no graph; exported timesteps: {sorted(self.runner_of)}")
        return self.runner_of[key]

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        timesteps = as_float_timesteps(timestep, sample.shape[0])
        values = timesteps.tolist()
        if all(value == values[0] for value in values):
            return self._runner(values[0])(sample, timesteps)
        output: Optional[torch.Tensor] = None
        for value in dict.fromkeys(values):
            index = torch.tensor([i for i, other in enumerate(values) if other == value])
            part = self._runner(value)(sample[index], timesteps[index])
            output = part.new_empty(sample.shape[0], *part.shape[1:]) if output is None else output
            output[index] = part
        return output
