"""Tiny deterministic dummy inputs for dry forwards (structure discovery, tests), shared by the adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tfmq_exp.models.adapters.base import UNetAdapter


def example_size(config: Any) -> int:
    """Spatial size of dummy samples: the model's own if small, else just enough for its downsamplings."""
    configured = config.sample_size
    configured = configured[0] if isinstance(configured, (tuple, list)) else configured
    needed = max(8, 2 ** len(config.down_block_types))
    return needed if configured is None else min(int(configured), needed)


def example_timesteps(config: Any, batch_size: int, device: torch.device) -> Tensor:
    """``batch_size`` integer timesteps spread from the last training timestep down to 0."""
    num_train = config.get("num_train_timesteps") or 1000
    return torch.linspace(num_train - 1, 0, batch_size).round().long().to(device)


def example_class_labels(adapter: UNetAdapter, batch_size: int, generator: torch.Generator) -> Tensor:
    """Dummy ``class_labels`` of the kind the model's ``class_embed_type`` expects."""
    config = adapter.unet.config
    kind = config.class_embed_type
    if kind is None:
        return torch.randint(0, config.num_class_embeds, (batch_size,), generator=generator).to(adapter.device)
    if kind == "timestep":
        return example_timesteps(config, batch_size, adapter.device)
    if kind == "identity":
        with torch.no_grad():
            width = adapter.time_only_embedding(example_timesteps(config, 1, adapter.device)).shape[-1]
    elif kind in ("projection", "simple_projection"):
        width = config.projection_class_embeddings_input_dim
    else:
        raise NotImplementedError(f"class_embed_type={kind!r} is not supported")
    return torch.randn(batch_size, width, generator=generator).to(adapter.device, adapter.dtype)
