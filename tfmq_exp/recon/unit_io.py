"""Capture what one unit receives and returns inside a full UNet forward (forward hooks, stopped early).

For block reconstruction (DESIGN 1.3) a unit's inputs come from the network quantized so far and its target
from the full-precision network, on the same calibration samples. A forward pre-hook (``with_kwargs=True``)
records every argument the unit is called with, a forward hook on the full-precision twin records its output;
both then raise :class:`StopForward`, so the rest of the UNet is not computed (as in BRECQ's data utilities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from tfmq_exp.conditioning import nest
from tfmq_exp.recon.capture_buffer import CaptureBudget, CaptureBuffer, layout_of, layout_probe


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
    """Everything a unit received over all samples: batched tensors ``[M, ...]`` (held, or spilled to a
    :class:`CaptureBuffer`) plus the call template."""

    tensors: dict[str, Tensor | CaptureBuffer]
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


def _is_batched(value: Any, size: int) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == size


def _same(first: Any, other: Any) -> bool:
    if isinstance(first, Tensor) and isinstance(other, Tensor):
        return first.shape == other.shape and torch.equal(first, other.to(first.device))
    return first == other


class _Recorder:
    """Writes each call's batched values into buffers of the budget as they come; checks the rest is constant.

    Whether an argument is batched is decided at the first call (a tensor whose first dimension is that call's
    batch size); a later call that disagrees is an error, as is a non-batched argument that changes. The rows keep
    the layout that concatenating the calls' tensors would give (:func:`layout_of`, on one-row samples).
    """

    def __init__(self, rows: int, budget: CaptureBudget) -> None:
        self.rows, self.budget = rows, budget
        self.buffers: dict[str, CaptureBuffer] = {}
        self.probes: dict[str, Tensor] = {}  # one row laid out as the concatenation of the calls so far
        self.constants: dict[str, Any] = {}
        self.started = False

    def record(self, size: int, values: dict[str, Any]) -> None:
        if not self.started:
            for key, value in values.items():
                if _is_batched(value, size):
                    layout = layout_of([value])
                    self.buffers[key] = self.budget.allocate(self.rows, value.shape[1:], value.dtype, layout)
                else:
                    self.constants[key] = value.detach().cpu() if isinstance(value, Tensor) else value
            self.started = True
        for key, value in values.items():
            if key in self.buffers and _is_batched(value, size):
                self.buffers[key].append(value)
                self.probes[key] = layout_probe([self.probes[key], value] if key in self.probes else [value])
            elif key in self.buffers or not _same(self.constants[key], value):
                raise ValueError(f"unit argument {key!r} is neither batched nor constant across calls")

    def tensors(self) -> dict[str, Tensor | CaptureBuffer]:
        for key, buffer in self.buffers.items():
            if buffer.written != self.rows:
                raise RuntimeError(f"captured {buffer.written} rows of {key!r} for {self.rows} samples")
            buffer.relayout(layout_of([self.probes[key]]))
        return {key: buffer.materialized() for key, buffer in self.buffers.items()}


def capture_inputs(
    unet: nn.Module, unit: nn.Module, samples: ReconSamples, batch_size: int, budget: CaptureBudget | None = None
) -> CapturedInputs:
    """Record every argument ``unit`` receives when ``unet`` runs on ``samples`` (forward stopped at the unit).

    Args:
        unet: the network (e.g. quantized so far, weights on, activations off).
        unit: a submodule of ``unet``.
        samples: the reconstruction samples.
        batch_size: samples per UNet forward.
        budget: where the batched tensors' rows go (held or spilled, see :mod:`~tfmq_exp.recon.capture_buffer`);
            ``None``: held in memory.

    Returns:
        The batched tensors (on the CPU; a spilled one as a :class:`CaptureBuffer`) and the template to call the
        unit with them.
    """
    recorder = _Recorder(len(samples), budget or CaptureBudget(None, Path(".")))
    sizes: list[int] = []
    signatures: list[tuple[int, tuple[str, ...]]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        signature = (len(args), tuple(kwargs))
        if signatures and signatures[0] != signature:
            raise ValueError(f"unit called with different arguments: {signature} vs {signatures[0]}")
        signatures.append(signature)
        record = {f"arg{i}": value for i, value in enumerate(args)}
        record.update({f"kw:{name}": value for name, value in kwargs.items()})
        recorder.record(sizes[-1], record)
        raise StopForward

    handle = unit.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _run(unet, samples, batch_size, sizes.append)
    finally:
        handle.remove()
    num_args, kwarg_names = signatures[0]
    return CapturedInputs(recorder.tensors(), CallTemplate(num_args, list(kwarg_names), recorder.constants))


def capture_output(
    unet: nn.Module, unit: nn.Module, samples: ReconSamples, batch_size: int, budget: CaptureBudget | None = None
) -> Tensor | CaptureBuffer:
    """Record the main output of ``unit`` when ``unet`` runs on ``samples`` (forward stopped after the unit).

    Args:
        unet: the network (e.g. the full-precision one).
        unit: a submodule of ``unet``.
        samples: the reconstruction samples.
        batch_size: samples per UNet forward.
        budget: where the rows go (see :func:`capture_inputs`).

    Returns:
        ``[M, ...]`` on the CPU (a :class:`CaptureBuffer` when spilled).
    """
    recorder = _Recorder(len(samples), budget or CaptureBudget(None, Path(".")))
    sizes: list[int] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        recorder.record(sizes[-1], {"output": first_tensor(output)})
        raise StopForward

    handle = unit.register_forward_hook(hook)
    try:
        _run(unet, samples, batch_size, sizes.append)
    finally:
        handle.remove()
    return recorder.tensors()["output"]
