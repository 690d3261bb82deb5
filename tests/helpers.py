"""Test-only helpers shared by every test package: small configs and quantized copies of tiny UNets.

The tiny models themselves come from :mod:`tfmq_exp.models.tiny`; this module only adds what a test needs
around them: the configs of a small, fast run and a quantized copy with its timestep context (FSC).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from tfmq_exp.config.schema import (
    PUBLISHED_FP_PATTERNS,
    CalibConfig,
    Config,
    EvalConfig,
    LoggerConfig,
    MethodConfig,
    ModelConfig,
    QuantConfig,
    RuntimeConfig,
    SamplerConfig,
    register_configs,
)
from tfmq_exp.config.validate import to_config
from tfmq_exp.models.loading import load_unet
from tfmq_exp.ptq import QuantizedModel, quantize_for_method
from tfmq_exp.store import ArtifactStore
from tfmq_exp.timing import StageTimer
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.tiny import build_tiny_unet
from tfmq_exp.quant import QuantLinear, TimestepContext, attach_timestep_context, enable_per_timestep, quantize_

FP_PATTERNS = list(PUBLISHED_FP_PATTERNS)


def digits_unet(seed: int = 0) -> nn.Module:
    """The real digits UNet architecture with random weights drawn from ``seed`` (eval mode)."""
    return build_tiny_unet("digits", seed)


def model_config(name: str = "digits", **overrides: object) -> ModelConfig:
    """A :class:`ModelConfig` with :data:`FP_PATTERNS` (``overrides`` replace any field, patterns included)."""
    overrides.setdefault("fp_patterns", list(FP_PATTERNS))
    return ModelConfig(name=name, **overrides)


def quant_config(w_bits: int = 8, a_bits: Optional[int] = 8, **overrides: object) -> QuantConfig:
    """A :class:`QuantConfig` named ``w{w_bits}a{a_bits}`` unless ``overrides`` names it."""
    overrides.setdefault("name", f"w{w_bits}a{a_bits}")
    return QuantConfig(w_bits=w_bits, a_bits=a_bits, **overrides)


def method_config(**overrides: object) -> MethodConfig:
    """A :class:`MethodConfig` named ``test`` with min-max weight ranges (fast) unless ``overrides`` say otherwise."""
    overrides.setdefault("name", "test")
    overrides.setdefault("weight_init", "minmax")
    return MethodConfig(**overrides)


def small_config(
    quant: QuantConfig,
    method: MethodConfig,
    *,
    model: Optional[ModelConfig] = None,
    num_steps: int = 4,
    calib: Optional[CalibConfig] = None,
    cache_dir: Union[str, Path, None] = None,
    seed: int = 0,
) -> Config:
    """A small, fast run config: DDIM with ``num_steps`` steps, evaluation batches of 16, no W&B, no progress bars.

    Args:
        quant: the quantization setting under test.
        method: the PTQ method under test.
        model: the model config; :func:`model_config` (digits) when ``None``.
        num_steps: sampling steps.
        calib: the calibration-data config; the defaults when ``None``.
        cache_dir: the run's artifact cache; ``None`` keeps :class:`RuntimeConfig`'s default.
        seed: the run's seed.
    """
    runtime = {} if cache_dir is None else {"cache_dir": str(cache_dir)}
    return Config(
        model=model if model is not None else model_config(),
        sampler=SamplerConfig(num_steps=num_steps),
        quant=quant,
        method=method,
        calib=calib if calib is not None else CalibConfig(),
        eval=EvalConfig(batch_size=16),
        logger=LoggerConfig(mode="disabled"),
        runtime=RuntimeConfig(progress=False, **runtime),
        seed=seed,
    )


# A PTQ run of the digits model in seconds: 4 steps, few samples, 3 iterations per unit, no artifact.
TINY_PTQ = ["quant=w4a8", "sampler.num_steps=4", "calib.num_samples=8", "calib.recon_samples=16",
            "calib.uniform_every=2", "method.recon.iters=3", "method.recon.batch_size=8", "method.act_recon.iters=3",
            "eval.batch_size=8", "runtime.progress=false", "logger=none", "save_artifact=false"]


def composed_config(conf_dir: Path, cache: Path, *overrides: str) -> Config:
    """The config Hydra composes from the package's tree with :data:`TINY_PTQ`, the cache and ``overrides``."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY_PTQ, f"runtime.cache_dir={cache}", *overrides])
    GlobalHydra.instance().clear()
    return to_config(cfg)


def quantize_digits(config: Config, run_dir: Path) -> tuple[nn.Module, QuantizedModel]:
    """The full-precision UNet of ``config.model`` and the model ``quantize_for_method`` builds from it."""
    unet_fp = load_unet(config.model)
    store = ArtifactStore(config.runtime.cache_dir)
    return unet_fp, quantize_for_method(unet_fp, config, store, StageTimer(), run_dir)


def quantized_copy(unet_fp: nn.Module, quant: QuantConfig, model: ModelConfig, method: MethodConfig) -> nn.Module:
    """A deep copy of ``unet_fp`` quantized by the configs (eval mode), its TIB layers flagged temporal."""
    unet_q = copy.deepcopy(unet_fp)
    tib_names = set(get_adapter(unet_fp).tib().layer_names())
    quantize_(unet_q, quant, model, method, temporal_names=tib_names)
    return unet_q.eval()


def attach_fsc(unet_q: nn.Module, layer_names: Iterable[str], timesteps: Sequence[int]) -> TimestepContext:
    """Attach a fresh timestep context to ``unet_q``; give its quantized linears in ``layer_names`` FSC.

    FSC (DESIGN 1.4): per-timestep activation parameters at ``timesteps``. With no layer names the context
    is only attached.
    """
    context = TimestepContext()
    attach_timestep_context(unet_q, context)
    layers = [unet_q.get_submodule(name) for name in layer_names]
    if layers:
        enable_per_timestep([layer for layer in layers if isinstance(layer, QuantLinear)], timesteps, context)
    return context


def table_row(table: str, label: str) -> list[str]:
    """The cells of the row whose label is ``label`` (labels may hold single spaces; cells are split by two)."""
    for line in table.splitlines():
        if line.strip().startswith(label):
            return line.strip()[len(label):].split()
    raise AssertionError(f"no row {label!r} in\n{table}")
