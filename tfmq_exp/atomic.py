"""One way to write a file so that readers never see half of it: a temporary file beside it, then a rename.

Used for everything the project writes that another process may read while it is being written: run summaries,
reconstruction checkpoints and their manifest, artifact files. (The artifact store renames whole directories,
:meth:`tfmq_exp.store.ArtifactStore._write`; that is the same idea one level up.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` on a fresh file in ``path``'s directory, flush it to disk, rename it to ``path``.

    Args:
        path: the destination (its directory is created).
        write: writes the complete content to the path it is given (e.g. ``safetensors.torch.save_file``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(staging))
        with open(staging, "rb+") as out:
            os.fsync(out.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any, **dump: Any) -> None:
    """Write ``payload`` as indented JSON (ending with a newline) through :func:`atomic_write`."""
    text = json.dumps(payload, indent=2, **{"default": float, **dump}) + "\n"
    atomic_write(path, lambda staging: staging.write_text(text))
