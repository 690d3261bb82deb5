"""DDPM training of the embedded digits UNet as a LightningModule (``tfmq-exp task=train_digits``).

Standard epsilon-prediction objective (Ho et al., 2020): ``L = E_{x_0, t, eps} || eps - eps_theta(x_t, t) ||^2``
with ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (diffusers ``DDPMScheduler.add_noise``). The weights that
ship are the exponential moving average of the parameters, as is usual for DDPMs.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch.utils.data import DataLoader, IterableDataset

from tfmq_exp.trainer import make_trainer
from tfmq_exp.config.schema import ModelConfig, TrainConfig
from tfmq_exp.data.digits import load_digits_split
from tfmq_exp.models.digits import build_digits_unet


class DigitsBatches(IterableDataset):
    """An endless stream of seeded mini-batches of training digits with their noise and timesteps.

    All randomness comes from one generator, so a seed fixes the whole training run.
    """

    def __init__(self, batch_size: int, num_train_timesteps: int, seed: int) -> None:
        self.images = load_digits_split("train").images
        self.batch_size = batch_size
        self.num_train_timesteps = num_train_timesteps
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            index = torch.randint(len(self.images), (self.batch_size,), generator=generator)
            x0 = self.images[index]  # [B, 1, 8, 8]
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(self.num_train_timesteps, (self.batch_size,), generator=generator)
            yield x0, noise, t


class DigitsDDPMModule(L.LightningModule):
    """Trains ``unet`` with the epsilon objective and keeps an EMA copy for sampling."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, train: TrainConfig) -> None:
        super().__init__()
        self.unet = unet
        self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
        self.scheduler = scheduler
        self.train_cfg = train

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x0, noise, t = batch
        x_t = self.scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(self.unet(x_t, t).sample, noise)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        decay = min(self.train_cfg.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        with torch.no_grad():
            for ema, live in zip(self.ema_unet.parameters(), self.unet.parameters()):
                ema.lerp_(live, 1.0 - decay)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.train_cfg.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.train_cfg.lr, total_steps=self.train_cfg.iters, pct_start=0.05
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_digits(model: ModelConfig, train: TrainConfig, seed: int, out_dir: Path, progress: bool = True) -> Path:
    """Train the digits DDPM and write its EMA weights with ``save_pretrained`` to ``out_dir``.

    Args:
        model: the model config (``digits`` or ``digits_ss``; ``digits_ss`` uses scale-shift time conditioning).
        train: iterations, batch size, learning rate and EMA decay.
        seed: seeds the initial weights and every batch; same seed, same weights on CPU.
        out_dir: destination directory (created).

    Returns:
        ``out_dir``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    unet = build_digits_unet(scale_shift=model.name.endswith("_ss"))
    scheduler = DDPMScheduler(
        num_train_timesteps=model.num_train_timesteps,
        beta_schedule=model.beta_schedule,
        beta_start=model.beta_start,
        beta_end=model.beta_end,
    )
    module = DigitsDDPMModule(unet, scheduler, train)
    loader = DataLoader(DigitsBatches(train.batch_size, model.num_train_timesteps, seed), batch_size=None)
    trainer = make_trainer("cpu", progress, max_steps=train.iters, deterministic=True)
    start = time.perf_counter()
    trainer.fit(module, loader)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module.ema_unet.save_pretrained(out_dir)
    provenance = {
        "command": f"tfmq-exp task=train_digits model={model.name} seed={seed} train.iters={train.iters}",
        "seed": seed,
        "iters": train.iters,
        "batch_size": train.batch_size,
        "lr": train.lr,
        "ema_decay": train.ema_decay,
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
    }
    (out_dir / "training.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out_dir
