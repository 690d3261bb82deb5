"""Estimates of the published calibration protocols' memory and time, from the architectures' measured shapes.

For each architecture (:mod:`tfmq_exp.models.architectures`) one forward of one sample through the real model
measures, per reconstruction unit (the adapter's units, in forward order): the bytes of what it receives and
returns (what block reconstruction captures per sample) and its forward FLOPs (``torch.utils.flop_counter``), plus
the FLOPs of the network up to and including it (what capturing it costs). A protocol (samples ``M``, iterations,
batch ``B``) then needs, per unit::

    captured bytes      M * bytes_u                                  (held, or spilled beyond the budget)
    AdaRound time       iters * max(3 * B * flops_u / R, t_min)      (forward + backward ~ 3 forwards)
    capture time        2 * M * prefix_flops_u / R                   (quantized inputs, full-precision target)

with ``R`` the accelerator's sustained rate and ``t_min`` the per-iteration floor (kernel launches, optimizer
step). Both are assumptions, stated with the results (:data:`GPU_ASSUMPTIONS`); the model is checked against this
machine's CPU, where ``R`` is measured by ``tfmq-cost`` (:func:`cpu_check`). These are estimates, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from tfmq_exp.models.adapters import get_adapter

# The assumed accelerator (one GPU of the A100 class; TF32 convolutions, PyTorch's default): an assumption.
GPU_ASSUMPTIONS = {"sustained_flops": 30e12, "min_seconds_per_iter": 0.004}


@dataclass(frozen=True)
class UnitProfile:
    """One reconstruction unit's per-sample cost."""

    name: str
    bytes_per_sample: int
    flops: float
    prefix_flops: float


@dataclass(frozen=True)
class Protocol:
    """A published calibration protocol: reconstruction samples, AdaRound iterations and batch, and Q-Diffusion's
    activation pass (iterations; 0: none)."""

    name: str
    samples: int
    iters: int = 20_000
    batch_size: int = 32
    act_iters: int = 0


def _tensor_bytes(values: Any) -> int:
    if isinstance(values, Tensor):
        return values.numel() * values.element_size()
    if isinstance(values, (tuple, list)):
        return sum(_tensor_bytes(value) for value in values)
    if isinstance(values, dict):
        return sum(_tensor_bytes(value) for value in values.values())
    return 0


def _first_output(output: Any) -> Any:
    if isinstance(output, (tuple, list)):  # a down block returns (hidden, skip states): the capture keeps the first
        return output[0]
    return output.sample if hasattr(output, "sample") else output


@torch.no_grad()
def unit_profiles(unet: nn.Module, call: Callable[[nn.Module], Any]) -> list[UnitProfile]:
    """Per-unit bytes and FLOPs of one sample: ``call(unet)`` runs one forward of batch 1."""
    names = [unit.name for unit in get_adapter(unet).reconstruction_units()]
    sizes: dict[str, int] = {}
    handles = []
    for name in names:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name) -> None:
            sizes[name] = _tensor_bytes(args) + _tensor_bytes(kwargs) + _tensor_bytes(_first_output(output))

        handles.append(unet.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    try:
        with FlopCounterMode(display=False) as counter:
            call(unet)
    finally:
        for handle in handles:
            handle.remove()
    counts = counter.get_flop_counts()
    root = type(unet).__name__
    flops = {name: float(sum(counts.get(f"{root}.{name}", {}).values())) for name in names}
    time_mlp = float(sum(counts.get(f"{root}.time_embedding", {}).values()))
    profiles, prefix = [], 0.0 if "time_embedding" in names else time_mlp
    for name in names:  # units run in forward order; the prefix is every unit up to this one (and the time MLP)
        prefix += flops[name]
        profiles.append(UnitProfile(name, sizes.get(name, 0), flops[name], prefix))
    return profiles


def estimate(profiles: list[UnitProfile], protocol: Protocol, rate: float, min_seconds: float) -> dict[str, float]:
    """Memory and time of ``protocol`` on a device of sustained ``rate`` FLOP/s (see the module docstring)."""
    def adaround(iters: int) -> float:
        return sum(iters * max(3 * protocol.batch_size * unit.flops / rate, min_seconds) for unit in profiles)

    capture = sum(2 * protocol.samples * unit.prefix_flops / rate for unit in profiles)
    passes = 2 if protocol.act_iters else 1  # the activation pass captures every unit again
    seconds = adaround(protocol.iters) + adaround(protocol.act_iters) * bool(protocol.act_iters) + passes * capture
    return {
        "largest_unit_captured_gib": max(protocol.samples * unit.bytes_per_sample for unit in profiles) / 2**30,
        "hours": seconds / 3600,
        "capture_hours": passes * capture / 3600,
        "units": len(profiles),
    }


def cpu_check(profile: UnitProfile, batch_size: int, measured_seconds_per_iter: float) -> float:
    """The sustained CPU rate (FLOP/s) that ``tfmq-cost``'s measured seconds per iteration of a unit imply."""
    return 3 * batch_size * profile.flops / measured_seconds_per_iter


# The published protocols (``tfmq_exp/conf/experiment/paper_*.yaml``): reconstruction samples, with Q-Diffusion's
# 20 000 AdaRound iterations of batch 32 per unit and its 5 000-iteration activation pass.
PROTOCOLS = {
    "cifar10": Protocol("DDPM CIFAR-10 (paper_cifar10: 256 trajectories x 20 steps)", 5120, act_iters=5000),
    "ldm4": Protocol("LDM-4 LSUN (paper_bedroom: 256 x 20 steps)", 5120, act_iters=5000),
    "sd14": Protocol("Stable Diffusion 1.4 (paper_sd14: 128 prompts x 50 steps x 2 CFG rows)", 12800, act_iters=5000),
}


def architecture_calls() -> dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], Any]]]:
    """Architecture builder and a one-sample forward, per :data:`PROTOCOLS` key."""
    from tfmq_exp.models.architectures import ddpm_cifar10_unet, ldm4_unet, sd14_unet

    t = torch.tensor([500])
    return {
        "cifar10": (ddpm_cifar10_unet, lambda unet: unet(torch.randn(1, 3, 32, 32), t)),
        "ldm4": (ldm4_unet, lambda unet: unet(torch.randn(1, 3, 64, 64), t)),
        "sd14": (sd14_unet, lambda unet: unet(torch.randn(1, 4, 64, 64), t, encoder_hidden_states=torch.randn(1, 77, 768))),
    }
