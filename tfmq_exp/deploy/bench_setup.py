"""Models, variants and timing loops of the speed benchmark (``tfmq-bench``, :mod:`tfmq_exp.deploy.benchmark`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch._inductor.config
from diffusers import DDIMScheduler, UNet2DModel

from tfmq_exp.deploy.lower import lower_to_int8
from tfmq_exp.deploy.onnx_variants import ONNX_VARIANTS, OnnxModels
from tfmq_exp.deploy.noise_calibration import NoiseCalibration, noise_calibrated
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.temporal.features import TemporalFeatureSet
from tfmq_exp.models.architectures import ddpm_cifar10_unet
from tfmq_exp.models.digits import build_digits_unet
from tfmq_exp.paths import WEIGHTS_DIR

VARIANTS = ("fp32_eager", "fp32_compiled", "int8", "int8_cache", *ONNX_VARIANTS)
DEFAULT_VARIANTS = ("fp32_eager", "fp32_compiled", "int8", *ONNX_VARIANTS)
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_benchmark_unet(name: str) -> Tuple[UNet2DModel, str]:
    """``digits`` (trained weights from ``tfmq_exp/weights/digits`` if present, else random) or ``cifar10``.

    Returns:
        the UNet in eval mode and where its weights came from.
    """
    torch.manual_seed(0)
    if name == "cifar10":
        return ddpm_cifar10_unet(seed=0).eval(), "random"
    if name == "digits":
        directory = WEIGHTS_DIR / "digits"
        if (directory / "config.json").is_file():
            return UNet2DModel.from_pretrained(str(directory), local_files_only=True).eval(), str(directory)
        return build_digits_unet().eval(), "random"
    raise ValueError(f"unknown benchmark model {name!r}; choose digits or cifar10")


def sample_shape(unet: UNet2DModel) -> Tuple[int, int, int]:
    size = unet.config.sample_size
    return (unet.config.in_channels, size, size)


def noise_batches(unet: UNet2DModel, batches: int = 4) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` calibration batches of 8: Gaussian noise at random (float) timesteps."""
    generator = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(batches):
        noise = torch.randn(8, *sample_shape(unet), generator=generator)
        examples.append((noise, torch.randint(0, 1000, (8,), generator=generator).float()))
    return examples


def benchmark_calibration(
    unet: UNet2DModel, fp_patterns: Sequence[str], batches: int = 4, attention_matmuls: bool = True
) -> NoiseCalibration:
    """W8A8 parameters of the core's quantizers calibrated on :func:`noise_batches`
    (:func:`~tfmq_exp.deploy.noise_calibration.noise_calibrated`); the int8 graphs re-round the 8-bit asymmetric
    weight grid to int8 codes, as they do for a calibrated W8A8 artifact (:mod:`tfmq_exp.deploy.int8_grid`).
    ``attention_matmuls`` quantizes the attention matmuls' operands too, the project's default
    (``method.attention_matmuls``)."""
    return noise_calibrated(unet, noise_batches(unet, batches), w_bits=8, a_bits=8, fp_patterns=fp_patterns,
                            attention_matmuls=attention_matmuls)


def ddim_scheduler(steps: int) -> DDIMScheduler:
    """DDIM with the DDPM training schedule (1000 linear betas 1e-4..0.02), eta 0."""
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def ddim_sample(model: Denoiser, noise: torch.Tensor, scheduler: DDIMScheduler) -> torch.Tensor:
    """Run the whole DDIM loop ``x_T -> x_0`` with ``model`` as the noise predictor."""
    sample = noise
    for timestep in scheduler.timesteps:
        eps = model(sample, timestep.to(torch.float32).expand(sample.shape[0]))
        sample = scheduler.step(eps, timestep, sample).prev_sample
    return sample


class CompiledFloat:
    """FP32 UNet compiled by inductor with the same settings as the int8 graph (freezing: prepacked weights)."""

    def __init__(self, unet: UNet2DModel) -> None:
        self.compiled = torch.compile(unet, dynamic=False)

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self.compiled(sample, timesteps).sample


@dataclass
class Variant:
    """One way of running the denoiser, and how long it took to build (export / compile, first call)."""

    name: str
    run: Denoiser
    build_s: float


def build_variant(
    name: str,
    unet: UNet2DModel,
    qparams: Dict[str, LayerQParams],
    example: Tuple[torch.Tensor, torch.Tensor],
    cache: TemporalFeatureSet | None,
    compiled_float: CompiledFloat,
    onnx_models: OnnxModels | None = None,
) -> Variant:
    """Build variant ``name`` for the example's batch size (compiled ones compile here, on ``example``).

    ONNX variants (:data:`ONNX_VARIANTS`) take their files from ``onnx_models``; the time to export / quantize
    those files is kept in ``onnx_models.build_s``, not in this variant's ``build_s``.
    """
    start = time.perf_counter()
    if name == "fp32_eager":
        run: Denoiser = lambda sample, timesteps: unet(sample, timesteps).sample  # noqa: E731
    elif name == "fp32_compiled":
        run = compiled_float
    elif name in ("int8", "int8_cache"):
        run = lower_to_int8(unet, qparams, example, cache=cache if name == "int8_cache" else None)
    elif name in ONNX_VARIANTS and onnx_models is not None:
        onnx_models.source(name)  # exported / quantized once per model, timed in onnx_models.build_s
        start = time.perf_counter()
        run = onnx_models.runner(name, example)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
    with torch.no_grad():
        run(*example)
    return Variant(name=name, run=run, build_s=time.perf_counter() - start)


def interleaved_times(calls: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, List[float]]:
    """Seconds per call of each entry, measured round-robin (A, B, C, A, B, C, ...) after ``warmup`` rounds."""
    with torch.no_grad():
        for _ in range(warmup):
            for call in calls.values():
                call()
        times: Dict[str, List[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return times
