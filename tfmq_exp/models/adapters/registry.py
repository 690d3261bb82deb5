"""Which adapter describes which UNet class, and name-level shortcuts over :func:`get_adapter`."""

from __future__ import annotations

from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from tfmq_exp.models.adapters.base import ExampleInputs, UNetAdapter
from tfmq_exp.models.adapters.spec import Unit
from tfmq_exp.models.adapters.unet2d import UNet2DAdapter
from tfmq_exp.models.adapters.unet2d_condition import UNet2DConditionAdapter

_ADAPTERS: dict[type, type[UNetAdapter]] = {
    UNet2DModel: UNet2DAdapter,
    UNet2DConditionModel: UNet2DConditionAdapter,
}


def register_adapter(model_class: type, adapter_class: type[UNetAdapter]) -> None:
    """Make :func:`get_adapter` use ``adapter_class`` for ``model_class`` and its subclasses."""
    _ADAPTERS[model_class] = adapter_class


def get_adapter(unet: nn.Module) -> UNetAdapter:
    """Return the adapter for ``unet``, chosen by its class (the nearest registered base class wins).

    Raises:
        TypeError: no adapter is registered for the class or any of its bases.
        NotImplementedError: the class is known but this configuration of it is not supported.
    """
    for cls in type(unet).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls](unet)
    supported = ", ".join(sorted(cls.__name__ for cls in _ADAPTERS))
    raise TypeError(f"no UNet adapter for {type(unet).__module__}.{type(unet).__name__}; supported: {supported}")


def reconstruction_units(
    unet: nn.Module,
    example_inputs: ExampleInputs | None = None,
    layer_types: tuple[type, ...] = (nn.Conv2d, nn.Linear),
) -> list[Unit]:
    """Shortcut for ``get_adapter(unet).reconstruction_units(example_inputs, layer_types)``."""
    return get_adapter(unet).reconstruction_units(example_inputs, layer_types)


def shortcut_split_points(unet: nn.Module, example_inputs: ExampleInputs | None = None) -> dict[str, int]:
    """Shortcut for ``get_adapter(unet).shortcut_split_points(example_inputs)``."""
    return get_adapter(unet).shortcut_split_points(example_inputs)
