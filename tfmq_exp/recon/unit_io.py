"""Capture what one unit receives and returns inside a full UNet forward (forward hooks, stopped early).

For block reconstruction (DESIGN 1.3) a unit's inputs come from the network quantized so far and its target
from the full-precision network, on the same calibration samples. A forward pre-hook (``with_kwargs=True``)
records every argument the unit is called with, a forward hook on the full-precision twin records its output;
both then raise :class:`StopForward`, so the rest of the UNet is not computed (as in BRECQ's data utilities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from tfmq_exp.conditioning import nest


class StopForward(Exception):
    """Raised by a capture hook to end the UNet forward once the unit has been seen."""


@dataclass
class ReconSamples:
    """The reconstruction samples: UNet inputs, grouped by timestep.

    Attributes:
        x: ``[M, C, H, W]`` noisy samples ``x_t``.
        timesteps: ``[M]`` their timesteps (equal values contiguous).
        conditioning: extra UNet keyword arguments, ``[M, ...]`` each.
    """

    x: Tensor
    timesteps: Tensor
    conditioning: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor, dict[str, Tensor]]]:
        """Consecutive batches of at most ``batch_size`` samples, each with a single timestep.

        One timestep per UNet call keeps per-timestep quantizers and their timestep pre-hook well defined.
        """
        values = self.timesteps.tolist()
        start = 0
        while start < len(values):
            end = start
            while end < len(values) and values[end] == values[start] and end - start < batch_size:
                end += 1
            conditioning = {name: value[start:end] for name, value in self.conditioning.items()}
            yield self.x[start:end], self.timesteps[start:end], conditioning
            start = end


@dataclass
class CallTemplate:
    """How to call a unit from a batch of captured tensors.

    Arguments that were batched tensors are looked up in the batch by key (``arg0``, ``kw:temb``); all other
    arguments (``None``, ints, tensors without the batch dimension) are constants that were the same in every
    captured call.
    """

    num_args: int
    kwarg_names: list[str]
    constants: dict[str, Any]

    def build(self, tensors: dict[str, Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` of one call on a batch of ``tensors``."""

        def value(key: str) -> Any:
            return tensors[key] if key in tensors else self.constants[key]

        args = tuple(value(f"arg{i}") for i in range(self.num_args))
        return args, {name: value(f"kw:{name}") for name in self.kwarg_names}

    def __call__(self, unit: nn.Module, tensors: dict[str, Tensor]) -> Any:
        args, kwargs = self.build(tensors)
        return unit(*args, **kwargs)


@dataclass
class CapturedInputs:
    """Everything a unit received over all samples: batched tensors ``[M, ...]`` plus the call template."""

    tensors: dict[str, Tensor]
    template: CallTemplate


def first_tensor(output: Any) -> Tensor:
    """The main output of a unit: itself for a tensor, else the first element of a tuple / model output."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    raise TypeError(f"cannot find the output tensor in a {type(output).__name__}")


def _run(unet: nn.Module, samples: ReconSamples, batch_size: int, on_batch: Callable[[int], None]) -> None:
    device = next(unet.parameters()).device
    with torch.no_grad():
        for x, t, conditioning in samples.batches(batch_size):
            on_batch(x.shape[0])
            kwargs = nest({name: value.to(device) for name, value in conditioning.items()})
            try:
                unet(x.to(device), t.to(device), **kwargs, return_dict=False)
            except StopForward:
                continue
            raise RuntimeError("the unit was not called during the UNet forward")


def _merge(calls: list[tuple[int, dict[str, Any]]]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Concatenate per-batch values that carry the batch dimension; check that the others are constant."""
    tensors: dict[str, Tensor] = {}
    constants: dict[str, Any] = {}
    for key in calls[0][1]:
        values = [(size, call[key]) for size, call in calls]
        if all(isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size for size, v in values):
            tensors[key] = torch.cat([v for _, v in values])
            continue
        first = values[0][1]
        for _, other in values[1:]:
            if isinstance(first, Tensor) and isinstance(other, Tensor):
                same = torch.equal(first, other)
            else:
                same = first == other
            if not same:
                raise ValueError(f"unit argument {key!r} is neither batched nor constant across calls")
        constants[key] = first
    return tensors, constants


def capture_inputs(unet: nn.Module, unit: nn.Module, samples: ReconSamples, batch_size: int) -> CapturedInputs:
    """Record every argument ``unit`` receives when ``unet`` runs on ``samples`` (forward stopped at the unit).

    Args:
        unet: the network (e.g. quantized so far, weights on, activations off).
        unit: a submodule of ``unet``.
        samples: the reconstruction samples.
        batch_size: samples per UNet forward.

    Returns:
        The batched tensors (on the CPU) and the template to call the unit with them.
    """
    calls: list[tuple[int, dict[str, Any]]] = []
    sizes: list[int] = []
    signatures: list[tuple[int, tuple[str, ...]]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        signature = (len(args), tuple(kwargs))
        if signatures and signatures[0] != signature:
            raise ValueError(f"unit called with different arguments: {signature} vs {signatures[0]}")
        signatures.append(signature)
        record = {f"arg{i}": value for i, value in enumerate(args)}
        record.update({f"kw:{name}": value for name, value in kwargs.items()})
        calls.append((sizes[-1], {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in record.items()}))
        raise StopForward

    handle = unit.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _run(unet, samples, batch_size, sizes.append)
    finally:
        handle.remove()
    tensors, constants = _merge(calls)
    num_args, kwarg_names = signatures[0]
    return CapturedInputs(tensors, CallTemplate(num_args, list(kwarg_names), constants))


def capture_output(unet: nn.Module, unit: nn.Module, samples: ReconSamples, batch_size: int) -> Tensor:
    """Record the main output of ``unit`` when ``unet`` runs on ``samples`` (forward stopped after the unit).

    Args:
        unet: the network (e.g. the full-precision one).
        unit: a submodule of ``unet``.
        samples: the reconstruction samples.
        batch_size: samples per UNet forward.

    Returns:
        ``[M, ...]`` on the CPU.
    """
    outputs: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        outputs.append(first_tensor(output).detach().cpu())
        raise StopForward

    handle = unit.register_forward_hook(hook)
    try:
        _run(unet, samples, batch_size, lambda size: None)
    finally:
        handle.remove()
    return torch.cat(outputs)
