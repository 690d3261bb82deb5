"""The full-precision reference of a protocol, computed once and shared by every run (cached on disk)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from tfmq_exp.config.schema import Config
from tfmq_exp.devices import sampling_precision
from tfmq_exp.eval.protocol import Evaluation, evaluate, protocol_payload
from tfmq_exp.eval.sampling import GenerationParts
from tfmq_exp.fingerprints import weights_fingerprint
from tfmq_exp.store import ArtifactStore

REFERENCE_KIND = "fp_reference"
CONDITIONING_PREFIX = "trajectory_conditioning/"


def fp_reference(
    unet_fp: torch.nn.Module,
    config: Config,
    real: Any,
    store: ArtifactStore,
    parts: Optional[GenerationParts] = None,
    conditions: Optional[dict[str, Any]] = None,
) -> tuple[Evaluation, bool]:
    """Return the full-precision :class:`Evaluation` of this protocol and whether it came from the cache.

    Its sampling runs at ``eval.fp_dtype`` (float32, or bfloat16 / float16 mixed precision, which is then part of
    the cache key); the metrics run in float32.

    Args:
        parts / conditions: the family's evaluation parts and their key (see :mod:`tfmq_exp.eval.families`).
    """

    precision = sampling_precision(config.eval.fp_dtype, config.runtime.device)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        result = evaluate(unet_fp, config, real, parts, precision)
        assert result.trajectory is not None
        tensors = {"images": result.images, "trajectory": result.trajectory}
        tensors.update({CONDITIONING_PREFIX + k: v for k, v in result.trajectory_conditioning.items()})
        return tensors, {"metrics": result.metrics}

    payload = protocol_payload(config, weights_fingerprint(unet_fp), conditions)
    tensors, info, hit = store.get_or_build(REFERENCE_KIND, payload, build)
    conditioning = {k[len(CONDITIONING_PREFIX):]: v for k, v in tensors.items() if k.startswith(CONDITIONING_PREFIX)}
    evaluation = Evaluation(
        images=tensors["images"], metrics=info["metrics"], trajectory=tensors["trajectory"],
        trajectory_conditioning=conditioning,
    )  # fmt: skip
    return evaluation, hit
