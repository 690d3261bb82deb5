"""The "digits-cnn" torch-fidelity feature extractor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from tfmq_exp.data.digits import load_digits_split, to_uint8
from tfmq_exp.eval.classifier import load_classifier, save_classifier
from tfmq_exp.eval.extractor import DigitsFeatureExtractor, register_digits_extractor


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return to_uint8(load_digits_split("heldout").images[:40])


def test_registration_is_idempotent() -> None:
    assert register_digits_extractor() == "digits-cnn"
    assert register_digits_extractor() == "digits-cnn"
    assert FEATURE_EXTRACTORS_REGISTRY["digits-cnn"] is DigitsFeatureExtractor


def test_built_by_torch_fidelity_returns_features_in_requested_order(images: torch.Tensor) -> None:
    name = register_digits_extractor()
    # torch-fidelity passes every calculate_metrics keyword to the constructor
    extractor = create_feature_extractor(name, ["logits_unbiased", "64"], cuda=False, verbose=False, kid_subsets=7)
    logits, features = extractor(images)
    assert logits.shape == (40, 10) and features.shape == (40, 64)
    classifier = load_classifier()
    with torch.no_grad():
        expected_features, expected_logits = classifier.scaled_features(images)
    torch.testing.assert_close(features, expected_features)
    torch.testing.assert_close(logits, expected_logits)
    assert (logits.argmax(dim=1) == load_digits_split("heldout").labels[:40]).float().mean() >= 0.95
    (only,) = DigitsFeatureExtractor("digits-cnn", ["64"])(images.expand(-1, 3, -1, -1))
    torch.testing.assert_close(only, expected_features)


def test_interface_of_the_base_class() -> None:
    layer = DigitsFeatureExtractor.get_default_feature_layer_for_metric
    assert [layer(metric) for metric in ("fid", "kid", "prc", "isc")] == ["64", "64", "64", "logits_unbiased"]
    assert DigitsFeatureExtractor.can_be_compiled() is False
    extractor = DigitsFeatureExtractor("digits-cnn", ["64"])
    (features,) = extractor(DigitsFeatureExtractor.get_dummy_input_for_compile())
    assert features.shape == (1, 64) and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="not on the list"):
        DigitsFeatureExtractor("digits-cnn", ["2048"])


def test_rejects_float_and_wrong_sizes(images: torch.Tensor) -> None:
    extractor = DigitsFeatureExtractor("digits-cnn", ["64"])
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())
    with pytest.raises(ValueError, match="Bx1x8x8"):
        extractor(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


def test_weights_path_selects_another_classifier(tmp_path: Path, images: torch.Tensor) -> None:
    classifier = load_classifier()
    classifier.feature_rms.mul_(2.0)
    save_classifier(classifier, tmp_path, {})
    (halved,) = DigitsFeatureExtractor("digits-cnn", ["64"], feature_extractor_weights_path=str(tmp_path))(images)
    (default,) = DigitsFeatureExtractor("digits-cnn", ["64"])(images)
    torch.testing.assert_close(halved * 2.0, default)
