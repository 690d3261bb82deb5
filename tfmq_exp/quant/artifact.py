"""Self-describing quantized artifacts: ``model.safetensors`` + ``artifact.json`` in one directory.

``artifact.json`` holds the format version, the resolved run config, the quantization map, free-form
metadata and the sha256 of the tensor file. Loading rebuilds the quantized layout on a fresh float UNet
from the map, then loads the state dict (weights, quantizer buffers, FSC tables, frozen codes). A config
that differs from the expected one, a model whose state dict does not line up, or a tensor file whose
checksum does not match fails loudly with an :class:`ArtifactError` that lists exactly what differs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import diffusers
import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tfmq_exp.atomic import atomic_write
from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.quant.layout import apply_quantization_map, iter_attn_processors, iter_quant_modules, quantization_map
from tfmq_exp.quant.spec import QuantizationMap
from tfmq_exp.store import file_sha256

ARTIFACT_FORMAT_VERSION = 1
TENSOR_FILE = "model.safetensors"
META_FILE = "artifact.json"
COMPARED_SECTIONS = ("model", "quant", "method", "calib", "sampler")
_MAX_LISTED = 20

PathLike = Union[str, os.PathLike]


class ArtifactError(ValueError):
    """An artifact does not match what the caller expects, or its files are damaged."""


@dataclass
class LoadedArtifact:
    """What :func:`load_artifact` returns.

    Attributes:
        unet: the quantized UNet (the same object that was passed in, modified in place).
        quant_map: the quantization map that was applied.
        config: the config saved with the artifact.
        extra: the free-form metadata saved with the artifact.
        metadata: the whole ``artifact.json``.
    """

    unet: nn.Module
    quant_map: QuantizationMap
    config: Dict[str, Any]
    extra: Dict[str, Any]
    metadata: Dict[str, Any]


def to_plain_config(config: Any) -> Dict[str, Any]:
    """A JSON-compatible dict from a dataclass, an OmegaConf config or a mapping (tuples become lists)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    else:
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(config, DictConfig):
                config = OmegaConf.to_container(config, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dataclass, a DictConfig or a mapping, got {type(config).__name__}")
    return json.loads(json.dumps(config))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def config_differences(
    saved: Mapping[str, Any], expected: Mapping[str, Any], sections: Sequence[str] = COMPARED_SECTIONS
) -> List[str]:
    """Differences between two configs, as ``"key: artifact has X, expected Y"`` lines.

    Args:
        saved: the artifact's config.
        expected: the caller's config.
        sections: top-level keys compared (the parts that determine the quantized model). When neither
            config has any of them (a flat config), every key is compared.

    Returns:
        One line per differing dotted key, sorted; empty when they agree.
    """
    flat_saved, flat_expected = _flatten(saved), _flatten(expected)
    keys = set(flat_saved) | set(flat_expected)
    if any(key.split(".")[0] in sections for key in keys):
        keys = {key for key in keys if key.split(".")[0] in sections}
    missing = object()
    lines = []
    for key in sorted(keys):
        old, new = flat_saved.get(key, missing), flat_expected.get(key, missing)
        if old is missing:
            lines.append(f"{key}: missing in the artifact, expected {new!r}")
        elif new is missing:
            lines.append(f"{key}: artifact has {old!r}, missing in the expected config")
        elif old != new:
            lines.append(f"{key}: artifact has {old!r}, expected {new!r}")
    return lines


def _listing(title: str, names: List[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"{title} ({len(names)}): {shown}{more}"


def _cpu_tensors(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Detached contiguous CPU tensors; storages seen twice are cloned (safetensors rejects sharing)."""
    seen, tensors = set(), {}
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if pointer in seen and tensor.numel() else tensor
        seen.add(pointer)
    return tensors


def save_artifact(directory: PathLike, unet: nn.Module, config: Any, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a quantized UNet as an artifact directory.

    Args:
        directory: target directory (created; existing artifact files are replaced).
        unet: the quantized UNet (its current layout is recorded with :func:`quantization_map`).
        config: the resolved run config (dataclass, DictConfig or mapping).
        extra: JSON-serialisable metadata (timings, calibration hash, ...).

    Returns:
        The directory path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensor_path = directory / TENSOR_FILE
    tensors = _cpu_tensors(unet.state_dict())
    atomic_write(tensor_path, lambda path: save_file(tensors, str(path), metadata={"format": "pt"}))
    metadata = {
        "format_version": ARTIFACT_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": to_plain_config(config),
        "quantization_map": quantization_map(unet).to_dict(),
        "extra": json.loads(json.dumps(dict(extra or {}))),
        "tensor_file": TENSOR_FILE,
        "sha256": file_sha256(tensor_path),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    text = json.dumps(metadata, indent=2, sort_keys=True)
    atomic_write(directory / META_FILE, lambda path: path.write_text(text))
    return directory


def read_artifact_metadata(directory: PathLike) -> Dict[str, Any]:
    """Parse and version-check ``artifact.json``.

    Raises:
        FileNotFoundError: no artifact in ``directory``.
        ArtifactError: unreadable JSON or an unsupported format version.
    """
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no quantized artifact at {directory}: {META_FILE} is missing")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is corrupt (not valid JSON: {error})") from error
    if metadata.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {metadata.get('format_version')!r} is not supported "
            f"(expected {ARTIFACT_FORMAT_VERSION})"
        )
    return metadata


def _state_differences(model_state: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]) -> List[str]:
    missing = sorted(set(model_state) - set(tensors))
    unexpected = sorted(set(tensors) - set(model_state))
    shapes = [
        f"{key} (model {tuple(model_state[key].shape)}, artifact {tuple(tensors[key].shape)})"
        for key in sorted(set(model_state) & set(tensors))
        if model_state[key].shape != tensors[key].shape
    ]
    lines = []
    if missing:
        lines.append(_listing("keys in the model but not in the artifact", missing))
    if unexpected:
        lines.append(_listing("keys in the artifact but not in the model", unexpected))
    if shapes:
        lines.append(_listing("keys with different shapes", shapes))
    return lines


def load_artifact(
    directory: PathLike,
    unet: nn.Module,
    expected_config: Any,
    context: Optional[TimestepContext] = None,
    sections: Sequence[str] = COMPARED_SECTIONS,
) -> LoadedArtifact:
    """Rebuild a quantized UNet from an artifact.

    Order of checks: format version, config (``sections`` of ``expected_config``), sha256 of the tensor
    file, quantization map vs the model's modules, state-dict keys and shapes; then the state is loaded.

    Args:
        directory: the artifact directory.
        unet: a fresh float UNet of the same architecture (modified in place).
        expected_config: the config the caller runs with (dataclass, DictConfig or mapping).
        context: timestep context attached to per-timestep (FSC) quantizers.
        sections: config sections that must agree (see :func:`config_differences`).

    Returns:
        A :class:`LoadedArtifact`.

    Raises:
        ArtifactError: on any mismatch or a corrupt file; the message lists what differs.
    """
    directory = Path(directory)
    metadata = read_artifact_metadata(directory)
    differences = config_differences(metadata["config"], to_plain_config(expected_config), sections)
    if differences:
        raise ArtifactError(f"artifact {directory} was built with a different config:\n  " + "\n  ".join(differences))
    tensor_path = directory / metadata.get("tensor_file", TENSOR_FILE)
    if not tensor_path.is_file():
        raise ArtifactError(f"artifact {directory} is incomplete: {tensor_path.name} is missing")
    digest = file_sha256(tensor_path)
    if digest != metadata["sha256"]:
        raise ArtifactError(
            f"checksum mismatch: {tensor_path} is corrupt or was modified "
            f"(sha256 {digest}, artifact.json records {metadata['sha256']})"
        )
    if next(iter_quant_modules(unet), None) is not None or next(iter_attn_processors(unet), None) is not None:
        raise ArtifactError("load_artifact needs a fresh float UNet, but the given one is already quantized")
    quant_map = QuantizationMap.from_dict(metadata["quantization_map"])
    try:
        apply_quantization_map(unet, quant_map, context)
    except ValueError as error:
        raise ArtifactError(f"artifact {directory} does not fit this model: {error}") from error
    tensors = load_file(str(tensor_path))
    problems = _state_differences(unet.state_dict(), tensors)
    if problems:
        raise ArtifactError(f"artifact {directory} does not fit this model's state dict:\n  " + "\n  ".join(problems))
    unet.load_state_dict(tensors, strict=True)
    return LoadedArtifact(unet, quant_map, metadata["config"], metadata.get("extra", {}), metadata)
