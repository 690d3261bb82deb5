"""Adapters on tiny random-weight diffusers UNets of every supported form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tfmq_exp.models.adapters import get_adapter, reconstruction_units, shortcut_split_points
from tfmq_exp.models.tiny import build_sd_unet, build_tiny_unet, build_unet2d

FORMS = ["digits", "digits_ss", "digits_class", "sd", "sd_class", "sdxl"]
DIGITS_FEATURES = [
    "down_blocks.0.resnets.0", "down_blocks.1.resnets.0", "mid_block.resnets.0", "mid_block.resnets.1",
    "up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.1.resnets.0", "up_blocks.1.resnets.1",
]  # fmt: skip
SD_FEATURES = [
    "down_blocks.0.resnets.0", "down_blocks.0.resnets.1", "down_blocks.1.resnets.0", "down_blocks.1.resnets.1",
    "mid_block.resnets.0", "mid_block.resnets.1", "up_blocks.0.resnets.0", "up_blocks.0.resnets.1",
    "up_blocks.0.resnets.2", "up_blocks.1.resnets.0", "up_blocks.1.resnets.1", "up_blocks.1.resnets.2",
]  # fmt: skip
# form -> (adapter form, features, depends_only_on_t, conditioning modules)
EXPECTED_TIB = {
    "digits": ("unet2d", DIGITS_FEATURES, True, ()),
    "digits_ss": ("unet2d", DIGITS_FEATURES, True, ()),
    "digits_class": ("unet2d_class", DIGITS_FEATURES, False, ("class_embedding",)),
    "sd": ("sd", SD_FEATURES, True, ()),
    "sd_class": ("sd_class", SD_FEATURES, False, ("class_embedding",)),
    "sdxl": ("sdxl", SD_FEATURES, False, ("add_time_proj", "add_embedding")),
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {form: build_tiny_unet(form, seed=0) for form in FORMS}


def test_unknown_model_class_is_rejected() -> None:
    with pytest.raises(TypeError, match="no UNet adapter for .*Linear"):
        get_adapter(nn.Linear(2, 2))


def test_unsupported_addition_embedding_is_rejected() -> None:
    unet = build_sd_unet(addition_embed_type="text")
    with pytest.raises(NotImplementedError, match="addition_embed_type='text'"):
        get_adapter(unet)


@pytest.mark.parametrize("form", FORMS)
def test_tib_discovery_matches_hand_checked_names(models: dict, form: str) -> None:
    adapter = get_adapter(models[form])
    spec = adapter.tib()
    expected_form, features, depends_only_on_t, conditioning = EXPECTED_TIB[form]
    assert adapter.form == expected_form
    assert spec.feature_names() == features
    assert [feature.proj_name for feature in spec.features] == [f"{name}.time_emb_proj" for name in features]
    assert spec.time_proj == "time_proj" and spec.time_embedding == "time_embedding"
    assert spec.time_embedding_layers == ("time_embedding.linear_1", "time_embedding.act", "time_embedding.linear_2")
    assert spec.layer_names() == ["time_embedding.linear_1", "time_embedding.linear_2"] + [
        f"{name}.time_emb_proj" for name in features
    ]
    assert spec.depends_only_on_t is depends_only_on_t
    assert spec.conditioning_modules == conditioning
    assert all(feature.scale_shift is (form == "digits_ss") for feature in spec.features)
    for name in spec.layer_names():
        assert isinstance(models[form].get_submodule(name), nn.Linear)


def _forward_records(unet: nn.Module, spec, inputs) -> tuple[dict, dict]:
    """Run the real forward; return the temb each ResNet block received and each time_emb_proj output."""
    received, projected, handles = {}, {}, []
    for feature in spec.features:
        block = unet.get_submodule(feature.resnet_name)
        handles.append(
            block.register_forward_pre_hook(lambda m, args, name=feature.name: received.__setitem__(name, args[1]))
        )
        handles.append(
            unet.get_submodule(feature.proj_name).register_forward_hook(
                lambda m, args, out, name=feature.name: projected.__setitem__(name, out)
            )
        )
    sample, timestep, kwargs = inputs
    with torch.no_grad():
        unet(sample, timestep, **kwargs)
    for handle in handles:
        handle.remove()
    return received, projected


@pytest.mark.parametrize("form", FORMS)
def test_embedding_and_features_equal_in_forward_values(models: dict, form: str) -> None:
    unet = models[form]
    adapter = get_adapter(unet)
    spec = adapter.tib()
    sample, _, kwargs = adapter.example_inputs(batch_size=3)
    timesteps = torch.tensor([999, 500, 3])  # a different t per sample
    received, projected = _forward_records(unet, spec, (sample, timesteps, kwargs))
    with torch.no_grad():
        embedding = adapter.temporal_embedding(timesteps, kwargs)
        features = adapter.temporal_features(timesteps, kwargs)
    assert set(features) == set(spec.feature_names()) == set(projected)
    for name in spec.feature_names():
        torch.testing.assert_close(embedding, received[name], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(features[name], projected[name], rtol=1e-6, atol=1e-6)
        assert features[name].shape[0] == 3


def test_time_only_embedding_is_the_t_part(models: dict) -> None:
    digits = get_adapter(models["digits"])
    t = torch.tensor([10, 400])
    with torch.no_grad():
        torch.testing.assert_close(digits.time_only_embedding(t), digits.temporal_embedding(t), rtol=0, atol=0)
        sdxl = get_adapter(models["sdxl"])
        _, _, kwargs = sdxl.example_inputs(batch_size=2)
        other = {"added_cond_kwargs": dict(kwargs["added_cond_kwargs"])}
        other["added_cond_kwargs"]["text_embeds"] = kwargs["added_cond_kwargs"]["text_embeds"] + 1.0
        first, second = sdxl.temporal_embedding(t, kwargs), sdxl.temporal_embedding(t, other)
        assert (first - second).abs().max() > 1e-3  # pooled text changes h: not a function of t alone
        added = models["sdxl"].add_embedding
        time_ids = sdxl.unet.add_time_proj(kwargs["added_cond_kwargs"]["time_ids"].flatten()).reshape(2, -1)
        expected = added(torch.cat([kwargs["added_cond_kwargs"]["text_embeds"], time_ids], dim=-1))
        torch.testing.assert_close(first - sdxl.time_only_embedding(t), expected, rtol=1e-5, atol=1e-6)


def test_class_conditional_embedding_needs_labels(models: dict) -> None:
    with pytest.raises(ValueError, match="class_labels"):
        get_adapter(models["digits_class"]).temporal_embedding(torch.tensor([5]))
    with pytest.raises(ValueError, match="unknown conditioning keys"):
        get_adapter(models["digits"]).temporal_embedding(torch.tensor([5]), {"class_label": torch.tensor([1])})


def test_features_use_replaced_modules() -> None:
    unet = build_tiny_unet("digits", seed=0)
    adapter = get_adapter(unet)
    name = "mid_block.resnets.1"
    with torch.no_grad():
        before = adapter.temporal_features([1, 500])[name]
        block = unet.get_submodule(name)
        replacement = nn.Linear(block.time_emb_proj.in_features, block.time_emb_proj.out_features)
        replacement.weight.copy_(2 * block.time_emb_proj.weight)
        replacement.bias.copy_(2 * block.time_emb_proj.bias)
        block.time_emb_proj = replacement  # what a quantizer's module replacement does
        after = adapter.temporal_features([1, 500])[name]
    torch.testing.assert_close(after, 2 * before, rtol=1e-6, atol=1e-6)


def test_units_of_digits_in_forward_order(models: dict) -> None:
    units = reconstruction_units(models["digits"])
    assert [(unit.name, unit.kind) for unit in units] == [
        ("time_embedding", "time_embedding"), ("conv_in", "layer"),
        ("down_blocks.0.resnets.0", "resnet"), ("down_blocks.0.downsamplers.0", "downsampler"),
        ("down_blocks.1.resnets.0", "resnet"), ("down_blocks.1.attentions.0", "attention"),
        ("mid_block.resnets.0", "resnet"), ("mid_block.attentions.0", "attention"), ("mid_block.resnets.1", "resnet"),
        ("up_blocks.0.resnets.0", "resnet"), ("up_blocks.0.attentions.0", "attention"),
        ("up_blocks.0.resnets.1", "resnet"), ("up_blocks.0.attentions.1", "attention"),
        ("up_blocks.0.upsamplers.0", "upsampler"),
        ("up_blocks.1.resnets.0", "resnet"), ("up_blocks.1.resnets.1", "resnet"), ("conv_out", "layer"),
    ]  # fmt: skip
    assert all(unit.module is models["digits"].get_submodule(unit.name) for unit in units)


@pytest.mark.parametrize("form", FORMS)
def test_units_cover_every_layer_exactly_once(models: dict, form: str) -> None:
    unet = models[form]
    units = get_adapter(unet).reconstruction_units()
    covered = []
    for unit in units:
        for sub_name, module in unit.module.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                covered.append(f"{unit.name}.{sub_name}" if sub_name else unit.name)
    layers = [name for name, module in unet.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    assert sorted(covered) == sorted(layers)
    assert units[0].kind == "time_embedding" and units[-1].name == "conv_out"
    kinds = {unit.name: unit.kind for unit in units}
    if form.startswith("sd"):
        assert kinds["down_blocks.0.attentions.0"] == "transformer"
    if form == "sdxl":
        assert kinds["add_embedding"] == "embedding"
    # forward order: each down block's units come before the mid block's, which come before the up path's
    names = [unit.name for unit in units]
    down, mid, up = (names.index(f"{block}.resnets.0") for block in ("down_blocks.1", "mid_block", "up_blocks.0"))
    assert down < mid < up


def test_split_points_of_digits_by_hand(models: dict) -> None:
    # Skips pushed by the down path: conv_in 32@8x8, down0.resnet0 32@8x8, down0.downsampler 32@4x4,
    # down1.resnet0 64@4x4. Up path pops them from the end: up0.r0 = 64 (mid) + 64, up0.r1 = 64 + 32,
    # up1.r0 = 64 (upsampled) + 32, up1.r1 = 32 + 32. Only conv_shortcut is split (Q-Diffusion), not conv1.
    expected = {f"{resnet}.conv_shortcut": channels
                for resnet, channels in [("up_blocks.0.resnets.0", 64), ("up_blocks.0.resnets.1", 64),
                                         ("up_blocks.1.resnets.0", 64), ("up_blocks.1.resnets.1", 32)]}  # fmt: skip
    assert shortcut_split_points(models["digits"]) == expected


def test_split_points_of_sd_by_hand(models: dict) -> None:
    # Skips: conv_in 16, down0 r0/r1 16, down0 downsampler 16, down1 r0/r1 32. Up0 (3 resnets, out 32):
    # 32+32, 32+32, 32+16. Up1 (out 16): 32+16, 16+16, 16+16.
    splits = [32, 32, 32, 32, 16, 16]
    names = [f"up_blocks.{block}.resnets.{index}" for block in (0, 1) for index in range(3)]
    points = get_adapter(models["sd"]).shortcut_split_points()
    assert points == {f"{name}.conv_shortcut": split for name, split in zip(names, splits)}
    for name, split in zip(names, splits):
        assert models["sd"].get_submodule(f"{name}.conv_shortcut").in_channels > split


@pytest.mark.parametrize("form", FORMS)
def test_split_points_name_only_shortcut_convs_of_up_blocks(models: dict, form: str) -> None:
    # Q-Diffusion (openaimodel.py:772-777, ResBlock._forward 275-278) splits only the skip connection's input:
    # every up-block ResNet that consumes cat(h, skip) has exactly one split point, at its conv_shortcut.
    unet = models[form]
    points = get_adapter(unet).shortcut_split_points()
    blocks = enumerate(unet.up_blocks)
    up_resnets = [f"up_blocks.{i}.resnets.{j}" for i, block in blocks for j in range(len(block.resnets))]
    assert sorted(points) == sorted(f"{name}.conv_shortcut" for name in up_resnets)
    for name, split in points.items():
        conv = unet.get_submodule(name)
        assert isinstance(conv, nn.Conv2d) and 0 < split < conv.in_channels


@pytest.mark.parametrize("form", FORMS)
def test_example_inputs_run_the_forward(models: dict, form: str) -> None:
    adapter = get_adapter(models[form])
    sample, timestep, kwargs = adapter.example_inputs(batch_size=2)
    with torch.no_grad():
        out = adapter.run((sample, timestep, kwargs))
    assert out.shape == sample.shape and torch.isfinite(out).all()
    if form == "sdxl":
        assert kwargs["added_cond_kwargs"]["time_ids"].shape == (2, 6)
    if form.endswith("class"):
        assert kwargs["class_labels"].shape == (2,)


VARIANTS = {  # other ways the embedding is built (digits or SD geometry); all must match the forward bit for bit
    "fourier": lambda: build_unet2d(time_embedding_type="fourier"),
    "class_timestep": lambda: build_unet2d(class_embed_type="timestep"),
    "resnet_downsampler": lambda: build_unet2d(down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D")),
    "lcm_timestep_cond": lambda: build_sd_unet(time_cond_proj_dim=16),
    "class_concat_act": lambda: build_sd_unet(
        class_embed_type="projection", projection_class_embeddings_input_dim=12, class_embeddings_concat=True,
        time_embedding_act_fn="silu",
    ),  # fmt: skip
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_embedding_variants_equal_in_forward_values(variant: str) -> None:
    torch.manual_seed(0)
    unet = VARIANTS[variant]().eval()
    adapter = get_adapter(unet)
    spec = adapter.tib()
    sample, timesteps, kwargs = adapter.example_inputs(batch_size=3)
    received, projected = _forward_records(unet, spec, (sample, timesteps, kwargs))
    with torch.no_grad():
        embedding = adapter.temporal_embedding(timesteps, kwargs)
        features = adapter.temporal_features(timesteps, kwargs)
    for name in spec.feature_names():
        torch.testing.assert_close(embedding, received[name], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(features[name], projected[name], rtol=1e-6, atol=1e-6)
    assert spec.depends_only_on_t is (variant in ("fourier", "resnet_downsampler"))
    if variant == "resnet_downsampler":  # the down-sampling ResNet block has its own temporal feature
        assert "down_blocks.0.downsamplers.0" in spec.feature_names()
    if variant == "lcm_timestep_cond":
        assert spec.conditioning_modules == ("time_embedding.cond_proj",)
