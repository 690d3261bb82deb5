"""The digits classifier whose penultimate layer is the feature space of the benchmark's generation metrics.

A small CNN on 8x8x1 digits. Its 64-d penultimate activations ``phi(x)`` play the part Inception's pool features
play for FID / KID / precision-recall, its logits the part of Inception's logits for the Inception Score.
``phi`` is divided by its root-mean-square over the train split, ``rms = sqrt(mean_{x, j} phi_j(x)^2)`` (one
scalar, so the geometry of the feature space is kept): KID's cubic kernel ``k(a, b) = (a.b / d + 1)^3`` is
otherwise dominated by the feature scale (KID ~ 1e4 unscaled).

Weights ship in ``tfmq_exp/weights/digits_classifier/`` (``model.safetensors`` + ``classifier.json``); rebuild
them with ``python -m tfmq_exp.eval.classifier --out DIR --seed 0`` (or ``tfmq-exp task=train_extractor``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tfmq_exp.trainer import make_trainer
from tfmq_exp.data.digits import load_digits_split, to_uint8

ARCHITECTURE_VERSION = 1
"""Bumped whenever the layers below change; :func:`load_classifier` refuses other versions."""
FEATURE_DIM = 64
NUM_CLASSES = 10
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "weights" / "digits_classifier"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "classifier.json"


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 images [B, 1 or 3, 8, 8] in [0, 255] to float [B, 1, 8, 8] in [-1, 1] (RGB averaged)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images [B, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 127.5 - 1.0
    return x.mean(dim=1, keepdim=True) if x.shape[1] == 3 else x


class DigitsClassifier(nn.Module):
    """conv(16) -> conv(32) -> pool -> conv(64) -> pool -> linear(64) = phi(x) -> linear(10) = logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(),  # [B, 16, 8, 8]
            nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(),  # [B, 32, 8, 8]
            nn.MaxPool2d(2),  # [B, 32, 4, 4]
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(),  # [B, 64, 4, 4]
            nn.MaxPool2d(2),  # [B, 64, 2, 2]
            nn.Flatten(),  # [B, 256]
            nn.Linear(256, FEATURE_DIM), nn.SiLU(),  # [B, 64] = phi(x)
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.register_buffer("feature_rms", torch.ones(()))

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the raw penultimate features ``phi(x)`` [B, 64] and the logits [B, 10] of uint8 ``images``."""
        hidden = self.body(images_to_input(images))
        return hidden, self.head(hidden)

    def scaled_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``phi(x) / rms`` (unit RMS on the train split) and the logits."""
        hidden, logits = self.embed(images)
        return hidden / self.feature_rms, logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)[1]


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each uint8 image by its own random offset in [-max_shift, max_shift]^2, filling with background 0."""
    if max_shift == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=0)  # [B, C, H + 2s, W + 2s]
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2))
    rows = offsets[:, 0, None] + torch.arange(height)  # [B, H]
    cols = offsets[:, 1, None] + torch.arange(width)  # [B, W]
    batch_index = torch.arange(batch)[:, None, None]  # [B, 1, 1]
    shifted = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return shifted.permute(0, 3, 1, 2).contiguous()


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of :class:`DigitsClassifier` with random-shift augmentation."""

    def __init__(self, model: DigitsClassifier, learning_rate: float, total_steps: int, max_shift: int) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.max_shift = max_shift

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self.model(random_shift(images, self.max_shift)), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.learning_rate, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.learning_rate, total_steps=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.no_grad()
def evaluate_accuracy(model: DigitsClassifier, split: str = "heldout") -> float:
    """Top-1 accuracy of ``model`` on a digits split, fed through the uint8 path that the metrics use."""
    data = load_digits_split(split)
    model.eval()
    return (model(to_uint8(data.images)).argmax(dim=1) == data.labels).float().mean().item()


@torch.no_grad()
def train_feature_rms(model: DigitsClassifier) -> float:
    """``sqrt(mean_{x in train, j} phi_j(x)^2)`` of the raw penultimate features."""
    model.eval()
    hidden, _ = model.embed(to_uint8(load_digits_split("train").images))
    return hidden.pow(2).mean().sqrt().item()


def _fit(module: L.LightningModule, loader: DataLoader, max_epochs: int, max_steps: int, progress: bool) -> int:
    """Fit on the CPU with ``Trainer(deterministic=True)``; returns the optimiser steps taken.

    The Trainer switches ``torch.use_deterministic_algorithms`` on for the whole process: restored afterwards.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    lightning_log = logging.getLogger("lightning.pytorch")
    log_level = lightning_log.level
    if not progress:
        lightning_log.setLevel(logging.WARNING)  # no "GPU available" banners in quiet runs
    try:
        trainer = make_trainer(
            "cpu", progress, max_epochs=-1 if max_steps > 0 else max_epochs, max_steps=max_steps, deterministic=True
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, loader)
        return trainer.global_step
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        lightning_log.setLevel(log_level)


def train_classifier(
    seed: int = 0,
    max_epochs: int = 40,
    max_steps: int = -1,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    max_shift: int = 1,
    enable_progress_bar: bool = False,
) -> tuple[DigitsClassifier, dict[str, float]]:
    """Train the classifier on the ``train`` split, set its feature RMS, and evaluate it on ``heldout``.

    Deterministic on CPU for a seed (``seed_everything`` + ``Trainer(deterministic=True)``; the global
    deterministic-algorithms flag is restored afterwards).

    Args:
        seed: seeds the initial weights, the batch order and the augmentation.
        max_epochs: passes over the train split (1258 images).
        max_steps: optimiser steps if positive (overrides ``max_epochs``; for smoke tests).
        batch_size: mini-batch size.
        learning_rate: peak learning rate of the one-cycle schedule (AdamW).
        max_shift: largest random translation in pixels (0 = no augmentation).
        enable_progress_bar: show Lightning's progress bar.

    Returns:
        The trained model (eval mode, ``feature_rms`` set) and ``heldout_accuracy``, ``train_accuracy``,
        ``feature_rms``, ``steps``, ``train_seconds``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    data = load_digits_split("train")
    dataset = TensorDataset(to_uint8(data.images), data.labels)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), num_workers=0
    )
    steps_per_epoch = len(loader)
    total_steps = max_steps if max_steps > 0 else max_epochs * steps_per_epoch
    model = DigitsClassifier()
    module = ClassifierModule(model, learning_rate, total_steps, max_shift)
    start = time.perf_counter()
    steps = _fit(module, loader, max_epochs, max_steps, enable_progress_bar)
    seconds = time.perf_counter() - start
    model.feature_rms.fill_(train_feature_rms(model))
    metrics = {
        "heldout_accuracy": evaluate_accuracy(model, "heldout"),
        "train_accuracy": evaluate_accuracy(model, "train"),
        "feature_rms": model.feature_rms.item(),
        "steps": float(steps),
        "train_seconds": round(seconds, 2),
    }
    return model.eval(), metrics


def save_classifier(model: DigitsClassifier, out_dir: str | Path, metadata: dict) -> Path:
    """Write ``model.safetensors`` and ``classifier.json`` (architecture version + ``metadata``) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    meta = {"architecture_version": ARCHITECTURE_VERSION, "feature_rms": model.feature_rms.item(), **metadata}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def load_classifier(directory: str | Path | None = None) -> DigitsClassifier:
    """Load the classifier from ``directory`` (default: the weights shipped in the package), in eval mode.

    Raises:
        FileNotFoundError: the directory lacks the weights or the json.
        ValueError: the json names another architecture version.
    """
    directory = Path(directory) if directory is not None else DEFAULT_DIR
    weights, meta_path = directory / WEIGHTS_FILE, directory / META_FILE
    for path in (weights, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"digits classifier file {path} is missing; train it with "
                                    f"`python -m tfmq_exp.eval.classifier --out {directory}`")  # fmt: skip
    meta = json.loads(meta_path.read_text())
    if meta.get("architecture_version") != ARCHITECTURE_VERSION:
        raise ValueError(f"{meta_path}: architecture version {meta.get('architecture_version')} != "
                         f"{ARCHITECTURE_VERSION} of this code; retrain the classifier")  # fmt: skip
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval().requires_grad_(False)


def train_and_save(out_dir: str | Path, seed: int = 0, command: str | None = None) -> dict[str, float]:
    """Train with :func:`train_classifier` and save to ``out_dir``; returns the training metrics.

    Args:
        out_dir: destination directory (created).
        seed: training seed.
        command: the command line recorded in the json (default: the ``python -m`` form of this call).
    """
    model, metrics = train_classifier(seed=seed)
    command = command or f"python -m tfmq_exp.eval.classifier --out {out_dir} --seed {seed}"
    save_classifier(model, out_dir, {"seed": seed, "command": command, "torch": torch.__version__, **metrics})
    return metrics


def main(argv: list[str] | None = None) -> None:
    """``python -m tfmq_exp.eval.classifier --out DIR --seed 0``."""
    parser = argparse.ArgumentParser(description="Train and save the digits feature-extractor classifier.")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(train_and_save(args.out, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
