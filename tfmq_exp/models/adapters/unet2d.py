"""Adapter for diffusers ``UNet2DModel`` (pixel-space DDPM UNets; optionally class-conditional)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tfmq_exp.models.adapters.base import ExampleInputs, TimestepsLike, UNetAdapter
from tfmq_exp.models.adapters.examples import example_class_labels, example_size, example_timesteps


class UNet2DAdapter(UNetAdapter):
    """``UNet2DModel``: ``h(t) = time_embedding(time_proj(t)) [+ class_embedding(y)]``.

    Forms: ``unet2d`` (unconditional; the TIB depends on t alone) and ``unet2d_class`` (``num_class_embeds``
    or ``class_embed_type`` set: the class embedding is added to ``h`` before the ResNet projections).
    """

    family = "unet2d"

    @property
    def form(self) -> str:
        return "unet2d_class" if self.unet.class_embedding is not None else "unet2d"

    def _validate(self) -> None:
        shift = self.unet.config.resnet_time_scale_shift
        if shift not in ("default", "scale_shift"):
            raise NotImplementedError(f"resnet_time_scale_shift={shift!r} is not supported (default, scale_shift)")

    def _conditioning_modules(self) -> tuple[str, ...]:
        return ("class_embedding",) if self.unet.class_embedding is not None else ()

    def time_only_embedding(self, timesteps: TimestepsLike) -> Tensor:
        # (1) sinusoidal / Fourier / learned projection of t; it returns float32, so cast to the UNet's
        # dtype as UNet2DModel.forward does; (2) the MLP h.
        t_emb = self.unet.time_proj(self._as_timesteps(timesteps)).to(dtype=self.unet.dtype)
        return self.unet.time_embedding(t_emb)

    def temporal_embedding(self, timesteps: TimestepsLike, conditioning: dict[str, Any] | None = None) -> Tensor:
        conditioning = self._check_conditioning(conditioning)
        embedding = self.time_only_embedding(timesteps)
        class_labels = conditioning.get("class_labels")
        if self.unet.class_embedding is not None:
            if class_labels is None:
                raise ValueError(f"{self.form}: conditioning['class_labels'] is required (class-conditional model)")
            if self.unet.config.class_embed_type == "timestep":
                class_labels = self.unet.time_proj(class_labels)
            # h(t, y) = h(t) + class_embedding(y), as in UNet2DModel.forward.
            embedding = embedding + self.unet.class_embedding(class_labels).to(dtype=self.unet.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given but the model has no class_embedding")
        return embedding

    def example_inputs(self, batch_size: int = 2, seed: int = 0) -> ExampleInputs:
        generator = torch.Generator().manual_seed(seed)
        size = example_size(self.unet.config)
        channels = self.unet.config.in_channels
        sample = torch.randn(batch_size, channels, size, size, generator=generator).to(self.device, self.dtype)
        if self.unet.config.time_embedding_type == "fourier":
            # Fourier embeddings take noise levels sigma > 0 (log sigma inside the projection).
            timestep = torch.linspace(40.0, 0.5, batch_size).to(self.device)
        else:
            timestep = example_timesteps(self.unet.config, batch_size, self.device)
        kwargs: dict[str, Any] = {}
        if self.unet.class_embedding is not None:
            kwargs["class_labels"] = example_class_labels(self, batch_size, generator)
        return sample, timestep, kwargs
