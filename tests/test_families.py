"""Every model family end to end, offline on CPU: tiny random-weight pipelines of the real diffusers classes,
saved with ``save_pretrained`` and loaded through ``model.path`` as real weights are; torch-fidelity's Inception
path on a locally saved random-init weights file; the CLIP score from a tiny local CLIP model.

Runs go through Hydra's compose API and :func:`~tfmq_exp.pipeline.run_pipeline` in this process (the CLI's own
path is covered by ``tests/test_pipeline.py``), with few steps and samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from tfmq_exp.config import register_configs
from tfmq_exp.config.validate import to_config
from tfmq_exp.eval.tiny_fidelity import save_random_inception_weights, save_tiny_clip
from tfmq_exp.models.tiny_pipelines import save_tiny_pipeline
from tfmq_exp.paths import config_dir
from tfmq_exp.pipeline import run_pipeline

FAMILIES = {  # model config -> tiny pipeline kind
    "ddpm_cifar10": "pixel",
    "ldm_celebahq": "latent",
    "ldm_imagenet": "class_conditional",
    "sd_v1_4": "text_to_image",
    "sdxl": "sdxl",
}
SMALL = [
    "quant=w8a8", "sampler.num_steps=4", "calib.num_samples=4", "calib.recon_samples=16", "method.recon.iters=8",
    "method.recon.batch_size=8", "method.act_recon.iters=4", "eval.num_samples=8", "eval.batch_size=8",
    "eval.trajectory_samples=2", "eval.kid_subset_size=4", "eval.metrics=[fid,kid]", "logger=none",
    "runtime.progress=false",
    "eval.inception_layer=64",  # 64-d block features: the 2048-d path is tests/eval/test_real_reference.py's
]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    paths = {kind: save_tiny_pipeline(kind, root / kind) for kind in set(FAMILIES.values())}
    paths["inception"] = root / "inception.pth"
    save_random_inception_weights(paths["inception"])
    paths["clip"] = root / "clip"
    save_tiny_clip(paths["clip"])
    paths["reference"] = root / "reference"
    paths["reference"].mkdir()
    rng = np.random.default_rng(0)
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(paths["reference"] / f"{index}.png")
    paths["prompts"] = root / "prompts.txt"
    paths["prompts"].write_text("a red cube\na blue sphere on grass\n")
    return paths


def run(tmp_path: Path, assets: dict[str, Path], model: str, method: str, *extra: str) -> dict:
    overrides = [
        f"model={model}", f"model.path={assets[FAMILIES[model]]}", f"method={method}", *SMALL,
        f"eval.reference={assets['reference']}", f"eval.inception_weights={assets['inception']}",
        f"runtime.cache_dir={tmp_path / 'cache'}", *extra,
    ]  # fmt: skip
    if model == "ldm_imagenet":
        # the tiny model's null class is its last embedding (10); guidance as the paper's ImageNet protocol
        overrides += ["model.null_class=null", "sampler.guidance_scale=3.0"]
    if model in ("sd_v1_4", "sdxl"):
        overrides += [f"eval.prompts={assets['prompts']}", f"eval.clip_model={assets['clip']}", "sampler=plms50",
                      "sampler.num_steps=4"]  # fmt: skip
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return run_pipeline(cfg, to_config(cfg), run_dir=tmp_path / f"{model}_{method}")


FAST = {("ldm_imagenet", "tfmq"), ("sdxl", "tfmq"), ("sd_v1_4", "tfmq_cache"), ("ddpm_cifar10", "qdiffusion"),
        ("ldm_celebahq", "fp")}  # fmt: skip
CASES = [
    pytest.param(model, method, marks=() if (model, method) in FAST else pytest.mark.slow, id=f"{model}-{method}")
    for model in FAMILIES
    for method in ("fp", "qdiffusion", "tfmq", "tfmq_cache")
]


@pytest.mark.parametrize(("model", "method"), CASES)
def test_family_runs_end_to_end(tmp_path: Path, assets: dict[str, Path], model: str, method: str) -> None:
    summary = run(tmp_path, assets, model, method)
    assert summary["status"] == "ok"
    metrics = summary["metrics"]
    assert np.isfinite(metrics["fid"]) and np.isfinite(metrics["fid_fp"]) and "kid" in metrics
    if model in ("sd_v1_4", "sdxl"):
        assert 0.0 <= metrics["clip_score"] <= 100.0 and "clip_score_fp" in metrics
    if method != "fp":
        temporal = summary["temporal"]
        assert temporal["rel_mse_mean"] > 0 and len(temporal["timesteps"]) == 4 and temporal["eps_rel_mse"] > 0
        guided = model in ("ldm_imagenet", "sd_v1_4", "sdxl")  # the UNet saw [unconditional; conditional] rows
        assert summary["calibration"]["samples"] == (8 if guided else 4)
    resolved = summary["model_resolved"]
    assert resolved["sample_size"] in (8, 16) and resolved["in_channels"] in (3, 4)  # read from the saved UNet


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ldm_imagenet", "sdxl"])
def test_tfmq_temporal_error_is_not_above_qdiffusion(tmp_path: Path, assets: dict[str, Path], model: str) -> None:
    tfmq = run(tmp_path, assets, model, "tfmq")["temporal"]["rel_mse_mean"]
    qdiffusion = run(tmp_path, assets, model, "qdiffusion")["temporal"]["rel_mse_mean"]
    assert tfmq <= qdiffusion


def test_selection_runs_on_sdxl(tmp_path: Path, assets: dict[str, Path]) -> None:
    summary = run(tmp_path, assets, "sdxl", "tfmq_select")
    assert summary["status"] == "ok" and summary["selection"]["scope"] == "time_embedding"
