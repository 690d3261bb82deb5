"""The adapter interface: everything the quantization code needs to know about a diffusers UNet.

An adapter wraps one UNet and answers, by module name, where the Temporal Information Block (TIB) is
(DESIGN 1.4), computes the temporal embedding ``h(t)`` and the temporal features ``e_i(t)`` exactly as the
UNet's forward does, cuts the UNet into block-reconstruction units in forward order (DESIGN 1.3) and finds
the channel split of the up path's ``cat([h, skip])`` inputs. Subclasses add the parts that differ between
model classes (how conditioning joins the embedding, which dummy inputs the forward takes).
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D, FirDownsample2D, KDownsample2D
from diffusers.models.resnet import ResnetBlock2D, ResnetBlockCondNorm2D
from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import FirUpsample2D, KUpsample2D, Upsample2D
from torch import Tensor, nn

from tfmq_exp.models.adapters.discovery import concat_split_points, first_call_order
from tfmq_exp.models.adapters.spec import TemporalFeature, TIBSpec, Unit

logger = logging.getLogger(__name__)

ExampleInputs = tuple[Tensor, Tensor, dict[str, Any]]
TimestepsLike = Tensor | Sequence[int] | Sequence[float] | int | float

# Structural unit kinds, checked in this order (a transformer contains attention modules).
_UNIT_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("resnet", (ResnetBlock2D, ResnetBlockCondNorm2D)),
    ("transformer", (Transformer2DModel, DualTransformer2DModel)),
    ("attention", (Attention,)),
    ("downsampler", (Downsample2D, FirDownsample2D, KDownsample2D)),
    ("upsampler", (Upsample2D, FirUpsample2D, KUpsample2D)),
)
_SECTIONS = ("down_blocks.", "mid_block.", "up_blocks.")
_FORWARD_CONTROL_ARGS = {"sample", "timestep", "return_dict"}


def _structural_kind(module: nn.Module) -> str | None:
    for kind, types in _UNIT_TYPES:
        if isinstance(module, types):
            return kind
    return None


def _inside(name: str, containers: dict[str, Any]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in containers)


class UNetAdapter(ABC):
    """Model-specific knowledge about one UNet, exposed by module name.

    Args:
        unet: the diffusers UNet (full precision or a quantized copy with replaced layers).
    """

    family: ClassVar[str]

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self._validate()
        self._conditioning_keys = set(inspect.signature(unet.forward).parameters) - _FORWARD_CONTROL_ARGS
        self._tib = self._discover_tib()

    # ----------------------------------------------------------------------------------- identity
    @property
    @abstractmethod
    def form(self) -> str:
        """Short name of the model's form (``unet2d``, ``unet2d_class``, ``sd``, ``sd_class``, ``sdxl``)."""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def _validate(self) -> None:
        """Raise for configurations the adapter cannot describe faithfully."""

    # ---------------------------------------------------------------------------------------- TIB
    @abstractmethod
    def _conditioning_modules(self) -> tuple[str, ...]:
        """Names of the modules whose outputs join the time embedding."""

    def _resnet_blocks(self) -> list[tuple[str, nn.Module]]:
        """ResNet blocks ordered down path, mid block, up path (registration order within each)."""
        blocks = [(name, module) for name, module in self.unet.named_modules() if isinstance(module, ResnetBlock2D)]

        def section(item: tuple[str, nn.Module]) -> int:
            return next((index for index, prefix in enumerate(_SECTIONS) if item[0].startswith(prefix)), len(_SECTIONS))

        return sorted(blocks, key=section)

    def _discover_tib(self) -> TIBSpec:
        features = tuple(
            TemporalFeature(
                name=name,
                resnet_name=name,
                proj_name=f"{name}.time_emb_proj",
                applies_nonlinearity=not block.skip_time_act,
                scale_shift=block.time_embedding_norm == "scale_shift",
            )
            for name, block in self._resnet_blocks()
            if block.time_emb_proj is not None
        )
        if not features:
            raise ValueError(f"{type(self.unet).__name__} has no ResNet block with a time_emb_proj: no TIB to describe")
        embedding = self.unet.time_embedding
        parts = ("linear_1", "act", "linear_2", "post_act")
        layers = [part for part in parts if getattr(embedding, part, None) is not None]
        conditioning = self._conditioning_modules()
        return TIBSpec(
            time_proj="time_proj",
            time_embedding="time_embedding",
            time_embedding_layers=tuple(f"time_embedding.{attr}" for attr in layers),
            embedding_linear_names=("time_embedding.linear_1", "time_embedding.linear_2"),
            time_embed_act="time_embed_act" if getattr(self.unet, "time_embed_act", None) is not None else None,
            features=features,
            depends_only_on_t=not conditioning,
            conditioning_modules=conditioning,
        )

    def tib(self) -> TIBSpec:
        """Return the Temporal Information Block of this UNet (DESIGN 1.4)."""
        return self._tib

    # ------------------------------------------------------------------------ temporal embedding
    def _as_timesteps(self, timesteps: TimestepsLike) -> Tensor:
        """Return ``timesteps`` as a 1-D tensor on the UNet's device (python numbers become a tensor)."""
        tensor = timesteps if isinstance(timesteps, Tensor) else torch.as_tensor(timesteps)
        if tensor.dim() == 0:
            tensor = tensor[None]
        if tensor.dim() != 1:
            raise ValueError(f"timesteps must be a scalar or 1-D, got shape {tuple(tensor.shape)}")
        return tensor.to(self.device)

    def _check_conditioning(self, conditioning: dict[str, Any] | None) -> dict[str, Any]:
        """Return ``conditioning`` (the UNet forward's keyword arguments) or {}; reject unknown keys."""
        conditioning = dict(conditioning or {})
        unknown = sorted(set(conditioning) - self._conditioning_keys)
        if unknown:
            allowed = sorted(self._conditioning_keys)
            raise ValueError(f"unknown conditioning keys {unknown} for {type(self.unet).__name__}; allowed: {allowed}")
        return conditioning

    @abstractmethod
    def time_only_embedding(self, timesteps: TimestepsLike) -> Tensor:
        """Output of the ``time_embedding`` MLP for ``timesteps``: the part of ``h(t)`` that depends on t alone.

        Equals :meth:`temporal_embedding` when ``tib().depends_only_on_t`` and ``tib().time_embed_act`` is None.

        Returns:
            Tensor [T, C_emb].
        """

    @abstractmethod
    def temporal_embedding(self, timesteps: TimestepsLike, conditioning: dict[str, Any] | None = None) -> Tensor:
        """The embedding ``h(t)`` that the UNet's forward hands to its ResNet blocks.

        Args:
            timesteps: T timesteps (tensor, list or scalar).
            conditioning: the UNet forward's keyword arguments (``class_labels``, ``added_cond_kwargs``,
                ``timestep_cond``; others such as ``encoder_hidden_states`` are accepted and ignored).
                Rows pair with the timesteps; either side may have batch 1 and broadcasts.

        Returns:
            Tensor [max(T, B), C_emb].
        """

    def project(self, feature: TemporalFeature | str, embedding: Tensor) -> Tensor:
        """Apply ``g_i`` of one ResNet block: ``time_emb_proj(nonlinearity(h))`` with the block's own modules.

        Calling the modules means a quantized replacement of ``nonlinearity`` / ``time_emb_proj`` is used.
        """
        if isinstance(feature, str):
            feature = self._tib.feature(feature)
        block = self.unet.get_submodule(feature.resnet_name)
        hidden = block.nonlinearity(embedding) if feature.applies_nonlinearity else embedding
        return block.time_emb_proj(hidden)

    def temporal_features(
        self, timesteps: TimestepsLike, conditioning: dict[str, Any] | None = None
    ) -> dict[str, Tensor]:
        """The temporal features ``e_i(t) = g_i(h(t))`` of every ResNet block (DESIGN 1.4).

        Runs with gradients enabled (TIAR optimises through it); wrap in ``torch.no_grad()`` to collect.

        Returns:
            feature name -> Tensor [T, C_i] (``C_i = 2 * out_channels`` for scale-shift blocks).
        """
        embedding = self.temporal_embedding(timesteps, conditioning)
        return {feature.name: self.project(feature, embedding) for feature in self._tib.features}

    # --------------------------------------------------------------------------- dry forwards
    @abstractmethod
    def example_inputs(self, batch_size: int = 2, seed: int = 0) -> ExampleInputs:
        """Tiny deterministic ``(sample, timestep, kwargs)`` accepted by this UNet's forward."""

    def run(self, inputs: ExampleInputs | None = None) -> Tensor:
        """Call the UNet on ``(sample, timestep, kwargs)`` (default: :meth:`example_inputs`) and return the sample."""
        sample, timestep, kwargs = inputs if inputs is not None else self.example_inputs()
        return self.unet(sample, timestep, **kwargs, return_dict=False)[0]

    # ----------------------------------------------------------------------------- structure
    def reconstruction_units(
        self, example_inputs: ExampleInputs | None = None, layer_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)
    ) -> list[Unit]:
        """Cut the UNet into block-reconstruction units, in forward order (DESIGN 1.3).

        Units: the TIB's time-embedding MLP (kind ``time_embedding``), conditioning embeddings with layers (``embedding``),
        every ResNet block, transformer block, attention module outside a transformer, down/up-sampler, and
        every leftover layer of ``layer_types`` (``layer``). Each layer of ``layer_types`` belongs to exactly
        one unit; units without such layers are dropped, as are modules the forward never calls (logged).
        Order is the first-call order observed in one dry forward on ``example_inputs``.

        Args:
            example_inputs: ``(sample, timestep, kwargs)``; default :meth:`example_inputs`.
            layer_types: the quantizable layer classes (pass quantized wrappers' classes for a quantized copy).
        """
        tib = self._tib
        chosen: dict[str, tuple[nn.Module, str]] = {
            tib.time_embedding: (self.unet.get_submodule(tib.time_embedding), "time_embedding")
        }
        for name in tib.conditioning_modules:
            if not _inside(name, chosen):
                chosen[name] = (self.unet.get_submodule(name), "embedding")
        for name, module in self.unet.named_modules():
            if not name or _inside(name, chosen):
                continue
            kind = _structural_kind(module) or ("layer" if isinstance(module, layer_types) else None)
            if kind is not None:
                chosen[name] = (module, kind)
        chosen = {
            name: entry for name, entry in chosen.items() if any(isinstance(m, layer_types) for m in entry[0].modules())
        }
        inputs = example_inputs if example_inputs is not None else self.example_inputs()
        order = first_call_order({name: module for name, (module, _) in chosen.items()}, lambda: self.run(inputs))
        never_called = sorted(set(chosen) - set(order))
        if never_called:
            logger.warning("reconstruction units never called in the forward, left out: %s", never_called)
        return [Unit(name=name, module=chosen[name][0], kind=chosen[name][1]) for name in order]

    def shortcut_split_points(self, example_inputs: ExampleInputs | None = None) -> dict[str, int]:
        """Channel split of the up path's ``cat([h, skip], dim=1)`` inputs, at the ResNets' shortcut convolutions.

        Observed in one dry forward: a ResNet block of an up block whose input ends with one of the skip
        tensors handed to that up block consumes a concat. Its ``conv_shortcut`` (on the raw concat) gets the
        number of leading channels that come from ``h``; ``conv1`` (on the normalised concat) gets none, as in
        Q-Diffusion.

        Returns:
            ``"<resnet>.conv_shortcut"`` -> channels of ``h``, in forward order.
        """
        groups = []
        for index, block in enumerate(self.unet.up_blocks):
            consumers = {
                f"up_blocks.{index}.{name}": module
                for name, module in block.named_modules()
                if name and isinstance(module, (ResnetBlock2D, ResnetBlockCondNorm2D))
            }
            groups.append((block, consumers))
        inputs = example_inputs if example_inputs is not None else self.example_inputs()
        splits = concat_split_points(groups, lambda: self.run(inputs))
        # Q-Diffusion (Xiuyu-Li/q-diffusion@715783d) sets split = h.shape[1] before th.cat([h, hs.pop()]) in the
        # decoder (ldm/modules/diffusionmodules/openaimodel.py:772-777), and ResBlock._forward (275-278) passes
        # it only to skip_connection (diffusers: conv_shortcut), not to in_layers' conv (diffusers: conv1).
        points: dict[str, int] = {}
        for name, channels in splits.items():
            if getattr(self.unet.get_submodule(name), "conv_shortcut", None) is not None:
                points[f"{name}.conv_shortcut"] = channels
        return points
