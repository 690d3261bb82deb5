"""Adapter for diffusers ``UNet2DConditionModel`` in Stable Diffusion 1.x / 2.x and SD-XL form.

The embedding the ResNet blocks see, as ``UNet2DConditionModel.forward`` builds it:
``h = act( time_embedding(time_proj(t), timestep_cond) [+ class_embedding(y)] [+ add_embedding(a)] )``,
where SD-XL's ``a = cat(text_embeds, add_time_proj(time_ids))`` (pooled text and size conditioning) and
``act`` is the optional ``time_embed_act``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tfmq_exp.models.adapters.base import ExampleInputs, TimestepsLike, UNetAdapter
from tfmq_exp.models.adapters.examples import example_class_labels, example_size, example_timesteps

SDXL_NUM_TIME_IDS = 6  # (original size, crop top-left, target size), two numbers each


class UNet2DConditionAdapter(UNetAdapter):
    """``UNet2DConditionModel``: forms ``sd`` (text cross-attention only; the TIB depends on t alone),
    ``sdxl`` (``addition_embed_type="text_time"``), and either with a ``_class`` suffix when a
    ``class_embedding`` joins the embedding.
    """

    family = "unet2d_condition"

    @property
    def form(self) -> str:
        base = "sdxl" if self.unet.config.addition_embed_type == "text_time" else "sd"
        return f"{base}_class" if self.unet.class_embedding is not None else base

    def _validate(self) -> None:
        config = self.unet.config
        if config.addition_embed_type not in (None, "text_time"):
            raise NotImplementedError(
                f"addition_embed_type={config.addition_embed_type!r} is not supported (None or 'text_time')"
            )
        if config.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise NotImplementedError(
                f"resnet_time_scale_shift={config.resnet_time_scale_shift!r} is not supported (default, scale_shift)"
            )
        if config.encoder_hid_dim_type not in (None, "text_proj"):
            raise NotImplementedError(f"encoder_hid_dim_type={config.encoder_hid_dim_type!r} is not supported")

    def _conditioning_modules(self) -> tuple[str, ...]:
        names = []
        if getattr(self.unet.time_embedding, "cond_proj", None) is not None:
            names.append("time_embedding.cond_proj")
        if self.unet.class_embedding is not None:
            names.append("class_embedding")
        if self.unet.config.addition_embed_type == "text_time":
            names += ["add_time_proj", "add_embedding"]
        return tuple(names)

    def _time_projection(self, timesteps: TimestepsLike) -> Tensor:
        # time_proj (diffusers Timesteps) returns float32; the forward casts to the sample's dtype (the UNet's).
        return self.unet.time_proj(self._as_timesteps(timesteps)).to(dtype=self.unet.dtype)

    def time_only_embedding(self, timesteps: TimestepsLike) -> Tensor:
        return self.unet.time_embedding(self._time_projection(timesteps))

    def temporal_embedding(self, timesteps: TimestepsLike, conditioning: dict[str, Any] | None = None) -> Tensor:
        conditioning = self._check_conditioning(conditioning)
        config = self.unet.config
        dtype = self.unet.dtype
        # (1) h(t), with LCM-style guidance conditioning when timestep_cond is given.
        embedding = self.unet.time_embedding(self._time_projection(timesteps), conditioning.get("timestep_cond"))
        # (2) class embedding: added, or concatenated when class_embeddings_concat.
        if self.unet.class_embedding is not None:
            class_labels = conditioning.get("class_labels")
            if class_labels is None:
                raise ValueError(f"{self.form}: conditioning['class_labels'] is required (class-conditional model)")
            if config.class_embed_type == "timestep":
                class_labels = self.unet.time_proj(class_labels).to(dtype=dtype)
            class_embedding = self.unet.class_embedding(class_labels).to(dtype=dtype)
            if config.class_embeddings_concat:
                embedding = torch.cat([embedding, class_embedding], dim=-1)
            else:
                embedding = embedding + class_embedding
        # (3) SD-XL: add_embedding(cat(pooled text, add_time_proj(time_ids))) is added.
        if config.addition_embed_type == "text_time":
            added = conditioning.get("added_cond_kwargs") or {}
            if "text_embeds" not in added or "time_ids" not in added:
                raise ValueError(f"{self.form}: conditioning['added_cond_kwargs'] needs 'text_embeds' and 'time_ids'")
            text_embeds = added["text_embeds"]
            time_embeds = self.unet.add_time_proj(added["time_ids"].flatten())
            time_embeds = time_embeds.reshape((text_embeds.shape[0], -1))
            add_embeds = torch.concat([text_embeds, time_embeds], dim=-1).to(embedding.dtype)
            embedding = embedding + self.unet.add_embedding(add_embeds)
        # (4) optional activation of the summed embedding.
        if self.unet.time_embed_act is not None:
            embedding = self.unet.time_embed_act(embedding)
        return embedding

    def _encoder_width(self) -> int:
        config = self.unet.config
        if config.encoder_hid_dim is not None:
            return int(config.encoder_hid_dim)
        width = config.cross_attention_dim
        if isinstance(width, (tuple, list)):
            if len(set(width)) != 1:
                raise NotImplementedError(f"per-block cross_attention_dim {width} is not supported")
            width = width[0]
        return int(width)

    def example_inputs(self, batch_size: int = 2, seed: int = 0) -> ExampleInputs:
        generator = torch.Generator().manual_seed(seed)
        config = self.unet.config
        size = example_size(self.unet.config)
        sample = torch.randn(batch_size, config.in_channels, size, size, generator=generator)
        states = torch.randn(batch_size, 4, self._encoder_width(), generator=generator)
        kwargs: dict[str, Any] = {"encoder_hidden_states": states.to(self.device, self.dtype)}
        if config.addition_embed_type == "text_time":
            added_width = config.projection_class_embeddings_input_dim
            text_width = added_width - SDXL_NUM_TIME_IDS * config.addition_time_embed_dim
            if text_width <= 0:
                raise ValueError(
                    f"projection_class_embeddings_input_dim={added_width} leaves no room "
                    f"for text embeddings beside {SDXL_NUM_TIME_IDS} time ids of width {config.addition_time_embed_dim}"
                )
            pixels = float(size * 8)
            time_ids = torch.tensor([[pixels, pixels, 0.0, 0.0, pixels, pixels]]).repeat(batch_size, 1)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(batch_size, text_width, generator=generator).to(self.device, self.dtype),
                "time_ids": time_ids.to(self.device, self.dtype),
            }
        if self.unet.class_embedding is not None:
            kwargs["class_labels"] = example_class_labels(self, batch_size, generator)
        if config.time_cond_proj_dim is not None:
            cond = torch.randn(batch_size, config.time_cond_proj_dim, generator=generator)
            kwargs["timestep_cond"] = cond.to(self.device, self.dtype)
        timestep = example_timesteps(config, batch_size, self.device)
        return sample.to(self.device, self.dtype), timestep, kwargs
