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


@pytest.mark.parametrize(("null", "expected"), [(None, [0, 1, 2, 3, 0]), (0, [1, 2, 3, 4, 1]), (2, [0, 1, 3, 4, 0])])
def test_class_labels_never_draw_the_null_class(null: int | None, expected: list[int]) -> None:
    from tfmq_exp.config.schema import CalibConfig, Config, EvalConfig, ModelConfig, SamplerConfig
    from tfmq_exp.eval.families import generation_parts
    from tfmq_exp.models.loading import LoadedModel
    from tfmq_exp.models.tiny import build_unet2d

    model = ModelConfig(name="x", family="class_conditional", null_class=null)
    config = Config(model=model, sampler=SamplerConfig(guidance_scale=3.0), quant=None, method=None,
                    calib=CalibConfig(), eval=EvalConfig(), logger=None, runtime=None)
    loaded = LoadedModel(unet=build_unet2d(num_class_embeds=5), model=model)
    parts = generation_parts(loaded, config, "eval")
    assert parts.labels(torch.arange(5)).tolist() == expected
    assert parts.null_class == (4 if null is None else null)
    calib = generation_parts(loaded, config, "calib").labels(torch.arange(200))
    assert not (calib == parts.null_class).any() and len(set(calib.tolist())) == 4
