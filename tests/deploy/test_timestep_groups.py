"""Grouping timesteps by equal per-timestep (FSC) activation parameters, and the static parameters of one group."""

from __future__ import annotations

import pytest
import torch

from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.deploy.timestep_groups import fsc_timesteps, per_timestep_layers, qparams_at, timestep_groups


def _layer(per_timestep=None) -> LayerQParams:
    return LayerQParams(torch.ones(2), torch.full((2,), 128), 8, 0.1, 3, 8, act_per_timestep=per_timestep)


def test_equal_parameters_share_a_group_in_sampling_order() -> None:
    qparams = {"a": _layer({900: (0.2, 1), 500: (0.2, 1), 100: (0.3, 2)}),
               "b": _layer({900: (0.5, 0), 500: (0.5, 0), 100: (0.5, 0)}), "c": _layer()}
    assert per_timestep_layers(qparams) == ["a", "b"] and fsc_timesteps(qparams) == [900, 500, 100]
    assert timestep_groups(qparams) == [(900, 500), (100,)]
    static = qparams_at(qparams, 100)
    assert (static["a"].act_scale, static["a"].act_zero_point) == (0.3, 2) and not static["a"].is_per_timestep
    assert static["c"] is qparams["c"]


def test_every_timestep_differs_one_group_each() -> None:
    qparams = {"a": _layer({t: (0.1 + t / 1e4, 0) for t in (700, 300, 10)})}
    assert timestep_groups(qparams) == [(700,), (300,), (10,)]


def test_layers_with_different_timestep_sets_are_refused() -> None:
    qparams = {"a": _layer({900: (0.2, 1)}), "b": _layer({500: (0.2, 1)})}
    with pytest.raises(ValueError, match="common FSC timestep set"):
        timestep_groups(qparams)
