"""Sampling on several devices: Lightning's predict loop under DDP, each process writing its batches to disk.

The sample indices are cut into batches once (:class:`IndexBatches`), and Lightning's distributed sampler deals
whole batches to the processes, so every batch holds the same samples as on one device; with per-sample noise
(:func:`~tfmq_exp.eval.sampling.sample_seed`) the images are then identical to a one-device run. Under DDP only
rank 0's return value reaches the caller, so a :class:`~lightning.pytorch.callbacks.BasePredictionWriter` writes
every batch of every rank to a directory and the caller reads them back in index order.
"""

from __future__ import annotations

import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from tfmq_exp.trainer import make_trainer


class IndexBatches(Dataset):
    """Item ``i``: the sample indices of batch ``i`` (``[i * batch_size, ...)``), a ``LongTensor``."""

    def __init__(self, count: int, batch_size: int) -> None:
        self.count, self.batch_size = count, batch_size

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.arange(index * self.batch_size, min((index + 1) * self.batch_size, self.count))


def index_loader(count: int, batch_size: int) -> DataLoader:
    """A loader of :class:`IndexBatches` (one batch per item, no collation)."""
    return DataLoader(IndexBatches(count, batch_size), batch_size=None, shuffle=False)


class BatchWriter(BasePredictionWriter):
    """Saves each predicted batch (a dataclass of tensors) as ``<first index>.pt`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        super().__init__(write_interval="batch")
        self.directory = directory

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, batch_indices: Sequence[int] | None,
        batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        assert is_dataclass(prediction)
        values = {item.name: getattr(prediction, item.name) for item in fields(prediction)}
        torch.save(values, self.directory / f"{int(batch[0]):012d}.pt")


def predict_on_devices(
    module: L.LightningModule,
    count: int,
    batch_size: int,
    device: str,
    devices: int,
    progress: bool,
    result_type: type,
    precision: str = "32-true",
) -> list[Any]:
    """Run ``module``'s predict loop over ``count`` sample indices on ``devices`` x ``device`` at Lightning's
    ``precision``.

    Returns:
        The predicted batches (``result_type`` instances) in index order, as one device would return them.
    """
    loader = index_loader(count, batch_size)
    if devices == 1:
        batches = make_trainer(device, progress, precision=precision).predict(module, loader)
        assert batches is not None
        return list(batches)
    with tempfile.TemporaryDirectory(prefix="tfmq-predict-") as directory:
        trainer = make_trainer(
            device, progress, devices=devices, callbacks=[BatchWriter(Path(directory))], precision=precision
        )
        trainer.predict(module, loader, return_predictions=False)
        files = sorted(Path(directory).glob("*.pt"))
        if len(files) != len(loader):
            raise RuntimeError(f"{len(files)} of {len(loader)} batches came back from {devices} processes")
        return [result_type(**torch.load(path, weights_only=False)) for path in files]
