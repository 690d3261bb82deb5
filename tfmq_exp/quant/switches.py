"""Temporarily set a quantized model's weight / activation switches and restore them afterwards.

Calibration runs with weights quantized, and reconstruction with weights quantized and activations in full
precision (DESIGN 1.3); neither should leave the caller's switches changed. ``set_quant_state`` has no getter,
so the switches of every quantized layer and attention processor are recorded here and put back on exit.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from tfmq_exp.quant import iter_attn_processors, iter_quant_modules, set_quant_state


@contextlib.contextmanager
def quant_state(model: nn.Module, weight: bool, act: bool) -> Iterator[nn.Module]:
    """Within the block, quantize weights iff ``weight`` and activations iff ``act``; restore on exit.

    Args:
        model: a quantized model (a float model is left untouched).
        weight: quantize weights inside the block.
        act: quantize activations (layer inputs, q / k / probabilities / v) inside the block.

    Returns:
        A context manager yielding ``model``.
    """
    layers = [(module, module.use_weight_quant, [q.enabled for _, q in module.act_quantizers()])
              for _, module in iter_quant_modules(model)]
    processors = [(processor, [q.enabled for _, q in processor.act_quantizers()])
                  for _, processor in iter_attn_processors(model)]
    set_quant_state(model, weight, act)
    try:
        yield model
    finally:
        for module, use_weight, enabled in layers:
            module.use_weight_quant = use_weight
            for (_, quantizer), flag in zip(module.act_quantizers(), enabled):
                quantizer.enabled = flag
        for processor, enabled in processors:
            for (_, quantizer), flag in zip(processor.act_quantizers(), enabled):
                quantizer.enabled = flag
