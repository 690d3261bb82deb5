"""Cached entries are keyed by a version per kind: changing the code behind a kind must bump its version.

Each kind lists the modules whose code decides what its entries hold. When one of them changes, this test fails
until ``ENTRY_VERSIONS[kind]`` (tfmq_exp/store.py) is bumped *if the change can alter the entries* and the hash
below is updated (``python -m pytest tests/test_entry_versions.py`` prints the new one). A docstring or log edit
needs only the hash; a changed computation needs both, so no run ever reuses an entry built by other code.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

from tfmq_exp.store import ENTRY_VERSIONS

SOURCES = {
    "calibration": ["tfmq_exp.calib.trajectories", "tfmq_exp.eval.sampling", "tfmq_exp.eval.schedulers",
                    "tfmq_exp.eval.unet_inputs", "tfmq_exp.eval.families", "tfmq_exp.eval.conditions"],
    "fp_reference": ["tfmq_exp.eval.reference", "tfmq_exp.eval.protocol", "tfmq_exp.eval.sampling",
                     "tfmq_exp.eval.metrics", "tfmq_exp.eval.extractor", "tfmq_exp.eval.schedulers",
                     "tfmq_exp.eval.unet_inputs", "tfmq_exp.eval.families", "tfmq_exp.eval.conditions",
                     "tfmq_exp.eval.real_reference", "tfmq_exp.eval.clip_score"],
    "reconstruction": ["tfmq_exp.recon.runner", "tfmq_exp.recon.objectives", "tfmq_exp.recon.module",
                       "tfmq_exp.recon.units", "tfmq_exp.recon.unit_io", "tfmq_exp.calib.steps",
                       "tfmq_exp.quant.adaround", "tfmq_exp.quant.quantizer", "tfmq_exp.quant.weight_range",
                       "tfmq_exp.quant.modules", "tfmq_exp.quant.api", "tfmq_exp.temporal.feature_cache",
                       "tfmq_exp.temporal.maintenance", "tfmq_exp.temporal.disturbance_selection",
                       "tfmq_exp.recon.tiar", "tfmq_exp.recon.checkpoint", "tfmq_exp.calib.fsc",
                       "tfmq_exp.quant.context", "tfmq_exp.temporal.conditioned_selection"],
    "act_reconstruction": ["tfmq_exp.recon.act_pass", "tfmq_exp.quant.act_quantizer", "tfmq_exp.quant.attention",
                           "tfmq_exp.calib.activation"],
}
# kind -> (version, sha256 of the listed modules' sources, first 16 hex digits)
RECORDED = {
    "calibration": (1, "b0684d7f5b16389c"),
    "fp_reference": (1, "b5340d6b239f0f22"),
    "reconstruction": (2, "8f2f204f2093d495"),
    "act_reconstruction": (1, "6d17c0cd7130294d"),
}


def source_hash(modules: list[str]) -> str:
    digest = hashlib.sha256()
    for name in modules:
        digest.update(name.encode())
        digest.update(inspect.getsource(importlib.import_module(name)).encode())
    return digest.hexdigest()[:16]


def test_every_kind_is_covered() -> None:
    assert set(SOURCES) == set(ENTRY_VERSIONS) == set(RECORDED)


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_code_behind_a_kind_is_unchanged_or_its_version_was_bumped(kind: str) -> None:
    version, recorded = RECORDED[kind]
    current = source_hash(SOURCES[kind])
    assert (ENTRY_VERSIONS[kind], current) == (version, recorded), (
        f"the code behind '{kind}' entries changed (hash {current}): if the change can alter what the entries "
        f"hold, bump ENTRY_VERSIONS['{kind}'] in tfmq_exp/store.py; then record "
        f"RECORDED['{kind}'] = ({ENTRY_VERSIONS[kind]}, '{current}') in tests/test_entry_versions.py"
    )
