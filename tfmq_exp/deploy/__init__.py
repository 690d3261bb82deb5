"""Deployment: lowering to real int8 kernels (PT2E + inductor), packed checkpoints, the speed benchmark.

Input format: :class:`~tfmq_exp.deploy.qparams.LayerQParams` per Conv2d / Linear module name.
``lower_to_int8`` / ``LoweredUNet`` are imported on first use: importing torchao's x86 quantizer sets a
process-wide inductor pre-grad pass, which code that only packs checkpoints should not pay for.
"""

from __future__ import annotations

from typing import Any

from tfmq_exp.deploy.pack import PackedCheckpoint, load_packed, pack_state_dict, save_packed, size_report, unpack
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.deploy.reference import FakeQuantReference
from tfmq_exp.deploy.temporal import FeatureInputUNet, cache_table, fp_feature_table, quantized_tib_table

_LAZY = {"lower_to_int8", "LoweredUNet"}

__all__ = [
    "FakeQuantReference",
    "FeatureInputUNet",
    "cache_table",
    "fp_feature_table",
    "quantized_tib_table",
    "LayerQParams",
    "LoweredUNet",
    "PackedCheckpoint",
    "load_packed",
    "lower_to_int8",
    "pack_state_dict",
    "save_packed",
    "size_report",
    "unpack",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tfmq_exp.deploy import lower

        return getattr(lower, name)
    raise AttributeError(f"module 'tfmq_exp.deploy' has no attribute {name!r}")
