"""Deployment: lowering to real int8 kernels (PT2E + inductor), packed checkpoints, the speed benchmark.

Input format: :class:`~tfmq_exp.deploy.qparams.LayerQParams` per Conv2d / Linear module name.
"""

from tfmq_exp.deploy.lower import LoweredUNet, lower_to_int8
from tfmq_exp.deploy.pack import PackedCheckpoint, load_packed, pack_state_dict, save_packed, size_report, unpack
from tfmq_exp.deploy.qparams import LayerQParams, minmax_layer_qparams
from tfmq_exp.deploy.reference import FakeQuantReference
from tfmq_exp.deploy.temporal import FeatureInputUNet, TemporalFeatureCache

__all__ = [
    "FakeQuantReference",
    "FeatureInputUNet",
    "LayerQParams",
    "LoweredUNet",
    "PackedCheckpoint",
    "TemporalFeatureCache",
    "load_packed",
    "lower_to_int8",
    "minmax_layer_qparams",
    "pack_state_dict",
    "save_packed",
    "size_report",
    "unpack",
]
