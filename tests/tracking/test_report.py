"""A tiny real 2 x 2 multirun (two methods, two bit-widths) and the report built from its summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfmq_exp.tracking.collect import collect_runs
from tfmq_exp.tracking.report import build_report, overview_table


def test_multirun_report_has_a_row_per_method_and_its_plots(multirun_dir: Path) -> None:
    finished, failed = collect_runs(multirun_dir)
    assert len(finished) == 4 and not failed
    report = build_report(multirun_dir)
    text = report.read_text()
    for quant in ("w8a8", "w4a8"):
        section = text.split(f"## digits, {quant}")[1].split("##")[0]
        rows = [line for line in section.splitlines() if line.startswith("| naive") or line.startswith("| tfmq")]
        assert len(rows) == 2, section
    for name in ("fid_vs_bits_digits.png", "temporal_error_digits_w4a8.png", "trajectory_digits_w8a8.png",
                 "cost_vs_quality_digits.png"):
        assert (multirun_dir / name).stat().st_size > 1000, name
    assert "Failed runs" not in text


def test_failed_runs_are_listed(multirun_dir: Path, tmp_path: Path) -> None:
    broken = multirun_dir / "broken_run"
    broken.mkdir(exist_ok=True)
    (broken / "summary.json").write_text('{"status": "failed", "method": "tfmq", "quant": "w4a8", "seed": 0, "error": "boom"}')
    try:
        text = build_report(multirun_dir, out_dir=tmp_path).read_text()
    finally:
        (broken / "summary.json").unlink()
        broken.rmdir()
    assert "## Failed runs" in text and "boom" in text


def test_methods_of_a_sweep_saw_identical_initial_noise(multirun_dir: Path) -> None:
    finished, _ = collect_runs(multirun_dir)
    summaries = [json.loads((run.path / "summary.json").read_text()) for run in finished]
    assert {s["method"] for s in summaries} == {"naive", "tfmq"}
    assert len({s["eval_noise"]["sha256"] for s in summaries}) == 1
    assert len({s["eval_noise"]["seed_set"] for s in summaries}) == 1
    for summary in summaries:  # and each started where its FP reference started
        assert summary["temporal"]["trajectory_cos"][0] == pytest.approx(1.0, abs=1e-12)


def test_overview_has_a_cell_per_method_and_quant_setting(multirun_dir: Path) -> None:
    finished, _ = collect_runs(multirun_dir)
    header, rows = overview_table(finished)
    assert header[0] == "method" and sorted(header[1:]) == ["w4a8", "w8a8"]
    assert [row[0] for row in rows] == ["naive", "tfmq"]
    for row in rows:
        for cell in row[1:]:
            delta, error = cell.split(" / ")
            assert delta[0] in "+-" and float(error) >= 0.0
    assert "digits: overview" in build_report(multirun_dir).read_text()


def _summary(method: str, calib_seed: int, fid: float) -> dict:
    return {"status": "ok", "model": "digits", "method": method, "quant": "w4a8", "seed": 0,
            "config": {"calib": {"seed": calib_seed}, "eval": {"seed_set": 0}},
            "metrics": {"fid": fid, "fid_delta": fid - 1.0, "seed_set": 0}}


def test_calibration_seeds_pair_runs_of_two_methods(tmp_path: Path) -> None:
    from tfmq_exp.tracking.report import quant_table

    for method, fids in (("qdiffusion", [1.0, 2.0, 3.0]), ("tfmq", [1.1, 2.1, 3.1])):
        for calib_seed, fid in enumerate(fids):
            run = tmp_path / f"{method}_{calib_seed}"
            run.mkdir()
            (run / "summary.json").write_text(json.dumps(_summary(method, calib_seed, fid)))
    finished, _ = collect_runs(tmp_path)
    assert {run.replicate for run in finished} == {(0, 0), (0, 1), (0, 2)}
    row = next(row for row in quant_table(finished, [], "qdiffusion") if row[0] == "tfmq")
    # Unpaired the spread of the FIDs (1.0) would swamp the difference; paired it is exactly +0.1 every time.
    assert row[4].startswith("0.1 ± 0")
