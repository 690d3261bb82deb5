"""The speed benchmark's CLI: interleaved timing, the JSON report and the headline lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfmq_exp.deploy.bench_setup import interleaved_times
from tfmq_exp.deploy.benchmark import main, parse_args, run


def test_calls_are_interleaved_after_warmup() -> None:
    order: list[str] = []
    times = interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}


def test_quick_overrides_and_unknown_variants() -> None:
    args = parse_args(["--quick", "--models", "digits"])
    assert args.batch_sizes == [1, 8] and args.repeats == 5 and args.threads == 2
    with pytest.raises(SystemExit):
        parse_args(["--variants", "int4"])


def test_eager_only_run_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    argv = ["--models", "digits", "--variants", "fp32_eager", "--batch-sizes", "1,2", "--repeats", "2",
            "--ddim-steps", "2", "--ddim-batch", "2", "--ddim-repeats", "1", "--threads", "1", "--out", str(out)]
    report = run(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    forward = report["models"]["digits"]["forward"]
    assert set(forward) == {"1", "2"}
    assert len(forward["2"]["variants"]["fp32_eager"]["times_ms"]) == 2
    assert report["models"]["digits"]["ddim"]["variants"]["fp32_eager"]["median_ms"] > 0
    assert report["headline"] is None and "speedup_int8" not in capsys.readouterr().out
    assert main(argv) is None  # the console script exits with status 0


@pytest.mark.slow
def test_int8_run_prints_headline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--models", "digits", "--batch-sizes", "8", "--repeats", "2", "--ddim-steps", "2", "--ddim-batch", "8",
            "--ddim-repeats", "1", "--threads", "1", "--out", str(tmp_path / "bench.json")]
    report = run(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("speedup_int8_vs_fp32_eager: ")
    assert lines[-1].startswith("speedup_int8_vs_fp32_compiled: ")
    assert float(lines[-1].split(": ")[1]) == pytest.approx(report["headline"]["int8_vs_fp32_compiled"], abs=0.01)
    assert report["models"]["digits"]["ddim"]["sample_sqnr_db_vs_fp32_eager"]["int8"] > 10.0
