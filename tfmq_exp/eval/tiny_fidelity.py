"""Offline stand-ins for the metric networks, written as the real files are: for tests and acceptance commands.

- :func:`save_random_inception_weights`: a random-init state dict of torch-fidelity's
  ``FeatureExtractorInceptionV3`` (566 tensors, 23.9 M parameters, about 96 MB), loadable with
  ``feature_extractor_weights_path=FILE`` / ``eval.inception_weights=FILE`` exactly like the real weights.
  Convolutions are He-initialised (the PyTorch default init shrinks the activations to ~1e-8 after ~90 layers),
  so the pool features are O(0.1) and differ between images.
- :func:`save_tiny_clip`: a tiny ``CLIPModel`` (two layers, width 32, 32 x 32 images in 8 x 8 patches,
  projection 16) with its ``CLIPProcessor`` (``CLIPImageProcessor`` at 32 px, the project's tiny
  ``CLIPTokenizer`` from ``vocab.json`` + ``merges.txt``), saved with ``save_pretrained`` for
  ``eval.clip_model=DIR``.

Both draw from ``torch.manual_seed(seed)`` inside a forked RNG (the caller's RNG state is untouched): the same
seed gives the same weights and byte-identical files (for the Inception file, given the same file name:
``torch.save`` records the file's stem inside its archive). Nothing is downloaded.

Command line: ``python -m tfmq_exp.eval.tiny_fidelity {inception FILE | clip DIR} [--seed N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

__all__ = ["CLIP_IMAGE_SIZE", "save_random_inception_weights", "save_tiny_clip"]

CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
CLIP_HIDDEN = 32
CLIP_PROJECTION = 16


class _InceptionSkeleton(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 without its weight loading (its constructor always loads a state dict)."""

    def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG002
        return None


def save_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random-init state dict in the layout ``FeatureExtractorInceptionV3`` loads from a file.

    torch-fidelity loads ``feature_extractor_weights_path`` with ``torch.load`` and ``load_state_dict``
    (strict) in ``FeatureExtractorInceptionV3.__init__``; the keys and shapes here are that module's own.

    Args:
        path: the file to write (parent folders are created).
        seed: torch seed of the weights.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        empty = Path(scratch) / "empty.pt"
        torch.save({}, empty)  # satisfies the constructor's torch.load; the skeleton ignores it
        torch.manual_seed(seed)
        model = _InceptionSkeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    torch.save(state, path)
    return path


def save_tiny_clip(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``CLIPModel`` and its processor into ``directory`` with ``save_pretrained``.

    The directory loads with ``CLIPModel.from_pretrained(dir, local_files_only=True)`` and
    ``CLIPProcessor.from_pretrained(dir, local_files_only=True)``; it also holds the tokenizer's ``vocab.json``
    and ``merges.txt`` (:func:`tfmq_exp.models.tiny_pipelines.write_tiny_clip_vocab`).

    Args:
        directory: output directory (created).
        seed: torch seed of the weights.

    Returns:
        ``directory`` as a ``Path``.
    """
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from tfmq_exp.models.tiny_pipelines import (
        BOS_TOKEN,
        EOS_TOKEN,
        MAX_PROMPT_TOKENS,
        build_tiny_clip_tokenizer,
        tiny_clip_vocab,
        write_tiny_clip_vocab,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, _ = tiny_clip_vocab()
    text_config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=CLIP_HIDDEN, intermediate_size=2 * CLIP_HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_PROMPT_TOKENS, projection_dim=CLIP_PROJECTION,
        bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN],
    )  # fmt: skip
    vision_config = CLIPVisionConfig(
        hidden_size=CLIP_HIDDEN, intermediate_size=2 * CLIP_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE, projection_dim=CLIP_PROJECTION,
    )  # fmt: skip
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=CLIP_PROJECTION
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=build_tiny_clip_tokenizer())
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    write_tiny_clip_vocab(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tfmq_exp.eval.tiny_fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("inception", "clip"), help="inception: a weights FILE; clip: a model DIR")
    parser.add_argument("out", help="output file (inception) or directory (clip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    writer = save_random_inception_weights if args.kind == "inception" else save_tiny_clip
    print(writer(args.out, seed=args.seed))


if __name__ == "__main__":
    main()
