"""Serialisable per-layer quantization settings and the model-wide quantization map.

A :class:`LayerQuantSpec` is everything needed to rebuild one quantized Conv2d / Linear, an
:class:`AttnQuantSpec` one quantized attention processor. The :class:`QuantizationMap` records, per module
name, the spec plus the state that changes the state dict's layout (AdaRound variables, frozen codes,
per-timestep tables), so an artifact can be rebuilt on a fresh float model (optimum-quanto style).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from tfmq_exp.quant.act_quantizer import ACT_BITS_RANGE, ACT_RANGE_METHODS
from tfmq_exp.quant.quantizer import validate_bits
from tfmq_exp.quant.weight_range import WEIGHT_RANGE_METHODS

MAP_FORMAT_VERSION = 1


def _validate_act(a_bits: Optional[int], act_range: str, ema_momentum: float) -> None:
    if a_bits is not None:
        validate_bits(a_bits, ACT_BITS_RANGE, "a_bits")
    if act_range not in ACT_RANGE_METHODS:
        raise ValueError(f"act_range={act_range!r} is not valid; choose one of: {', '.join(ACT_RANGE_METHODS)}")
    if not 0.0 <= ema_momentum < 1.0:
        raise ValueError(f"ema_momentum={ema_momentum} is out of range: allowed [0, 1)")


@dataclass(frozen=True)
class LayerQuantSpec:
    """How one Conv2d / Linear is quantized.

    Attributes:
        w_bits: weight bits (per output channel).
        a_bits: input activation bits (per tensor), ``None`` for full-precision activations.
        weight_init: initial weight range, ``minmax`` or ``shrink``.
        weight_lp: Lp exponent of the shrink search.
        weight_shrink_steps: candidates of the shrink search.
        act_range: activation range estimator, ``minmax`` (EMA) or ``mse``.
        ema_momentum: EMA momentum of the activation range.
        split: Q-Diffusion shortcut split: input channels ``[:split]`` and ``[split:]`` get separate
            activation quantizers, and ``weight[:, :split]`` / ``weight[:, split:]`` separate weight
            quantizers (own per-channel ranges, own AdaRound); 0 = no split.
        temporal: the layer belongs to the TIB (its activations use the temporal bit-width).
    """

    w_bits: int
    a_bits: Optional[int]
    weight_init: str = "shrink"
    weight_lp: float = 2.4
    weight_shrink_steps: int = 80
    act_range: str = "minmax"
    ema_momentum: float = 0.95
    split: int = 0
    temporal: bool = False

    def __post_init__(self) -> None:
        validate_bits(self.w_bits, what="w_bits")
        _validate_act(self.a_bits, self.act_range, self.ema_momentum)
        if self.weight_init not in WEIGHT_RANGE_METHODS:
            raise ValueError(f"weight_init={self.weight_init!r} is not valid; choose one of: {WEIGHT_RANGE_METHODS}")
        if self.split < 0:
            raise ValueError(f"split={self.split} must be >= 0")

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerQuantSpec":
        """Inverse of :meth:`to_dict`; keys that are not fields are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class AttnQuantSpec:
    """How one attention processor quantizes q, k, the softmax probabilities and v.

    Attributes:
        a_bits: activation bits of q, k and v (``None``: no quantization at all).
        act_range: range estimator of q, k and v (the probabilities always use min/max on ``[0, max]``).
        ema_momentum: EMA momentum of the activation ranges.
        softmax_bits: bits of the probabilities (their own value, ``quant.softmax_bits``); ``None`` means
            ``a_bits`` (maps written before the value existed).
    """

    a_bits: Optional[int]
    act_range: str = "minmax"
    ema_momentum: float = 0.95
    softmax_bits: Optional[int] = None

    @property
    def effective_softmax_bits(self) -> Optional[int]:
        """Bits of the probabilities: ``None`` without quantization, else ``softmax_bits`` or ``a_bits``."""
        if self.a_bits is None:
            return None
        return self.softmax_bits if self.softmax_bits is not None else self.a_bits

    def __post_init__(self) -> None:
        _validate_act(self.a_bits, self.act_range, self.ema_momentum)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttnQuantSpec":
        """Inverse of :meth:`to_dict`; keys that are not fields are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class QuantizationMap:
    """Serialisable record of a quantized model: module name -> entry.

    Each entry is a dict with ``type`` (``QuantConv2d``, ``QuantLinear``, ``QuantAttnProcessor``), the
    spec's fields (``w_bits``, ``a_bits``, ``split``, ...), and the layout-changing state:
    ``weight_rounding`` (``nearest`` / ``adaround`` / ``frozen``, layers only; split layers add
    ``weight_rounding_split`` for the quantizer of ``weight[:, split:]``) and ``act_timesteps``
    (quantizer attribute name -> calibrated timesteps, for per-timestep quantizers). Modules registered with
    ``layout.register_map_module`` (e.g. a temporal-feature cache) add entries with their class name as
    ``type``, the defining module's import path as ``module`` and the fields of their own ``map_entry()``.
    """

    layers: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    version: int = MAP_FORMAT_VERSION

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __getitem__(self, name: str) -> Dict[str, Any]:
        return self.layers[name]

    def items(self) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """``(module name, entry)`` pairs in model order."""
        return iter(self.layers.items())

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON form ``{"version": ..., "layers": {...}}``."""
        return {"version": self.version, "layers": json.loads(json.dumps(self.layers))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantizationMap":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: for an unknown map version.
        """
        version = int(data.get("version", -1))
        if version != MAP_FORMAT_VERSION:
            raise ValueError(f"quantization map version {version} is not supported (expected {MAP_FORMAT_VERSION})")
        return cls(layers={name: dict(entry) for name, entry in data["layers"].items()}, version=version)

    def summary(self) -> Dict[str, int]:
        """Count of entries per type (for logs)."""
        counts: Dict[str, int] = {}
        for entry in self.layers.values():
            counts[entry["type"]] = counts.get(entry["type"], 0) + 1
        return counts
