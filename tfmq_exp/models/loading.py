"""Load the model a config names: embedded weights, a pipeline directory, a bare UNet directory, or a hub id.

A pipeline directory (``model_index.json`` at its root, as ``DiffusionPipeline.save_pretrained`` writes it) gives
the UNet and every other part the family needs (VAE, text encoders, tokenizers, the training scheduler). Shapes
and the noise schedule are read from the loaded parts, never from the YAML: :func:`load_model` returns the model
config with them filled in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, UNet2DModel

from tfmq_exp.config.schema import ModelConfig
from tfmq_exp.errors import MissingWeightsError, UserError
from tfmq_exp.paths import WEIGHTS_DIR

PIPELINE_INDEX = "model_index.json"
_UNET_CLASS = {
    "pixel": UNet2DModel, "latent": UNet2DModel, "class_conditional": UNet2DModel, "text_to_image": UNet2DConditionModel,
}  # fmt: skip
_NEEDS = {  # the pipeline components each family generates with
    "latent": ("vqvae|vae",),
    "text_to_image": ("vae", "text_encoder", "tokenizer"),
}
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "steps_offset")


@dataclass
class LoadedModel:
    """A full-precision model ready to generate.

    Attributes:
        unet: the denoiser (eval mode, no gradients).
        model: the model config with ``sample_size``, ``in_channels`` and the noise schedule of the loaded parts.
        pipeline: the loaded diffusers pipeline (all components), or ``None`` for a bare UNet.
    """

    unet: torch.nn.Module
    model: ModelConfig
    pipeline: Optional[Any] = None

    @property
    def vae(self) -> Optional[torch.nn.Module]:
        """The latent autoencoder (``AutoencoderKL`` or an LDM's ``VQModel``), if the model is latent."""
        if self.pipeline is None:
            return None
        return getattr(self.pipeline, "vae", None) or getattr(self.pipeline, "vqvae", None)

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (1 for pixel-space models)."""
        vae = self.vae
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1

    @property
    def image_size(self) -> int:
        """The generated image's side in pixels."""
        assert self.model.sample_size is not None
        return self.model.sample_size * self.vae_scale_factor

    @property
    def num_class_embeds(self) -> Optional[int]:
        """Rows of the UNet's class embedding (class labels plus, for guidance, the null class)."""
        return getattr(self.unet.config, "num_class_embeds", None)


def weights_location(model: ModelConfig) -> str:
    """Where the model's weights come from: ``model.path`` if set, else the embedded weights directory."""
    if model.path:
        return model.path
    if model.embedded:
        return str(WEIGHTS_DIR / model.embedded)
    raise MissingWeightsError(f"model={model.name} has neither model.path nor embedded weights; set model.path=DIR")


def _is_pipeline(location: str) -> bool:
    if Path(location).is_dir():
        return (Path(location) / PIPELINE_INDEX).is_file()
    try:  # a hub id: a pipeline if its index is in the local cache
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(location, PIPELINE_INDEX), str)
    except Exception:  # noqa: BLE001 - not a valid repo id: not a cached pipeline
        return False


def _missing(model: ModelConfig, location: str, what: str, error: Exception) -> MissingWeightsError:
    where = "directory" if Path(location).exists() else "hub id (looked only in the local Hugging Face cache)"
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return MissingWeightsError(
        f"cannot load the {what} of model={model.name} from {where} '{location}': {first} -- download it on a "
        f"machine with network (e.g. `huggingface-cli download {location}`) or pass model.path=/local/dir"
    )


def _load_pipeline(model: ModelConfig, location: str) -> Any:
    try:
        pipeline = DiffusionPipeline.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError, EnvironmentError, ImportError) as error:
        raise _missing(model, location, "pipeline", error) from error
    for need in _NEEDS.get(model.family, ()):
        if not any(getattr(pipeline, name, None) is not None for name in need.split("|")):
            raise UserError(
                f"model.family={model.family} needs the pipeline component '{need}', which {location} "
                f"({type(pipeline).__name__}) does not have; check model.family or the directory"
            )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _load_bare_unet(model: ModelConfig, location: str) -> torch.nn.Module:
    cls = _UNET_CLASS[model.family]
    if model.embedded and not model.path and not Path(location).exists():
        raise MissingWeightsError(
            f"embedded weights for model={model.name} are missing at {location}; "
            f"regenerate them with: tfmq-exp task=train_digits model={model.name}"
        )
    try:
        return cls.from_pretrained(location, subfolder=model.subfolder, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as error:
        what = f"{cls.__name__} weights{' (subfolder ' + model.subfolder + ')' if model.subfolder else ''}"
        raise _missing(model, location, what, error) from error


def _side(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def resolve_model_config(model: ModelConfig, unet: torch.nn.Module, scheduler_config: Any = None) -> ModelConfig:
    """``model`` with the geometry of the loaded UNet and the noise schedule of the pipeline's scheduler.

    Raises:
        UserError: the YAML states a geometry the loaded UNet does not have.
    """
    loaded = {"sample_size": _side(unet.config.sample_size), "in_channels": int(unet.config.in_channels)}
    for key, value in loaded.items():
        stated = getattr(model, key)
        if stated is not None and stated != value:
            raise UserError(
                f"model.{key}={stated} but the loaded UNet has {value}; drop model.{key} (it is read from the weights)"
            )
    schedule = {}
    if scheduler_config is not None:
        schedule = {key: scheduler_config[key] for key in _SCHEDULE_KEYS if key in scheduler_config}
    return dataclasses.replace(model, **loaded, **schedule)


def load_model(model: ModelConfig) -> LoadedModel:
    """Load the model's UNet (and, from a pipeline directory, its other parts) on the CPU, never downloading.

    Raises:
        MissingWeightsError: the weights are not on disk; the message says what to pass.
        UserError: the directory does not hold what ``model.family`` needs.
    """
    location = weights_location(model)
    pipeline = _load_pipeline(model, location) if _is_pipeline(location) else None
    unet = pipeline.unet if pipeline is not None else _load_bare_unet(model, location)
    expected = _UNET_CLASS[model.family]
    if not isinstance(unet, expected):
        raise UserError(f"{location} holds a {type(unet).__name__}; model.family={model.family} expects {expected.__name__}")
    if model.family in ("pixel", "latent") and getattr(unet.config, "num_class_embeds", None):
        raise UserError(f"{location} has a class embedding; use model.family=class_conditional")
    unet = unet.eval().requires_grad_(False)
    if pipeline is not None:
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval().requires_grad_(False)
    scheduler_config = pipeline.scheduler.config if pipeline is not None else None
    return LoadedModel(unet=unet, model=resolve_model_config(model, unet, scheduler_config), pipeline=pipeline)


def load_unet(model: ModelConfig) -> torch.nn.Module:
    """The model's UNet alone (see :func:`load_model`)."""
    return load_model(model).unet
