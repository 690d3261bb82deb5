"""Printing ``tfmq-bench --artifact`` results: one block per artifact, and a side-by-side table of several."""

from __future__ import annotations

from typing import List

MIB = 2**20


def print_artifact(result: dict) -> None:
    """Every path of one artifact: latency per forward and per sampling loop, SQNR, build time, memory, files."""
    best = result["speedup_int8_vs_fp32"]
    groups = "" if result["groups"] is None else f", {result['groups']} timestep groups"
    best_text = "n/a" if best is None else f"{best:.2f}x"
    print(f"artifact {result['method']} {result['quant']} on {result['model']} ({result['kind']}{groups}): "
          f"best int8 {best_text} vs fp32 eager")
    sqnr = result["sqnr_db_vs_fake_quant_per_variant"]
    for name, median in result["median_ms"].items():
        quality = f"  SQNR vs fake-quant (min over t) {sqnr[name]:.1f} dB" if name in sqnr else ""
        speedup = result["median_ms"]["fp32_eager"] / median
        loop = result["loop_ms"].get(name)
        loop_text = "" if loop is None else f"  loop {loop:9.1f} ms"
        cost = ""
        if name in result["build_s"]:
            cost = f"  build {result['build_s'][name]:7.2f} s  rss +{result['rss_mb'][name]:7.1f} MiB"
        files = result["file_bytes"].get(name)
        files_text = "" if files is None else f"  files {files / MIB:6.2f} MiB"
        print(f"    {name:<22} {median:9.2f} ms  {speedup:5.2f}x vs fp32_eager{loop_text}{cost}{files_text}{quality}")


def print_side_by_side(results: List[dict]) -> None:
    """A Markdown table: one row per (artifact, int8 path), with the columns of :func:`print_artifact`."""
    print("| method | kind | path | forward ms | loop ms | vs fp32 eager | build s | rss MiB | files MiB | "
          "SQNR dB (min over t) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for name, sqnr in result["sqnr_db_vs_fake_quant_per_variant"].items():
            median = result["median_ms"][name]
            files = result["file_bytes"].get(name)
            files_text = "" if files is None else f"{files / MIB:.2f}"
            print(f"| {result['method']} | {result['kind']} | {name} | {median:.2f} | {result['loop_ms'][name]:.1f} | "
                  f"{result['median_ms']['fp32_eager'] / median:.2f} | {result['build_s'][name]:.2f} | "
                  f"{result['rss_mb'][name]:.1f} | {files_text} | {sqnr:.1f} |")
