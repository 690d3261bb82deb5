"""Folding the input activations' zero points into the layers before PT2E lowering and QDQ export (exact).

Why: PyTorch's oneDNN int8 convolutions (``onednn::qconv_pointwise``) apply an asymmetric uint8 input's zero
point at run time on CPUs without VNNI; measured on the CIFAR-10 UNet on an AVX2 EPYC
(``experiments/results/deploy/avx2/profile_pt2e_zero_points_cifar10_b8.txt``), setting every zero point to 0
cut the quantized convolutions from 657 to 562 ms and the forward from 1078 to 856 ms. OpenVINO's u8
convolutions, too, run faster with zero point 0 there (one 256-channel 3x3 layer: 17.0 against 19.5 ms,
``experiments/results/deploy/avx2/conv_kernel_probe.txt``). Used by
:func:`~tfmq_exp.deploy.lower.lower_to_int8` (border maps inserted into the exported graph,
:func:`insert_border_maps`) and :func:`~tfmq_exp.deploy.onnx_export.export_onnx` (border maps as forward hooks).

The identity (DESIGN 1.1's grid; ``s, z`` the layer input's uint8 parameters, ``W`` the int8-grid weights the
kernel multiplies, ``*`` the layer's convolution with its zero padding, ``1`` a tensor of ones shaped like the
input)::

    y = W * (s (q - z)) + b,                                   q  = clamp(round(x / s) + z, 0, 255)
      = W * (s q') + (b - z s sum(W)) + z s (sum(W) - W * 1),  q' = clamp(round((x + z s) / s), 0, 255)

``q' = q`` wherever ``x / s + z`` and ``(x + z s) / s`` round alike (float32 can differ only at exact rounding
ties). ``sum(W)`` sums each output channel's weights over input channels and kernel positions; the last term,
the border map, is zero except where the kernel overlaps the padding (there the padded code 0 of the shifted
input stands for ``-z s`` of the original, whose padding is a real 0). So each layer with a nonzero input
zero point is changed, on the copy that is exported, into: a forward pre-hook adding ``z s`` to its input, bias
``b - z s sum(W)``, and (convolutions with padding) the constant border map added to its output in the exported
graph; its parameters get input zero point 0 with the same scale. Inductor fuses the shift into the quantize
kernel and the border map into the next pointwise kernel; the convolution runs with a zero input zero point.

Not folded (kept as they are): convolutions with a non-zeros ``padding_mode`` or string padding.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from tfmq_exp.deploy.int8_grid import uint8_act_params
from tfmq_exp.deploy.qparams import LayerQParams


class _Shift:
    """Forward pre-hook: ``x + z s``."""

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def __call__(self, _module: nn.Module, args: tuple) -> tuple:
        # A subtraction, not an add: X86InductorQuantizer annotates (layer -> add) pairs for its fusions, and an
        # add of a constant right after a layer's output fails in its pattern helper
        # (torchao x86_inductor_quantizer.py, ``_get_input_idx_for_binary_node``).
        return (torch.sub(args[0], -self.shift), *args[1:])


@torch.no_grad()
def border_map(conv: nn.Conv2d, input_size: Tuple[int, int], shift: float) -> torch.Tensor:
    """``z s (sum(W) - W * 1)`` of shape ``[1, C_out, H_out, W_out]`` (float64 arithmetic, float32 result)."""
    weight = conv.weight.double()
    ones = torch.ones(1, weight.shape[1] * conv.groups, *input_size, dtype=torch.float64)
    inside = torch.nn.functional.conv2d(ones, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    total = weight.sum(dim=(1, 2, 3)).reshape(1, -1, 1, 1)
    return (shift * (total - inside)).float()


def _foldable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    )


class FoldedLayers(NamedTuple):
    """What :func:`fold_input_zero_points` returns.

    Attributes:
        qparams: the parameters to lower with (``act_zero_point = 0`` for every folded layer, scales unchanged).
        border_maps: ``[1, C_out, H_out, W_out]`` border map of each folded convolution with padding, to be added
            to its output (:func:`insert_border_maps`, after export).
    """

    qparams: Dict[str, LayerQParams]
    border_maps: Dict[str, torch.Tensor]


@torch.no_grad()
def fold_input_zero_points(
    model: nn.Module, layers: Dict[str, LayerQParams], input_sizes: Mapping[str, Tuple[int, int]]
) -> FoldedLayers:
    """Fold each layer's input zero point into its input (a shift) and its bias, in place.

    Args:
        model: the copy that will be exported; each layer's weight must already be the int8-grid weight the
            kernel will use (its sums enter the bias and the border map).
        layers: parameters of the layers to lower (static activation parameters only).
        input_sizes: ``(H, W)`` of each padded convolution's input (the graph is specialised to its shapes).

    Returns:
        The parameters to lower with and the border maps that complete the identity.
    """
    folded: Dict[str, LayerQParams] = {}
    maps: Dict[str, torch.Tensor] = {}
    for name, params in layers.items():
        module = model.get_submodule(name)
        scale, zero_point = uint8_act_params(params.act_scale, params.act_zero_point, params.a_bits)
        if zero_point == 0 or not _foldable(module):
            folded[name] = params
            continue
        shift = zero_point * scale
        if isinstance(module, nn.Conv2d) and any(module.padding):
            maps[name] = border_map(module, input_sizes[name], shift)
        correction = -shift * module.weight.sum(dim=tuple(range(1, module.weight.dim())))
        if module.bias is None:
            module.bias = nn.Parameter(correction.clone(), requires_grad=False)
        else:
            module.bias.add_(correction)
        module.register_forward_pre_hook(_Shift(shift))
        folded[name] = dataclasses.replace(params, act_zero_point=0)
    return FoldedLayers(folded, maps)


def insert_border_maps(
    graph_module: torch.fx.GraphModule,
    border_maps: Mapping[str, torch.Tensor],
    layer_name_of: Callable[[torch.fx.Node], Optional[str]],
) -> None:
    """Add each convolution's border map to its output in an exported graph, in place.

    Done on the graph, not with a forward hook: an op run by a hook belongs to the Conv2d's source partition, and
    X86InductorQuantizer requires a convolution partition's output to be the convolution itself. The constant is
    subtracted negated (see ``_Shift``)."""
    done = set()
    graph = graph_module.graph
    for node in list(graph.nodes):
        name = layer_name_of(node) if node.target is torch.ops.aten.conv2d.default else None
        if name not in border_maps:
            continue
        if name in done:
            raise RuntimeError(f"{name}: more than one convolution in the exported graph")
        attribute = f"border_map_{len(done)}"
        graph_module.register_buffer(attribute, -border_maps[name])
        with graph.inserting_after(node):
            constant = graph.get_attr(attribute)
        with graph.inserting_after(constant):
            corrected = graph.call_function(torch.ops.aten.sub.Tensor, (node, constant))
        constant.meta["val"] = node.meta["val"].new_empty(border_maps[name].shape)
        corrected.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(corrected, delete_user_cb=lambda user: user is not corrected)
        done.add(name)
    missing = sorted(set(border_maps) - done)
    if missing:
        raise RuntimeError(f"convolutions with border maps not found in the exported graph: {missing}")
    graph_module.recompile()


@torch.no_grad()
def conv_input_sizes(model: nn.Module, names: Iterable[str], run: Callable[[], object]) -> Dict[str, Tuple[int, int]]:
    """``(H, W)`` of each named Conv2d's input during one call of ``run`` (a forward of ``model``)."""
    sizes: Dict[str, Tuple[int, int]] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            def record(_module: nn.Module, args: tuple, name: str = name) -> None:
                sizes[name] = tuple(args[0].shape[-2:])
            handles.append(module.register_forward_pre_hook(record))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return sizes
