"""Quantized Conv2d / Linear, registered by the float layer type they replace (optimum-quanto style).

A quantized layer keeps the float ``weight`` / ``bias`` (so turning quantization off gives the exact float
layer), a per-output-channel :class:`~tfmq_exp.quant.adaround.WeightQuantizer` and a per-tensor input
:class:`~tfmq_exp.quant.act_quantizer.ActQuantizer`.

With a shortcut split (Q-Diffusion), input channels ``[:split]`` and ``[split:]`` (the two halves of
``cat(h, skip)``) are quantized separately, activations and weights: a second activation quantizer
(``act_quantizer_split``) for input channels ``[split:]`` and a second weight quantizer
(``weight_quantizer_split``) for ``weight[:, split:]``, each half with its own per-output-channel range and its
own AdaRound variables (Q-Diffusion qdiff/quant_layer.py:248-288, ``act_quantizer_0`` / ``weight_quantizer_0``;
qdiff/block_recon.py:51-55).
"""

from __future__ import annotations

from typing import Callable, ClassVar, Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.adaround import WeightQuantizer
from tfmq_exp.quant.spec import LayerQuantSpec

_REGISTRY: Dict[Type[nn.Module], Type["QuantModule"]] = {}


def register_quant_module(float_type: Type[nn.Module]) -> Callable[[Type["QuantModule"]], Type["QuantModule"]]:
    """Class decorator: register a :class:`QuantModule` subclass as the replacement of ``float_type``.

    Args:
        float_type: the float layer class (matched exactly, not by subclass).

    Returns:
        The decorator.
    """

    def decorator(cls: Type["QuantModule"]) -> Type["QuantModule"]:
        if float_type in _REGISTRY:
            raise ValueError(f"{float_type.__name__} already has a quantized module: {_REGISTRY[float_type].__name__}")
        cls.float_type = float_type
        _REGISTRY[float_type] = cls
        return cls

    return decorator


def quant_module_class(module: nn.Module) -> Optional[Type["QuantModule"]]:
    """The registered quantized class for ``type(module)`` (exact type), or ``None``."""
    return _REGISTRY.get(type(module))


def quant_module_class_by_name(name: str) -> Type["QuantModule"]:
    """The registered quantized class called ``name`` (``QuantConv2d``, ...), for rebuilding from a map."""
    for cls in _REGISTRY.values():
        if cls.__name__ == name:
            return cls
    raise KeyError(f"no quantized module class named {name!r}; registered: {[c.__name__ for c in _REGISTRY.values()]}")


class QuantModule(nn.Module):
    """Base of quantized layers: float parameters, weight quantizer(s), input activation quantizer(s).

    Args:
        weight: the float weight parameter (shared with the replaced layer, not copied).
        bias: the float bias parameter or ``None``.
        spec: the layer's quantization settings.
        in_channels: size of the input's channel dimension (validates ``spec.split``).
        init_weight_range: run the weight range search now (``False`` when a state dict will be loaded).

    Attributes:
        weight_quantizer: quantizes the weight (with a split: ``weight[:, :split]``).
        weight_quantizer_split: with a split, quantizes ``weight[:, split:]``; else ``None``.
        act_quantizer: quantizes the input (with a split: input channels ``[:split]``).
        act_quantizer_split: with a split, quantizes input channels ``[split:]``; else ``None``.
        use_weight_quant: quantize the weight in ``forward``.
    """

    float_type: ClassVar[Type[nn.Module]]
    channel_dim: ClassVar[int]  # dimension of the input that holds the channels (for the split)

    def __init__(
        self,
        weight: nn.Parameter,
        bias: Optional[nn.Parameter],
        spec: LayerQuantSpec,
        in_channels: int,
        init_weight_range: bool = True,
    ) -> None:
        super().__init__()
        if spec.split and not 0 < spec.split < in_channels:
            raise ValueError(f"split={spec.split} must lie strictly between 0 and in_channels={in_channels}")
        self.spec = spec
        self.weight = weight
        self.bias = bias
        self.weight_quantizer = WeightQuantizer(spec.w_bits, num_channels=weight.shape[0]).to(weight.device)
        split_weight = WeightQuantizer(spec.w_bits, num_channels=weight.shape[0]) if spec.split else None
        self.register_module("weight_quantizer_split", None if split_weight is None else split_weight.to(weight.device))
        if init_weight_range:
            for _, quantizer, part in self.weight_parts():
                quantizer.init_range(part, spec.weight_init, spec.weight_lp, spec.weight_shrink_steps)
        self.act_quantizer = self._new_act_quantizer().to(weight.device)
        split_quantizer = self._new_act_quantizer().to(weight.device) if spec.split else None
        self.register_module("act_quantizer_split", split_quantizer)
        self.use_weight_quant = True

    def _new_act_quantizer(self) -> ActQuantizer:
        return ActQuantizer(self.spec.a_bits, range_method=self.spec.act_range, momentum=self.spec.ema_momentum)

    @property
    def split(self) -> int:
        """Shortcut split channel count (0: none)."""
        return self.spec.split

    def act_quantizers(self) -> List[Tuple[str, ActQuantizer]]:
        """``(attribute name, quantizer)`` of the input quantizer(s)."""
        pairs = [("act_quantizer", self.act_quantizer)]
        if self.act_quantizer_split is not None:
            pairs.append(("act_quantizer_split", self.act_quantizer_split))
        return pairs

    def set_quant_state(self, weight: bool, act: bool) -> None:
        """Switch weight and input activation quantization on or off independently."""
        self.use_weight_quant = weight
        for _, quantizer in self.act_quantizers():
            quantizer.enabled = act

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Input activation fake quantization (two quantizers along the channels with a split)."""
        if self.act_quantizer_split is None:
            return self.act_quantizer(x)
        first, second = torch.split(x, [self.split, x.shape[self.channel_dim] - self.split], dim=self.channel_dim)
        return torch.cat([self.act_quantizer(first), self.act_quantizer_split(second)], dim=self.channel_dim)

    def weight_parts(self) -> List[Tuple[str, WeightQuantizer, torch.Tensor]]:
        """``(attribute name, quantizer, the part of the weight it quantizes)`` for every weight quantizer.

        Without a split: the whole weight. With a split: ``weight[:, :split]`` and ``weight[:, split:]`` (axis 1
        holds the input channels of Conv2d and Linear weights), as views of the one float parameter.
        """
        if self.weight_quantizer_split is None:
            return [("weight_quantizer", self.weight_quantizer, self.weight)]
        return [
            ("weight_quantizer", self.weight_quantizer, self.weight[:, : self.split]),
            ("weight_quantizer_split", self.weight_quantizer_split, self.weight[:, self.split :]),
        ]

    def quantized_weight(self) -> torch.Tensor:
        """The weight used in ``forward`` (fake-quantized when ``use_weight_quant``; halves joined on axis 1)."""
        if not self.use_weight_quant:
            return self.weight
        parts = [quantizer(part) for _, quantizer, part in self.weight_parts()]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def weight_quantizers(self) -> List[WeightQuantizer]:
        """Every weight quantizer of the layer (the rounding variables a reconstruction optimises)."""
        return [quantizer for _, quantizer, _ in self.weight_parts()]

    def named_weight_quantizers(self) -> List[Tuple[str, WeightQuantizer]]:
        """``(attribute name, quantizer)`` of the weight quantizer(s)."""
        return [(name, quantizer) for name, quantizer, _ in self.weight_parts()]

    def enable_adaround(self, soft: bool = True) -> List[nn.Parameter]:
        """Start learned rounding for this layer's weight; returns the AdaRound variables ``alpha`` (one per half)."""
        return [quantizer.enable_adaround(part, soft=soft) for _, quantizer, part in self.weight_parts()]

    def allocate_rounding(self, rounding: str, name: str = "weight_quantizer") -> None:
        """Give weight quantizer ``name`` placeholder state of ``rounding`` (to load a saved state dict into).

        Args:
            rounding: ``nearest`` (nothing to allocate), ``adaround`` or ``frozen``.
            name: the quantizer's attribute name (see :meth:`weight_parts`).
        """
        parts = {part_name: (quantizer, part) for part_name, quantizer, part in self.weight_parts()}
        if name not in parts:
            raise KeyError(f"no weight quantizer {name!r}; this layer has {sorted(parts)}")
        quantizer, part = parts[name]
        if rounding == "adaround":
            quantizer.allocate_adaround(part.shape)
        elif rounding == "frozen":
            quantizer.allocate_frozen(part.shape)
        elif rounding != "nearest":
            raise ValueError(f"unknown weight rounding {rounding!r}; valid: nearest, adaround, frozen")

    def freeze_weight(self) -> None:
        """Store the hard-rounded weight codes of every weight quantizer (drops ``alpha``); the float weight is kept."""
        for _, quantizer, part in self.weight_parts():
            quantizer.freeze(part)

    def layer_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The float operation with the module's own hyperparameters."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``op(Q_a(x), Q_w(W)) + b``."""
        return self.layer_forward(self.quantize_input(x), self.quantized_weight())


@register_quant_module(nn.Conv2d)
class QuantConv2d(QuantModule):
    """Quantized ``nn.Conv2d`` (same stride, padding, padding mode, dilation and groups)."""

    channel_dim = 1

    def __init__(self, conv: nn.Conv2d, spec: LayerQuantSpec, init_weight_range: bool = True) -> None:
        if spec.split and conv.groups != 1:
            raise ValueError(f"a split needs groups=1 (the weight splits on its input channels), not {conv.groups}")
        super().__init__(conv.weight, conv.bias, spec, conv.in_channels, init_weight_range)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups, self.padding_mode = conv.dilation, conv.groups, conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice

    @classmethod
    def from_float(cls, module: nn.Conv2d, spec: LayerQuantSpec, init_weight_range: bool = True) -> "QuantConv2d":
        """Build from a float ``nn.Conv2d`` (its parameters are shared, not copied).

        Args:
            module: the float convolution.
            spec: quantization settings.
            init_weight_range: run the weight range search now.

        Returns:
            The quantized convolution.
        """
        if type(module) is not nn.Conv2d:
            raise TypeError(f"QuantConv2d.from_float expects nn.Conv2d, got {type(module).__name__}")
        return cls(module, spec, init_weight_range)

    def layer_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, w_bits={self.spec.w_bits}, a_bits={self.spec.a_bits}, split={self.split}"
        )


@register_quant_module(nn.Linear)
class QuantLinear(QuantModule):
    """Quantized ``nn.Linear`` (the split, if any, is along the last input dimension)."""

    channel_dim = -1

    def __init__(self, linear: nn.Linear, spec: LayerQuantSpec, init_weight_range: bool = True) -> None:
        super().__init__(linear.weight, linear.bias, spec, linear.in_features, init_weight_range)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @classmethod
    def from_float(cls, module: nn.Linear, spec: LayerQuantSpec, init_weight_range: bool = True) -> "QuantLinear":
        """Build from a float ``nn.Linear`` (its parameters are shared, not copied).

        Args:
            module: the float linear layer.
            spec: quantization settings.
            init_weight_range: run the weight range search now.

        Returns:
            The quantized linear layer.
        """
        if type(module) is not nn.Linear:
            raise TypeError(f"QuantLinear.from_float expects nn.Linear, got {type(module).__name__}")
        return cls(module, spec, init_weight_range)

    def layer_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, w_bits={self.spec.w_bits}, "
            f"a_bits={self.spec.a_bits}, split={self.split}"
        )
