"""The speed benchmark's CLI: interleaved timing, the JSON report and the headline lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfmq_exp.deploy.bench_setup import interleaved_times
from tfmq_exp.deploy.benchmark import _headline, main, parse_args, run
from tfmq_exp.deploy.runtimes import missing_runtimes


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


def test_headline_picks_the_fastest_int8_backend() -> None:
    medians = {"fp32_eager": 100.0, "fp32_ort": 80.0, "int8": 60.0, "int8_openvino": 44.0, "int8_ort": 90.0,
               "int8_nncf": 40.0, "int8_ort_own": 50.0, "int8_nncf_same": 22.0, "int8_ort_own_same": 30.0}
    entry = {"variants": {name: {"median_ms": ms} for name, ms in medians.items()},
             "speedups": {"int8_vs_fp32_eager": 100 / 60}}
    headline = _headline({"digits": {"forward": {"8": entry}}})
    assert headline["model"] == "digits" and headline["batch"] == 8
    assert headline["best_int8_backend"] == "int8_nncf_same"
    assert headline["best_int8_vs_fp32_eager"] == pytest.approx(100 / 22)
    assert headline["best_int8_vs_best_fp32"] == pytest.approx(80 / 22)
    assert headline["ours_vs_runtime_own_int8"] == pytest.approx(44 / 40)
    assert headline["ours_vs_runtime_own_int8_same_layers"] == pytest.approx(44 / 22)
    assert headline["ours_vs_runtime_own_int8_per_runtime"] == pytest.approx({"int8_ort": 1.8, "int8_openvino": 1.1})
    assert headline["int8_vs_fp32_compiled"] is None
    assert headline["paired"] == {"best_int8_vs_fp32_eager": None, "ours_vs_runtime_own_int8": None}  # no rounds


def test_paired_ratios_are_medians_of_per_round_ratios() -> None:
    rounds = {"fp32_eager": [100.0, 300.0, 100.0], "int8_openvino": [50.0, 140.0, 45.0], "int8_nncf": [40.0, 150.0, 40.0]}
    entry = {"variants": {name: {"median_ms": sorted(times)[1], "times_ms": times} for name, times in rounds.items()},
             "speedups": {}}
    headline = _headline({"cifar10": {"forward": {"8": entry}}})
    assert headline["best_int8_backend"] == "int8_nncf"
    assert headline["ours_vs_runtime_own_int8"] == pytest.approx(50 / 40)  # ratio of medians
    assert headline["paired"]["ours_vs_runtime_own_int8"] == pytest.approx(1.125)  # median of 1.25, 0.933, 1.125
    assert headline["paired"]["best_int8_vs_fp32_eager"] == pytest.approx(2.5)  # median of 2.5, 2.0, 2.5


@pytest.mark.skipif(bool(missing_runtimes()), reason="the deploy extra (onnx, onnxruntime, openvino, nncf)")
def test_onnx_variants_run_and_end_with_the_headline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    variants = "fp32_eager,fp32_ort,fp32_openvino,int8_ort,int8_openvino,int8_ort_own,int8_nncf,int8_ort_own_same,int8_nncf_same"
    argv = ["--models", "digits", "--variants", variants, "--batch-sizes", "2", "--repeats", "1", "--ddim-steps", "2",
            "--ddim-batch", "2", "--ddim-repeats", "1", "--threads", "1", "--out", str(tmp_path / "bench.json")]
    report = run(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines[-4:]] == [
        "best_int8_backend", "speedup_best_int8_vs_fp32_eager", "speedup_best_int8_vs_best_fp32",
        "ours_vs_runtime_own_int8"]
    assert float(lines[-1].split(": ")[1]) == pytest.approx(report["headline"]["ours_vs_runtime_own_int8"], abs=0.01)
    forward = report["models"]["digits"]["forward"]["2"]
    assert set(forward["variants"]) == set(variants.split(","))
    assert min(forward["sqnr_db_vs_fake_quant"][name] for name in ("int8_ort", "int8_openvino")) >= 30.0
    assert report["models"]["digits"]["quantized_attentions"] > 0  # --attention int8, the default
    assert set(report["models"]["digits"]["build_s"]["onnx_files"]) == {
        "export_fp32", "export_qdq_ours", "ort_quantize_static", "nncf_quantize", "ort_quantize_static_same",
        "nncf_quantize_same"}
    assert "ours_vs_runtime_own_int8_same_layers" in [line.split(": ")[0] for line in lines]


@pytest.mark.slow
def test_int8_run_prints_headline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--models", "digits", "--batch-sizes", "8", "--repeats", "2", "--ddim-steps", "2", "--ddim-batch", "8",
            "--ddim-repeats", "1", "--threads", "1", "--out", str(tmp_path / "bench.json")]
    report = run(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    headline = dict(line.split(": ", 1) for line in lines[-7:])
    assert list(headline) == ["speedup_int8_vs_fp32_eager", "speedup_int8_vs_fp32_compiled",
                              "paired (median of per-round ratios)", "best_int8_backend",
                              "speedup_best_int8_vs_fp32_eager", "speedup_best_int8_vs_best_fp32",
                              "ours_vs_runtime_own_int8"]
    assert float(headline["speedup_int8_vs_fp32_compiled"]) == pytest.approx(
        report["headline"]["int8_vs_fp32_compiled"], abs=0.01)
    assert report["models"]["digits"]["ddim"]["sample_sqnr_db_vs_fp32_eager"]["int8"] > 10.0
