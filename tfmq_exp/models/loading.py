"""Load the denoiser a model config names: embedded weights, a local directory, or a hub id (cache only)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from tfmq_exp.config.schema import ModelConfig
from tfmq_exp.errors import MissingWeightsError
from tfmq_exp.paths import WEIGHTS_DIR

_FAMILIES = {"unet2d": UNet2DModel, "unet2d_condition": UNet2DConditionModel}


def weights_location(model: ModelConfig) -> str:
    """Where the model's weights come from: ``model.path`` if set, else the embedded weights directory."""
    if model.path:
        return model.path
    if model.embedded:
        return str(WEIGHTS_DIR / model.embedded)
    raise MissingWeightsError(f"model={model.name} has neither model.path nor embedded weights; set model.path=DIR")


def load_unet(model: ModelConfig) -> torch.nn.Module:
    """Load the model's UNet in eval mode on the CPU, without touching the network.

    Hub ids resolve only from the local Hugging Face cache (``local_files_only``); weights are never
    downloaded at run time.

    Raises:
        MissingWeightsError: the weights are not on disk; the message says what to place where.
    """
    cls = _FAMILIES[model.family]
    location = weights_location(model)
    is_local = Path(location).exists()
    if model.embedded and not model.path and not is_local:
        raise MissingWeightsError(
            f"embedded weights for model={model.name} are missing at {location}; "
            f"regenerate them with: tfmq-exp task=train_digits model={model.name}"
        )
    try:
        unet = cls.from_pretrained(location, subfolder=model.subfolder, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as error:
        where = "directory" if is_local else "hub id (looked only in the local Hugging Face cache)"
        raise MissingWeightsError(
            f"cannot load the {cls.__name__} weights of model={model.name} from {where} '{location}'"
            f"{'/' + model.subfolder if model.subfolder else ''}: {str(error).splitlines()[0]} -- download them on a "
            f"machine with network (e.g. `huggingface-cli download {location}`) or pass model.path=/local/dir"
        ) from error
    if not isinstance(unet, cls):
        raise MissingWeightsError(f"{location} holds a {type(unet).__name__}, expected {cls.__name__}")
    return unet.eval().requires_grad_(False)
