"""Model adapters: the only code that knows diffusers attribute names.

``get_adapter(unet)`` returns a :class:`UNetAdapter` that describes the UNet's Temporal Information Block
(:class:`TIBSpec`), computes ``h(t)`` and the temporal features ``e_i(t)``, lists reconstruction units
(:class:`Unit`) in forward order and the channel split points of the up path's skip concatenations.
"""

from tfmq_exp.models.adapters.base import ExampleInputs, UNetAdapter
from tfmq_exp.models.adapters.registry import (
    get_adapter,
    reconstruction_units,
    register_adapter,
    shortcut_split_points,
)
from tfmq_exp.models.adapters.spec import UNIT_KINDS, TemporalFeature, TIBSpec, Unit
from tfmq_exp.models.adapters.unet2d import UNet2DAdapter
from tfmq_exp.models.adapters.unet2d_condition import UNet2DConditionAdapter

__all__ = [
    "UNIT_KINDS",
    "ExampleInputs",
    "TIBSpec",
    "TemporalFeature",
    "UNet2DAdapter",
    "UNet2DConditionAdapter",
    "UNetAdapter",
    "Unit",
    "get_adapter",
    "reconstruction_units",
    "register_adapter",
    "shortcut_split_points",
]
