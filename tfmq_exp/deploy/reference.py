"""Plain-torch fake-quant reference with the same parameters as the int8 lowering.

Weights are replaced by ``w_hat = s_c * (clamp(round(w / s_c) + z_c) - z_c)``; the input of every layer in
``qparams`` is fake-quantized per tensor by a forward pre-hook, ``x_hat = s * (clamp(round(x / s) + z) - z)``.
With ``attention`` (:func:`~tfmq_exp.deploy.from_quantized.attention_inputs`) the attention matmuls' operands are
fake-quantized too (:func:`~tfmq_exp.deploy.attention_qdq.qdq_attention`), as the core's fake-quant models and our
QDQ export do; the PT2E lowering keeps attention in float. Nothing else is quantized, matching what
:func:`tfmq_exp.deploy.lower.lower_to_int8` runs in int8. With a temporal-feature cache the TIB is bypassed the
same way as in the lowered graph.
"""

from __future__ import annotations

import copy
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from tfmq_exp.deploy.attention_qdq import qdq_attention
from tfmq_exp.deploy.from_quantized import OperandQParams
from tfmq_exp.deploy.qparams import LayerQParams, fake_quantize_activation, fake_quantize_weight
from tfmq_exp.deploy.temporal import FeatureInputUNet, as_float_timesteps, tib_layout
from tfmq_exp.temporal.features import TemporalFeatureSet


class FakeQuantReference(nn.Module):
    """``forward(sample, timestep) -> eps`` of a fake-quantized copy of ``unet``.

    Args:
        unet: the full-precision UNet (copied; the original is not modified).
        qparams: static per-layer parameters (per-timestep ones are not modelled here).
        cache: optional temporal-feature cache; the TIB layers' parameters are then ignored.
        attention: the attention matmuls' operand parameters; ``None`` keeps attention in float.
    """

    def __init__(
        self, unet: nn.Module, qparams: Dict[str, LayerQParams], cache: Optional[TemporalFeatureSet] = None,
        attention: Optional[Mapping[str, Dict[str, OperandQParams]]] = None,
    ) -> None:  # fmt: skip
        super().__init__()
        model = copy.deepcopy(unet).eval().float()
        removed = set(tib_layout(model).layer_names) if cache is not None else set()
        self.qparams = {name: params for name, params in qparams.items() if name not in removed}
        with torch.no_grad():
            for name, params in self.qparams.items():
                module = model.get_submodule(name)
                module.weight.copy_(fake_quantize_weight(module.weight, params))
                module.register_forward_pre_hook(self._make_act_hook(params))
        qdq_attention(model, dict(attention or {}))
        self.cache = cache
        self.model = FeatureInputUNet(model) if cache is not None else model

    @staticmethod
    def _make_act_hook(params: LayerQParams):
        if params.is_per_timestep:
            raise NotImplementedError("the reference models static activation parameters only")

        def hook(_module: nn.Module, inputs: tuple) -> tuple:
            x_hat = fake_quantize_activation(inputs[0], params.act_scale, params.act_zero_point, params.a_bits)
            return (x_hat, *inputs[1:])

        return hook

    @torch.no_grad()
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        timesteps = as_float_timesteps(timestep, sample.shape[0])
        if self.cache is not None:
            return self.model(sample, self.cache.rows(timesteps))
        return self.model(sample, timesteps).sample
