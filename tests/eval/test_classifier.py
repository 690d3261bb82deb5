"""The digits classifier: shipped weights, training, augmentation, save / load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tfmq_exp.data.digits import load_digits_split, to_uint8
from tfmq_exp.eval.classifier import (
    ARCHITECTURE_VERSION,
    DEFAULT_DIR,
    META_FILE,
    evaluate_accuracy,
    load_classifier,
    random_shift,
    save_classifier,
    train_and_save,
    train_classifier,
)


def test_shipped_weights_reach_98_percent_heldout_accuracy() -> None:
    model = load_classifier()
    meta = json.loads((DEFAULT_DIR / META_FILE).read_text())
    accuracy = evaluate_accuracy(model, "heldout")
    assert accuracy >= 0.98
    assert accuracy == pytest.approx(meta["heldout_accuracy"], abs=1e-6)
    assert meta["architecture_version"] == ARCHITECTURE_VERSION
    assert "tfmq_exp.eval.classifier" in meta["command"] and meta["seed"] == 0
    assert sum(path.stat().st_size for path in DEFAULT_DIR.iterdir()) < 400_000


def test_shipped_features_have_unit_rms_on_train() -> None:
    model = load_classifier()
    meta = json.loads((DEFAULT_DIR / META_FILE).read_text())
    assert model.feature_rms.item() == pytest.approx(meta["feature_rms"], rel=1e-6)
    with torch.no_grad():
        scaled, logits = model.scaled_features(to_uint8(load_digits_split("train").images))
    assert scaled.shape[1] == 64 and logits.shape[1] == 10
    assert scaled.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-4)


def test_rgb_input_equals_single_channel() -> None:
    model = load_classifier()
    images = to_uint8(load_digits_split("heldout").images[:32])
    with torch.no_grad():
        torch.testing.assert_close(model(images.expand(-1, 3, -1, -1)), model(images))
    with pytest.raises(ValueError, match="uint8"):
        model(images.float())


def test_random_shift_moves_content_by_at_most_the_shift() -> None:
    images = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 4, 3] = 200
    torch.manual_seed(0)
    shifted = random_shift(images, max_shift=1)
    assert torch.equal(random_shift(images, max_shift=0), images)
    assert (shifted.sum(dim=(1, 2, 3)) == 200).all()  # the pixel is kept, nothing else appears
    rows, cols = (shifted[:, 0] > 0).nonzero()[:, 1], (shifted[:, 0] > 0).nonzero()[:, 2]
    assert ((rows - 4).abs() <= 1).all() and ((cols - 3).abs() <= 1).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 4  # offsets vary per image


def test_train_classifier_smoke_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    model, metrics = train_classifier(seed=3, max_steps=5)
    again, _ = train_classifier(seed=3, max_steps=5)
    assert metrics["steps"] == 5
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0 and metrics["feature_rms"] > 0
    for (name, value), other in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(value, other), name
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before  # the global flag is restored

    save_classifier(model, tmp_path, {"seed": 3, "command": "test"})
    loaded = load_classifier(tmp_path)
    for (name, value), other in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(value, other), name
    assert json.loads((tmp_path / META_FILE).read_text())["feature_rms"] == pytest.approx(metrics["feature_rms"])


def test_load_rejects_missing_files_and_other_architecture_versions(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_classifier(tmp_path)
    save_classifier(load_classifier(), tmp_path, {})
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["architecture_version"] = ARCHITECTURE_VERSION + 1
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="architecture version"):
        load_classifier(tmp_path)


@pytest.mark.slow
def test_train_and_save_reproduces_the_shipped_accuracy(tmp_path: Path) -> None:
    metrics = train_and_save(tmp_path, seed=0)
    shipped = json.loads((DEFAULT_DIR / META_FILE).read_text())
    assert metrics["heldout_accuracy"] >= 0.98
    assert metrics["heldout_accuracy"] == pytest.approx(shipped["heldout_accuracy"], abs=0.005)
    assert evaluate_accuracy(load_classifier(tmp_path)) == pytest.approx(metrics["heldout_accuracy"])
