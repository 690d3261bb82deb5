"""The full-precision reference of a protocol, computed once and shared by every run (cached on disk)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from tfmq_exp.config.schema import Config
from tfmq_exp.eval.protocol import Evaluation, evaluate, protocol_payload
from tfmq_exp.store import ArtifactStore

REFERENCE_KIND = "fp_reference"


def weights_fingerprint(unet: torch.nn.Module) -> str:
    """A short hash of a model's parameters and buffers (identifies the weights a reference belongs to)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fp_reference(unet_fp: torch.nn.Module, config: Config, real: torch.Tensor, store: ArtifactStore) -> tuple[Evaluation, bool]:
    """Return the full-precision :class:`Evaluation` of this protocol and whether it came from the cache."""

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        result = evaluate(unet_fp, config, real)
        assert result.trajectory is not None
        return {"images": result.images, "trajectory": result.trajectory}, {"metrics": result.metrics}

    payload = protocol_payload(config, weights_fingerprint(unet_fp))
    tensors, info, hit = store.get_or_build(REFERENCE_KIND, payload, build)
    return Evaluation(images=tensors["images"], metrics=info["metrics"], trajectory=tensors["trajectory"]), hit
