"""Compare AdaRound schedules on single reconstruction units of the embedded model (issue: converged AdaRound).

For each unit named on the command line, the unit alone is quantized (everything else stays in full precision),
reconstructed under each schedule ``ITERS@LR``, and its convergence record is printed and saved as JSON: hard and
soft loss on the unit's fixed captured samples, undecided share of rounding variables, round-to-nearest loss.

    python experiments/adaround_schedule.py --units mid_block.resnets.1 --schedules 500@3e-2 20000@1e-3 \
        --out experiments/results/adaround_schedule/mid_block.json [tfmq-exp overrides ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tfmq_exp.calib.trajectories import load_or_capture
from tfmq_exp.config.schema import register_configs
from tfmq_exp.config.validate import to_config
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.loading import load_unet
from tfmq_exp.paths import config_dir
from tfmq_exp.quant import quantize_
from tfmq_exp.recon import reconstruct
from tfmq_exp.store import ArtifactStore


def run(unit: str, iters: int, lr: float, overrides: list[str]) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *overrides, f"model.quant_patterns=[{unit}.*]", f"method.recon.iters={iters}", f"method.recon.lr={lr}",
            "method.tiar=false", "runtime.progress=false",
        ])  # fmt: skip
    config = to_config(cfg)
    unet_fp = load_unet(config.model)
    data, _ = load_or_capture(unet_fp, config, ArtifactStore(config.runtime.cache_dir))
    unet_q = copy.deepcopy(unet_fp)
    quantize_(unet_q, config.quant, config.model, config.method,
              temporal_names=set(get_adapter(unet_fp).tib().layer_names()))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as checkpoints:
        report = reconstruct(unet_q, unet_fp, config, data, Path(checkpoints))
    if unit not in report["units"]:
        raise SystemExit(f"adaround_schedule.py: error: {unit!r} is not a reconstruction unit of this model; "
                         f"with model.quant_patterns=[{unit}.*] the plan held {sorted(report['units']) or 'nothing'}")
    entry = report["units"][unit]
    keys = ("loss_nearest", "loss_soft", "loss_hard", "undecided_fraction", "hard_soft_ratio", "converged", "samples")
    return {"unit": unit, "iters": iters, "lr": lr, **{k: entry[k] for k in keys},
            "seconds": time.perf_counter() - started, "config": OmegaConf.to_container(cfg, resolve=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", nargs="+", required=True)
    parser.add_argument("--schedules", nargs="+", default=["500@3e-2", "20000@1e-3"])
    parser.add_argument("--out", type=Path, required=True)
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(1)
    results = []
    for unit in args.units:
        for schedule in args.schedules:
            iters, lr = schedule.split("@")
            result = run(unit, int(iters), float(lr), overrides)
            results.append(result)
            print(f"{unit} {schedule}: nearest {result['loss_nearest']:.5f} soft {result['loss_soft']:.5f} "
                  f"hard {result['loss_hard']:.5f} undecided {100 * result['undecided_fraction']:.2f}% "
                  f"({result['seconds']:.0f} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
