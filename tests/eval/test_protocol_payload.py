"""The FP reference's key covers the metric's feature-extractor weights (a retrained classifier is not reused)."""

from __future__ import annotations

from tests.helpers import method_config, quant_config, small_config
from tfmq_exp.eval import protocol
from tfmq_exp.eval.classifier import DEFAULT_DIR, WEIGHTS_FILE
from tfmq_exp.store import file_sha256


def test_reference_key_holds_the_extractor_weights(monkeypatch) -> None:
    config = small_config(quant_config(), method_config())
    payload = protocol.protocol_payload(config, "unet-weights")
    assert payload["metric_weights"] == file_sha256(DEFAULT_DIR / WEIGHTS_FILE)
    monkeypatch.setattr(protocol, "metric_weights_fingerprint", lambda _: "retrained")
    assert protocol.protocol_payload(config, "unet-weights") != payload
