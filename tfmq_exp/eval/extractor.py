"""The digits classifier as a torch-fidelity feature extractor ("digits-cnn").

Plays the part of Inception-v3 for 8x8 digits: feature ``'64'`` is the penultimate layer scaled to unit RMS on
the train split (FID, KID, precision / recall), ``'logits_unbiased'`` the class logits (Inception Score).
torch-fidelity builds it by name from its registry, so :func:`register_digits_extractor` must run once per
process before ``calculate_metrics(feature_extractor="digits-cnn", ...)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.helpers import vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from tfmq_exp.eval.classifier import FEATURE_DIM, load_classifier

EXTRACTOR_NAME = "digits-cnn"
FEATURE_SCALED = str(FEATURE_DIM)
FEATURE_LOGITS = "logits_unbiased"


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of :class:`~tfmq_exp.eval.classifier.DigitsClassifier`.

    Args:
        name: registry name (``"digits-cnn"``).
        features_list: requested features, a subset of :meth:`get_provided_features_list`.
        feature_extractor_weights_path: classifier directory (``model.safetensors`` + ``classifier.json``);
            ``None`` loads the weights shipped in the package. torch-fidelity's own keyword, reused here.
        **kwargs: every other ``calculate_metrics`` keyword (ignored).
    """

    def __init__(
        self,
        name: str,
        features_list: Sequence[str],
        feature_extractor_weights_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, list(features_list))
        self.classifier = load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURE_SCALED, FEATURE_LOGITS)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"fid": FEATURE_SCALED, "kid": FEATURE_SCALED, "prc": FEATURE_SCALED, "isc": FEATURE_LOGITS}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the requested features of uint8 ``images`` [B, 1 or 3, 8, 8], in ``features_list`` order."""
        vassert(torch.is_tensor(images) and images.dtype == torch.uint8, "Expecting uint8 image tensors")
        vassert(images.dim() == 4 and images.shape[1] in (1, 3) and tuple(images.shape[2:]) == (8, 8),
                f"Input is not Bx1x8x8 or Bx3x8x8: {tuple(images.shape)}")  # fmt: skip
        scaled, logits = self.classifier.scaled_features(images)  # [B, 64], [B, 10]
        available = {FEATURE_SCALED: scaled, FEATURE_LOGITS: logits}
        return tuple(available[name] for name in self.features_list)


def register_digits_extractor() -> str:
    """Register :class:`DigitsFeatureExtractor` as ``"digits-cnn"`` (idempotent); returns the name."""
    registered = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if registered is None:
        register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)
    elif (registered.__module__, registered.__qualname__) != (__name__, DigitsFeatureExtractor.__qualname__):
        raise RuntimeError(f"feature extractor name {EXTRACTOR_NAME!r} is taken by {registered!r}")
    return EXTRACTOR_NAME
