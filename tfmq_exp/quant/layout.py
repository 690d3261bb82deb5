"""Where the quantized parts of a model are, and its layout as a serialisable map.

:func:`quantization_map` records the current layout (per layer: spec, weight rounding state, per-timestep
timestep sets); :func:`apply_quantization_map` rebuilds that layout on a fresh float model so a saved state
dict can be loaded into it.

Besides quantized layers, other code may replace whole modules (e.g. the temporal-feature cache of
``tfmq_exp.temporal.feature_cache`` in place of a TIB projection). Such a class registers itself with
:func:`register_map_module`: it describes itself with ``map_entry()`` and is rebuilt, around the float module
found at its name, by ``from_map_entry(module, entry, context)`` before the quantized layers are rebuilt (a
quantized layer may live inside it).
"""

from __future__ import annotations

import importlib
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple, Type

from diffusers.models.attention_processor import Attention
from torch import nn

from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.attention import QuantAttnProcessor
from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.quant.modules import QuantModule, quant_module_class_by_name
from tfmq_exp.quant.spec import AttnQuantSpec, LayerQuantSpec, QuantizationMap

PROCESSOR_SUFFIX = ".processor"
MAP_MODULE_PACKAGE = "tfmq_exp."  # registered map modules are imported by name only from this package

_MAP_MODULES: Dict[str, Type[nn.Module]] = {}


def register_map_module(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Class decorator: record modules of ``cls`` in quantization maps and rebuild them from the map.

    The class must provide ``map_entry(self) -> dict`` (JSON-serialisable layout facts, e.g. tensor sizes)
    and a classmethod ``from_map_entry(module, entry, context) -> nn.Module`` that builds an empty instance
    (buffers of the right shapes) around ``module``, the float module at the same name of a fresh model.

    Raises:
        ValueError: another class of the same name is registered.
    """
    known = _MAP_MODULES.get(cls.__name__)
    if known is not None and known is not cls:
        raise ValueError(f"a map module class named {cls.__name__} is already registered ({known.__module__})")
    _MAP_MODULES[cls.__name__] = cls
    return cls


def map_module_class(entry: Dict[str, object]) -> Optional[Type[nn.Module]]:
    """The registered map-module class of a map entry (importing its module if needed), else ``None``."""
    name = str(entry.get("type"))
    if name not in _MAP_MODULES:
        module_path = entry.get("module")
        if not isinstance(module_path, str) or not module_path.startswith(MAP_MODULE_PACKAGE):
            return None
        importlib.import_module(module_path)
    return _MAP_MODULES.get(name)


def iter_quant_modules(model: nn.Module) -> Iterator[Tuple[str, QuantModule]]:
    """``(name, module)`` for every quantized Conv2d / Linear in ``model`` (``model`` itself included)."""
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            yield name, module


def iter_attn_processors(model: nn.Module) -> Iterator[Tuple[str, QuantAttnProcessor]]:
    """``(attention module name, processor)`` for every :class:`QuantAttnProcessor` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, QuantAttnProcessor):
            yield (name[: -len(PROCESSOR_SUFFIX)] if name.endswith(PROCESSOR_SUFFIX) else name), module


def iter_act_quantizers(model: nn.Module) -> Iterator[Tuple[str, ActQuantizer]]:
    """``(name, quantizer)`` for every :class:`ActQuantizer` in ``model`` (layers and attention)."""
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            yield name, module


def find_submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The submodule ``name``, or ``None`` where it no longer exists (a parent was replaced, e.g. by maintenance)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted path ``name`` of ``model`` (replacing the module there)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _act_timesteps(pairs: Iterable[Tuple[str, ActQuantizer]]) -> Dict[str, List[int]]:
    return {name: quantizer.calibrated_timesteps() for name, quantizer in pairs if quantizer.per_timestep}


def _rounding_key(quantizer_name: str) -> str:
    """Map key of a weight quantizer's rounding: ``weight_rounding`` / ``weight_rounding_split``."""
    return "weight_rounding" + quantizer_name[len("weight_quantizer") :]


def quantization_map(model: nn.Module) -> QuantizationMap:
    """Record the current quantization layout of ``model`` (specs, rounding state, per-timestep sets).

    Args:
        model: a model quantized by :func:`quantize_` (or rebuilt by :func:`apply_quantization_map`).

    Returns:
        The map, in module order.
    """
    layers: Dict[str, Dict[str, object]] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            layers[name] = {
                "type": type(module).__name__,
                **module.spec.to_dict(),
                **{_rounding_key(attr): quantizer.rounding for attr, quantizer in module.named_weight_quantizers()},
                "act_timesteps": _act_timesteps(module.act_quantizers()),
            }
        elif _MAP_MODULES.get(type(module).__name__) is type(module):
            layers[name] = {"type": type(module).__name__, "module": type(module).__module__, **module.map_entry()}
    for name, processor in iter_attn_processors(model):
        layers[name] = {
            "type": type(processor).__name__,
            **processor.spec.to_dict(),
            "act_timesteps": _act_timesteps(processor.act_quantizers()),
        }
    return QuantizationMap(layers=layers)


def apply_quantization_map(
    model: nn.Module, quant_map: QuantizationMap, context: Optional[TimestepContext] = None
) -> None:
    """Rebuild a quantized layout on a float model, without calibration (to load a state dict into).

    Args:
        model: a fresh float model of the same architecture (modified in place).
        quant_map: the map saved with the quantized model.
        context: timestep context for per-timestep quantizers (may be attached later).

    Raises:
        ValueError: the model lacks a mapped module or has a different layer type there (all listed).
    """
    problems: List[str] = []
    rebuilt: Set[str] = set()
    for name, entry in quant_map.items():  # registered map modules first: quantized layers may sit inside them
        map_class = map_module_class(entry)
        if map_class is None:
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            message = f"the model does not match the quantization map:\n  {name}: missing in the model"
            raise ValueError(message) from None
        replace_module(model, name, map_class.from_map_entry(module, entry, context))
        rebuilt.add(name)
    plans: List[Tuple[str, Dict[str, object], nn.Module]] = []
    for name, entry in quant_map.items():
        if name in rebuilt:
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: missing in the model")
            continue
        if entry["type"] == QuantAttnProcessor.__name__:
            if not isinstance(module, Attention):
                problems.append(f"{name}: expected a diffusers Attention, found {type(module).__name__}")
        else:
            try:
                expected = quant_module_class_by_name(str(entry["type"])).float_type
            except KeyError as error:
                problems.append(f"{name}: {error.args[0]}")
                continue
            if type(module) is not expected:
                problems.append(f"{name}: expected {expected.__name__}, found {type(module).__name__}")
            elif entry.get("split") and "weight_rounding_split" not in entry:
                problems.append(f"{name}: a split layer recorded before weight splits (activation split only); "
                                "quantize it again")
        plans.append((name, entry, module))
    if problems:
        raise ValueError("the model does not match the quantization map:\n  " + "\n  ".join(problems))
    for name, entry, module in plans:
        if entry["type"] == QuantAttnProcessor.__name__:
            processor = QuantAttnProcessor.for_attention(module, AttnQuantSpec.from_dict(entry))
            module.set_processor(processor)
            pairs = processor.act_quantizers()
        else:
            quantized = quant_module_class_by_name(str(entry["type"])).from_float(
                module, LayerQuantSpec.from_dict(entry), init_weight_range=False
            )
            for attr, _ in quantized.named_weight_quantizers():
                quantized.allocate_rounding(str(entry.get(_rounding_key(attr), "nearest")), attr)
            replace_module(model, name, quantized)
            pairs = quantized.act_quantizers()
        timesteps = entry.get("act_timesteps", {})
        for quantizer_name, quantizer in pairs:
            if quantizer_name in timesteps:
                quantizer.enable_per_timestep(timesteps[quantizer_name], context)
