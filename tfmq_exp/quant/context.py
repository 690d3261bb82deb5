"""The current sampling timestep, shared by reference with every per-timestep quantizer (FSC, DESIGN 1.4).

FSC gives an activation quantizer its own parameters ``(s_t, z_t)`` for each sampling timestep ``t``. The
quantizer learns the current ``t`` from a :class:`TimestepContext`: one plain object that the UNet's
forward pre-hook (:func:`attach_timestep_context`) writes and every per-timestep quantizer reads. Nothing is
injected into diffusers objects and no diffusers code is edited; the hook is removable.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

TimestepValue = Union[int, float]


class TimestepContext:
    """Holds the timestep of the UNet call in progress.

    A plain object (not an ``nn.Module``) shared by reference: the pre-hook sets ``current``, the quantizers
    read it. ``copy.deepcopy`` returns the same object, so a deep copy of a quantized model keeps reading
    the one shared context instead of a detached copy that nothing updates.

    Attributes:
        current: the timestep (an ``int``; a ``float`` only for a non-integral timestep), or ``None``
            outside a UNet call.
        samples: ``[B]`` timesteps of the samples of a call made directly on a reconstruction unit, whose batch
            mixes timesteps (see :meth:`for_samples`); ``None`` otherwise. Modules that look a value up per sample
            (the temporal-feature cache) read it; per-timestep quantizers need one timestep and read ``current``.
    """

    def __init__(self, current: Optional[TimestepValue] = None) -> None:
        self.current = current
        self.samples: Optional[torch.Tensor] = None
        self._handles: dict[int, RemovableHandle] = {}  # id(UNet) -> its pre-hook: the context owns its hooks

    def attach(self, unet: nn.Module) -> RemovableHandle:
        """Make every forward of ``unet`` publish its timestep here (idempotent: one hook per UNet).

        Registers a forward pre-hook (``with_kwargs=True``) that reads the ``timestep`` argument (positional
        argument 1 or keyword; int, float, 0-d tensor or equal-valued batch) and sets :attr:`current` before any
        layer runs. The value stays set after the call.

        Returns:
            The hook's handle (the same one on a second call for the same UNet).
        """
        if id(unet) not in self._handles:
            self._handles[id(unet)] = unet.register_forward_pre_hook(_TimestepPreHook(self), with_kwargs=True)
        return self._handles[id(unet)]

    def is_attached(self, unet: nn.Module) -> bool:
        """Whether :meth:`attach` hooked ``unet`` (and :meth:`detach` did not undo it)."""
        return id(unet) in self._handles

    def detach(self, unet: nn.Module) -> None:
        """Remove the pre-hook of ``unet`` (no-op when not attached)."""
        handle = self._handles.pop(id(unet), None)
        if handle is not None:
            handle.remove()

    @contextlib.contextmanager
    def attached_to(self, unet: nn.Module) -> Iterator["TimestepContext"]:
        """Attach to ``unet`` for a ``with`` block; a hook that was there before stays after it."""
        attached_here = not self.is_attached(unet)
        self.attach(unet)
        try:
            yield self
        finally:
            if attached_here:
                self.detach(unet)

    def __deepcopy__(self, memo: dict) -> "TimestepContext":
        return self

    def __repr__(self) -> str:
        return f"TimestepContext(current={self.current!r})"

    @contextlib.contextmanager
    def at(self, timestep: TimestepValue) -> Iterator["TimestepContext"]:
        """Set ``current`` for the duration of a ``with`` block (for code that calls TIB layers directly).

        Args:
            timestep: the timestep to expose; any tensor, int or float form accepted by :func:`timestep_value`.

        Returns:
            A context manager yielding this context; the previous value is restored on exit.
        """
        previous = self.current, self.samples
        self.current, self.samples = timestep_value(timestep), None
        try:
            yield self
        finally:
            self.current, self.samples = previous


    @contextlib.contextmanager
    def for_samples(self, timesteps: torch.Tensor) -> Iterator["TimestepContext"]:
        """Expose per-sample timesteps ``[B]`` for a call on a unit outside the UNet's forward.

        ``current`` is set too when every sample has the same timestep (else ``None``); both are restored on exit.
        """
        previous = self.current, self.samples
        flat = timesteps.detach().reshape(-1)
        self.samples = flat
        self.current = timestep_value(flat) if bool((flat == flat[0]).all()) else None
        try:
            yield self
        finally:
            self.current, self.samples = previous


def timestep_value(timestep: Any) -> TimestepValue:
    """Reduce a UNet ``timestep`` argument to one Python number.

    Args:
        timestep: an int, a float, a 0-d tensor, or a 1-d tensor whose entries are all equal (a batch
            sampled at one timestep).

    Returns:
        The timestep as ``int`` when it is integral, else as ``float``.

    Raises:
        ValueError: for an empty batch or a batch with different timesteps (per-timestep parameters
            need one timestep per call).
        TypeError: for any other argument type.
    """
    if isinstance(timestep, torch.Tensor):
        flat = timestep.detach().reshape(-1)
        if flat.numel() == 0:
            raise ValueError("timestep tensor is empty")
        if not bool((flat == flat[0]).all()):
            values = sorted(set(flat.tolist()))
            raise ValueError(
                f"per-timestep quantization needs one timestep per UNet call, got a batch with timesteps {values}"
            )
        timestep = flat[0].item()
    if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
        raise TypeError(f"timestep must be an int, a float or a tensor, got {type(timestep).__name__}")
    if isinstance(timestep, float) and timestep.is_integer():
        return int(timestep)
    return timestep


class _TimestepPreHook:
    """Forward pre-hook body: copies the UNet's ``timestep`` argument into a :class:`TimestepContext`."""

    def __init__(self, context: TimestepContext) -> None:
        self.context = context

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if "timestep" in kwargs:
            timestep = kwargs["timestep"]
        elif len(args) > 1:
            timestep = args[1]
        else:
            raise ValueError(
                f"{type(module).__name__} was called without a timestep (expected positional argument 1 "
                "or keyword 'timestep')"
            )
        self.context.current = timestep_value(timestep)
        self.context.samples = None
        return None


def attach_timestep_context(unet: nn.Module, context: TimestepContext) -> RemovableHandle:
    """Make every forward of ``unet`` publish its timestep to ``context`` (:meth:`TimestepContext.attach`).

    Args:
        unet: a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` (any module whose forward takes
            ``(sample, timestep, ...)``).
        context: the shared context read by the per-timestep quantizers and the temporal-feature cache.

    Returns:
        The hook handle (the context keeps it; ``context.detach(unet)`` removes it).
    """
    return context.attach(unet)
