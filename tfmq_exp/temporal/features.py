"""Temporal features over a finite timestep set: collection and a safetensors-friendly container.

A sampler visits a finite set of timesteps ``{t_1..t_T}``, so every temporal feature ``e_i(t)`` (DESIGN 1.4)
is fully described by a ``[T, C_i]`` matrix. TIAR, FSC, the cache and the diagnostics all work on these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tfmq_exp.errors import CacheMismatchError
from tfmq_exp.models.adapters import UNetAdapter
from tfmq_exp.quant.context import TimestepContext

Number = int | float


def _timestep_list(timesteps: Tensor | Sequence[Number]) -> list[Number]:
    if isinstance(timesteps, Tensor):
        return [value.item() for value in timesteps.flatten()]
    return [value.item() if isinstance(value, Tensor) else value for value in timesteps]


@dataclass
class TemporalFeatureSet:
    """Temporal features ``e_i(t)`` of one model at a finite list of timesteps.

    Attributes:
        timesteps: the T timesteps, in row order (python ints, or floats for continuous-time models).
        features: feature name -> Tensor [T, C_i], in the TIB's feature order.
    """

    timesteps: list[Number]
    features: dict[str, Tensor]

    def __post_init__(self) -> None:
        self.timesteps = _timestep_list(self.timesteps)
        if len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError(f"timesteps must be distinct, got {self.timesteps}")
        for name, tensor in self.features.items():
            if tensor.dim() != 2 or tensor.shape[0] != len(self.timesteps):
                expected = f"[{len(self.timesteps)}, C]"
                raise ValueError(f"feature {name!r} has shape {tuple(tensor.shape)}, expected {expected}")

    @property
    def names(self) -> list[str]:
        return list(self.features)

    def __getitem__(self, name: str) -> Tensor:
        return self.features[name]

    def __len__(self) -> int:
        return len(self.timesteps)

    def index(self, timestep: Number) -> int:
        """Row of ``timestep``.

        Raises:
            KeyError: the timestep is not in the set.
        """
        value = timestep.item() if isinstance(timestep, Tensor) else timestep
        try:
            return self.timesteps.index(value)
        except ValueError:
            raise KeyError(f"timestep {value} is not in this feature set ({len(self)} timesteps)") from None

    def rows(self, timesteps: Tensor | Sequence[Number]) -> dict[str, Tensor]:
        """Features of a batch of timesteps: ``{name: [B, C_i]}`` (the lookup of cache-based maintenance).

        Raises:
            CacheMismatchError: a timestep is not in the set (the table belongs to one sampler).
        """
        wanted = _timestep_list(timesteps)
        unknown = sorted({t for t in wanted if t not in self.timesteps})
        if unknown:
            raise CacheMismatchError(
                f"timesteps {unknown} are not in the temporal-feature table (it holds {len(self)} timesteps of one "
                "sampler); rebuild it for this sampler"
            )
        index = torch.tensor([self.timesteps.index(t) for t in wanted], dtype=torch.long)
        return {name: values[index] for name, values in self.features.items()}

    def select(self, timesteps: Sequence[Number]) -> TemporalFeatureSet:
        """The subset at ``timesteps``, in that order."""
        rows = torch.tensor([self.index(t) for t in _timestep_list(timesteps)], dtype=torch.long)
        return TemporalFeatureSet(_timestep_list(timesteps), {name: x[rows] for name, x in self.features.items()})

    def to_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Flat tensors for ``safetensors.torch.save_file``; feature order kept in the keys.

        Keys: ``{prefix}timesteps`` and ``{prefix}feature/{index:03d}/{name}``.
        """
        integral = all(isinstance(t, int) for t in self.timesteps)
        tensors = {f"{prefix}timesteps": torch.tensor(self.timesteps, dtype=torch.int64 if integral else torch.float64)}
        for index, (name, tensor) in enumerate(self.features.items()):
            tensors[f"{prefix}feature/{index:03d}/{name}"] = tensor.detach().cpu().contiguous()
        return tensors

    @classmethod
    def from_dict(cls, tensors: dict[str, Tensor], prefix: str = "") -> TemporalFeatureSet:
        """Inverse of :meth:`to_dict` (other keys, e.g. of other prefixes, are ignored)."""
        if f"{prefix}timesteps" not in tensors:
            raise KeyError(f"no '{prefix}timesteps' entry: not a TemporalFeatureSet dict")
        head = f"{prefix}feature/"
        entries = []
        for key, tensor in tensors.items():
            if key.startswith(head):
                index, name = key[len(head) :].split("/", 1)
                entries.append((int(index), name, tensor))
        features = {name: tensor for _, name, tensor in sorted(entries, key=lambda entry: entry[0])}
        return cls(_timestep_list(tensors[f"{prefix}timesteps"]), features)


def _rows(value: Any, start: int, stop: int, total: int) -> Any:
    """Slice rows [start, stop) of every tensor with ``total`` rows in a nested conditioning structure."""
    if isinstance(value, Tensor):
        return value[start:stop] if value.dim() > 0 and value.shape[0] == total else value
    if isinstance(value, dict):
        return {key: _rows(item, start, stop, total) for key, item in value.items()}
    return value


@torch.no_grad()
def collect_temporal_features(
    adapter: UNetAdapter,
    timesteps: Tensor | Sequence[Number],
    conditioning: dict[str, Any] | None = None,
    batch_size: int | None = None,
    before_chunk: Callable[[Tensor], None] | None = None,
) -> TemporalFeatureSet:
    """Compute ``e_i(t)`` for every temporal feature of ``adapter``'s UNet at ``timesteps``.

    Args:
        adapter: the UNet's adapter (full precision or quantized; its current modules are used).
        timesteps: the finite timestep set, e.g. a scheduler's ``timesteps``.
        conditioning: the UNet forward's keyword arguments when the TIB is conditioned (batch 1 broadcasts;
            batch T pairs row by row).
        batch_size: timesteps per call (default all at once); use 1 with ``before_chunk`` when a quantized TIB
            must select per-timestep parameters (FSC).
        before_chunk: called with each chunk's timesteps before it is computed.

    Returns:
        The features on the CPU, one row per timestep.
    """
    steps = timesteps if isinstance(timesteps, Tensor) else torch.as_tensor(list(timesteps))
    steps = steps.flatten()
    total = steps.shape[0]
    step = batch_size or total
    chunks: dict[str, list[Tensor]] = {}
    for start in range(0, total, step):
        stop = min(start + step, total)
        if before_chunk is not None:
            before_chunk(steps[start:stop])
        part = adapter.temporal_features(steps[start:stop], _rows(conditioning, start, stop, total))
        for name, tensor in part.items():
            chunks.setdefault(name, []).append(tensor.detach().cpu())
    return TemporalFeatureSet(_timestep_list(steps), {name: torch.cat(parts) for name, parts in chunks.items()})


@torch.no_grad()
def collect_quantized_temporal_features(
    adapter_q: UNetAdapter, context: TimestepContext, timesteps: Sequence[int]
) -> TemporalFeatureSet:
    """``e_hat_i(t)`` of a quantized TIB, one timestep at a time so that FSC selects ``(s_t, z_t)`` (DESIGN 1.4).

    Args:
        adapter_q: the quantized UNet's adapter.
        context: the timestep context its per-timestep quantizers read (set to each ``t`` in turn).
        timesteps: the sampler's timesteps.

    Returns:
        The features on the CPU in float32, one row per timestep.
    """
    rows: dict[str, list[Tensor]] = {}
    for t in timesteps:
        with context.at(t):
            for name, value in adapter_q.temporal_features([t]).items():
                rows.setdefault(name, []).append(value[0].detach().float().cpu())
    return TemporalFeatureSet(list(timesteps), {name: torch.stack(values) for name, values in rows.items()})
