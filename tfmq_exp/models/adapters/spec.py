"""Plain descriptions of a UNet's Temporal Information Block (TIB) and its reconstruction units.

These dataclasses hold module *names* (dotted paths valid for ``unet.get_submodule``), never diffusers
classes, so every consumer (quantizer, TIAR, FSC, cache, reconstruction) can work from names alone and
apply them to a quantized copy of the same UNet.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

UNIT_KINDS = ("time_embedding", "embedding", "resnet", "attention", "transformer", "downsampler", "upsampler", "layer")


@dataclass(frozen=True)
class TemporalFeature:
    """One temporal feature ``e_i(t) = g_i(h(t))`` (DESIGN 1.4), produced inside one ResNet block.

    Attributes:
        name: feature name; the dotted name of the ResNet block (``down_blocks.0.resnets.0``).
        resnet_name: dotted name of the ResNet block that consumes the feature.
        proj_name: dotted name of its ``time_emb_proj`` Linear (the Linear of ``g_i``).
        applies_nonlinearity: whether ``g_i`` applies the block's nonlinearity before the Linear
            (False for blocks built with ``skip_time_act``).
        scale_shift: whether the block uses the feature as (scale, shift) of its normalised activations
            (``time_embedding_norm="scale_shift"``) rather than adding it.
    """

    name: str
    resnet_name: str
    proj_name: str
    applies_nonlinearity: bool = True
    scale_shift: bool = False


@dataclass(frozen=True)
class TIBSpec:
    """The Temporal Information Block of one UNet (DESIGN 1.4).

    The TIB maps ``t`` to ``h(t) = time_embedding(time_proj(t))`` and on to one feature
    ``e_i(t) = time_emb_proj_i(nonlinearity_i(h(t)))`` per ResNet block.

    Attributes:
        time_proj: name of the parameter-free sinusoidal / Fourier projection of ``t``.
        time_embedding: name of the time-embedding MLP (``h``).
        time_embedding_layers: names of the MLP's submodules in call order (``linear_1``, ``act``,
            ``linear_2`` and ``post_act`` where present).
        embedding_linear_names: the Linear layers among ``time_embedding_layers``.
        time_embed_act: name of an activation applied to the summed embedding after conditioning joins
            (``time_embed_act`` of some ``UNet2DConditionModel`` configs), else None.
        features: one entry per ResNet block with a ``time_emb_proj``, down path, mid block, up path.
        depends_only_on_t: True when nothing but ``t`` enters ``h`` (no class labels, no SD-XL
            ``add_embedding``, no ``timestep_cond``); cache-based maintenance needs this.
        conditioning_modules: names of the modules whose outputs join the embedding (``class_embedding``,
            ``add_time_proj``, ``add_embedding``, ``time_embedding.cond_proj``).
    """

    time_proj: str
    time_embedding: str
    time_embedding_layers: tuple[str, ...]
    embedding_linear_names: tuple[str, ...]
    time_embed_act: str | None
    features: tuple[TemporalFeature, ...]
    depends_only_on_t: bool
    conditioning_modules: tuple[str, ...] = ()

    def layer_names(self) -> list[str]:
        """Names of the TIB's Linear layers: the time-embedding MLP's and every ``time_emb_proj``."""
        return list(self.embedding_linear_names) + [feature.proj_name for feature in self.features]

    def feature_names(self) -> list[str]:
        """Names of the temporal features, in the order of ``features``."""
        return [feature.name for feature in self.features]

    def feature(self, name: str) -> TemporalFeature:
        """Return the feature called ``name``.

        Raises:
            KeyError: no feature has that name.
        """
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no temporal feature named {name!r}; known: {self.feature_names()}")


@dataclass(frozen=True)
class Unit:
    """One block-reconstruction unit (DESIGN 1.3).

    Attributes:
        name: dotted name of ``module`` inside the UNet (use ``other_unet.get_submodule(name)`` to find the
            same unit in a quantized copy).
        module: the module itself.
        kind: one of ``UNIT_KINDS``: ``time_embedding`` (the time-embedding MLP), ``embedding`` (a conditioning
            embedding such as ``class_embedding`` or ``add_embedding``), ``resnet``, ``attention``,
            ``transformer``, ``downsampler``, ``upsampler``, or ``layer`` (a leftover Conv2d / Linear).
    """

    name: str
    module: nn.Module
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unit kind {self.kind!r} is not one of {UNIT_KINDS}")
