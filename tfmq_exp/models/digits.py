"""Architecture of the embedded digits DDPM (a diffusers ``UNet2DModel``).

Two resolutions (8x8 -> 4x4), attention at the 4x4 level, the standard time path
``time_proj -> time_embedding -> resnets[*].time_emb_proj``. ``scale_shift=True`` builds the variant whose
time embedding scales and shifts the normalised features (ADM-style), used by ``model=digits_ss``.
"""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DModel

DIGITS_SAMPLE_SIZE = 8
DIGITS_CHANNELS = 1


DIGITS_UNET_KWARGS: dict[str, Any] = dict(
    sample_size=DIGITS_SAMPLE_SIZE,
    in_channels=DIGITS_CHANNELS,
    out_channels=DIGITS_CHANNELS,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
)
"""Constructor arguments of the digits UNet (about 0.7 M parameters)."""


def build_digits_unet(scale_shift: bool = False) -> UNet2DModel:
    """Return an untrained digits UNet (about 0.7 M parameters).

    Args:
        scale_shift: ``resnet_time_scale_shift="scale_shift"`` instead of the additive ``"default"``.
            Passed to the constructor: editing a config dict and calling ``from_config`` keeps the default.
    """
    return UNet2DModel(**DIGITS_UNET_KWARGS, resnet_time_scale_shift="scale_shift" if scale_shift else "default")
