"""The short plain-text table a single run prints at its end: quality against the FP reference, temporal
error, model size, stage times and where the outputs are. Reads only ``summary.json`` (its stage sections through
:mod:`tfmq_exp.stage_results`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfmq_exp.stage_results import ModelSize

MISSING = "-"
_METRICS = (("FID", "fid"), ("KID", "kid"))
_TEXT_METRICS = (("CLIP score", "clip_score"),)  # text-to-image runs
_TEMPORAL = (("temporal rel. MSE", "rel_mse_mean"), ("temporal cos_min", "cos_min"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any, sign: bool = False) -> str:
    if not _is_number(value):
        return MISSING
    return f"{value:+.4g}" if sign else f"{value:.4g}"


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if _is_number(value) else MISSING


def _aligned(rows: list[tuple[str, ...]], label_width: int) -> list[str]:
    """Labels padded to ``label_width``; each value column right-aligned to its widest cell."""
    count = max(len(row) for row in rows)
    widths = [max((len(row[i]) for row in rows if len(row) > i), default=0) for i in range(count)]
    return [
        "  ".join([row[0].ljust(label_width), *(cell.rjust(widths[i]) for i, cell in enumerate(row) if i)]).rstrip()
        for row in rows
    ]


def _existing(path: Path | None) -> str:
    return str(path) if path is not None and path.exists() else MISSING


def format_result_table(summary: dict[str, Any]) -> str:
    """The result of one run as aligned plain text; a value the summary lacks prints as ``-``."""
    metrics = summary.get("metrics") or {}
    temporal = summary.get("temporal") or {}
    timing = summary.get("timing") or {}
    names = ", ".join(f"{key}={summary.get(key, MISSING)}" for key in ("method", "quant", "model", "seed"))
    header = f"{names}: {summary.get('status', MISSING)}"

    quality = [("", "run", "FP ref", "delta")]
    for label, key in (*_METRICS, *(_TEXT_METRICS if "clip_score" in metrics else ())):
        values = (metrics.get(key), metrics.get(f"{key}_fp"), metrics.get(f"{key}_delta"))
        quality.append((label, _number(values[0]), _number(values[1]), _number(values[2], sign=True)))
    quality += [(label, _number(temporal.get(key))) for label, key in _TEMPORAL]
    size = summary.get("model_size")
    quality.append(("model size ratio", _number(ModelSize.from_dict(size).ratio if size else None)))

    stages = [(f"  {key[:-2]}", _seconds(value)) for key, value in timing.items()
              if key.endswith("_s") and key != "total_s"]
    times = [("stage times (s)", "" if timing else MISSING), *stages]
    if timing:
        times.append(("  total", _seconds(timing.get("total_s"))))

    run_dir = Path(summary["run_dir"]) if summary.get("run_dir") else None
    paths = [
        ("run dir", str(run_dir) if run_dir else MISSING),
        ("samples", _existing(run_dir / "samples.png" if run_dir else None)),
        ("figures", _existing(run_dir / "figures" if run_dir else None)),
    ]
    width = max(len(row[0]) for row in (*quality, *times, *paths))
    lines = [header, *_aligned([*quality, *times], width)]
    lines += [f"{label.ljust(width)}  {value}" for label, value in paths]
    if summary.get("error"):
        lines.insert(1, f"error: {summary['error']}")
    return "\n".join(lines)
