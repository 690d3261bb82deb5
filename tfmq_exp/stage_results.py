"""What each post-training-quantization stage reports, as typed records handed from stage to stage.

Every record's :meth:`Record.to_dict` writes the section of ``summary.json`` (and of an artifact's
``artifact.json``) that the stage owns, with the keys and key order the loose dicts had; :meth:`Record.from_dict`
reads one back (an artifact's saved sections, ``artifact=DIR``). Records hold results only, never times (the
:class:`~tfmq_exp.timing.StageTimer` holds those).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Mapping, Optional, TypeVar, Union

_OMIT_IF_NONE = "omit_if_none"
R = TypeVar("R", bound="Record")


def absent() -> Any:
    """A field that is ``None`` when the stage did not report it, and then left out of :meth:`Record.to_dict`."""
    return field(default=None, metadata={_OMIT_IF_NONE: True})


class Record:
    """Base of the stage records (dataclasses): JSON in field order, and back."""

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-serialisable values, one key per field; fields made by :func:`absent` only if set."""
        out: dict[str, Any] = {}
        for item in fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if value is None and item.metadata.get(_OMIT_IF_NONE):
                continue
            out[item.name] = value.to_dict() if isinstance(value, Record) else value
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """The record whose :meth:`to_dict` is ``data`` (flat records; nested ones override this)."""
        return cls(**{item.name: data[item.name] for item in fields(cls) if item.name in data})  # type: ignore


@dataclass(frozen=True)
class CalibrationReport(Record):
    """The ``calibration`` section: where the calibration trajectories came from and their size."""

    cache_hit: bool  # loaded from the artifact store (True) or captured by this run (False)
    steps: int  # sampling steps recorded per trajectory
    samples: int  # trajectories recorded


@dataclass(frozen=True)
class QuantizedLayers(Record):
    """The ``quantization`` section: what layer replacement did."""

    layers: int  # layers replaced by quantized ones


@dataclass(frozen=True, kw_only=True)
class CacheReport(Record):
    """The ``cache`` section: a temporal-feature cache installed by cache-based maintenance or a selection."""

    scope: str  # "features" (each TIB projection's output) or "time_embedding" (the t-only part h(t))
    bits: int  # code bit-width of the cached values
    timesteps: int  # sampler timesteps the cache covers
    fallback: bool  # timesteps outside the cache go to the quantized TIB instead of failing
    modules: int  # cache tables installed
    cache_bytes: int  # storage the cache adds: codes plus per-row parameters (counted in the model size)
    code_bytes: int  # the codes alone
    param_bytes: int  # the per-row quantization parameters alone
    stored_bytes: int  # bytes the tables' buffers hold in memory
    features: Optional[dict[str, dict[str, int]]] = absent()  # scope "features": name -> channels, cached_timesteps
    tib_skipped_timesteps: Optional[int] = absent()  # scope "features": timesteps at which no TIB layer runs
    conditioning_modules: Optional[list[str]] = absent()  # scope "time_embedding": what joins the embedding after h(t)
    tib_parameters: int  # parameters of the whole TIB in full precision
    tib_macs_per_step: int  # its multiply-accumulates per sample and step
    removed_parameters: int  # TIB parameters the cache removes from the model
    removed_macs_per_step: float  # multiply-accumulates it removes per step (mean over the sampler's steps)
    removed_flops_per_step: float  # twice that


@dataclass(frozen=True, kw_only=True)
class FeatureSelection(Record):
    """The ``selection`` section of a per-feature disturbance-aware selection (DESIGN 1.6)."""

    metric: str  # method.select.metric
    score: str  # the error key the choice compares (e.g. "feature_rel_mse")
    per_timestep: bool  # chosen per (feature, t) instead of per feature
    choice: dict[str, Any]  # feature -> "cache" | "tib", or feature -> {str(t): "cache" | "tib"} per timestep
    errors: dict[str, dict[str, dict[str, float]]]  # feature -> option -> error key -> mean over timesteps
    cache_bytes: int  # size of the chosen cache
    full_cache_bytes: int  # size of caching every feature at every timestep
    budget_bytes: Optional[int]  # method.select.cache_budget_bytes (None: no budget)
    probe_timestep: Any  # the timestep the disturbance was probed at
    timesteps: list[int]  # the sampler's timesteps
    errors_per_timestep: Optional[dict[str, Any]] = absent()  # per timestep only: the errors at every timestep


@dataclass(frozen=True)
class TimeEmbeddingSelection(Record):
    """The ``selection`` section of a model whose temporal features depend on conditioning too: one choice for
    the whole time embedding, and the errors behind it (means over features and measured pairs)."""

    SCOPE: ClassVar[str] = "time_embedding"  # written as the section's ``scope`` (what tells the two kinds apart)
    metric: str  # method.select.metric
    choice: str  # "cache" or "tib"
    errors: dict[str, dict[str, float]]  # option -> rel_mse / cos_distance
    pairs: int  # (t, conditioning) pairs measured

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.SCOPE, **super().to_dict()}


SelectionReport = Union[FeatureSelection, TimeEmbeddingSelection]


def selection_from_dict(data: Mapping[str, Any]) -> SelectionReport:
    """The selection record a ``selection`` section was written from."""
    if data.get("scope") == TimeEmbeddingSelection.SCOPE:
        return TimeEmbeddingSelection.from_dict(data)
    return FeatureSelection.from_dict(data)


@dataclass(frozen=True)
class MaintenanceReport(Record):
    """What :func:`~tfmq_exp.temporal.maintenance.apply_maintenance` installed; both ``None`` for ``tib``.

    Written as two top-level sections, ``cache`` then ``selection`` (a conditioned model's time-embedding selection
    used to write ``selection`` first; readers go by key).
    """

    cache: Optional[CacheReport] = absent()  # the cache, when one was installed
    selection: Optional[SelectionReport] = absent()  # the selection decision, for method.maintenance=select

    @property
    def cache_bytes(self) -> int:
        """Bytes the installed cache adds to the model (0 without a cache)."""
        return self.cache.cache_bytes if self.cache is not None else 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MaintenanceReport":
        cache, selection = data.get("cache"), data.get("selection")
        return cls(
            cache=CacheReport.from_dict(cache) if cache is not None else None,
            selection=selection_from_dict(selection) if selection is not None else None,
        )


@dataclass(frozen=True)
class ReconstructionReport(Record):
    """The ``reconstruction`` section: TIAR and the block phase of AdaRound reconstruction, merged."""

    tiar: bool  # method.tiar
    recon: bool  # method.recon.enabled
    units: dict[str, dict[str, Any]]  # unit name -> the runner's entry (losses, undecided share, converged, ...)
    resumed_units: list[str]  # units loaded from checkpoints instead of optimised
    seconds: float  # wall time of both phases
    converged: bool  # every unit converged (a unit without the flag counts as converged)

    @classmethod
    def from_phases(cls, tiar: Mapping[str, Any], blocks: Mapping[str, Any]) -> "ReconstructionReport":
        """One report from the runner's reports of the TIAR phase and the block phase."""
        units = {**tiar["units"], **blocks["units"]}
        return cls(
            tiar=tiar["tiar"], recon=tiar["recon"], units=units,
            resumed_units=tiar["resumed_units"] + blocks["resumed_units"],
            seconds=tiar["seconds"] + blocks["seconds"],
            converged=all(unit.get("converged", True) for unit in units.values()),
        )  # fmt: skip


@dataclass(frozen=True)
class ActReconstructionReport(Record):
    """The ``act_reconstruction`` section: Q-Diffusion's activation pass."""

    enabled: bool  # method.act_recon.enabled
    units: dict[str, dict[str, Any]]  # unit name -> losses before and after, plateau ratio, seconds, resumed
    resumed_units: list[str]  # units loaded from checkpoints
    seconds: Optional[float] = absent()  # wall time (absent when the pass did not run)


@dataclass(frozen=True)
class ModelSize(Record):
    """The ``model_size`` section: storage of the quantized model against full precision, in bits."""

    bits: int  # quantized weights at their bit-widths, other parameters at 32 bits, plus any cache
    fp_bits: int  # every parameter of the full-precision model at 32 bits
    ratio: float  # bits / fp_bits
    quantized_parameters: int  # parameters stored at a quantized bit-width
    cache_bytes: int  # bytes of the temporal-feature cache included in ``bits``


@dataclass(frozen=True)
class CapturedMemory(Record):
    """The ``captured_memory`` section: what the engine held of the units' captured data
    (:class:`~tfmq_exp.recon.capture_buffer.CaptureBudget`), in bytes."""

    budget_bytes: Optional[int]  # calib.memory_budget_mb in bytes; None: no bound
    peak_held_bytes: int  # the most captured rows held in memory at once
    peak_spilled_bytes: int  # the most captured rows in spill files at once


@dataclass(frozen=True)
class QuantizationResult(Record):
    """Everything the construction of a quantized model reported; ``None`` where a stage did not run.

    :meth:`to_dict` gives the top-level ``summary.json`` sections, the maintenance's ``cache`` and ``selection``
    among them (not nested).
    """

    calibration: Optional[CalibrationReport] = absent()
    quantization: Optional[QuantizedLayers] = absent()
    maintenance: MaintenanceReport = field(default_factory=MaintenanceReport)
    reconstruction: Optional[ReconstructionReport] = absent()
    act_reconstruction: Optional[ActReconstructionReport] = absent()
    model_size: Optional[ModelSize] = absent()
    captured_memory: Optional[CapturedMemory] = absent()
    artifact: Optional[str] = absent()  # directory of the saved artifact (written, or loaded with artifact=DIR)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in super().to_dict().items():  # the maintenance's sections in its place, one level up
            out.update(value if key == "maintenance" else {key: value})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantizationResult":
        def read(key: str, record: type[Record]) -> Any:
            return record.from_dict(data[key]) if data.get(key) is not None else None

        return cls(
            calibration=read("calibration", CalibrationReport), quantization=read("quantization", QuantizedLayers),
            maintenance=MaintenanceReport.from_dict(data), reconstruction=read("reconstruction", ReconstructionReport),
            act_reconstruction=read("act_reconstruction", ActReconstructionReport),
            model_size=read("model_size", ModelSize), captured_memory=read("captured_memory", CapturedMemory),
            artifact=data.get("artifact"),
        )  # fmt: skip

    def with_artifact(self, path: str) -> "QuantizationResult":
        """The same result, saved at (or loaded from) ``path``."""
        return replace(self, artifact=path)
