"""Conditions per sample: prompt files, evaluation and calibration labels, and what each family generates with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tfmq_exp.errors import UserError
from tfmq_exp.eval.conditions import (
    DEFAULT_CALIB_PROMPTS,
    DEFAULT_EVAL_PROMPTS,
    calib_labels,
    cycle,
    eval_labels,
    prompts_fingerprint,
    read_prompts,
)


def test_prompt_files_give_one_line_errors_and_the_shipped_sets_load(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"eval.prompts=.*nowhere.txt is not a file; pass eval.prompts=FILE"):
        read_prompts(str(tmp_path / "nowhere.txt"), DEFAULT_EVAL_PROMPTS, "eval.prompts")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="holds no prompt"):
        read_prompts(str(tmp_path / "empty.txt"), DEFAULT_CALIB_PROMPTS, "calib.prompts")
    evaluation = read_prompts(None, DEFAULT_EVAL_PROMPTS, "eval.prompts")
    calibration = read_prompts(None, DEFAULT_CALIB_PROMPTS, "calib.prompts")
    assert len(evaluation) >= 8 and len(calibration) >= 8 and not set(evaluation) & set(calibration)
    assert prompts_fingerprint(evaluation) != prompts_fingerprint(calibration)
    assert cycle(["a", "b"], [0, 1, 2, 5]) == ["a", "b", "a", "b"]


def test_labels_are_per_sample_and_independent_of_the_batch() -> None:
    assert eval_labels(torch.arange(12), 5).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    whole = calib_labels(torch.arange(10), num_classes=7, seed=3)
    parts = torch.cat([calib_labels(torch.arange(0, 4), 7, 3), calib_labels(torch.arange(4, 10), 7, 3)])
    assert torch.equal(whole, parts) and int(whole.max()) < 7
    assert not torch.equal(whole, calib_labels(torch.arange(10), num_classes=7, seed=4))
