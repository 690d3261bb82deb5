"""Temporal feature sets collected from a real tiny UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.digits import build_digits_unet
from tfmq_exp.temporal import TemporalFeatureSet, collect_temporal_features


@pytest.fixture(scope="module")
def adapter():
    torch.manual_seed(0)
    return get_adapter(build_digits_unet().eval())


def test_collect_over_a_sampler_timestep_set(adapter) -> None:
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    features = collect_temporal_features(adapter, scheduler.timesteps)
    assert features.timesteps == scheduler.timesteps.tolist()
    assert features.names == adapter.tib().feature_names()
    for name in features.names:
        out_features = adapter.unet.get_submodule(f"{name}.time_emb_proj").out_features
        assert features[name].shape == (10, out_features)
        assert not features[name].requires_grad
    # row k is e_i(t_k): recomputing a single timestep gives the same row
    t = scheduler.timesteps[3].item()
    with torch.no_grad():
        single = adapter.temporal_features([t])
    for name in features.names:
        torch.testing.assert_close(features[name][features.index(t)], single[name][0], rtol=1e-5, atol=1e-6)


def test_chunked_collection_matches_and_sees_every_chunk(adapter) -> None:
    timesteps = [999, 700, 400, 100, 1]
    seen = []
    chunked = collect_temporal_features(
        adapter, timesteps, batch_size=2, before_chunk=lambda chunk: seen.append(chunk.tolist())
    )
    whole = collect_temporal_features(adapter, timesteps)
    assert seen == [[999, 700], [400, 100], [1]]
    for name in whole.names:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-5, atol=1e-6)


def test_safetensors_round_trip_keeps_order(adapter, tmp_path) -> None:
    features = collect_temporal_features(adapter, [900, 500, 20])
    path = tmp_path / "features.safetensors"
    save_file(features.to_dict(prefix="fp/"), str(path))
    loaded = TemporalFeatureSet.from_dict(load_file(str(path)), prefix="fp/")
    assert loaded.timesteps == [900, 500, 20] and all(isinstance(t, int) for t in loaded.timesteps)
    assert loaded.names == features.names
    for name in features.names:
        assert torch.equal(loaded[name], features[name])
    subset = loaded.select([20, 900])
    assert torch.equal(subset[features.names[0]], features[features.names[0]][[2, 0]])
    with pytest.raises(KeyError, match="timestep 7"):
        loaded.index(7)


def test_conditioned_collection_broadcasts_conditioning() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8,
    ).eval()  # fmt: skip
    adapter = get_adapter(unet)
    _, _, kwargs = adapter.example_inputs(batch_size=1)
    features = collect_temporal_features(adapter, [800, 300, 10], conditioning=kwargs, batch_size=2)
    with torch.no_grad():
        direct = adapter.temporal_features(torch.tensor([800, 300, 10]), kwargs)
    for name in features.names:
        assert features[name].shape[0] == 3
        torch.testing.assert_close(features[name], direct[name], rtol=1e-5, atol=1e-6)


def test_feature_set_validates_shapes() -> None:
    with pytest.raises(ValueError, match="expected \\[2, C\\]"):
        TemporalFeatureSet([1, 2], {"a": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="distinct"):
        TemporalFeatureSet([1, 1], {"a": torch.zeros(2, 4)})
