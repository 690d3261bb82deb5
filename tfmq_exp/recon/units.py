"""The reconstruction plan: which units are optimised, in which order, over which quantized layers.

- TIAR (``method.tiar``, DESIGN 1.4) first: the TIB as one unit named ``tib`` over its quantized layers
  (the time-embedding MLP's Linears and every ResNet's ``time_emb_proj``).
- Then, with ``method.recon.enabled`` (DESIGN 1.3), the adapter's units in forward order: the time-embedding
  MLP, each ResNet, attention / transformer block, up / down-sampler and leftover layer, each over its quantized
  layers. Layers TIAR reconstructed are excluded (a ResNet keeps the rounding TIAR learned for its
  ``time_emb_proj``); otherwise a ResNet's ``time_emb_proj`` belongs to that ResNet's unit. Units without a
  layer to optimise are dropped.

Units are found on the full-precision UNet (a dry forward there needs no calibrated quantizers) and located
in the quantized copy by module name.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tfmq_exp.config.schema import MethodConfig
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import QuantModule, iter_quant_modules
from tfmq_exp.quant.layout import find_submodule
from tfmq_exp.temporal.feature_cache import TimestepKeyedModule

TIAR_UNIT = "tib"
TIAR_KIND = "tiar"


@dataclass(frozen=True)
class ReconUnit:
    """One step of the reconstruction plan.

    Attributes:
        index: position in the plan (seeds the unit's randomness, prefixes its checkpoint).
        name: ``tib`` for TIAR, else the unit's dotted module name in the UNet.
        kind: ``tiar``, or the adapter's unit kind (``resnet``, ``attention``, ``time_embedding``, ...).
        layer_names: the quantized layers whose rounding this unit learns.
        state_roots: modules whose state dicts form the unit's checkpoint (the unit module; for TIAR its layers).
    """

    index: int
    name: str
    kind: str
    layer_names: tuple[str, ...]
    state_roots: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (for the manifest and the report)."""
        return {"index": self.index, "name": self.name, "kind": self.kind, "layers": list(self.layer_names)}


def _quantized_layers(unet_q: nn.Module, name: str) -> list[str]:
    module = unet_q.get_submodule(name)
    return [f"{name}.{sub}" if sub else name for sub, _ in iter_quant_modules(module)]


def plan_units(unet_q: nn.Module, unet_fp: nn.Module, method: MethodConfig) -> list[ReconUnit]:
    """The ordered reconstruction units of ``method`` for this model.

    Args:
        unet_q: the quantized UNet.
        unet_fp: its full-precision twin (same module names).
        method: ``tiar`` and ``recon.enabled`` decide which units exist.

    Returns:
        The plan, TIAR unit first; empty when nothing is reconstructed.
    """
    units: list[ReconUnit] = []
    tib_layers: tuple[str, ...] = ()
    tib_names = get_adapter(unet_fp).tib().layer_names()
    if method.tiar:
        tib_layers = tuple(name for name in tib_names if isinstance(find_submodule(unet_q, name), QuantModule))
        if tib_layers:
            units.append(ReconUnit(0, TIAR_UNIT, TIAR_KIND, tib_layers, tib_layers))

    def excluded(name: str) -> bool:
        """TIAR's layers, and layers kept inside a temporal-feature cache module as its fallback (they run only
        on routed timesteps; TIAR, when it ran, already learned their rounding)."""
        parts = name.split(".")
        prefixes = (".".join(parts[:end]) for end in range(1, len(parts)))
        inside_cache = any(isinstance(find_submodule(unet_q, prefix), TimestepKeyedModule) for prefix in prefixes)
        return name in tib_layers or inside_cache

    if method.recon.enabled:
        for unit in get_adapter(unet_fp).reconstruction_units():
            layers = tuple(name for name in _quantized_layers(unet_q, unit.name) if not excluded(name))
            if layers:
                units.append(ReconUnit(len(units), unit.name, unit.kind, layers, (unit.name,)))
    return units
