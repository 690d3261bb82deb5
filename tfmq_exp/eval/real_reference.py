"""The real set of the RGB generation metrics, as ``eval.reference`` names it.

:func:`resolve_reference` classifies the string into one of three forms (:data:`REFERENCE_KINDS`):

- ``folder``: an existing directory of images. torch-fidelity reads the files whose extension is one of
  ``png``, ``jpg``, ``jpeg`` (its ``samples_find_ext`` default, any case), directly in the folder (not in
  sub-folders: ``samples_find_deep=False``), converted to RGB; every image must have the same size (they are
  batched as they are; Inception then resizes to 299 x 299). :func:`folder_images` lists the same files.
- ``registered``: a name in torch-fidelity's registry of inputs (``torch_fidelity.registry.DATASETS_REGISTRY``:
  ``cifar10-train``, ``cifar10-val``, ``cifar100-train``, ``cifar100-val``, ``stl10-train``, ``stl10-test``,
  ``stl10-unlabeled``); torch-fidelity downloads the data set on first use into
  ``$TORCH_HOME/fidelity_datasets`` (its ``datasets_root`` default).
- ``stats``: an existing ``.npz`` file with ``mu`` [D] and ``sigma`` [D, D], Inception pool statistics of a real
  set (the ``pytorch-fid`` / TTUR form). FID only (Inception Score needs no reference and also works): KID and
  precision / recall need the reference's features, see :meth:`RealReference.check_metrics`.

The reference's Inception statistics and features are computed once and kept in torch-fidelity's own file cache
(``cache_root``), under the name :func:`reference_cache_name`, which hashes what the reference holds
(:func:`reference_fingerprint`) together with the Inception weights file: new images, another data set or other
weights give another cache entry, never stale numbers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.registry import DATASETS_REGISTRY
from torch_fidelity.utils import glob_samples_paths

from tfmq_exp.errors import UserError

__all__ = [
    "REFERENCE_KINDS",
    "RealReference",
    "RegisteredInput",
    "folder_images",
    "load_reference_statistics",
    "reference_cache_name",
    "reference_fingerprint",
    "registered_inputs",
    "resolve_reference",
    "weights_sha256",
]

REFERENCE_KINDS = ("folder", "registered", "stats")
STATS_METRICS = ("fid", "isc")
"""Metrics a statistics file supports: FID from ``mu`` / ``sigma``; IS is computed on the generated set alone."""
IMAGE_EXTENSIONS: str = DEFAULTS["samples_find_ext"]
"""The image extensions torch-fidelity reads from a folder (``"png,jpg,jpeg"``)."""
_FORMS = (
    "an image folder (png/jpg/jpeg files), a torch-fidelity registered input ({names}), or a statistics file "
    "(.npz with mu and sigma)"
)


def registered_inputs() -> tuple[str, ...]:
    """The names of torch-fidelity's registered inputs (``DATASETS_REGISTRY``), in registration order."""
    return tuple(DATASETS_REGISTRY)


def _forms() -> str:
    return _FORMS.format(names=", ".join(registered_inputs()))


@dataclass(frozen=True)
class RealReference:
    """What ``eval.reference`` names.

    Attributes:
        kind: ``"folder"``, ``"registered"`` or ``"stats"`` (:data:`REFERENCE_KINDS`).
        location: the absolute folder or ``.npz`` path, or the registered input's name.
        spec: the string as the user gave it (for messages).
    """

    kind: str
    location: str
    spec: str

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_KINDS:
            raise ValueError(f"unknown reference kind {self.kind!r}; valid: {REFERENCE_KINDS}")

    def supported_metrics(self, metrics: Sequence[str]) -> list[str]:
        """The subset of ``metrics`` this reference can serve (all of them unless it is a statistics file)."""
        return [metric for metric in metrics if self.kind != "stats" or metric in STATS_METRICS]

    def check_metrics(self, metrics: Sequence[str]) -> None:
        """Raise :class:`UserError` when a metric needs features a statistics file does not have.

        Raises:
            UserError: ``kind == "stats"`` and ``metrics`` holds ``kid`` or ``prc``.
        """
        missing = [metric for metric in metrics if metric not in self.supported_metrics(metrics)]
        if missing:
            raise UserError(
                f"eval.reference={self.spec} is a statistics file (mu / sigma, FID only): metrics "
                f"{', '.join(missing)} need an image reference (an image folder or a torch-fidelity registered "
                f"input); drop them from eval.metrics or point eval.reference at images"
            )


def folder_images(folder: str | Path) -> list[str]:
    """The image files torch-fidelity reads from ``folder`` (sorted real paths), with its own globbing.

    Same call as ``torch_fidelity.utils.prepare_input_from_descriptor`` makes for a directory input, with the
    ``samples_find_deep`` / ``samples_find_ext`` defaults.
    """
    return glob_samples_paths(
        str(folder), DEFAULTS["samples_find_deep"], DEFAULTS["samples_find_ext"], None, verbose=False
    )


def resolve_reference(spec: str | os.PathLike | None) -> RealReference:
    """Classify ``eval.reference``: an image folder, a ``.npz`` statistics file or a registered input.

    An existing path wins over a registered name (a folder called ``cifar10-train`` in the working directory is
    a folder). Nothing is read beyond the folder listing and the file's existence.

    Raises:
        UserError: ``spec`` is ``None`` or empty, names none of the three forms, or is a folder without images.
    """
    if spec is None or str(spec).strip() == "":
        raise UserError(f"eval.reference= must be given for RGB models: {_forms()}")
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if not folder_images(path):
            raise UserError(
                f"eval.reference={text} is a folder without images: torch-fidelity reads files ending "
                f"{', '.join('.' + ext for ext in IMAGE_EXTENSIONS.split(','))} directly in it (not in sub-folders)"
            )
        return RealReference("folder", str(path.resolve()), text)
    if path.is_file() and path.suffix.lower() == ".npz":
        return RealReference("stats", str(path.resolve()), text)
    if text in DATASETS_REGISTRY:
        return RealReference("registered", text, text)
    raise UserError(f"eval.reference={text} is not {_forms()}")


def _sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _sha256_file_memo(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_file(path)


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file (memoised per path, size and modification time: hashing 95 MB takes a moment)."""
    stat = os.stat(path)
    return _sha256_file_memo(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def reference_fingerprint(ref: RealReference) -> str:
    """A sha256 (hex) of what the reference holds, for cache keys.

    - ``folder``: the sorted list of the image files torch-fidelity reads (:func:`folder_images`), each as
      ``name, size, mtime_ns`` relative to the folder (moving the folder keeps the fingerprint; touching,
      adding or removing an image changes it). The pixels are not read.
    - ``registered``: the registered name.
    - ``stats``: the bytes of the ``.npz`` file.
    """
    digest = hashlib.sha256(f"tfmq-reference:{ref.kind}\n".encode())
    if ref.kind == "folder":
        root = os.path.realpath(ref.location)
        for file in folder_images(root):
            stat = os.stat(file)
            digest.update(f"{os.path.relpath(file, root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    elif ref.kind == "registered":
        digest.update(ref.location.encode())
    else:
        digest.update(_sha256_file(ref.location).encode())
    return digest.hexdigest()


def reference_cache_name(ref: RealReference, weights_path: str | Path) -> str:
    """torch-fidelity's ``input2_cache_name`` of the reference: its fingerprint and the extractor weights' sha256.

    torch-fidelity then writes ``<cache_root>/<name>-inception-v3-compat-features-<layer>.pt`` and
    ``<name>-inception-v3-compat-stat-fid-2048.pt``.
    """
    key = hashlib.sha256(f"{reference_fingerprint(ref)}:{weights_sha256(weights_path)}".encode()).hexdigest()
    return f"tfmq-ref-{ref.kind}-{key[:32]}"


class RegisteredInput(Dataset):
    """A torch-fidelity registered input, instantiated (and downloaded) only when an image is first needed.

    Passing the name itself as ``input2`` would make torch-fidelity cache the reference under that bare name
    (``make_input_descriptor_from_int`` overrides ``input2_cache_name`` for registered names), regardless of
    the Inception weights; a ``Dataset`` keeps :func:`reference_cache_name`. Laziness keeps a cache hit free of
    the data set: torch-fidelity only touches the input when it recomputes features.
    """

    def __init__(self, name: str, datasets_root: str | Path | None = None, download: bool = True) -> None:
        if name not in DATASETS_REGISTRY:
            raise ValueError(f"{name!r} is not a torch-fidelity registered input; valid: {registered_inputs()}")
        self.name = name
        # torch-fidelity's own default root (torch_fidelity/utils.py, prepare_input_from_descriptor)
        if datasets_root is None:
            datasets_root = os.path.join(torch.hub._get_torch_home(), "fidelity_datasets")
        self.datasets_root = str(datasets_root)
        self.download = download
        self._dataset: Any = None

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            os.makedirs(self.datasets_root, exist_ok=True)
            self._dataset = DATASETS_REGISTRY[self.name](self.datasets_root, self.download)
        return self._dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index]


def load_reference_statistics(path: str | Path, spec: str | None = None) -> dict[str, np.ndarray]:
    """``mu`` [D] and ``sigma`` [D, D] of a statistics file, as float64.

    Raises:
        UserError: the file is not a readable ``.npz`` with a 1-d ``mu`` and a matching square ``sigma``.
    """
    name = spec if spec is not None else str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data.files or "sigma" not in data.files:
                raise UserError(
                    f"eval.reference={name} has arrays {sorted(data.files)}: a statistics file needs 'mu' and 'sigma'"
                )
            mu, sigma = np.asarray(data["mu"], dtype=np.float64), np.asarray(data["sigma"], dtype=np.float64)
    except UserError:
        raise
    except Exception as error:  # zipfile / pickle / OS errors: not a readable npz
        raise UserError(f"eval.reference={name} is not a readable .npz statistics file ({error})") from error
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(
            f"eval.reference={name}: mu {mu.shape} and sigma {sigma.shape} must be [D] and [D, D] (D = 2048 for "
            f"Inception pool features)"
        )
    return {"mu": mu, "sigma": sigma}
