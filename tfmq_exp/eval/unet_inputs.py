"""What the UNet receives inside a real sampling run, recorded with a forward pre-hook.

Calibration must see exactly the UNet's inputs in the pipeline the model is used with: ``x_t`` (for guidance, the
doubled batch ``[unconditional; conditional]``), ``t`` and the conditioning keyword arguments
(``encoder_hidden_states``, ``added_cond_kwargs``, ``class_labels``). A forward pre-hook on the UNet records every
call without touching the pipeline.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from tfmq_exp.conditioning import flatten

_NOT_CONDITIONING = ("sample", "timestep", "return_dict")


class UNetInputRecorder:
    """Context manager recording ``(x_t, t, conditioning)`` of every UNet call (CPU copies).

    Args:
        unet: the denoiser; the hook is removed on exit.
    """

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self.samples: list[Tensor] = []
        self.timesteps: list[int] = []
        self.conditioning: list[dict[str, Tensor]] = []
        self._handle: Optional[Any] = None

    def _record(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = timestep.reshape(-1)[0] if isinstance(timestep, Tensor) else timestep
        self.samples.append(sample.detach().cpu())
        self.timesteps.append(int(t))
        extra = {k: v for k, v in kwargs.items() if k not in _NOT_CONDITIONING and isinstance(v, (Tensor, dict))}
        self.conditioning.append({k: v.detach().cpu() for k, v in flatten(extra).items()})

    def __enter__(self) -> "UNetInputRecorder":
        self._handle = self.unet.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._handle is not None
        self._handle.remove()

    def trajectory(self) -> tuple[Tensor, list[int], dict[str, Tensor]]:
        """``x [S, B, ...]`` at each distinct timestep (first call there), the timesteps, the conditioning.

        PLMS evaluates one timestep twice in its warm-up; the first input at a timestep is kept, so the recorded
        set is the sampler's finite timestep set, once each.

        Raises:
            RuntimeError: nothing was recorded, or the conditioning changed between steps of one run.
        """
        if not self.samples:
            raise RuntimeError("the UNet was not called while recording")
        first = self.conditioning[0]
        for index, other in enumerate(self.conditioning[1:], start=1):
            if other.keys() != first.keys() or any(not torch.equal(first[k], other[k]) for k in first):
                raise RuntimeError(f"the UNet's conditioning changed at call {index}; it must be the same at every step")
        kept: dict[int, Tensor] = {}
        for t, sample in zip(self.timesteps, self.samples):
            kept.setdefault(t, sample)
        return torch.stack(list(kept.values())), list(kept), dict(first)
