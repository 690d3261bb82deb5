"""Cache-based temporal maintenance: the modules that stand in for the TIB (DESIGN 1.5).

A sampler visits a finite timestep set ``{t_1..t_T}``, so each temporal feature ``e_i(t) = g_i(h(t))`` is a
``[T, C_i]`` table. :func:`quantize_rows` stores it as integer codes with per-``(t, i)`` asymmetric parameters
(range widened to contain 0, as every quantizer here)::

    s_{t,i} = (max_c e_i(t) - min_c e_i(t)) / (2^b - 1),   z_{t,i} = round(-min_c e_i(t) / s_{t,i})
    q_{t,i} = clamp(round(e_i(t) / s_{t,i}) + z_{t,i}, 0, 2^b - 1),   e_hat_i(t) = s_{t,i} (q_{t,i} - z_{t,i})

:class:`CachedTemporalFeature` takes the place of a ResNet block's ``time_emb_proj`` (module replacement; no
diffusers code is edited) and returns ``e_hat_i(t)`` for ``TimestepContext.current``, expanded to the batch and
ignoring its input. :class:`TimeEmbeddingPlaceholder` takes the place of ``time_proj`` / ``time_embedding``
and returns zeros of the right shape, so no TIB arithmetic runs on a cached timestep.

Routing of a timestep ``t`` in both modules: ``t`` in the table (``timesteps``) -> the cache; ``t`` routed to
the TIB (``routed_timesteps``, per-timestep selection, DESIGN 1.6) -> the wrapped original module
(``fallback``); any other ``t`` -> the wrapped module when ``fallback_all`` (config ``method.cache_fallback``),
else a :class:`~tfmq_exp.errors.CacheMismatchError` naming it and the cached timesteps. If the wrapped module
has per-timestep (FSC) activation parameters but none for ``t``, it runs with those of the nearest calibrated
timestep **(ours)**. Both modules register with the quantization map (``quant.layout.register_map_module``),
so artifacts rebuild them. Model-level helpers (find, check, attach a context) are in
:mod:`tfmq_exp.temporal.maintenance`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from tfmq_exp.errors import CacheMismatchError
from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.quant.layout import iter_act_quantizers, register_map_module
from tfmq_exp.quant.quantizer import range_to_qparams, validate_bits

if TYPE_CHECKING:  # features.py imports this module's users; a runtime import would be circular
    from tfmq_exp.temporal.features import TemporalFeatureSet

CACHE_BITS_RANGE = (2, 16)
PARAM_BYTES_PER_ROW = 8  # s_{t,i} and z_{t,i}, stored as float32 each
_LISTED = 12


def code_dtype(bits: int) -> torch.dtype:
    """Storage dtype of ``bits``-bit codes: ``uint8`` up to 8 bits, else ``int32``."""
    return torch.uint8 if bits <= 8 else torch.int32


def quantize_rows(values: Tensor, bits: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Quantize each row ``e_i(t)`` of a ``[T, C]`` table with its own asymmetric min/max parameters.

    Args:
        values: the full-precision features, one row per timestep.
        bits: bit-width ``b``.

    Returns:
        ``(codes [T, C]`` in :func:`code_dtype`, ``scale [T]``, ``zero_point [T]`` float32 holding integers).
    """
    values = values.detach().float()
    scale, zero_point = range_to_qparams(values.amin(dim=1), values.amax(dim=1), bits)
    codes = torch.clamp(torch.round(values / scale[:, None]) + zero_point[:, None], 0, 2**bits - 1)
    return codes.to(code_dtype(bits)), scale, zero_point


def dequantize_rows(codes: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """``s (q - z)`` row by row (the inverse map of :func:`quantize_rows`)."""
    return (codes.to(scale.dtype) - zero_point[..., None]) * scale[..., None]


def row_bytes(num_channels: int, bits: int) -> int:
    """Bytes of one cached row: ``C`` codes at ``bits`` each (byte-aligned) plus its scale and zero point."""
    return math.ceil(num_channels * bits / 8) + PARAM_BYTES_PER_ROW


def listing(values: Sequence[int]) -> str:
    """``[a, b, ...]`` for error messages, cut after a dozen values."""
    values = list(values)
    more = f" ... (+{len(values) - _LISTED} more)" if len(values) > _LISTED else ""
    return "[" + ", ".join(str(v) for v in values[:_LISTED]) + more + "]"


def _module_device(module: Optional[nn.Module]) -> torch.device:
    tensors = [] if module is None else [*module.parameters(), *module.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


class TimestepKeyedModule(nn.Module):
    """Base of the cache modules: timestep tables, the wrapped original module, routing (see module doc).

    Args:
        timesteps: timesteps served by this module itself (distinct integers).
        routed_timesteps: timesteps sent to ``fallback`` (disjoint from ``timesteps``).
        fallback: the original (possibly quantized) module, or ``None`` when it is dropped.
        fallback_all: send every timestep that is not served to ``fallback``.
        context: the shared timestep context (attach later with :meth:`set_context` after loading).
    """

    def __init__(
        self, timesteps: Sequence[int], routed_timesteps: Sequence[int] = (), fallback: Optional[nn.Module] = None,
        fallback_all: bool = False, context: Optional[TimestepContext] = None,
    ) -> None:  # fmt: skip
        super().__init__()
        served, routed = [int(t) for t in timesteps], [int(t) for t in routed_timesteps]
        if len(set(served)) != len(served) or len(set(routed)) != len(routed) or set(served) & set(routed):
            raise ValueError(f"timesteps {served} and routed timesteps {routed} must be distinct and disjoint")
        if (routed or fallback_all) and fallback is None:
            raise ValueError("routed timesteps or fallback_all need the original module as fallback")
        self.register_buffer("timesteps", torch.tensor(served, dtype=torch.long))
        self.register_buffer("routed_timesteps", torch.tensor(routed, dtype=torch.long))
        self.register_module("fallback", fallback)
        self.fallback_all = fallback_all
        self.context = context
        self._rows: Dict[int, int] = {}
        self._routed: set = set()
        self._refresh_tables()

    def _refresh_tables(self) -> None:
        self._rows = {int(t): row for row, t in enumerate(self.timesteps.tolist())}
        self._routed = {int(t) for t in self.routed_timesteps.tolist()}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh_tables()

    def set_context(self, context: TimestepContext) -> None:
        """Attach the shared timestep context (after loading)."""
        self.context = context

    def cached_timesteps(self) -> List[int]:
        """The timesteps this module serves itself, in table order."""
        return [int(t) for t in self.timesteps.tolist()]

    def serves(self, timestep: int) -> bool:
        """Whether a call at ``timestep`` succeeds (from the table or the wrapped module)."""
        if timestep in self._rows:
            return True
        return self.fallback is not None and (self.fallback_all or timestep in self._routed)

    def _per_sample(self, x: Tensor) -> Optional[Tensor]:
        """The output for a call whose samples have their own timesteps (``context.samples``), else ``None``.

        A reconstruction unit is fitted on batches that mix timesteps (:meth:`TimestepContext.for_samples`): each
        group of samples with one timestep goes through the normal routing (table row, or the wrapped module for a
        routed timestep), and the outputs are put back in sample order.
        """
        samples = None if self.context is None else self.context.samples
        if samples is None:
            return None
        values = [int(t) for t in samples.tolist()]
        parts, order = [], []
        for timestep in dict.fromkeys(values):
            index = [i for i, value in enumerate(values) if value == timestep]
            with self.context.at(timestep):
                parts.append(self(x[index]))
            order.extend(index)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts)[inverse.to(x.device)]

    def _route(self) -> Optional[int]:
        """Table row of the current timestep, or ``None`` when the wrapped module must run.

        Raises:
            RuntimeError: no context, or no current timestep.
            CacheMismatchError: the timestep is neither cached nor allowed to fall back.
        """
        current = None if self.context is None else self.context.current
        if current is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the current timestep: attach_timestep_context() to the UNet (and "
                "set_context() after loading), or use context.at(t)"
            )
        row = self._rows.get(current)
        if row is not None:
            return row
        if self.fallback is not None and (self.fallback_all or current in self._routed):
            return None
        raise CacheMismatchError(
            f"timestep {current!r} is not in the temporal-feature cache (built for another sampler); cached "
            f"timesteps: {listing(self.cached_timesteps())}. Rebuild the cache for this sampler's timesteps, or "
            "set method.cache_fallback=true to run the quantized TIB for missing timesteps"
        )

    def _run_fallback(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped module; FSC quantizers lacking the timestep use the nearest calibrated one."""
        current = self.context.current
        calibrated = None
        for _, quantizer in iter_act_quantizers(self.fallback):
            if quantizer.per_timestep:
                own = set(quantizer.calibrated_timesteps())
                calibrated = own if calibrated is None else calibrated & own
        if calibrated and current not in calibrated:
            nearest = min(calibrated, key=lambda t: (abs(t - current), t))
            with self.context.at(nearest):
                return self.fallback(*args, **kwargs)
        return self.fallback(*args, **kwargs)

    def _routing_entry(self) -> Dict[str, Any]:
        return {
            "num_timesteps": len(self._rows),
            "num_routed": len(self._routed),
            "fallback": self.fallback is not None,
            "fallback_all": self.fallback_all,
        }

    @staticmethod
    def _routing_args(module: nn.Module, entry: Dict[str, Any], context: Optional[TimestepContext]) -> Dict[str, Any]:
        """Tables of the mapped sizes (``load_state_dict`` fills them) for ``from_map_entry``."""
        count, routed = int(entry["num_timesteps"]), int(entry["num_routed"])
        return dict(
            timesteps=list(range(count)), routed_timesteps=list(range(count, count + routed)),
            fallback=module if entry["fallback"] else None, fallback_all=bool(entry["fallback_all"]), context=context,
        )  # fmt: skip


@register_map_module
class CachedTemporalFeature(TimestepKeyedModule):
    """A quantized table of a function of ``t`` alone, standing in for the module that computes it.

    In place of ``<resnet>.time_emb_proj`` it holds ``e_hat_i(t)``; in place of ``time_embedding`` (models
    whose embedding also has a conditioning part) it holds ``h(t)``. ``forward(x, ...)`` ignores ``x`` except
    for its batch size and dtype and returns ``[B, C]``.

    Args:
        num_channels: ``C``.
        bits: code bit-width (2..16).
        timesteps / routed_timesteps / fallback / fallback_all / context: see :class:`TimestepKeyedModule`.
    """

    def __init__(self, num_channels: int, bits: int, timesteps: Sequence[int], **routing: Any) -> None:
        super().__init__(timesteps, **routing)
        self.bits = validate_bits(bits, CACHE_BITS_RANGE, "cache bits")
        self.num_channels = num_channels
        count = len(self._rows)
        self.register_buffer("codes", torch.zeros(count, num_channels, dtype=code_dtype(bits)))
        self.register_buffer("scale", torch.ones(count))
        self.register_buffer("zero_point", torch.zeros(count))

    @classmethod
    def from_values(cls, values: Tensor, timesteps: Sequence[int], bits: int, **routing: Any) -> CachedTemporalFeature:
        """Quantize ``values [T, C]`` (row k is the feature at ``timesteps[k]``) into a new cache module."""
        if values.dim() != 2 or values.shape[0] != len(timesteps):
            raise ValueError(f"values of shape {tuple(values.shape)} do not match {len(timesteps)} timesteps")
        module = cls(values.shape[1], bits, timesteps, **routing).to(values.device)
        codes, scale, zero_point = quantize_rows(values, bits)
        module.codes.copy_(codes)
        module.scale.copy_(scale)
        module.zero_point.copy_(zero_point)
        return module

    def dequantized(self) -> Tensor:
        """The whole table ``e_hat [T, C]`` in the order of :meth:`cached_timesteps`."""
        return dequantize_rows(self.codes, self.scale, self.zero_point)

    def cache_bytes(self) -> int:
        """Codes at ``bits`` plus per-row parameters (see :func:`row_bytes`)."""
        return len(self._rows) * row_bytes(self.num_channels, self.bits)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``e_hat(t)`` of the current timestep as ``[B, C]`` (or the wrapped module's output).

        Within :meth:`TimestepContext.for_samples` (a unit called on a batch of several timesteps) each sample
        gets the row of its own timestep.
        """
        per_sample = self._per_sample(x)
        if per_sample is not None:
            return per_sample
        row = self._route()
        if row is None:
            return self._run_fallback(x, *args, **kwargs)
        value = (self.codes[row].to(self.scale.dtype) - self.zero_point[row]) * self.scale[row]  # s (q - z), [C]
        return value.to(x.dtype if x.is_floating_point() else value.dtype).expand(x.shape[0], -1)

    def map_entry(self) -> Dict[str, Any]:
        """Layout facts for the quantization map."""
        return {"num_channels": self.num_channels, "bits": self.bits, **self._routing_entry()}

    @classmethod
    def from_map_entry(cls, module: nn.Module, entry: Dict[str, Any], context: Optional[TimestepContext]) -> nn.Module:
        """An empty module of the mapped layout around the float ``module`` (to load a state dict into)."""
        routing = cls._routing_args(module, entry, context)
        return cls(int(entry["num_channels"]), int(entry["bits"]), **routing).to(_module_device(module))

    def extra_repr(self) -> str:
        sizes = f"timesteps={len(self._rows)}, routed={len(self._routed)}"
        return f"{sizes}, channels={self.num_channels}, bits={self.bits}"


@register_map_module
class TimeEmbeddingPlaceholder(TimestepKeyedModule):
    """Zeros of shape ``[B, out_features]`` in place of ``time_proj`` / ``time_embedding`` on cached timesteps.

    On the other (routed or fallback) timesteps it runs the original module it wraps.

    Args:
        out_features: width of the replaced module's output.
        timesteps / routed_timesteps / fallback / fallback_all / context: see :class:`TimestepKeyedModule`.
    """

    def __init__(self, out_features: int, timesteps: Sequence[int], **routing: Any) -> None:
        super().__init__(timesteps, **routing)
        self.out_features = out_features
        self.register_buffer("zeros", torch.zeros(1, out_features), persistent=False)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Zeros ``[B, out_features]`` (``B = x.shape[0]``), or the wrapped module's output."""
        per_sample = self._per_sample(x)
        if per_sample is not None:
            return per_sample
        if self._route() is None:
            return self._run_fallback(x, *args, **kwargs)
        return self.zeros.expand(x.shape[0], -1)

    def map_entry(self) -> Dict[str, Any]:
        """Layout facts for the quantization map."""
        return {"out_features": self.out_features, **self._routing_entry()}

    @classmethod
    def from_map_entry(cls, module: nn.Module, entry: Dict[str, Any], context: Optional[TimestepContext]) -> nn.Module:
        """An empty module of the mapped layout around the float ``module``."""
        routing = cls._routing_args(module, entry, context)
        return cls(int(entry["out_features"]), **routing).to(_module_device(module))

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, timesteps={len(self._rows)}, routed={len(self._routed)}"


def quantization_bound(features: "TemporalFeatureSet", bits: int) -> float:
    """Mean relative MSE of the full-precision features after per-(t, i) quantization to ``bits``.

    This is the error a ``bits``-bit cache of exact features cannot go below (and, being exact, reaches): the
    reference line for cache-based maintenance (DESIGN 1.5).
    """
    from tfmq_exp.temporal.diagnostics import temporal_feature_errors

    return temporal_feature_errors(features, quantized_feature_set(features, bits)).rel_mse_mean


def quantized_feature_set(features: "TemporalFeatureSet", bits: int) -> "TemporalFeatureSet":
    """``e_hat_i(t)``: every row of every table quantized as the cache stores it (:func:`quantize_rows`), dequantized."""
    from tfmq_exp.temporal.features import TemporalFeatureSet

    quantized = {name: dequantize_rows(*quantize_rows(features[name], bits)) for name in features.names}
    return TemporalFeatureSet(list(features.timesteps), quantized)
