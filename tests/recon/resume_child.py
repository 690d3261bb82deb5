"""Child process of the resume test: reconstruct, optionally SIGKILL itself once N units are checkpointed.

Usage: ``python -m tests.recon.resume_child CACHE_DIR CHECKPOINT_DIR OUTPUT_PREFIX KILL_AFTER_UNITS``
(``KILL_AFTER_UNITS`` 0: run to completion and write ``OUTPUT_PREFIX.safetensors`` / ``.json``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.calib.helpers import digits_unet, quantized_copy
from tests.recon.resume_config import resume_config
from tfmq_exp.calib import load_or_capture
from tfmq_exp.recon import reconstruct
from tfmq_exp.store import ArtifactStore


def _kill_when_checkpointed(manifest: Path, units: int) -> None:
    """Watch the manifest; SIGKILL this process as soon as it lists ``units`` finished units."""
    while True:
        try:
            if len(json.loads(manifest.read_text())["units"]) >= units:
                os.kill(os.getpid(), signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)


def main() -> None:
    cache_dir, checkpoint_dir, output, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    unet = digits_unet(seed=0)
    config = resume_config(cache_dir)
    data, _ = load_or_capture(unet, config, ArtifactStore(cache_dir / "store"))
    unet_q = quantized_copy(unet, config)
    if kill_after:
        watcher = threading.Thread(target=_kill_when_checkpointed, args=(checkpoint_dir / "manifest.json", kill_after))
        watcher.daemon = True
        watcher.start()
    report = reconstruct(unet_q, unet, config, data, checkpoint_dir)
    save_file({k: v.contiguous() for k, v in unet_q.state_dict().items()}, f"{output}.safetensors")
    Path(f"{output}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
