"""Lowering a UNet with known quantization parameters to real int8 kernels (PT2E + inductor, x86 CPU).

Flow: copy the UNet and snap each quantized layer's weight onto its grid (``w_hat``, so that the int8
weights reproduce our rounding, including AdaRound's when the given weights are already on the grid);
``torch.export``; ``prepare_pt2e`` with the ``X86InductorQuantizer`` default static config, restricted to the
input activation and the weight of every layer in ``qparams``; replace each observer by one that carries our
parameters (:mod:`tfmq_exp.deploy.int8_grid`; no calibration forward); ``convert_pt2e``; and ``torch.compile``
with ``freezing`` so that inductor lowers every quantized Conv2d / Linear to oneDNN's ``qconv`` / ``qlinear``.

Inductor's qlinear fusion matches ``dequantize -> linear`` only on a contiguous input: diffusers' attention
feeds ``to_q`` / ``to_k`` / ``to_v`` a transposed view of the normed hidden states, and those three Linears then
ran as float ``bmm`` on the dequantized weights (a profile of the CIFAR-10 UNet showed 18 of its 47 quantized
Linears in float). A forward pre-hook on the copy's quantized Linears makes their input contiguous (a copy, no
numeric change), so every quantized layer reaches an int8 kernel (``tests/deploy/test_lower.py`` counts them).

Zero points: each layer's input zero point is folded into its bias before export
(:mod:`tfmq_exp.deploy.zero_point_fold`, exact up to float rounding ties), so the int8 kernels run with zero
input zero points; on CPUs without VNNI oneDNN otherwise applies them at run time (the AVX2 profile in
``experiments/results/deploy/README.md``). The weights are snapped onto the int8 grid the kernel uses first
(:func:`~tfmq_exp.deploy.int8_grid.int8_grid_weight`), so the bias correction sums the weights it multiplies.

What runs quantized: exactly the Conv2d / Linear layers named in ``qparams`` (input uint8 per tensor, weight
int8 per output channel). Everything else stays float32: layers without parameters (e.g. ``fp_patterns``),
norms, attention's ``softmax(QK^T)V`` (SDPA), residual adds. The quantizer's other default annotations
(residual / time-embedding inputs of conv+add fusions, ``cat``, same-shape ``mul``) are dropped: they would
quantize tensors our fake-quant models keep in float and have no parameters here.

Temporal maintenance: ``cache=None`` runs the TIB in the graph (its layers quantized with static parameters);
with a table of temporal features (:class:`~tfmq_exp.temporal.features.TemporalFeatureSet`) the TIB is removed (cache-based maintenance) and the TIB layers'
parameters, per-timestep (FSC) or not, are ignored. Per-timestep parameters on any layer that stays in the
graph are not supported: a static int8 graph cannot switch scales with ``t``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch
import torch._inductor.config
from torch import nn
from torchao.quantization.pt2e import ObserverBase
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from tfmq_exp.deploy.int8_grid import act_observer, default_weight_code_max, int8_grid_weight, weight_observer
from tfmq_exp.deploy.qparams import QUANTIZABLE_TYPES, LayerQParams, fake_quantize_weight
from tfmq_exp.deploy.temporal import (
    FeatureInputUNet,
    SampleTimestepUNet,
    as_float_timesteps,
    tib_layout,
)
from tfmq_exp.deploy.zero_point_fold import conv_input_sizes, fold_input_zero_points, insert_border_maps
from tfmq_exp.temporal.features import TemporalFeatureSet

ANNOTATION_KEY = "quantization_annotation"
LAYER_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
WRAPPER_ATTRIBUTE = "unet"  # the UNet's attribute name in the exported wrapper (prefix of module paths)


def layer_name_of(node: torch.fx.Node) -> Optional[str]:
    """Name (inside the UNet) of the innermost module a graph node came from, from ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    prefix = f"{WRAPPER_ATTRIBUTE}."
    return path[len(prefix) :] if path.startswith(prefix) else None


def _contiguous_input(_module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def _is_impure(node: torch.fx.Node) -> bool:
    """Side-effecting nodes, except export's dtype assertions, which would keep a dead TIB alive."""
    return node.target is not torch.ops.aten._assert_tensor_metadata.default and node.is_impure()


class _LayerInputQuantizer(X86InductorQuantizer):
    """``X86InductorQuantizer`` (default static config) restricted to the inputs and weights of given layers."""

    def __init__(self, layer_names: Set[str]) -> None:
        super().__init__()
        self.set_global(get_default_x86_inductor_quantization_config())
        self.layer_names = layer_names

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = super().annotate(model)
        for node in model.graph.nodes:
            annotation: Optional[QuantizationAnnotation] = node.meta.get(ANNOTATION_KEY)
            if annotation is None:
                continue
            annotation.output_qspec = None
            if node.op == "call_function" and node.target in LAYER_OPS and layer_name_of(node) in self.layer_names:
                # Our own observer per (input, layer) edge: layers sharing an input keep their own parameters.
                annotation.allow_implicit_sharing = False
            else:
                annotation.input_qspec_map = {}
        return model


def _layers_to_lower(
    model: nn.Module, qparams: Dict[str, LayerQParams], cache: Optional[TemporalFeatureSet]
) -> Dict[str, LayerQParams]:
    """Check ``qparams`` against the model and return those of the layers that stay in the graph."""
    modules = dict(model.named_modules())
    unknown = [name for name in qparams if not isinstance(modules.get(name), QUANTIZABLE_TYPES)]
    if unknown:
        raise KeyError(f"qparams name layers that are not Conv2d / Linear modules of this UNet: {unknown}")
    removed = set(tib_layout(model).layer_names) if cache is not None else set()
    kept = {name: params for name, params in qparams.items() if name not in removed}
    per_timestep = [name for name, params in kept.items() if params.is_per_timestep]
    if per_timestep:
        hint = "" if cache is not None else " (on TIB layers they become irrelevant with a temporal-feature cache)"
        raise NotImplementedError(
            f"per-timestep activation parameters (FSC) on {per_timestep} cannot be lowered: a static int8 graph "
            f"has one scale per tensor{hint}"
        )
    too_wide = [name for name, params in kept.items() if params.a_bits > 8]
    if too_wide:
        raise ValueError(
            f"{too_wide}: the int8 kernels take uint8 activations; activations above 8 bits cannot be lowered"
        )
    for name, params in kept.items():
        if modules[name].weight.shape[0] != params.weight_scale.numel():
            channels = modules[name].weight.shape[0]
            raise ValueError(f"{name}: {params.weight_scale.numel()} weight scales for {channels} channels")
    return kept


def _observed_edges(prepared: torch.fx.GraphModule) -> Dict[str, List[Tuple[str, str]]]:
    """Observer module name -> ``[(layer name, 'input' | 'weight')]`` for every observer in the graph."""
    named = dict(prepared.named_modules())
    edges: Dict[str, List[Tuple[str, str]]] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not isinstance(named[node.target], ObserverBase):
            continue
        edges[node.target] = []
        for user in node.users:
            role = "input" if user.args[0] is node else "weight" if user.args[1] is node else None
            if user.target not in LAYER_OPS or role is None:
                raise RuntimeError(f"observer {node.target} feeds {user.name}, not the input or weight of a layer")
            edges[node.target].append((layer_name_of(user), role))
    return edges


def _install_known_qparams(
    prepared: torch.fx.GraphModule, layers: Dict[str, LayerQParams], weight_code_max: int
) -> None:
    """Replace every observer by one that holds our parameters; fail loudly on any mismatch."""
    named = dict(prepared.named_modules())
    covered: Set[Tuple[str, str]] = set()
    for target, edges in _observed_edges(prepared).items():
        if len(edges) != 1 or edges[0][0] not in layers:
            raise RuntimeError(f"observer {target} maps to {edges}; expected exactly one layer with parameters")
        layer, role = edges[0]
        params = layers[layer]
        template = named[target]
        if role == "weight":
            observer = weight_observer(template, params, weight_code_max)
        else:
            observer = act_observer(template, params.act_scale, params.act_zero_point, params.a_bits)
        setattr(prepared, target, observer)
        covered.add((layer, role))
    missing = sorted(name for name in layers if {(name, "input"), (name, "weight")} - covered)
    if missing:
        raise RuntimeError(f"layers with parameters that were not quantized in the exported graph: {missing}")


class LoweredUNet:
    """The int8 UNet as a callable ``(sample, timestep) -> eps`` (float32 tensor).

    The graph is specialised to the sample shape it was exported with (lower once per batch size);
    ``timestep`` may be a scalar or one value per sample, integer or float.

    Attributes:
        graph_module: the converted PT2E graph (quantize / dequantize ops around float layers).
        runner: what is called: ``graph_module`` compiled by inductor (real int8 kernels), or itself.
        compiled: whether ``runner`` is compiled (its calls then run with inductor's ``freezing`` on, which
            compiles weights to prepacked int8 constants at the first call and at any recompilation).
        cache: the temporal-feature cache replacing the TIB, or ``None``.
        layer_names: the layers that run quantized.
    """

    def __init__(
        self,
        graph_module: torch.fx.GraphModule,
        runner: Callable,
        compiled: bool,
        cache: Optional[TemporalFeatureSet],
        layer_names: List[str],
    ) -> None:
        self.graph_module = graph_module
        self.runner = runner
        self.compiled = compiled
        self.cache = cache
        self.layer_names = layer_names

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        timesteps = as_float_timesteps(timestep, sample.shape[0])
        inputs = timesteps if self.cache is None else self.cache.rows(timesteps)
        freezing = torch._inductor.config.patch(freezing=True) if self.compiled else contextlib.nullcontext()
        with torch.no_grad(), freezing:
            return self.runner(sample, inputs)


@torch.no_grad()
def lower_to_int8(
    unet: nn.Module,
    qparams: Dict[str, LayerQParams],
    example_inputs: Tuple[torch.Tensor, torch.Tensor],
    compile: bool = True,
    cache: Optional[TemporalFeatureSet] = None,
    weight_code_max: Optional[int] = None,
    fold_zero_points: bool = True,
) -> LoweredUNet:
    """Lower ``unet`` to int8 with the given parameters.

    Args:
        unet: a diffusers ``UNet2DModel`` (left untouched; a copy is lowered).
        qparams: parameters of the layers to quantize (all others stay float32).
        example_inputs: ``(sample, timestep)``; the graph is specialised to this sample shape (batch size).
        compile: compile with inductor (freezing on) into oneDNN int8 kernels; ``False`` returns the
            converted PT2E graph, which computes the same numbers with reference (float) kernels.
        cache: temporal-feature cache for cache-based maintenance (the TIB is removed from the graph).
        weight_code_max: int8 weight codes lie in ``[-(M + 1), M]``; default 127 on CPUs with VNNI / AMX and
            63 without (see :mod:`tfmq_exp.deploy.int8_grid`).
        fold_zero_points: fold each layer input's zero point into the layer (a shift of its input, a corrected
            bias and, for padded convolutions, a border map added to the output; :mod:`tfmq_exp.deploy.
            zero_point_fold`; exact up to rounding ties, and faster on CPUs without VNNI); ``False`` hands the
            asymmetric parameters to the int8 kernels as they are.

    Returns:
        A :class:`LoweredUNet`; with ``compile=True`` it is compiled already (by one call on ``example_inputs``).
    """
    model = copy.deepcopy(unet).eval().float()
    layers = _layers_to_lower(model, qparams, cache)
    code_max = weight_code_max or default_weight_code_max()
    for name, params in layers.items():
        module = model.get_submodule(name)
        module.weight.copy_(int8_grid_weight(fake_quantize_weight(module.weight, params), params, code_max))
    sample, timestep = example_inputs
    timesteps = as_float_timesteps(timestep, sample.shape[0])
    if cache is None:
        wrapper: nn.Module = SampleTimestepUNet(model)
        inputs: tuple = (sample, timesteps)
    else:
        wrapper = FeatureInputUNet(model)
        inputs = (sample, cache.rows(timesteps))
    border_maps: Dict[str, torch.Tensor] = {}
    if fold_zero_points:
        sizes = conv_input_sizes(model, layers, lambda: wrapper.eval()(*inputs))
        layers, border_maps = fold_input_zero_points(model, layers, sizes)
    for name in layers:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):  # the qlinear fusion needs a contiguous input (module docstring)
            module.register_forward_pre_hook(_contiguous_input)
    exported = torch.export.export(wrapper.eval(), inputs).module()
    exported.graph.eliminate_dead_code(is_impure_node=_is_impure)  # the bypassed TIB, when cached
    exported.recompile()
    insert_border_maps(exported, border_maps, layer_name_of)
    prepared = prepare_pt2e(exported, _LayerInputQuantizer(set(layers)))
    _install_known_qparams(prepared, layers, code_max)
    converted = convert_pt2e(prepared)
    runner: Callable = torch.compile(converted) if compile else converted
    lowered = LoweredUNet(converted, runner, compile, cache, sorted(layers))
    if compile:
        lowered(sample, timestep)
    return lowered
