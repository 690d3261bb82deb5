"""Structured configs (the schema of every Hydra group) and their validation."""

from tfmq_exp.config.schema import (
    CalibConfig,
    Config,
    EvalConfig,
    LoggerConfig,
    MethodConfig,
    ModelConfig,
    QuantConfig,
    ReconConfig,
    RuntimeConfig,
    SamplerConfig,
    SelectConfig,
    TrainConfig,
    register_configs,
)

__all__ = [
    "CalibConfig",
    "Config",
    "EvalConfig",
    "LoggerConfig",
    "MethodConfig",
    "ModelConfig",
    "QuantConfig",
    "ReconConfig",
    "RuntimeConfig",
    "SamplerConfig",
    "SelectConfig",
    "TrainConfig",
    "register_configs",
]
