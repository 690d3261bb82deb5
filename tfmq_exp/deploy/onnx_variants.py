"""The benchmark's ONNX variants: one model's ONNX files built once, a runner per variant and batch size.

Variants (names start with the precision, as the benchmark's speedup table expects):

- ``fp32_ort`` / ``fp32_openvino``: the float ONNX export on ONNX Runtime / OpenVINO.
- ``int8_ort`` / ``int8_openvino``: our QDQ export (:mod:`tfmq_exp.deploy.onnx_export`, the given parameters, the
  attention matmuls' operands included when given).
- ``int8_ort_own``: ONNX Runtime's ``quantize_static`` of the float export; ``int8_nncf``: NNCF's
  ``nncf.quantize`` of it on OpenVINO (:mod:`tfmq_exp.deploy.runtimes`), both calibrated on ``calibration``,
  each choosing its own layers (every Conv / Gemm / MatMul).
- ``int8_ort_own_same`` / ``int8_nncf_same``: the same two with the layers our parameters keep in float (the
  published full-precision layers; the attention matmuls when ours keep them in float) left in float too: only
  the recipe differs.

Files are exported once per model with a dynamic batch axis; ONNX Runtime sessions accept any batch size and
OpenVINO models are compiled per batch size with static shapes. Export / quantization times are kept in
``build_s``, apart from the per-batch session build times the benchmark reports.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from tfmq_exp.deploy.from_quantized import OperandQParams
from tfmq_exp.deploy.qparams import LayerQParams

ONNX_VARIANTS = (
    "fp32_ort", "fp32_openvino", "int8_ort", "int8_openvino", "int8_ort_own", "int8_nncf", "int8_ort_own_same",
    "int8_nncf_same",
)  # fmt: skip
OURS = ("int8_ort", "int8_openvino")
RUNTIME_OWN = ("int8_ort_own", "int8_nncf")
RUNTIME_OWN_SAME_LAYERS = ("int8_ort_own_same", "int8_nncf_same")
_NEEDS = {
    "fp32_ort": ("onnx", "onnxruntime"),
    "fp32_openvino": ("onnx", "openvino"),
    "int8_ort": ("onnx", "onnxruntime"),
    "int8_openvino": ("onnx", "openvino"),
    "int8_ort_own": ("onnx", "onnxruntime"),
    "int8_nncf": ("onnx", "openvino", "nncf"),
    "int8_ort_own_same": ("onnx", "onnxruntime"),
    "int8_nncf_same": ("onnx", "openvino", "nncf"),
}
Batch = Tuple[torch.Tensor, torch.Tensor]


def unavailable_variants(names: Sequence[str]) -> Dict[str, List[str]]:
    """``{variant: missing modules}`` for the ONNX variants among ``names`` whose runtimes are not installed."""
    from tfmq_exp.deploy.runtimes import missing_runtimes

    missing = {name: missing_runtimes(_NEEDS[name]) for name in names if name in _NEEDS}
    return {name: modules for name, modules in missing.items() if modules}


class OnnxModels:
    """The ONNX files (and NNCF's model) of one UNet, built on first use; runners for the ONNX variants.

    Args:
        unet: the float UNet (its quantized layers' weights need not be on their grid: the export snaps them).
        qparams: our parameters for the QDQ export.
        calibration: noise batches for the runtimes' own int8 quantization.
        threads: intra-op threads of every session.
        directory: where the files go (a temporary directory, removed by :meth:`close`, when ``None``).
        attention: our parameters of the attention matmuls' operands (``None``: attention stays in float).
    """

    def __init__(
        self,
        unet: nn.Module,
        qparams: Dict[str, LayerQParams],
        calibration: Sequence[Batch],
        threads: int,
        directory: Optional[Path] = None,
        attention: Optional[Dict[str, Dict[str, OperandQParams]]] = None,
    ) -> None:
        self.unet = unet
        self.qparams = qparams
        self.attention = dict(attention or {})
        self.calibration = list(calibration)
        self.threads = threads
        self._tmp = None if directory is not None else tempfile.TemporaryDirectory(prefix="tfmq-onnx-")
        self.directory = Path(directory) if directory is not None else Path(self._tmp.name)
        self.build_s: Dict[str, float] = {}
        self._built: Dict[str, object] = {}

    def _timed(self, key: str, build) -> object:
        if key not in self._built:
            start = time.perf_counter()
            self._built[key] = build()
            self.build_s[key] = round(time.perf_counter() - start, 2)
        return self._built[key]

    def float_path(self) -> Path:
        from tfmq_exp.deploy.onnx_export import export_onnx

        return self._timed("export_fp32", lambda: export_onnx(self.unet, self.directory / "fp32.onnx",
                                                              self.calibration[0]))

    def qdq_path(self) -> Path:
        from tfmq_exp.deploy.onnx_export import export_onnx

        return self._timed("export_qdq_ours", lambda: export_onnx(
            self.unet, self.directory / "int8_qdq.onnx", self.calibration[0], self.qparams, attention=self.attention))

    def _float_layers(self) -> List[str]:
        """Node names of the float export our parameters leave in float (an attention module with operand
        parameters runs its matmuls quantized)."""
        from tfmq_exp.deploy.runtimes import layers_outside

        return layers_outside(self.float_path(), sorted({*self.qparams, *self.attention}))

    def ort_own_path(self, same_layers: bool = False) -> Path:
        from tfmq_exp.deploy.runtimes import ort_static_int8

        suffix = "_same" if same_layers else ""
        exclude = self._float_layers() if same_layers else ()
        return self._timed(f"ort_quantize_static{suffix}", lambda: ort_static_int8(
            self.float_path(), self.directory / f"int8_ort_own{suffix}.onnx", self.calibration, exclude=exclude))

    def nncf_model(self, same_layers: bool = False):
        from tfmq_exp.deploy.runtimes import nncf_int8

        exclude = self._float_layers() if same_layers else ()
        return self._timed("nncf_quantize" + ("_same" if same_layers else ""),
                           lambda: nncf_int8(self.float_path(), self.calibration, exclude=exclude))

    def source(self, name: str):
        """The ONNX file (or NNCF's ``openvino.Model``) variant ``name`` runs, built on the first request."""
        sources = {
            "fp32_ort": self.float_path, "fp32_openvino": self.float_path, "int8_ort": self.qdq_path,
            "int8_openvino": self.qdq_path, "int8_ort_own": self.ort_own_path, "int8_nncf": self.nncf_model,
            "int8_ort_own_same": lambda: self.ort_own_path(same_layers=True),
            "int8_nncf_same": lambda: self.nncf_model(same_layers=True),
        }
        if name not in sources:
            raise ValueError(f"unknown ONNX variant {name!r}; choose from {ONNX_VARIANTS}")
        return sources[name]()

    def runner(self, name: str, example: Batch):
        """The denoiser of variant ``name`` (OpenVINO ones compiled for ``example``'s shapes)."""
        from tfmq_exp.deploy.runtimes import openvino_runner, ort_runner

        source = self.source(name)
        if name in ("fp32_ort", "int8_ort", "int8_ort_own", "int8_ort_own_same"):
            return ort_runner(source, self.threads)
        return openvino_runner(source, self.threads, example)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
