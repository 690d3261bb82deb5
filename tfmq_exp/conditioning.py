"""The UNet's conditioning keyword arguments as flat per-row tensors, and back.

A UNet call takes nested conditioning (SD-XL: ``added_cond_kwargs={"text_embeds": ..., "time_ids": ...}``).
Calibration data, reconstruction sets and references store it flat, one ``[N, ...]`` tensor per dotted key
(``added_cond_kwargs.text_embeds``), so rows can be sliced, concatenated and saved like ``x_t``; :func:`nest`
rebuilds the keyword arguments at the call.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

SEPARATOR = "."


def flatten(kwargs: Mapping[str, Any], prefix: str = "") -> dict[str, Tensor]:
    """``{"a": {"b": T}}`` -> ``{"a.b": T}``; entries that are ``None`` are dropped.

    Raises:
        TypeError: a value is neither a tensor, a mapping nor ``None`` (it could not be stored per row).
    """
    flat: dict[str, Tensor] = {}
    for key, value in kwargs.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Tensor):
            flat[name] = value
        elif isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}{SEPARATOR}"))
        else:
            raise TypeError(f"conditioning {name!r} is a {type(value).__name__}, not a tensor or a mapping")
    return flat


def nest(flat: Mapping[str, Tensor]) -> dict[str, Any]:
    """The inverse of :func:`flatten`: the UNet's keyword arguments."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(SEPARATOR)
        level = nested
        for parent in parents:
            level = level.setdefault(parent, {})
        level[leaf] = value
    return nested


def rows(flat: Mapping[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    """Rows ``[start, stop)`` of every tensor."""
    return {name: value[start:stop] for name, value in flat.items()}


def to_device(flat: Mapping[str, Tensor], device: Any) -> dict[str, Tensor]:
    """Every tensor on ``device``."""
    return {name: value.to(device) for name, value in flat.items()}
