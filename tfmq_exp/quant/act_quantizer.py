"""Per-tensor activation quantizer with explicit calibration and optional per-timestep parameters (FSC).

Life cycle (DESIGN 1.1): ``observing = True`` -> forward passes over calibration batches update the range
statistics -> :meth:`ActQuantizer.finalize` turns them into ``(s, z)`` -> quantize. Using it to quantize
before that raises. Range statistics:

- ``minmax``: EMA of the batch min / max, ``m <- momentum * m + (1 - momentum) * m_batch`` (the first batch
  initialises), as in the published code (momentum 0.95);
- ``mse``: per batch, the shrink candidate ``(1 - 0.01 i) [min, max]`` with the lowest MSE, then the same EMA.

FSC (DESIGN 1.4): after :meth:`ActQuantizer.enable_per_timestep`, statistics and ``(s_t, z_t)`` are kept per
timestep of a finite set (plain min / max over the batches seen at ``t``, as the paper chose; or, as an ablation
**(ours)**, the union of the per-batch ``mse`` ranges); the current ``t`` comes from a shared
:class:`~tfmq_exp.quant.context.TimestepContext`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.quant.quantizer import fake_quantize, range_to_qparams, validate_bits
from tfmq_exp.quant.weight_range import shrink_search

ACT_BITS_RANGE = (4, 16)
ACT_RANGE_METHODS = ("minmax", "mse")
TIMESTEP_RANGE_METHODS = ("minmax", "mse", "ema")  # FSC: "ema" is the released TFMQ-DM's per-timestep running stat
PER_TIMESTEP_BUFFERS = (
    "timesteps",  # [T] int64: the calibrated timestep set
    "timestep_min",  # [T] running min per timestep
    "timestep_max",  # [T] running max per timestep
    "timestep_observed",  # [T] bool
    "timestep_scale",  # [T] s_t
    "timestep_zero_point",  # [T] z_t
)


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric activation fake quantizer (identity when ``bits`` is ``None``).

    Args:
        bits: 4..16, or ``None`` for full precision (the module is then an identity).
        unsigned: range ``[0, max]`` (softmax probabilities); the minimum is not observed.
        range_method: ``minmax`` (EMA min / max) or ``mse`` (per-batch MSE grid search, then EMA).
        momentum: EMA momentum over calibration batches.
        mse_steps: candidates of the ``mse`` grid search.

    Attributes:
        enabled: quantize in ``forward`` (else pass through).
        observing: update range statistics in ``forward``.
        context: the shared timestep context (per-timestep mode only).
    """

    def __init__(
        self,
        bits: Optional[int],
        unsigned: bool = False,
        range_method: str = "minmax",
        momentum: float = 0.95,
        mse_steps: int = 80,
    ) -> None:
        super().__init__()
        self.bits = None if bits is None else validate_bits(bits, ACT_BITS_RANGE, "activation bits")
        if range_method not in ACT_RANGE_METHODS:
            raise ValueError(f"range_method={range_method!r} is not valid; choose one of: {ACT_RANGE_METHODS}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} is out of range: allowed [0, 1)")
        self.unsigned = unsigned
        self.range_method = range_method
        self.momentum = momentum
        self.mse_steps = mse_steps
        self.enabled = True
        self.observing = False
        self.context: Optional[TimestepContext] = None
        self._timestep_index: Dict[int, int] = {}
        self.timestep_range_method = "minmax"  # FSC's range statistic (see enable_per_timestep)
        for name in ("scale", "zero_point", "observed_min", "observed_max"):
            self.register_buffer(name, torch.ones(()) if name == "scale" else torch.zeros(()))
        self.register_buffer("observed", torch.tensor(False))
        self.register_buffer("calibrated", torch.tensor(False))
        self._calibrated = False  # host-side mirror of ``calibrated``: no device sync per forward
        for name in PER_TIMESTEP_BUFFERS:
            self.register_buffer(name, None)

    # ----------------------------------------------------------------- state
    @property
    def is_identity(self) -> bool:
        """``bits is None``: the quantizer never changes its input."""
        return self.bits is None

    @property
    def per_timestep(self) -> bool:
        """Whether per-timestep (FSC) parameters are in use."""
        return self.timesteps is not None

    @property
    def is_calibrated(self) -> bool:
        """Whether :meth:`finalize` (or :meth:`set_range`, or a loaded state) has provided parameters."""
        return self._calibrated

    def calibrated_timesteps(self) -> List[int]:
        """The finite timestep set of per-timestep mode (empty list otherwise)."""
        return [] if self.timesteps is None else [int(t) for t in self.timesteps.tolist()]

    def enable_per_timestep(
        self, timesteps: Sequence[int], context: Optional[TimestepContext], range_method: str = "minmax"
    ) -> None:
        """Switch to per-timestep parameters for a finite set of timesteps (discards any calibration).

        Args:
            timesteps: the sampler's timesteps (distinct integers).
            context: the shared context giving the current timestep; may be ``None`` while only loading
                state, then set with :meth:`set_context` before use.
            range_method: per-timestep range statistic: ``minmax`` (the paper's: min / max over the batches seen at
                ``t``), ``ema`` (the released code's: EMA of the batch min / max with ``momentum``,
                TFMQ-DM ``quant/quant_layer.py:229-244``) or ``mse``; it only matters while calibrating.
        """
        if range_method not in TIMESTEP_RANGE_METHODS:
            raise ValueError(f"range_method={range_method!r} is not valid; choose one of: {TIMESTEP_RANGE_METHODS}")
        values = [int(t) for t in timesteps]
        if not values or len(set(values)) != len(values) or any(v != t for v, t in zip(values, timesteps)):
            raise ValueError(f"timesteps must be a non-empty list of distinct integers, got {list(timesteps)}")
        device = self.scale.device
        count = len(values)
        self.timesteps = torch.tensor(values, dtype=torch.long, device=device)
        self.timestep_min = torch.zeros(count, device=device)
        self.timestep_max = torch.zeros(count, device=device)
        self.timestep_observed = torch.zeros(count, dtype=torch.bool, device=device)
        self.timestep_scale = torch.ones(count, device=device)
        self.timestep_zero_point = torch.zeros(count, device=device)
        self._timestep_index = {t: i for i, t in enumerate(values)}
        self.timestep_range_method = range_method
        self._mark_calibrated(False)
        self.context = context

    def disable_per_timestep(self) -> None:
        """Back to one per-tensor parameter set (discards the per-timestep tables and calibration)."""
        for name in PER_TIMESTEP_BUFFERS:
            setattr(self, name, None)
        self._timestep_index = {}
        self.context = None
        self._mark_calibrated(False)

    def set_context(self, context: TimestepContext) -> None:
        """Attach the shared timestep context (after loading a per-timestep state)."""
        self.context = context

    def _mark_calibrated(self, value: bool) -> None:
        self.calibrated.fill_(value)
        self._calibrated = value

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(self.calibrated)
        if self.timesteps is not None:
            self._timestep_index = {int(t): i for i, t in enumerate(self.timesteps.tolist())}

    def current_index(self) -> int:
        """Index of ``context.current`` in the calibrated timestep set.

        Raises:
            RuntimeError: no context attached, or no current timestep.
            KeyError: the current timestep was not calibrated (message names it and the set).
        """
        if self.context is None:
            raise RuntimeError("per-timestep ActQuantizer has no TimestepContext: call set_context()")
        current = self.context.current
        if current is None:
            raise RuntimeError(
                "per-timestep ActQuantizer needs the current timestep, but context.current is None "
                "(attach_timestep_context() to the UNet, or use context.at(t))"
            )
        if current not in self._timestep_index:
            raise KeyError(
                f"timestep {current!r} was not calibrated for this per-timestep quantizer; "
                f"calibrated timesteps: {self.calibrated_timesteps()}"
            )
        return self._timestep_index[current]

    # ----------------------------------------------------------- calibration
    @torch.no_grad()
    def reset_observation(self) -> None:
        """Forget every range statistic (per tensor and per timestep)."""
        self.observed.fill_(False)
        self.observed_min.zero_()
        self.observed_max.zero_()
        if self.per_timestep:
            self.timestep_observed.fill_(False)
            self.timestep_min.zero_()
            self.timestep_max.zero_()

    def _batch_range(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float()
        method = self.timestep_range_method if self.per_timestep else self.range_method
        if method == "mse":  # "ema" observes plain batch min / max, like "minmax"
            batch_min, batch_max = shrink_search(x.reshape(1, -1), self.bits, p=2.0, steps=self.mse_steps)
            batch_min, batch_max = batch_min[0], batch_max[0]
        else:
            batch_min, batch_max = x.amin(), x.amax()
        if self.unsigned:
            batch_min = torch.zeros_like(batch_min)
        return batch_min, batch_max

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the range statistics with one batch (EMA per tensor; running min / max per timestep).

        Args:
            x: an activation batch.
        """
        if self.is_identity:
            return
        batch_min, batch_max = self._batch_range(x)
        if self.per_timestep:
            index = self.current_index()
            if bool(self.timestep_observed[index]) and self.timestep_range_method == "ema":
                batch_min = self.momentum * self.timestep_min[index] + (1.0 - self.momentum) * batch_min
                batch_max = self.momentum * self.timestep_max[index] + (1.0 - self.momentum) * batch_max
            elif bool(self.timestep_observed[index]):
                batch_min = torch.minimum(batch_min, self.timestep_min[index])
                batch_max = torch.maximum(batch_max, self.timestep_max[index])
            self.timestep_min[index] = batch_min
            self.timestep_max[index] = batch_max
            self.timestep_observed[index] = True
            return
        if bool(self.observed):
            batch_min = self.momentum * self.observed_min + (1.0 - self.momentum) * batch_min
            batch_max = self.momentum * self.observed_max + (1.0 - self.momentum) * batch_max
        self.observed_min.copy_(batch_min)
        self.observed_max.copy_(batch_max)
        self.observed.fill_(True)

    @torch.no_grad()
    def finalize(self) -> None:
        """Compute ``(s, z)`` (or ``(s_t, z_t)`` for every timestep) from the statistics; mark calibrated.

        Raises:
            RuntimeError: nothing was observed, or (per-timestep) some timesteps were never observed.
        """
        if self.is_identity:
            return
        if self.per_timestep:
            missing = [t for t, seen in zip(self.calibrated_timesteps(), self.timestep_observed.tolist()) if not seen]
            if missing:
                raise RuntimeError(f"per-timestep ActQuantizer never observed timesteps {missing}")
            scale, zero_point = range_to_qparams(self.timestep_min, self.timestep_max, self.bits)
            self.timestep_scale.copy_(scale)
            self.timestep_zero_point.copy_(zero_point)
        else:
            if not bool(self.observed):
                raise RuntimeError("ActQuantizer.finalize() called before any batch was observed")
            self.set_range(self.observed_min, self.observed_max)
        self._mark_calibrated(True)

    @torch.no_grad()
    def set_range(self, x_min: torch.Tensor, x_max: torch.Tensor) -> None:
        """Set the per-tensor ``(s, z)`` directly from a range and mark calibrated (per-tensor mode)."""
        if self.per_timestep:
            raise RuntimeError("set_range() sets per-tensor parameters; this quantizer is in per-timestep mode")
        device = self.scale.device
        x_min = torch.as_tensor(0.0 if self.unsigned else x_min, dtype=torch.float32, device=device)
        x_max = torch.as_tensor(x_max, dtype=torch.float32, device=device)
        scale, zero_point = range_to_qparams(x_min, x_max, self.bits)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self._mark_calibrated(True)

    # ------------------------------------------------------- step-size learning
    @property
    def _scale_name(self) -> str:
        return "timestep_scale" if self.per_timestep else "scale"

    def learn_scale(self) -> nn.Parameter:
        """Turn the step size(s) in use into a trainable parameter (Q-Diffusion's activation pass).

        As Q-Diffusion's ``leaf_param`` (``qdiff/quant_layer.py:69-72`` at 715783d): ``delta`` becomes an
        ``nn.Parameter``, the zero point stays fixed, and the straight-through round of :func:`fake_quantize`
        gives ``delta`` its gradient. The state-dict key does not change. Undo with :meth:`fix_scale`.

        Returns:
            The parameter (``scale``, or ``timestep_scale`` in per-timestep mode).
        """
        if self.is_identity or not self.is_calibrated:
            raise RuntimeError("learn_scale() needs a calibrated, non-identity activation quantizer")
        name = self._scale_name
        value = getattr(self, name)
        if isinstance(value, nn.Parameter):
            return value
        delattr(self, name)
        parameter = nn.Parameter(value.detach().clone())
        self.register_parameter(name, parameter)
        return parameter

    def fix_scale(self) -> None:
        """Back to a buffer holding the learned step size(s) (no-op when not learning)."""
        for name in ("scale", "timestep_scale"):
            value = getattr(self, name)
            if isinstance(value, nn.Parameter):
                delattr(self, name)
                self.register_buffer(name, value.detach().clone())

    # ------------------------------------------------------------- inference
    def qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The ``(scale, zero_point)`` in use now (those of the current timestep in per-timestep mode)."""
        if not self.is_calibrated:
            mode = f"per-timestep, timesteps {self.calibrated_timesteps()}" if self.per_timestep else "per-tensor"
            raise RuntimeError(
                f"ActQuantizer(bits={self.bits}, {mode}) is not calibrated: observe batches "
                "(observing_activations()) and call finalize() before quantizing"
            )
        if self.per_timestep:
            index = self.current_index()
            return self.timestep_scale[index], self.timestep_zero_point[index]
        return self.scale, self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe (when ``observing``) and fake-quantize (when ``enabled``) ``x``."""
        if self.is_identity:
            return x
        if self.observing:
            self.observe(x)
        if not self.enabled:
            return x
        scale, zero_point = self.qparams()
        return fake_quantize(x.float(), scale, zero_point, self.bits).to(x.dtype)

    def extra_repr(self) -> str:
        if self.is_identity:
            return "bits=None"
        mode = f", per_timestep({len(self._timestep_index)})" if self.per_timestep else ""
        unsigned = ", unsigned" if self.unsigned else ""
        return f"bits={self.bits}{unsigned}, range={self.range_method}{mode}"
