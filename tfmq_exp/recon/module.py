"""The reconstruction optimisation of one unit as a LightningModule, and the Trainer that fits it.

:class:`ReconstructionModule` receives a unit (any module), an objective and a regulariser already built; it
never knows which method runs (BRECQ block, TIAR's TIB, Q-Diffusion's activation pass, ...). Each step minimises
``objective(unit, batch) + regulariser(step)`` with Adam over the given variables (AdaRound's ``alpha`` or
activation step sizes), optionally with cosine learning-rate decay (automatic optimisation: one optimizer step
per batch, so ``global_step`` is the iteration index).

:func:`fit_unit` runs one ``Trainer.fit`` with ``max_steps = iters`` over a seeded random-batch sampler; the
global RNG is forked and seeded per unit, so a unit's result depends only on its inputs and its seed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from tfmq_exp.trainer import make_trainer
from tfmq_exp.calib.quiet import quiet_lightning
from tfmq_exp.recon.objectives import Batch, Objective, UnitDataset

Regulariser = Callable[[int], Tensor]


class RandomBatches(Sampler[list[int]]):
    """``num_batches`` random batches of distinct indices, the same sequence for the same seed.

    Args:
        size: number of samples ``M``.
        batch_size: indices per batch (capped at ``M``).
        num_batches: batches per pass.
        seed: seed of the draws (each pass restarts from it).
    """

    def __init__(self, size: int, batch_size: int, num_batches: int, seed: int) -> None:
        super().__init__()
        self.size, self.batch_size, self.num_batches, self.seed = size, min(batch_size, size), num_batches, seed

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.num_batches):
            yield torch.randperm(self.size, generator=generator)[: self.batch_size].tolist()


class ReconstructionModule(L.LightningModule):
    """Minimise ``objective + regulariser`` over a unit's variables.

    Args:
        unit: the module whose output is reconstructed; kept in eval mode (no dropout / batch statistics).
        objective: the reconstruction loss (batch mean of per-sample losses).
        regulariser: the rounding regulariser at a given step, or ``None`` (activation pass: none).
        parameters: the variables to optimise (AdaRound ``alpha`` or activation step sizes).
        lr: Adam learning rate.
        cosine_steps: decay the learning rate to 0 over this many steps (``CosineAnnealingLR``, as Q-Diffusion's
            activation pass, ``qdiff/block_recon.py:108``); ``None`` keeps it constant (AdaRound).

    Attributes:
        losses: the reconstruction loss (without the regulariser) at every step.
        regulariser_losses: the regulariser at every step.
    """

    def __init__(
        self,
        unit: nn.Module,
        objective: Objective,
        regulariser: Optional[Regulariser],
        parameters: Sequence[nn.Parameter],
        lr: float,
        cosine_steps: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not parameters:
            raise ValueError("a reconstruction needs at least one parameter to optimise")
        self.unit = unit
        self.objective = objective
        self.regulariser = regulariser
        self.rounding_parameters = list(parameters)
        self.lr = lr
        self.cosine_steps = cosine_steps
        self.losses: list[float] = []
        self.regulariser_losses: list[float] = []

    def train(self, mode: bool = True) -> "ReconstructionModule":
        """Lightning switches the module to training mode; the unit itself stays in eval mode."""
        super().train(mode)
        self.unit.eval()
        return self

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        reconstruction = self.objective(self.unit, batch)
        if self.regulariser is None:
            rounding = torch.zeros((), device=reconstruction.device)
        else:
            rounding = self.regulariser(self.global_step)
        self.losses.append(float(reconstruction.detach()))
        self.regulariser_losses.append(float(rounding.detach()))
        return reconstruction + rounding

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.rounding_parameters, lr=self.lr)
        if self.cosine_steps is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.cosine_steps, eta_min=0.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit_unit(
    module: ReconstructionModule,
    dataset: UnitDataset,
    iters: int,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    progress: bool = False,
) -> None:
    """Run one ``Trainer.fit`` of ``iters`` steps on random batches of ``dataset``.

    Args:
        module: the reconstruction to optimise.
        dataset: the unit's captured inputs and targets.
        iters: optimizer steps.
        batch_size: samples per step.
        seed: seeds the batch draws and the (forked) global RNG for the duration of the fit.
        device: Lightning accelerator (``cpu``, ``cuda``, ``auto``).
        progress: show the progress bar.
    """
    sampler = RandomBatches(len(dataset), batch_size, iters, seed)
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=0)
    with quiet_lightning(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainer = make_trainer(
            device, progress, max_steps=iters, max_epochs=-1, deterministic="warn", num_sanity_val_steps=0
        )
        trainer.fit(module, loader)
