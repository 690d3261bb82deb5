"""CLIP score of text-to-image samples against their prompts, from a local ``CLIPModel`` directory.

``CLIPScore(I, C) = max(100 * cos(E_I, E_C), 0)`` per image-prompt pair (Hessel et al. 2021 with w = 100, the
definition torchmetrics documents), averaged over the pairs. ``E_I`` / ``E_C`` are the model's *projected*
image and text embeddings (``get_image_features`` / ``get_text_features``).

Why not ``torchmetrics.multimodal.CLIPScore``: torchmetrics 1.9 calls ``.norm`` on the return value of
``CLIPModel.get_image_features``, which in transformers 5 is a ``BaseModelOutputWithPooling`` (the projected
embedding is its ``pooler_output``), so it fails with the transformers installed here (``../shared/TOOLCHAIN.md``).
The score is therefore computed here from the embeddings, accepting both return types. Two deliberate details:
the clamp at 0 is applied per pair as the definition says (torchmetrics' code clamps the *mean*; the two agree
whenever no pair has a negative cosine, as with real CLIP models), and over-long prompts are truncated by the
tokenizer to the text model's ``max_position_embeddings`` keeping the end-of-text token (torchmetrics cuts the
token ids, end-of-text included).

Nothing is downloaded: the model and its processor load with ``local_files_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from tfmq_exp.errors import MissingWeightsError

__all__ = ["clip_score", "load_clip", "projected_embedding"]

_BPE_FILES = ("vocab.json", "merges.txt")


def _missing(model_dir: Any, why: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"eval.clip_model={model_dir} {why}: pass eval.clip_model=DIR, a local CLIPModel directory written with "
        f"save_pretrained together with its CLIPProcessor (e.g. a snapshot of openai/clip-vit-large-patch14 fetched "
        f"on a machine with network access); the CLIP score never downloads"
    )


def load_clip(model_dir: str | os.PathLike, device: str = "cpu") -> tuple[Any, Any]:
    """The ``CLIPModel`` (eval mode, on ``device``) and ``CLIPProcessor`` of a local directory.

    Raises:
        MissingWeightsError: the directory, its model or its processor files are missing (one line).
    """
    from transformers import CLIPModel, CLIPProcessor

    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise _missing(model_dir, "is not a directory")
    if not (path / "config.json").is_file():
        raise _missing(model_dir, "holds no config.json (not a save_pretrained model directory)")
    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    except OSError as error:  # no weights file: transformers raises OSError naming what it looked for
        raise _missing(model_dir, f"has no loadable CLIPModel weights ({str(error).splitlines()[0]})") from error
    if not (path / "tokenizer.json").is_file() and not all((path / name).is_file() for name in _BPE_FILES):
        # without them CLIPProcessor silently builds a tokenizer of three special tokens
        raise _missing(model_dir, "has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    try:
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:  # no preprocessor_config.json / tokenizer files
        raise _missing(
            model_dir, "has no CLIPProcessor files (image processor and tokenizer: processor.save_pretrained(DIR))"
        ) from error
    return model.to(device).eval(), processor


def projected_embedding(output: Any) -> torch.Tensor:
    """The projected embedding from ``get_image_features`` / ``get_text_features``.

    transformers < 5 returns the tensor itself; transformers 5 returns a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` is the projected embedding (the projection is applied to it in place).
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"cannot find the projected embedding in a {type(output).__name__}")


def clip_score(
    images_uint8: torch.Tensor,
    prompts: Sequence[str],
    model_dir: str | os.PathLike,
    device: str = "cpu",
    batch_size: int = 64,
) -> float:
    """Mean CLIP score of image ``i`` against ``prompts[i]``: ``100 * mean_i max(cos(E_I_i, E_C_i), 0)``.

    Args:
        images_uint8: generated images, uint8 [N, 3, H, W] (1 channel is repeated to 3); the processor resizes
            and crops them to the model's input size.
        prompts: N prompts, one per image.
        model_dir: ``eval.clip_model``, a local ``CLIPModel`` + ``CLIPProcessor`` directory.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: images / prompts per forward pass (the result depends on it only through float rounding).

    Returns:
        The score in [0, 100].

    Raises:
        MissingWeightsError: ``model_dir`` is not a usable local CLIP directory.
        ValueError: bad image tensor, or ``len(prompts) != N``.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images [N, 3, H, W], got {images_uint8.dtype} {tuple(images_uint8.shape)}"
        )
    prompts = list(prompts)
    if len(prompts) != len(images_uint8) or not prompts:
        raise ValueError(f"need one prompt per image: {len(images_uint8)} images, {len(prompts)} prompts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, processor = load_clip(model_dir, device)
    images = images_uint8.expand(-1, 3, -1, -1) if images_uint8.shape[1] == 1 else images_uint8
    images = images.cpu()
    max_tokens = model.config.text_config.max_position_embeddings
    scores = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            stop = min(start + batch_size, len(prompts))
            pixels = processor(images=list(images[start:stop]), return_tensors="pt")["pixel_values"]
            text = processor(
                text=prompts[start:stop], return_tensors="pt", padding=True, truncation=True, max_length=max_tokens
            )
            image_embedding = projected_embedding(model.get_image_features(pixel_values=pixels.to(device)))
            text_embedding = projected_embedding(
                model.get_text_features(
                    input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device)
                )
            )
            cosine = torch.nn.functional.cosine_similarity(image_embedding.float(), text_embedding.float(), dim=-1)
            scores.append((100 * cosine).clamp(min=0).double().cpu())
    return float(torch.cat(scores).mean())
