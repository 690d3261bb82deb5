"""Both notebooks execute top to bottom against a small real multirun."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["inspect_temporal_features", "compare_runs"])
def test_notebook_executes(name: str, multirun_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summaries = sorted(multirun_dir.rglob("summary.json"))
    tfmq_run = next(path.parent for path in summaries if json.loads(path.read_text())["method"] == "tfmq")
    monkeypatch.setenv("TFMQ_RUN_DIR", str(tfmq_run))
    monkeypatch.setenv("TFMQ_MULTIRUN_DIR", str(multirun_dir))
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("display_data", "execute_result") for o in outputs)
