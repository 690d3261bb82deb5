"""``tfmq-report MULTIRUN_DIR``: the comparison report of a sweep, from its runs' ``summary.json`` files.

Writes ``report.md`` (a table per model and quant setting: mean ± std over seeds, paired FID differences with
95 % Student-t intervals over seed sets) and PNG plots beside it; optionally logs the same to a W&B run.
Paired differences: every run records the FP reference of its own protocol (``metrics.fid_fp``, same noise),
and runs of two methods that share ``seed_set`` and ``calib.seed`` share their evaluation noise and calibration
data, so ``fid - fid_baseline`` is taken per such replicate before averaging (seed sets in the ablation sweep,
calibration seeds in the acceptance protocol).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from tfmq_exp.tracking.collect import RunRecord, collect_runs
from tfmq_exp.tracking.report_plots import _bits_key, cost_vs_quality, fid_vs_bits, temporal_error_vs_timestep, trajectory_vs_step
from tfmq_exp.tracking.stats import estimate, paired_differences

METHOD_ORDER = ["fp", "naive", "ptq4dm", "qdiffusion", "qdiffusion_noact", "tiar", "fsc", "tfmq", "tfmq_released",
                "tfmq_cache", "tfmq_select"]
COLUMNS = [
    "method", "n", "FID", "ΔFID vs fp (paired)", "ΔFID vs {baseline} (paired)", "KID", "IS", "eps rel. MSE",
    "temporal rel. MSE", "temporal cos min", "mismatch", "trajectory cos (x_0)", "calibration s",
]


def _order(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _values(runs: Sequence[RunRecord], source: str, key: str) -> list[float]:
    values = []
    for run in runs:
        container = run.metrics if source == "metrics" else run.temporal
        if isinstance(container.get(key), (int, float)):
            values.append(float(container[key]))
    return values


def _by_replicate(runs: Sequence[RunRecord], key: str = "fid") -> dict[tuple[int, int], float]:
    """Runs keyed by what pairs them: evaluation noise set and calibration seed."""
    return {run.replicate: float(run.metrics[key]) for run in runs if key in run.metrics}


def quant_table(runs: Sequence[RunRecord], fp_runs: Sequence[RunRecord], baseline: str) -> list[list[str]]:
    """Rows of one (model, quant) table; ``fp_runs`` are the full-precision runs of the same model."""
    by_method: dict[str, list[RunRecord]] = defaultdict(list)
    for run in list(runs) + list(fp_runs):
        by_method[run.method].append(run)
    baseline_fid = _by_replicate(by_method.get(baseline, []))
    rows = []
    for method in sorted(by_method, key=_order):
        group = by_method[method]
        delta_fp = estimate(_values(group, "metrics", "fid_delta")) if method != "fp" else None
        delta_base = estimate(paired_differences(_by_replicate(group), baseline_fid)) if baseline_fid and method not in (baseline, "fp") else None
        calibration = estimate([run.calibration_s for run in group]) if method != "fp" else None
        rows.append([
            method,
            str(len(group)),
            estimate(_values(group, "metrics", "fid")).format(),
            delta_fp.format(3, interval=True) if delta_fp else "-",
            delta_base.format(3, interval=True) if delta_base else "-",
            estimate(_values(group, "metrics", "kid")).format(3),
            estimate(_values(group, "metrics", "isc")).format(3),
            estimate(_values(group, "metrics", "eps_rel_mse")).format(3),
            estimate(_values(group, "temporal", "rel_mse_mean")).format(3),
            estimate(_values(group, "temporal", "cos_min")).format(4),
            estimate(_values(group, "temporal", "mismatch_rate")).format(2),
            estimate(_values(group, "temporal", "trajectory_cos_final")).format(4),
            calibration.format(3) if calibration else "-",
        ])
    return rows


def overview_table(model_runs: Sequence[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """One model at a glance: a row per method, a column per quant setting.

    Each cell is ``paired ΔFID vs fp / temporal rel. MSE``, both means over seed sets (the per-setting tables
    carry the spread and intervals).
    """
    quants = sorted({run.quant for run in model_runs if run.method != "fp"}, key=_bits_key)
    methods = sorted({run.method for run in model_runs if run.method != "fp"}, key=_order)
    rows = []
    for method in methods:
        row = [method]
        for quant in quants:
            group = [run for run in model_runs if run.method == method and run.quant == quant]
            delta = estimate(_values(group, "metrics", "fid_delta"))
            error = estimate(_values(group, "temporal", "rel_mse_mean"))
            row.append("-" if delta.n == 0 else f"{delta.mean:+.3f} / {error.mean:.2g}")
        rows.append(row)
    return ["method"] + quants, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(root: Path, out_dir: Path | None = None, baseline: str = "qdiffusion") -> Path:
    """Write ``report.md`` and its plots for the sweep under ``root``; return the report's path."""
    out_dir = out_dir or root
    finished, failed = collect_runs(root)
    header = [c.format(baseline=baseline) for c in COLUMNS]
    sections = [
        f"# Sweep report: `{root}`",
        "",
        f"{len(finished)} finished runs, {len(failed)} failed. Values are mean ± std over seeds; paired "
        "differences are averaged over replicates (evaluation seed set, calibration seed) with a two-sided 95 % "
        "Student-t interval in brackets (runs of one replicate share their evaluation noise and calibration data; the "
        "FP reference is recomputed under each "
        "run's protocol).",
    ]
    plots: list[Path] = []
    models = sorted({run.model for run in finished})
    for model in models:
        model_runs = [run for run in finished if run.model == model]
        if any(run.method != "fp" for run in model_runs):
            sections += ["", f"## {model}: overview (paired ΔFID vs fp / temporal rel. MSE, means over seed sets)", ""]
            sections.append(_markdown_table(*overview_table(model_runs)))
        fp_runs = list({run.seed_set: run for run in model_runs if run.method == "fp"}.values())  # one per noise set
        for quant in sorted({run.quant for run in model_runs if run.method != "fp"}, key=_bits_key):
            quant_runs = [run for run in model_runs if run.quant == quant and run.method != "fp"]
            sections += ["", f"## {model}, {quant}", "", _markdown_table(header, quant_table(quant_runs, fp_runs, baseline))]
            slug = f"{model}_{quant}"
            plots.append(temporal_error_vs_timestep(quant_runs, out_dir / f"temporal_error_{slug}.png", f"{model} {quant}: temporal-feature error"))
            plots.append(trajectory_vs_step(quant_runs, out_dir / f"trajectory_{slug}.png", f"{model} {quant}: trajectory deviation"))
        if any(run.method != "fp" for run in model_runs):
            plots.append(fid_vs_bits(model_runs, out_dir / f"fid_vs_bits_{model}.png", model))
            plots.append(cost_vs_quality(model_runs, out_dir / f"cost_vs_quality_{model}.png", f"{model}: calibration cost vs FID"))
    if failed:
        sections += ["", "## Failed runs", "", "| run | method | quant | seed | error |", "|---|---|---|---|---|"]
        sections += [f"| `{r.path}` | {r.method} | {r.quant} | {r.seed} | {r.error.splitlines()[0] if r.error else r.status} |" for r in failed]
    sections += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = out_dir / "report.md"
    report.write_text("\n".join(sections) + "\n")
    return report


def log_report_to_wandb(report: Path, project: str, mode: str, group: str | None) -> None:
    """Log the report (markdown, tables, plots) as a W&B run of job type ``report``."""
    import wandb

    run = wandb.init(project=project, mode=mode, job_type="report", group=group, dir=str(report.parent), name=f"report-{report.parent.name}")
    run.log({"report": wandb.Html(f"<pre>{report.read_text()}</pre>")})
    for image in sorted(report.parent.glob("*.png")):
        run.log({f"plots/{image.stem}": wandb.Image(str(image))})
    run.finish()


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``tfmq-report``."""
    parser = argparse.ArgumentParser(prog="tfmq-report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path, help="a Hydra multirun directory (or any tree of runs)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the multirun dir)")
    parser.add_argument("--baseline", default="qdiffusion", help="method for paired FID differences")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default="disabled", help="also log to W&B")
    parser.add_argument("--project", default="tfmq-exp")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        print(f"tfmq-report: error: {args.multirun_dir} is not a directory", file=sys.stderr)
        sys.exit(2)
    report = build_report(args.multirun_dir, args.out, args.baseline)
    if args.wandb != "disabled":
        log_report_to_wandb(report, args.project, args.wandb, group=args.multirun_dir.name)
    print(report)


if __name__ == "__main__":
    main()
