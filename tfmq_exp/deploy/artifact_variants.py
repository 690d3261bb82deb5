"""The deployed paths of one calibrated artifact, each built once with its build time and memory measured.

Five kinds of artifact (:func:`artifact_kind`):

- ``static`` (e.g. ``naive``, ``qdiffusion``): one parameter set; PT2E int8 (``int8``) and our QDQ export on ONNX
  Runtime / OpenVINO (``int8_ort`` / ``int8_openvino``).
- ``tib_fsc`` (``tfmq``: FSC on the TIB's layers only): the TIB depends on ``t`` alone, so the artifact's own
  quantized TIB is evaluated once per sampling timestep (:func:`~tfmq_exp.deploy.temporal.quantized_tib_table`) and the rest is one static graph taking those features as inputs; the same three paths.
- ``cache`` (``tfmq_cache``): the TIB is replaced by the artifact's own table of quantized temporal features
  (:func:`~tfmq_exp.deploy.temporal.cache_table`, the core cache's dequantized rows);
  the same three paths with the TIB removed from every graph and the features fed as inputs per timestep.
- ``selected`` (``tfmq_select``, or a cache with the TIB as fallback): part cache rows, part quantized TIB; both
  depend on ``t`` alone, so the model's own temporal path is evaluated once per sampling timestep
  (:func:`~tfmq_exp.deploy.temporal.quantized_tib_table`) and deploys as ``cache`` does.
- ``per_timestep`` (``tfmq_released``, FSC on every activation quantizer): one QDQ graph per timestep group with
  shared weights (:mod:`tfmq_exp.deploy.grouped_onnx`), dispatched by timestep (``int8_ort_grouped`` /
  ``int8_openvino_grouped``). PT2E has one static graph and is skipped with one line.

``fp32_eager`` and ``fp32_ort`` (the float export on ONNX Runtime) are the references. Every variant records
``build_s`` (export + compile, including its share of ONNX files) and ``rss_mb`` (this process's resident
memory after building it and calling it once, minus before: the compiled weights, kernels and buffers it holds).
Both runtimes are loaded (one float session each, discarded) before any of them is measured, so no variant is
charged for loading a runtime's libraries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from tfmq_exp.deploy.from_quantized import OperandQParams, attention_inputs, deployment_inputs
from tfmq_exp.deploy.lower import lower_to_int8
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.deploy.temporal import cache_table, quantized_tib_table, serves_features_from_tables, tib_layout
from tfmq_exp.temporal.features import TemporalFeatureSet
from tfmq_exp.deploy.timestep_groups import per_timestep_layers
from tfmq_exp.errors import UserError
from tfmq_exp.temporal.maintenance import iter_cache_modules

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = Tuple[torch.Tensor, torch.Tensor]
PAGE_BYTES = 4096


def rss_bytes() -> int:
    """This process's current resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_BYTES


@dataclass
class ArtifactVariants:
    """Runners of one artifact's deployed paths and what building each cost.

    Attributes:
        kind: ``static``, ``tib_fsc``, ``cache``, ``selected`` or ``per_timestep`` (:func:`artifact_kind`).
        unet_fp: the full-precision UNet (``fp32_eager``; exported for ``fp32_ort``).
        runners: variant name -> denoiser ``(sample, timesteps) -> eps``.
        build_s / rss_mb: per variant, seconds to build and resident-memory growth in MiB.
        file_bytes: per ONNX variant, the bytes of its files on disk.
        groups: timestep groups of a ``per_timestep`` artifact (one graph each).
        lowered_layers: how many layers run quantized in the deployed graphs.
        notes: one line per path that was skipped and why.
    """

    kind: str
    unet_fp: nn.Module
    runners: Dict[str, Denoiser] = field(default_factory=dict)
    build_s: Dict[str, float] = field(default_factory=dict)
    rss_mb: Dict[str, float] = field(default_factory=dict)
    file_bytes: Dict[str, int] = field(default_factory=dict)
    groups: Optional[list] = None
    notes: list = field(default_factory=list)
    lowered_layers: int = 0

    def add(self, name: str, build: Callable[[], Denoiser], example: Batch) -> None:
        """Build variant ``name`` with ``build()``, call it once on ``example`` (every timestep group's graph, for a
        :class:`~tfmq_exp.deploy.grouped_onnx.GroupedDenoiser`: runtimes allocate buffers at the first call), and
        record the build time and memory growth of both."""
        before, start = rss_bytes(), time.perf_counter()
        runner = build()
        with torch.no_grad():
            for timestep in getattr(runner, "first_timesteps", lambda: [example[1]])():
                runner(example[0], timestep)
        self.runners[name] = runner
        self.build_s[name] = round(time.perf_counter() - start, 3)
        self.rss_mb[name] = round((rss_bytes() - before) / 2**20, 2)


def artifact_kind(unet_q: nn.Module, unet_fp: nn.Module, qparams: Dict[str, LayerQParams]) -> str:
    """``cache`` when every temporal feature comes from a cache table, ``selected`` when cache modules serve part of
    them; else ``per_timestep`` when a layer outside the TIB has FSC parameters, ``tib_fsc`` when only TIB layers
    have them, ``static`` when none has.

    Raises:
        UserError: cache modules beside per-timestep parameters outside the TIB (one graph per timestep group
            with features as inputs is not built).
    """
    fsc_outside_tib = set(per_timestep_layers(qparams)) - set(tib_layout(unet_fp).layer_names)
    if next(iter_cache_modules(unet_q), None) is not None:
        if fsc_outside_tib:
            raise UserError("--artifact: a temporal-feature cache beside per-timestep (FSC) parameters outside the "
                            f"TIB ({len(fsc_outside_tib)} layers, method.fsc_scope=all) is not deployed; deploy a run "
                            "with method.fsc_scope=tib")
        return "cache" if serves_features_from_tables(unet_q, unet_fp) else "selected"
    if fsc_outside_tib:
        return "per_timestep"
    return "tib_fsc" if per_timestep_layers(qparams) else "static"


def _files(*paths: Path) -> int:
    return sum(path.stat().st_size for path in paths)


def build_variants(
    unet_q: nn.Module, unet_fp: nn.Module, example: Batch, timesteps: Sequence[int], directory: Path,
    compile: bool = True, onnx: bool = True,
) -> ArtifactVariants:  # fmt: skip
    """Build every deployed path of a calibrated quantized UNet (see the module doc).

    Args:
        unet_q: the calibrated quantized UNet of the artifact (timestep context attached).
        unet_fp: its full-precision twin.
        example: ``(sample, timesteps)``; graphs are specialised to this batch size.
        timesteps: the sampler's timesteps (``tib_fsc``: the features are evaluated at each).
        directory: where the ONNX files go.
        compile: compile the PT2E graph with inductor (real int8 kernels).
        onnx: build the ONNX Runtime / OpenVINO paths (skipped with a note when the runtimes are missing).
    """
    tib = tib_layout(unet_fp).layer_names
    float_unet, qparams = deployment_inputs(unet_q, unet_fp, removed_by_cache=tib, allow_per_timestep=True)
    variants = ArtifactVariants(kind=artifact_kind(unet_q, unet_fp, qparams), unet_fp=unet_fp)
    cache = None
    if variants.kind == "cache":
        cache = cache_table(unet_q, unet_fp)
    elif variants.kind in ("tib_fsc", "selected"):
        cache = quantized_tib_table(unet_q, unet_fp, timesteps)
    if cache is not None:  # the TIB leaves every graph
        qparams = {name: params for name, params in qparams.items() if name not in set(tib)}
    variants.lowered_layers = len(qparams)
    variants.add("fp32_eager", lambda: (lambda x, t: unet_fp(x, t).sample), example)
    if variants.kind == "per_timestep":
        variants.notes.append("int8 (PT2E): skipped, one static graph cannot hold per-timestep scales")
    else:
        variants.add("int8", lambda: lower_to_int8(float_unet, qparams, example, compile=compile, cache=cache), example)
    if onnx:
        _add_onnx(variants, float_unet, qparams, example, directory, cache, attention_inputs(unet_q))
    return variants


def _add_onnx(
    variants: ArtifactVariants, float_unet: nn.Module, qparams: Dict[str, LayerQParams], example: Batch,
    directory: Path, cache: Optional[TemporalFeatureSet], attention: Dict[str, Dict[str, OperandQParams]],
) -> None:  # fmt: skip
    """Our QDQ export on ONNX Runtime and OpenVINO (one graph, or one per timestep group); the attention matmuls'
    static operand parameters are exported too (the per-timestep graphs keep attention in float)."""
    from tfmq_exp.deploy.runtimes import missing_runtimes

    missing = missing_runtimes(("onnx", "onnxruntime", "openvino"))
    if missing:
        variants.notes.append(f"ONNX paths: skipped, {', '.join(missing)} not installed "
                              "(pip install 'tfmq-exp[deploy]')")
        return
    from tfmq_exp.deploy.onnx_export import export_onnx
    from tfmq_exp.deploy.runtimes import cache_feeds, openvino_runner, ort_runner, warm_runtimes

    threads = torch.get_num_threads()
    fp32_path = directory / "fp32.onnx"
    warm_runtimes(export_onnx(variants.unet_fp, fp32_path, example), threads, example)
    variants.add("fp32_ort", lambda: ort_runner(fp32_path, threads), example)
    variants.file_bytes["fp32_ort"] = _files(fp32_path)
    if variants.kind == "per_timestep":
        _add_grouped(variants, float_unet, qparams, example, directory, threads)
        return
    feeds = {} if cache is None else {"feeds": cache_feeds(cache)}
    path = directory / "int8_qdq.onnx"
    start = time.perf_counter()
    export_onnx(float_unet, path, example, qparams, cache=cache, attention=attention)
    export_s = time.perf_counter() - start
    variants.add("int8_ort", lambda: ort_runner(path, threads, **feeds), example)
    variants.add("int8_openvino", lambda: openvino_runner(path, threads, example, **feeds), example)
    for name in ("int8_ort", "int8_openvino"):
        variants.build_s[name] = round(variants.build_s[name] + export_s, 3)
        variants.file_bytes[name] = _files(path)


def _add_grouped(
    variants: ArtifactVariants, float_unet: nn.Module, qparams: Dict[str, LayerQParams], example: Batch,
    directory: Path, threads: int,
) -> None:  # fmt: skip
    """One graph per timestep group, weights shared, on both runtimes."""
    from tfmq_exp.deploy.grouped_onnx import GroupedDenoiser, export_grouped_onnx
    from tfmq_exp.deploy.runtimes import openvino_runner, ort_runner

    exported = export_grouped_onnx(float_unet, directory / "grouped", example, qparams)
    variants.groups = exported.groups
    builders = {
        "int8_ort_grouped": lambda: GroupedDenoiser(exported.groups, [ort_runner(p, threads) for p in exported.paths]),
        "int8_openvino_grouped": lambda: GroupedDenoiser(
            exported.groups, [openvino_runner(p, threads, example) for p in exported.paths]),
    }  # fmt: skip
    for name, build in builders.items():
        variants.add(name, build, example)
        variants.build_s[name] = round(variants.build_s[name] + exported.export_s, 3)
        variants.file_bytes[name] = exported.total_bytes()
