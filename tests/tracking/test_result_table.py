"""The result table a single run prints at its end (issue 14 item 8); a real CLI run ending with it:
``tests/test_pipeline.py::test_fp_run_writes_summary_grid_and_wandb_and_ends_with_the_table``."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import table_row
from tfmq_exp.tracking.result_table import format_result_table

def _quantized_summary(run_dir: Path) -> dict:
    return {
        "status": "ok", "model": "digits", "method": "tfmq", "quant": "w4a8", "seed": 3, "run_dir": str(run_dir),
        "metrics": {"fid": 12.5, "fid_fp": 10.25, "fid_delta": 2.25, "kid": 0.0123, "kid_fp": 0.0101,
                    "kid_delta": 0.0022},
        "temporal": {"rel_mse_mean": 0.00182, "cos_min": 0.9966, "rel_mse": [[0.1]]},
        "model_size": {"bits": 1727, "fp_bits": 10000, "ratio": 0.1727, "quantized_parameters": 250,
                       "cache_bytes": 0},
        "timing": {"load_s": 0.21, "reconstruction_s": 614.36, "sampling_and_metrics_s": 153.8, "total_s": 851.07},
    }


def test_table_shows_metrics_references_deltas_times_and_paths(tmp_path: Path) -> None:
    (tmp_path / "samples.png").write_bytes(b"png")
    (tmp_path / "figures").mkdir()
    table = format_result_table(_quantized_summary(tmp_path))
    assert table.splitlines()[0] == "method=tfmq, quant=w4a8, model=digits, seed=3: ok"
    assert table_row(table, "FID") == ["12.5", "10.25", "+2.25"]
    assert table_row(table, "KID") == ["0.0123", "0.0101", "+0.0022"]
    assert table_row(table, "temporal rel. MSE") == ["0.00182"]
    assert table_row(table, "temporal cos_min") == ["0.9966"]
    assert table_row(table, "model size ratio") == ["0.1727"]
    assert table_row(table, "load") == ["0.2"] and table_row(table, "reconstruction") == ["614.4"]
    assert table_row(table, "sampling_and_metrics") == ["153.8"] and table_row(table, "total") == ["851.1"]
    assert table_row(table, "run dir") == [str(tmp_path)]
    assert table_row(table, "samples") == [str(tmp_path / "samples.png")]
    assert table_row(table, "figures") == [str(tmp_path / "figures")]
    value_ends = {len(line) for line in table.splitlines()[1:6]}
    assert len(value_ends) == 2  # right-aligned columns: rows end at the "delta" or at the "run" column edge


def test_missing_sections_print_a_dash(tmp_path: Path) -> None:
    summary = {"status": "ok", "method": "fp", "quant": "fp32", "model": "digits", "seed": 0, "run_dir": str(tmp_path),
               "metrics": {"fid": 6.5, "fid_fp": 6.5, "fid_delta": 0.0}, "timing": {"load_s": 0.03, "total_s": 0.2}}
    table = format_result_table(summary)
    assert table_row(table, "FID") == ["6.5", "6.5", "+0"]
    assert table_row(table, "KID") == ["-", "-", "-"]
    for label in ("temporal rel. MSE", "temporal cos_min", "model size ratio", "samples", "figures"):
        assert table_row(table, label) == ["-"], label
    assert "reconstruction" not in table


def test_a_failed_run_shows_its_error_and_an_empty_summary_only_dashes() -> None:
    table = format_result_table({"status": "failed", "error": "TypeError: boom", "method": "tfmq"})
    assert table.splitlines()[:2] == ["method=tfmq, quant=-, model=-, seed=-: failed", "error: TypeError: boom"]
    assert table_row(table, "stage times (s)") == ["-"] and table_row(table, "run dir") == ["-"]
    assert format_result_table({})  # no key is required
