"""What each model family generates with, for evaluation or for calibration (one place per family rule).

- ``pixel``: the UNet alone.
- ``latent``: the UNet and the pipeline's autoencoder.
- ``class_conditional``: class labels (evaluation: ``i mod K``; calibration: drawn from ``calib.seed``) and
  classifier-free guidance with the null class; the autoencoder when the directory has one.
- ``text_to_image``: the stock pipeline's text encoder(s) and tokenizer(s) and prompts (``eval.prompts`` /
  ``calib.prompts``, shipped smoke sets by default), guidance ``sampler.guidance_scale``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Literal

from torch import Tensor

from tfmq_exp.config.schema import Config
from tfmq_exp.errors import UserError
from tfmq_exp.eval.conditions import (
    DEFAULT_CALIB_PROMPTS,
    DEFAULT_EVAL_PROMPTS,
    calib_labels,
    cycle,
    eval_labels,
    prompts_fingerprint,
    read_prompts,
)
from tfmq_exp.eval.sampling import GenerationParts
from tfmq_exp.fingerprints import weights_fingerprint
from tfmq_exp.models.loading import LoadedModel

Purpose = Literal["eval", "calib"]


def _class_setup(loaded: LoadedModel, config: Config) -> tuple[int, int]:
    """``(num_classes, null_class)``: every class embedding but ``null_class`` (guidance's) is sampled."""
    rows = loaded.num_class_embeds
    if not rows:
        raise UserError(
            f"model.family=class_conditional but {config.model.path or config.model.name} has no class embedding "
            "(num_class_embeds); check model.family"
        )
    null = config.model.null_class if config.model.null_class is not None else rows - 1
    if not 0 <= null < rows:
        raise UserError(f"model.null_class={null} is outside the model's {rows} class embeddings")
    return rows - 1, null


def _skipping(null: int, labels: Callable[[Tensor], Tensor], indices: Tensor) -> Tensor:
    """Labels ``0 .. K - 1`` from ``labels`` mapped onto the embedding rows without ``null`` (identity when the
    null class is the last row, as LDM cin256's 1000)."""
    drawn = labels(indices)
    return drawn + (drawn >= null).long()


def _prompts(config: Config, purpose: Purpose) -> list[str]:
    if purpose == "eval":
        return read_prompts(config.eval.prompts, DEFAULT_EVAL_PROMPTS, "eval.prompts")
    return read_prompts(config.calib.prompts, DEFAULT_CALIB_PROMPTS, "calib.prompts")


def generation_parts(loaded: LoadedModel, config: Config, purpose: Purpose) -> GenerationParts:
    """The family's parts for generating evaluation samples or calibration trajectories."""
    family = config.model.family
    parts = GenerationParts(guidance_scale=config.sampler.guidance_scale, image_size=loaded.image_size)
    if family in ("latent", "class_conditional"):
        parts.vae = loaded.vae
    if family == "class_conditional":
        num_classes, null = _class_setup(loaded, config)
        if purpose == "eval":
            drawn = partial(eval_labels, num_classes=num_classes)
        else:
            drawn = partial(calib_labels, num_classes=num_classes, seed=config.calib.seed)
        parts.null_class, parts.labels = null, partial(_skipping, null, drawn)
    if family == "text_to_image":
        parts.pipeline = loaded.pipeline
        parts.prompts = partial(cycle, _prompts(config, purpose))
    return parts


def conditioning_payload(loaded: LoadedModel, config: Config, purpose: Purpose) -> dict[str, Any]:
    """Everything the family's conditions add to a key (labels rule, prompts' hash, guidance, the other parts)."""


    family = config.model.family
    payload: dict[str, Any] = {"family": family}
    if family == "pixel":
        return payload  # unchanged keys for the unconditional pixel models
    if loaded.pipeline is not None:
        payload["components"] = {
            name: weights_fingerprint(module) for name, module in sorted(loaded.pipeline.components.items())
            if name != "unet" and hasattr(module, "state_dict")
        }  # fmt: skip
    payload["guidance_scale"] = config.sampler.guidance_scale
    if family == "class_conditional":
        payload["classes"] = _class_setup(loaded, config)
        payload["labels"] = "i mod K" if purpose == "eval" else f"uniform from calib.seed={config.calib.seed}"
    if family == "text_to_image":
        payload["prompts"] = prompts_fingerprint(_prompts(config, purpose))
    return payload
