"""Packed quantized checkpoints (safetensors): integer weight codes plus what is needed to rebuild the model.

Layout: the layers in ``qparams`` (weights on the grid ``w_hat = s_c * (q - z_c)`` of DESIGN 1.1) are
concatenated, in the order of the ``layers`` metadata entry, into three flat tensors (one safetensors entry
each instead of three per layer, which keeps the header small):

- ``quantized.codes``: uint8. Per layer, ``w_bits <= 4``: two codes per byte (first code in the low nibble)
  over the flattened weight, zero-padded to an even count; 5..8 bits: one code per byte.
- ``quantized.scale``: float32, ``C_out`` per layer (float32 so that ``unpack`` reproduces ``w_hat`` exactly).
- ``quantized.zero_point``: uint8, ``C_out`` per layer.

Every other state-dict tensor (biases, norms, layers kept in full precision) is stored as ``float_dtype``
(default float16: the packed artifact is for deployment; pass ``torch.float32`` for a lossless copy) and
integer tensors as they are. The safetensors metadata holds the format, its version, and per layer the
weight shape and bits and the activation parameters, so :func:`unpack` returns both the state dict and the
:class:`LayerQParams`. Measured on the digits UNet (file bytes, ratio to the float32 safetensors file):
every Conv2d / Linear quantized, rest float16: W8 0.262x, W4 0.138x (rest float32: 0.265x, 0.142x);
with the published full-precision layers (``fp_patterns``) kept in float16: W8 0.273x, W4 0.156x.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tfmq_exp.deploy.qparams import LayerQParams, dequantize_weight_codes, quantize_weight_codes

FORMAT = "tfmq-packed"
VERSION = 1
NIBBLE_BITS = 4
CODES_KEY, SCALE_KEY, ZERO_POINT_KEY = "quantized.codes", "quantized.scale", "quantized.zero_point"


@dataclass
class PackedCheckpoint:
    """Tensors and string metadata of a packed checkpoint, as stored in one safetensors file."""

    tensors: Dict[str, torch.Tensor]
    metadata: Dict[str, str]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes in ``[0, 15]`` two per byte (low nibble first) over the flattened tensor."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: ``numel`` codes as uint8."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=1).reshape(-1)[:numel]


def pack_state_dict(
    state_dict: Dict[str, torch.Tensor],
    qparams: Dict[str, LayerQParams],
    float_dtype: torch.dtype = torch.float16,
) -> PackedCheckpoint:
    """Quantize and pack the weights of the layers in ``qparams``; keep the rest as ``float_dtype``.

    Args:
        state_dict: the model's float state dict (e.g. ``unet.state_dict()``).
        qparams: per-layer parameters; each layer's ``<layer>.weight`` must be in ``state_dict``.
        float_dtype: storage dtype of the remaining floating-point tensors.
    """
    missing = [name for name in qparams if f"{name}.weight" not in state_dict]
    if missing:
        raise KeyError(f"no weight in the state dict for layers {missing}")
    codes, scales, zero_points = [], [], []
    layers: Dict[str, dict] = {}
    for name, params in qparams.items():
        weight = state_dict[f"{name}.weight"]
        layer_codes = quantize_weight_codes(weight, params).to(torch.uint8).reshape(-1)
        codes.append(pack_nibbles(layer_codes) if params.w_bits <= NIBBLE_BITS else layer_codes)
        scales.append(params.weight_scale)
        zero_points.append(params.weight_zero_point.to(torch.uint8))
        layers[name] = {
            "shape": list(weight.shape),
            "w_bits": params.w_bits,
            "act_scale": params.act_scale,
            "act_zero_point": params.act_zero_point,
            "a_bits": params.a_bits,
        }
        if params.act_per_timestep:
            layers[name]["act_per_timestep"] = params.act_per_timestep
    tensors: Dict[str, torch.Tensor] = {}
    if layers:
        tensors[CODES_KEY] = torch.cat(codes)
        tensors[SCALE_KEY] = torch.cat(scales)
        tensors[ZERO_POINT_KEY] = torch.cat(zero_points)
    packed_weights = {f"{name}.weight" for name in qparams}
    for key, value in state_dict.items():
        if key in packed_weights:
            continue
        value = value.detach()
        tensors[key] = (value.to(float_dtype) if value.is_floating_point() else value).contiguous()
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "float_dtype": str(float_dtype).removeprefix("torch."),
        "layers": json.dumps(layers, separators=(",", ":")),
    }
    return PackedCheckpoint(tensors=tensors, metadata=metadata)


def _layer_params(entry: dict, scale: torch.Tensor, zero_point: torch.Tensor) -> LayerQParams:
    per_timestep = entry.get("act_per_timestep")
    return LayerQParams(
        weight_scale=scale.float(),
        weight_zero_point=zero_point.to(torch.int32),
        w_bits=int(entry["w_bits"]),
        act_scale=float(entry["act_scale"]),
        act_zero_point=int(entry["act_zero_point"]),
        a_bits=int(entry["a_bits"]),
        act_per_timestep={int(t): tuple(v) for t, v in per_timestep.items()} if per_timestep else None,
    )


def unpack(packed: PackedCheckpoint) -> Tuple[Dict[str, torch.Tensor], Dict[str, LayerQParams]]:
    """Rebuild a float32 state dict (quantized weights as ``w_hat``) and the per-layer parameters.

    Raises:
        ValueError: the metadata is not this format or version.
    """
    if packed.metadata.get("format") != FORMAT or packed.metadata.get("version") != str(VERSION):
        raise ValueError(f"not a {FORMAT} v{VERSION} checkpoint: metadata {packed.metadata.get('format')!r} "
                         f"v{packed.metadata.get('version')!r}")
    layers = json.loads(packed.metadata["layers"])
    state_dict: Dict[str, torch.Tensor] = {}
    qparams: Dict[str, LayerQParams] = {}
    code_offset = channel_offset = 0
    for name, entry in layers.items():
        shape = torch.Size(entry["shape"])
        channels = slice(channel_offset, channel_offset + shape[0])
        params = _layer_params(entry, packed.tensors[SCALE_KEY][channels], packed.tensors[ZERO_POINT_KEY][channels])
        code_bytes = (shape.numel() + 1) // 2 if params.w_bits <= NIBBLE_BITS else shape.numel()
        codes = packed.tensors[CODES_KEY][code_offset : code_offset + code_bytes]
        if params.w_bits <= NIBBLE_BITS:
            codes = unpack_nibbles(codes, shape.numel())
        state_dict[f"{name}.weight"] = dequantize_weight_codes(codes.reshape(shape), params)
        qparams[name] = params
        code_offset += code_bytes
        channel_offset += shape[0]
    if code_offset != packed.tensors.get(CODES_KEY, torch.empty(0)).numel():
        raise ValueError("the packed codes do not match the layer shapes in the metadata")
    for key, value in packed.tensors.items():
        if key not in (CODES_KEY, SCALE_KEY, ZERO_POINT_KEY):
            state_dict[key] = value.float() if value.is_floating_point() else value
    return state_dict, qparams


def save_packed(packed: PackedCheckpoint, path: str | os.PathLike) -> int:
    """Write ``packed`` as one safetensors file; returns its size in bytes."""
    save_file(packed.tensors, str(path), metadata=packed.metadata)
    return Path(path).stat().st_size


def load_packed(path: str | os.PathLike) -> PackedCheckpoint:
    """Read a file written by :func:`save_packed`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return PackedCheckpoint(tensors=tensors, metadata=metadata)


def float32_file_bytes(state_dict: Dict[str, torch.Tensor]) -> int:
    """Size of the float32 safetensors file of ``state_dict`` (the reference of the size ratio)."""
    tensors = {
        key: (value.detach().float() if value.is_floating_point() else value.detach()).contiguous()
        for key, value in state_dict.items()
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fp32.safetensors"
        save_file(tensors, str(path))
        return path.stat().st_size


def size_report(state_dict: Dict[str, torch.Tensor], packed_path: str | os.PathLike) -> Dict[str, float]:
    """File bytes of the packed checkpoint and of the float32 state dict, and their ratio."""
    packed_bytes = Path(packed_path).stat().st_size
    fp32_bytes = float32_file_bytes(state_dict)
    return {"packed_bytes": packed_bytes, "fp32_bytes": fp32_bytes, "ratio": packed_bytes / fp32_bytes}
