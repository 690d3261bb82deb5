"""Temporal features of the TIB over a finite timestep set, and the paper's temporal diagnostics."""

from tfmq_exp.temporal.diagnostics import (
    TemporalDiagnostics,
    TemporalFeatureErrors,
    TemporalMismatch,
    diagnose_temporal_features,
    temporal_feature_errors,
    temporal_mismatch,
    trajectory_cosine,
)
from tfmq_exp.temporal.features import TemporalFeatureSet, collect_temporal_features

__all__ = [
    "TemporalDiagnostics",
    "TemporalFeatureErrors",
    "TemporalFeatureSet",
    "TemporalMismatch",
    "collect_temporal_features",
    "diagnose_temporal_features",
    "temporal_feature_errors",
    "temporal_mismatch",
    "trajectory_cosine",
]
