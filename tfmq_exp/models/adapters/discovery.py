"""Structure discovery by watching one real forward pass (removable forward pre-hooks, no source edits).

Two questions are answered from what the network actually does rather than from hard-coded indices:
the order in which modules are first called (the forward order of reconstruction units, DESIGN 1.3),
and, for blocks that consume ``torch.cat([h, skip], dim=1)``, how many leading channels are ``h``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _tensors(value: Any) -> Iterator[Tensor]:
    """Yield every tensor found in nested tuples / lists / dicts."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def first_call_order(modules: Mapping[str, nn.Module], run: Callable[[], Any]) -> list[str]:
    """Return the names of ``modules`` in the order of their first call while ``run()`` executes.

    Modules that are never called are left out. The hooks are removed even if ``run`` raises.

    Args:
        modules: name -> module to watch.
        run: a callable that performs one forward pass of the network that holds the modules.
    """
    order: list[str] = []
    seen: set[str] = set()

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if name not in seen:
                seen.add(name)
                order.append(name)

        return hook

    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return order


def concat_split_points(
    groups: Sequence[tuple[nn.Module, Mapping[str, nn.Module]]], run: Callable[[], Any]
) -> dict[str, int]:
    """Find consumers whose input is ``cat([h, skip], dim=1)`` and return the channel count of ``h``.

    Each group is a container module (an up block) and the consumers inside it (its ResNet blocks). The
    4-D tensors passed into the container (its ``hidden_states`` and its tuple of skip tensors) are the
    candidate skips; a consumer's input whose trailing channels equal a candidate exactly is a concat, and
    its split point is ``input_channels - skip_channels``. Consumers whose input is not such a concat are
    left out.

    Args:
        groups: (container, {consumer_name: consumer}) pairs.
        run: a callable that performs one forward pass.

    Returns:
        consumer name -> number of leading channels that come from ``h``.
    """
    candidates: dict[int, list[Tensor]] = {}
    inputs: dict[str, tuple[int, Tensor]] = {}

    def container_hook(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            found = [tensor.detach().clone() for tensor in _tensors((args, kwargs)) if tensor.dim() == 4]
            candidates.setdefault(index, []).extend(found)

        return hook

    def consumer_hook(index: int, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if name in inputs:
                return
            first = next(_tensors((args, kwargs)), None)
            if first is not None and first.dim() == 4:
                inputs[name] = (index, first.detach().clone())

        return hook

    handles = []
    for index, (container, consumers) in enumerate(groups):
        handles.append(container.register_forward_pre_hook(container_hook(index), with_kwargs=True))
        for name, consumer in consumers.items():
            handles.append(consumer.register_forward_pre_hook(consumer_hook(index, name), with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()

    splits: dict[str, int] = {}
    for name, (index, tensor) in inputs.items():
        for skip in candidates.get(index, []):
            skip_channels = skip.shape[1]
            same_layout = skip.shape[0] == tensor.shape[0] and skip.shape[2:] == tensor.shape[2:]
            if same_layout and skip_channels < tensor.shape[1] and torch.equal(tensor[:, -skip_channels:], skip):
                splits[name] = tensor.shape[1] - skip_channels
                break
    return splits
