"""Turn a composed DictConfig into validated schema objects, and explain composition errors on one line."""

from __future__ import annotations

import dataclasses
import re

from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from tfmq_exp.config import schema
from tfmq_exp.config.schema import Config

_GROUP_SCHEMAS = {
    "": Config,
    "model": schema.ModelConfig,
    "sampler": schema.SamplerConfig,
    "quant": schema.QuantConfig,
    "method": schema.MethodConfig,
    "method.recon": schema.ReconConfig,
    "method.select": schema.SelectConfig,
    "method.act_recon": schema.ActReconConfig,
    "calib": schema.CalibConfig,
    "eval": schema.EvalConfig,
    "logger": schema.LoggerConfig,
    "runtime": schema.RuntimeConfig,
    "train": schema.TrainConfig,
}


def to_config(cfg: DictConfig) -> Config:
    """Instantiate the schema dataclasses (running their range checks) from a composed config.

    Raises:
        ValueError: a value is out of range or not a valid choice; the message names the key.
    """
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config)
    return config


def _root_cause(error: BaseException) -> BaseException:
    """Follow ``__cause__`` to the most specific error (Hydra wraps OmegaConf's)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _full_key(error: BaseException) -> str | None:
    """The dotted key an OmegaConf error is about (its ``full_key`` attribute), if any."""
    key = getattr(error, "full_key", None)
    return str(key) if key else None


def _valid_keys(parent: str) -> list[str]:
    cls = _GROUP_SCHEMAS.get(parent)
    return [field.name for field in dataclasses.fields(cls)] if cls else []


def explain(error: BaseException) -> str:
    """Return one line that says what is wrong with the command line and what is valid instead."""
    if isinstance(error, MissingConfigException):
        match = re.search(r"Could not find '([\w/]+)/([^']+)'", str(error))
        options = [option for option in (error.options or []) if not option.startswith("_")]
        if match:
            group, name = match.group(1), match.group(2)
            return f"{group}={name} is not a known option; valid choices for '{group}': {', '.join(options)}"
    root = _root_cause(error)
    message = str(root).strip()
    key = _full_key(root)
    first_line = message.splitlines()[0] if message else type(root).__name__
    if key and ("not in struct" in message or "Key '" in first_line and "not in" in first_line):
        parent = key.rpartition(".")[0]
        valid = _valid_keys(parent)
        hint = f"; valid keys of '{parent or 'config'}': {', '.join(valid)}" if valid else ""
        return f"unknown config key '{key}'{hint}"
    if isinstance(root, ValidationError) and key:
        return f"invalid value for '{key}': {first_line}"
    if isinstance(root, ValueError) and not isinstance(root, OmegaConfBaseException):
        return first_line
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
