"""Per-unit checkpoints that make reconstruction resumable.

After a unit is finished its frozen state (the state dicts of its modules, including the hard-rounded weight
codes) is written atomically to ``<dir>/<index>_<unit name>.safetensors`` and recorded in
``<dir>/manifest.json`` (sha256, the unit's report entry). A rerun loads every unit whose checkpoint is valid
instead of optimising it. The manifest carries a key of everything that determined the results (config,
weights, plan); a directory written under another key is ignored (with a warning) and overwritten.

Activation quantizers are left out of the state of weight reconstruction: it runs with activations in full
precision and its key excludes the activation-only settings, so one checkpoint serves e.g. W4A8 and W4A32, whose
modules differ only in their activation quantizers (present, or absent as in attention processors at 32 bits).
The activation pass (``activations=True``) learns exactly that state and keeps it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tfmq_exp.atomic import atomic_write
from tfmq_exp.quant import ActQuantizer, QuantModule, WeightQuantizer, iter_quant_modules
from tfmq_exp.recon.units import ReconUnit
from tfmq_exp.store import file_sha256

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
CHECKPOINT_FORMAT = 2  # 2: activation-quantizer state left out
CODES_BUFFER = "weight_codes"  # a frozen weight quantizer's codes: ``<layer>.<quantizer attribute>.weight_codes``


def _reconstructed_state(module: nn.Module, activations: bool = False) -> dict[str, Tensor]:
    """``module``'s state dict, without the state of its activation quantizers unless ``activations``."""
    if activations:
        return dict(module.state_dict())
    skipped = tuple(f"{name}." for name, sub in module.named_modules() if name and isinstance(sub, ActQuantizer))
    return {key: value for key, value in module.state_dict().items() if not key.startswith(skipped)}


def unit_state(unet_q: nn.Module, unit: ReconUnit, activations: bool = False) -> dict[str, Tensor]:
    """The unit's state: ``<root>.<key>`` -> tensor for every module in ``unit.state_roots`` (cloned, CPU)."""
    state: dict[str, Tensor] = {}
    for root in unit.state_roots:
        for key, value in _reconstructed_state(unet_q.get_submodule(root), activations).items():
            state[f"{root}.{key}"] = value.detach().cpu().clone().contiguous()
    return state


def _codes_keys(unet_q: nn.Module, name: str) -> list[str]:
    """State keys of the frozen codes of every weight quantizer of layer ``name`` (both halves of a split layer)."""
    layer = unet_q.get_submodule(name)
    if not isinstance(layer, QuantModule):
        return [f"{name}.weight_quantizer.{CODES_BUFFER}"]
    return [f"{name}.{attr}.{CODES_BUFFER}" for attr, _ in layer.named_weight_quantizers()]


def _prepare_layout(unet_q: nn.Module, unit: ReconUnit, state: dict[str, Tensor]) -> list[WeightQuantizer]:
    """Give weight quantizers whose saved state holds frozen codes a ``weight_codes`` buffer to load into.

    Returns:
        The quantizers that got a new buffer (to undo with ``reset_rounding`` if the checkpoint is rejected).
    """
    allocated = []
    for root in unit.state_roots:
        for sub, layer in iter_quant_modules(unet_q.get_submodule(root)):
            name = ".".join(part for part in (root, sub) if part)
            for attr, quantizer in layer.named_weight_quantizers():
                if f"{name}.{attr}.{CODES_BUFFER}" in state and quantizer.weight_codes is None:
                    layer.allocate_rounding("frozen", attr)
                    allocated.append(quantizer)
    return allocated


def _matches(unet_q: nn.Module, unit: ReconUnit, state: dict[str, Tensor], activations: bool) -> Optional[str]:
    expected = {
        f"{root}.{key}": value
        for root in unit.state_roots
        for key, value in _reconstructed_state(unet_q.get_submodule(root), activations).items()
    }
    unfrozen = [name for name in unit.layer_names if any(key not in state for key in _codes_keys(unet_q, name))]
    if unfrozen:
        return f"no frozen rounding for {unfrozen[:3]}"
    if set(expected) != set(state):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        return f"keys differ: missing {missing[:3]}, extra {extra[:3]}"
    for key, value in state.items():
        if value.shape != expected[key].shape or value.dtype != expected[key].dtype:
            return f"{key}: {tuple(value.shape)} {value.dtype} vs {tuple(expected[key].shape)} {expected[key].dtype}"
    return None


class UnitCheckpoints:
    """The checkpoint directory of one reconstruction.

    Args:
        directory: where checkpoints and the manifest live (created if missing).
        setup_key: identifies everything that determined the results; a manifest with another key is ignored.
        activations: keep the activation quantizers' state too (the activation pass).
    """

    def __init__(self, directory: Path, setup_key: str, activations: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.setup_key = setup_key
        self.activations = activations
        self.entries: dict[str, dict[str, Any]] = {}
        path = self.directory / MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                log.warning("reconstruction manifest %s is unreadable (%s); starting over", path, error)
                return
            if manifest.get("setup_key") == setup_key and manifest.get("format") == CHECKPOINT_FORMAT:
                self.entries = dict(manifest.get("units", {}))
            else:
                log.warning("reconstruction checkpoints in %s belong to another setup; starting over", self.directory)

    @staticmethod
    def file_name(unit: ReconUnit) -> str:
        """``<index>_<unit name>.safetensors``."""
        return f"{unit.index:03d}_{unit.name}.safetensors"

    def load(self, unet_q: nn.Module, unit: ReconUnit) -> Optional[dict[str, Any]]:
        """Load ``unit``'s finished state into ``unet_q`` if a valid checkpoint exists.

        Returns:
            The unit's recorded report entry, or ``None`` (no checkpoint, or an invalid one: logged).
        """
        entry = self.entries.get(self.file_name(unit))
        if entry is None:
            return None
        path = self.directory / self.file_name(unit)
        try:
            if entry.get("unit") != unit.to_dict():
                raise ValueError("it was written for a different unit")
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                raise ValueError("missing file or checksum mismatch")
            state = load_file(str(path))
        except (OSError, ValueError, KeyError) as error:
            log.warning("checkpoint of unit %s is invalid (%s); reconstructing it again", unit.name, error)
            return None
        allocated = _prepare_layout(unet_q, unit, state)
        problem = _matches(unet_q, unit, state, self.activations)
        if problem is not None:
            for quantizer in allocated:
                quantizer.reset_rounding()
            log.warning("checkpoint of unit %s does not fit the model (%s); reconstructing it again",
                        unit.name, problem)
            return None
        for root in unit.state_roots:
            prefix = f"{root}."
            module = unet_q.get_submodule(root)
            # not strict: activation-quantizer keys are absent by design; _matches checked every other key
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
        return dict(entry["report"])

    def save(self, unet_q: nn.Module, unit: ReconUnit, report: dict[str, Any]) -> None:
        """Write ``unit``'s state and record it in the manifest (both atomically, the file first)."""
        name = self.file_name(unit)
        state = unit_state(unet_q, unit, self.activations)
        atomic_write(self.directory / name, lambda path: save_file(state, str(path), metadata={"unit": unit.name}))
        self.entries[name] = {"unit": unit.to_dict(), "sha256": file_sha256(self.directory / name), "report": report}
        manifest = {"format": CHECKPOINT_FORMAT, "setup_key": self.setup_key, "units": self.entries}
        atomic_write(self.directory / MANIFEST, lambda path: path.write_text(json.dumps(manifest, indent=2) + "\n"))


def run_resumable(
    unet_q: nn.Module, units: list[ReconUnit], checkpoints: UnitCheckpoints, optimise: Callable[[ReconUnit], dict],
    report: dict[str, Any],
) -> None:  # fmt: skip
    """For each unit in order: load its valid checkpoint, or ``optimise`` it and checkpoint the result.

    Fills ``report["units"]`` (each entry with ``resumed``) and ``report["resumed_units"]``.
    """
    for unit in units:
        entry = checkpoints.load(unet_q, unit)
        if entry is not None:
            report["units"][unit.name] = {**entry, "resumed": True}
            report["resumed_units"].append(unit.name)
            continue
        entry = optimise(unit)
        checkpoints.save(unet_q, unit, entry)
        report["units"][unit.name] = {**entry, "resumed": False}
