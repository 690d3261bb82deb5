"""Shared builders for the deploy tests: a tiny random digits UNet, noise calibration, a project-calibrated model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from tfmq_exp.config.schema import PUBLISHED_FP_PATTERNS
from tfmq_exp.deploy.noise_calibration import noise_calibrated
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.digits import build_digits_unet
from tfmq_exp.quant import observing_activations, quantize_

FP_PATTERNS = PUBLISHED_FP_PATTERNS


def digits_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_digits_unet().eval()


def noise_batches(count: int = 3, batch: int = 8, seed: int = 1) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        noise = torch.randn(batch, 1, 8, 8, generator=generator)
        batches.append((noise, torch.randint(0, 1000, (batch,), generator=generator).float()))
    return batches


def calibrated(unet: torch.nn.Module, w_bits: int, fp_patterns=FP_PATTERNS) -> Dict[str, LayerQParams]:
    """W{w_bits}A8 parameters of the core's quantizers calibrated on :func:`noise_batches`."""
    return noise_calibrated(unet, noise_batches(), w_bits=w_bits, a_bits=8, fp_patterns=fp_patterns)[1]


def sqnr_db(output: torch.Tensor, reference: torch.Tensor) -> float:
    error = (output - reference).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(reference.pow(2).sum() / error))


def example_inputs(batch: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(batch, 1, 8, 8, generator=generator), torch.tensor([999.0, 649.0, 299.0, 49.0][:batch])


def project_calibrated(a_bits: int | None = 8, split: bool = False) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """``(unet_fp, unet_q)``: the digits UNet and a W4 copy quantized by the project's own quantizers, calibrated."""
    from tests import helpers

    unet_fp = helpers.digits_unet(0)
    method_config, model_config, quant_config = helpers.method_config, helpers.model_config, helpers.quant_config
    if split:
        unet_q = copy.deepcopy(unet_fp)
        shortcuts_quantized = model_config(fp_patterns=[p for p in FP_PATTERNS if p != "*.conv_shortcut"])
        quantize_(unet_q, quant_config(w_bits=4, a_bits=a_bits), shortcuts_quantized,
                  method_config(split_shortcut=True), split_points=get_adapter(unet_fp).shortcut_split_points())
    else:
        unet_q = helpers.quantized_copy(unet_fp, quant_config(w_bits=4, a_bits=a_bits), model_config(), method_config())
    generator = torch.Generator().manual_seed(0)
    with observing_activations(unet_q):
        for t in (900, 500, 100):
            unet_q(torch.randn(4, 1, 8, 8, generator=generator), torch.tensor(t))
    return unet_fp, unet_q


def make_artifact(root: Path, method: str, steps: int = 4, quant: str = "w8a8", extra: Sequence[str] = ()) -> Path:
    """A real calibrated digits artifact of ``method`` (``quant``, a short run: ``steps`` sampler steps, 8
    calibration trajectories, 64 reconstruction samples, 20 iterations a unit in both passes; ``extra``
    overrides), under ``root``; returns its ``artifact`` directory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tfmq_exp.config import register_configs
    from tfmq_exp.config.validate import to_config
    from tfmq_exp.paths import config_dir
    from tfmq_exp.pipeline import run_pipeline

    overrides = [f"method={method}", f"quant={quant}", f"sampler.num_steps={steps}", "calib.num_samples=8",
                 "eval.num_samples=16", "eval.batch_size=16", "eval.trajectory_samples=2", "eval.kid_subset_size=8",
                 "calib.recon_samples=64", "method.recon.iters=20", "method.recon.batch_size=16",
                 "method.act_recon.iters=20", "method.act_recon.batch_size=16", "logger=none", "runtime.progress=false",
                 f"runtime.cache_dir={root / 'cache'}", *extra]  # fmt: skip
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_pipeline(cfg, to_config(cfg), run_dir=root / "run")
    return root / "run" / "artifact"
