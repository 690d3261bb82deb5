"""Every option of every config group composes and validates; bad input fails with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tfmq_exp.config.schema import Config, register_configs
from tfmq_exp.config.validate import to_config

GROUPS = ["model", "sampler", "quant", "method", "calib", "eval", "logger", "runtime"]
REPO = Path(__file__).resolve().parents[2]


def _options() -> list[tuple[str, str]]:
    return [
        (group, path.stem)
        for group in GROUPS
        for path in sorted((REPO / "conf" / group).glob("*.yaml"))
    ]


@pytest.fixture()
def composer(conf_dir: Path):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        yield lambda overrides: compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(("group", "option"), _options(), ids=[f"{g}={o}" for g, o in _options()])
def test_every_option_composes_and_validates(composer, group: str, option: str) -> None:
    config = to_config(composer([f"{group}={option}"]))
    assert isinstance(config, Config)
    if group in ("model", "quant", "method"):
        assert getattr(config, group).name == option


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert list((REPO / "conf" / group).glob("*.yaml")), group


def test_methods_are_configs_not_branches(composer) -> None:
    tfmq = to_config(composer(["method=tfmq"])).method
    qdiff = to_config(composer(["method=qdiffusion"])).method
    assert (tfmq.tiar, tfmq.fsc, qdiff.tiar, qdiff.fsc) == (True, True, False, False)
    # tfmq composes qdiffusion: the same weight reconstruction by construction; the release's activation handling
    assert tfmq.recon == qdiff.recon and tfmq.calib_steps == qdiff.calib_steps and tfmq.split_shortcut
    assert qdiff.act_recon.enabled and not tfmq.act_recon.enabled
    assert (qdiff.act_range, qdiff.act_calib_steps, tfmq.act_range, tfmq.act_calib_steps) == ("mse", "recon_set", None, "all")
    released = to_config(composer(["method=tfmq_released"])).method
    assert (released.fsc_scope, released.attention_matmuls, tfmq.fsc_scope, tfmq.attention_matmuls) == ("all", False, "tib", True)
    cache = to_config(composer(["method=tfmq_cache"])).method
    assert (cache.maintenance, cache.tiar, cache.fsc) == ("cache", False, False)


def test_published_schedule_is_a_preset(composer) -> None:
    method = to_config(composer(["method=qdiffusion", "+schedule=published"])).method
    assert (method.recon.iters, method.recon.lr, method.act_recon.iters, method.act_recon.lr) == (20000, 1e-3, 5000, 4e-4)


def test_temporal_bits_default_to_activation_bits(composer) -> None:
    assert to_config(composer(["quant=w4a8"])).quant.effective_temporal_a_bits == 8
    assert to_config(composer(["quant=w4a8t4"])).quant.effective_temporal_a_bits == 4


def _cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tfmq_exp", *arguments], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["method=nosuch"], "valid choices for 'method': fp, fsc, naive"),
        (["quant.w_bits=0"], "quant.w_bits=0 is out of range: allowed 2..8"),
        (["quant.a_bits=2"], "quant.a_bits=2 is out of range: allowed 4..16"),
        (["quant.w_bitz=4"], "unknown config key 'quant.w_bitz'; valid keys of 'quant': name, w_bits"),
        (["--multirun", "method=fp,nosuch"], "valid choices for 'method'"),
    ],
    ids=["unknown-method", "w-bits-range", "a-bits-range", "typo-key", "multirun"],
)
def test_user_errors_are_one_line(arguments: list[str], expected: str) -> None:
    result = _cli(*arguments)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("tfmq-exp: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", [name for name in EXPERIMENTS if not name.startswith("paper_")])
def test_every_experiment_composes_as_a_sweep(composer, experiment: str) -> None:
    cfg = composer([f"+experiment={experiment}"])
    config = to_config(cfg)
    assert config.runtime.progress is False
    assert isinstance(config.runtime.threads, int) and config.runtime.threads >= 1


@pytest.mark.parametrize("experiment", [name for name in EXPERIMENTS if name.startswith("paper_")])
def test_every_paper_protocol_composes_for_its_model(composer, experiment: str) -> None:
    config = to_config(composer([f"+experiment={experiment}"]))
    assert config.model.name.replace("sd_v1_4", "sd14").replace("ddpm_", "").endswith(experiment[len("paper_"):])
    assert config.model.domain == "rgb" and config.model.sample_size is None  # read from the loaded weights
    assert config.eval.num_samples >= 10_000 and config.calib.num_samples >= 128


def test_experiments_use_the_parallel_launcher_and_sweep_every_axis(conf_dir: Path) -> None:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=ablation"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    params = cfg.hydra.sweeper.params
    assert set(params.method.split(",")) == {"fp", "naive", "ptq4dm", "qdiffusion", "tiar", "fsc", "tfmq", "tfmq_cache",
                                             "tfmq_select"}
    assert {"w8a8", "w4a8", "w4a32", "w8a4", "w4a8t4"} == set(params.quant.split(","))
    assert params.seed == "0,1,2" and set(params.model.split(",")) == {"digits", "digits_ss"}


def test_threads_are_split_across_parallel_jobs(conf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from hydra.core.hydra_config import HydraConfig

    from tfmq_exp.config.resolvers import threads_per_job

    cores = len(os.sched_getaffinity(0))
    assert threads_per_job() == cores  # outside a multirun a job gets every core
    monkeypatch.setenv("TFMQ_JOBS", "2")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=ablation"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    try:
        assert threads_per_job() == max(1, cores // 2)
    finally:
        HydraConfig.instance().cfg = None


def test_a_directory_name_past_255_bytes_is_shortened_and_stays_distinct() -> None:
    from tfmq_exp.config.resolvers import NAME_MAX_BYTES, directory_name

    short = "method=tfmq,quant=w4a8"
    assert directory_name(short) == short
    long_a, long_b = "x=1," * 100 + "seed=0", "x=1," * 100 + "seed=1"
    named_a, named_b = directory_name(long_a), directory_name(long_b)
    assert len(named_a.encode()) <= NAME_MAX_BYTES and named_a.startswith("x=1,x=1,")
    assert named_a != named_b and directory_name(long_a) == named_a
    odd = directory_name("a" + "é" * 200)  # byte 200 falls inside a two-byte character
    assert len(odd.encode()) <= NAME_MAX_BYTES and odd.startswith("a" + "é" * 99 + "~")  # dropped, not split
