"""Dataclass schemas of the Hydra config groups, registered in Hydra's ConfigStore.

Each YAML file under ``conf/<group>/`` names its schema in its defaults list (``- /schema/<group>``), so
a typo'd key or a wrong type fails at composition. Range checks live in ``__post_init__`` and run when
:func:`tfmq_exp.config.validate.to_config` turns the composed DictConfig into these objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

W_BITS_RANGE = (2, 8)
A_BITS_RANGE = (4, 16)


def _check_choice(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def _check_range(key: str, value: Optional[int], bounds: tuple[int, int], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    low, high = bounds
    if value is None or not (low <= value <= high):
        extra = " or null (off)" if allow_none else ""
        raise ValueError(f"{key}={value} is out of range: allowed {low}..{high}{extra}")


def _check_fraction(key: str, value: float) -> None:
    """``value`` must lie in the half-open interval [0, 1) (a momentum, a warm-up share)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{key}={value} is out of range: allowed [0, 1)")


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{key}={value} must be > 0")


# Kept in full precision in the published setup (DESIGN 1.1): the input and output convolutions, the first Linear of
# the time-embedding MLP (TFMQ-DM quant_model.py:110-119, ``modules[0]``), ResNet shortcut convolutions (TFMQ-DM
# quant_model.py:56-66, "refer to PTQD") and the downsampler convolutions. One list for every model and method, so
# comparisons are fair; Q-Diffusion itself keeps nothing in FP (remove patterns with ``model.fp_patterns=[...]``).
RECON_ROLE = "reconstruction"
"""Field metadata key: how a config field reaches block reconstruction (:func:`reconstruction_fields`).

``never`` (only later stages read it), ``maintenance`` (only when a cache is installed before the blocks), ``fsc``
(only when the TIB keeps running with per-timestep parameters). Fields without it reach reconstruction always, so
a new field is in the reconstruction key until someone says otherwise."""


def _role(role: str) -> dict:
    return {RECON_ROLE: role}


MODEL_FAMILIES = ("pixel", "latent", "class_conditional", "text_to_image")
SAMPLERS = ("ddim", "ddpm", "plms", "dpmsolver++")  # tfmq_exp.eval.schedulers.SCHEDULERS builds them
TASKS = ("run", "train_digits", "train_extractor")  # tfmq_exp.models.tasks.TASKS runs them
CALIB_STEP_SELECTIONS = ("all", "uniform", "normal")  # tfmq_exp.calib.steps.STEP_SELECTIONS implements them
MAINTENANCES = ("tib", "cache", "select")  # tfmq_exp.temporal.maintenance.MAINTENANCES installs them
INCEPTION_LAYERS = ("64", "192", "768", "2048")  # torch-fidelity's inception-v3-compat feature layers
PUBLISHED_FP_PATTERNS = ("conv_in", "conv_out", "time_embedding.linear_1", "*.conv_shortcut", "*.downsamplers.*")


@dataclass
class ModelConfig:
    """Which denoiser to load and which of its layers stay in full precision.

    Attributes:
        name: config name (``digits``, ``ddpm_cifar10``, ...).
        family: how the model generates (:data:`MODEL_FAMILIES`): ``pixel`` (unconditional ``UNet2DModel`` on
            pixels), ``latent`` (unconditional UNet plus a ``VQModel`` / ``AutoencoderKL``), ``class_conditional``
            (class labels, classifier-free guidance, latent or pixel) or ``text_to_image`` (``UNet2DConditionModel``
            with CLIP text encoder(s): SD 1.x / 2.x and SD-XL). Never inferred from the model's name.
        path: a pipeline directory as ``DiffusionPipeline.save_pretrained`` writes it (``model_index.json`` at its
            root), a bare UNet directory, or a hub id already in the local cache; ``null`` for embedded weights.
        subfolder: subfolder of a bare-UNet ``path`` that holds the UNet (pipelines name their own ``unet``).
        embedded: name of the embedded weights under ``tfmq_exp/weights/`` (``null`` for real models).
        sample_size / in_channels: geometry the sampler draws noise for (latent size for LDMs); ``null`` (every
            real model) takes them from the loaded UNet, the only source of truth.
        null_class: the class label of classifier-free guidance's unconditional branch (LDM cin256: 1000, the
            last of ``num_class_embeds``); ``null`` means ``num_class_embeds - 1``.
        domain: ``digits`` (embedded extractor) or ``rgb`` (torch-fidelity's Inception features).
        fp_patterns: fnmatch patterns of module names kept in full precision (DESIGN 1.1); by default
            :data:`PUBLISHED_FP_PATTERNS`, the one place that list lives.
        extra_fp_patterns: further full-precision patterns of one model (e.g. SD-XL's ``add_embedding``).
        quant_patterns: fnmatch patterns of module names eligible for quantization.
        prediction_type: what the UNet predicts (``epsilon`` for every model here).
        num_train_timesteps / beta_schedule / beta_start / beta_end / steps_offset: the training noise schedule
            the sampler must use; a pipeline directory's own scheduler config overrides them at load time.
    """

    name: str = MISSING
    family: str = "pixel"
    path: Optional[str] = None
    subfolder: Optional[str] = None
    embedded: Optional[str] = None
    sample_size: Optional[int] = 8
    in_channels: Optional[int] = 1
    domain: str = "digits"
    null_class: Optional[int] = None
    fp_patterns: List[str] = field(default_factory=lambda: list(PUBLISHED_FP_PATTERNS))
    extra_fp_patterns: List[str] = field(default_factory=list)
    quant_patterns: List[str] = field(default_factory=lambda: ["*"])
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    steps_offset: int = 0

    def __post_init__(self) -> None:
        _check_choice("model.family", self.family, MODEL_FAMILIES)
        _check_choice("model.domain", self.domain, ("digits", "rgb"))
        if self.sample_size is not None:
            _check_positive("model.sample_size", self.sample_size)


@dataclass
class SamplerConfig:
    """A diffusers scheduler and its sampling settings (DESIGN 2).

    Attributes:
        name: ``ddim`` (``DDIMScheduler``), ``ddpm``, ``plms`` (``PNDMScheduler`` with ``skip_prk_steps``, the
            paper's Stable Diffusion sampler) or ``dpmsolver++`` (``DPMSolverMultistepScheduler``, 2nd order).
        num_steps: sampling steps; the set of timesteps they visit is the finite set TIAR / FSC / the cache use.
        eta: DDIM's stochasticity (0: deterministic).
        timestep_spacing: diffusers' spacing of the visited timesteps. ``leading`` gives ``0, k, 2k, ...``
            (+ the scheduler's ``steps_offset``); the published CIFAR-10 runs use DDIM's ``quad`` skip
            (``t_i = (0.8 T)(i / S)^2``), which no diffusers spacing reproduces; see README.
        guidance_scale: classifier-free guidance weight ``w`` (``eps_u + w (eps_c - eps_u)``); 1 disables the
            unconditional branch.
    """

    name: str = "ddim"
    num_steps: int = 50
    eta: float = 0.0
    timestep_spacing: str = "leading"
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("sampler.name", self.name, SAMPLERS)
        if self.guidance_scale < 0:
            raise ValueError(f"sampler.guidance_scale={self.guidance_scale} must be >= 0")
        _check_range("sampler.num_steps", self.num_steps, (1, 4000))
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"sampler.eta={self.eta} is out of range: allowed 0.0..1.0")


@dataclass
class QuantConfig:
    """Bit-widths and quantizer settings (DESIGN 1.1).

    Attributes:
        w_bits: weight bits, 2..8.
        a_bits: activation bits, 4..16, or null for full-precision activations (W4A32).
        temporal_a_bits: bits of the TIB's activations alone; null means ``a_bits``.
        softmax_bits: bits of the attention probabilities when ``method.attention_matmuls`` quantizes them;
            its own value, never tied to ``a_bits`` (8 in both releases: Q-Diffusion ``--sm_abit 8``,
            ``scripts/sample_diffusion_ldm.py:337-339``; TFMQ-DM ``--softmax_a_bit 8``, ``sample_diffusion_ldm.py:300``;
            16 for Q-Diffusion's Stable Diffusion runs, its README lines 60-61).
        act_range: activation range estimator, ``minmax`` (EMA) or ``mse`` (grid search); a method may override it
            with ``method.act_range``.
        ema_momentum: momentum of the running min/max over calibration batches.
    """

    name: str = field(default=MISSING, metadata=_role("never"))
    w_bits: int = 8
    a_bits: Optional[int] = field(default=8, metadata=_role("never"))
    temporal_a_bits: Optional[int] = field(default=None, metadata=_role("never"))
    weight_lp: float = 2.4
    weight_shrink_steps: int = 80
    softmax_bits: int = field(default=8, metadata=_role("never"))
    act_range: str = field(default="minmax", metadata=_role("never"))
    ema_momentum: float = field(default=0.95, metadata=_role("never"))

    def __post_init__(self) -> None:
        _check_range("quant.w_bits", self.w_bits, W_BITS_RANGE)
        _check_range("quant.a_bits", self.a_bits, A_BITS_RANGE, allow_none=True)
        _check_range("quant.temporal_a_bits", self.temporal_a_bits, A_BITS_RANGE, allow_none=True)
        _check_range("quant.softmax_bits", self.softmax_bits, A_BITS_RANGE)
        _check_choice("quant.act_range", self.act_range, ("minmax", "mse"))
        _check_fraction("quant.ema_momentum", self.ema_momentum)

    @property
    def effective_temporal_a_bits(self) -> Optional[int]:
        return self.temporal_a_bits if self.temporal_a_bits is not None else self.a_bits


@dataclass
class ReconConfig:
    """AdaRound block reconstruction (DESIGN 1.3).

    The defaults are the embedded benchmark's short schedule, chosen so every unit of the main job converges
    (recorded per unit: ``undecided_fraction`` and ``loss_hard`` / ``loss_soft``); ``conf/recon/published.yaml``
    is the published one (BRECQ ``main_imagenet.py:155-161`` at e455d62: 20 000 iterations, Adam lr 1e-3,
    batch 32, lambda 0.01, warm-up 0.2, beta 20 -> 2; Q-Diffusion ``--cali_iters 20000``,
    ``scripts/sample_diffusion_ldm.py:279-294`` at 715783d).
    """

    enabled: bool = False
    iters: int = 2000  # published: 20 000
    batch_size: int = 32  # published: 32
    lr: float = 3e-2  # published: 1e-3 (Adam's default, BRECQ block_recon.py:55-56)
    reg_lambda: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    p: float = 2.0  # lp_loss exponent; the weight phase passes none, so 2.0 (Q-Diffusion block_recon.py:16)

    def __post_init__(self) -> None:
        _check_range("method.recon.iters", self.iters, (1, 10_000_000))
        _check_positive("method.recon.batch_size", self.batch_size)
        _check_positive("method.recon.lr", self.lr)
        _check_fraction("method.recon.warmup", self.warmup)
        _check_positive("method.recon.p", self.p)


@dataclass
class ActReconConfig:
    """Q-Diffusion's / BRECQ's activation pass: block-wise learning of activation step sizes (DESIGN 1.1).

    After weight reconstruction and activation initialisation, each unit runs with weights and activations
    quantized on full-precision inputs (``asym=False``) against the full-precision output, and Adam with cosine
    decay learns every activation step size inside it (zero points fixed), loss ``lp_loss`` with ``p``, no
    rounding term. Published: 5 000 iterations, lr 4e-4, p 2.4, batch 32 (Q-Diffusion
    ``scripts/sample_diffusion_ldm.py:548-550`` and ``qdiff/block_recon.py:72-110`` at 715783d; BRECQ
    ``main_imagenet.py:165-167, 231-242`` at e455d62).
    """

    enabled: bool = False
    iters: int = 500  # published: 5 000
    batch_size: int = 32
    lr: float = 4e-4
    p: float = 2.4

    def __post_init__(self) -> None:
        _check_range("method.act_recon.iters", self.iters, (1, 10_000_000))
        _check_positive("method.act_recon.batch_size", self.batch_size)
        _check_positive("method.act_recon.lr", self.lr)
        _check_positive("method.act_recon.p", self.p)


@dataclass
class SelectConfig:
    """Disturbance-aware selection between TIB-based and cache-based maintenance (DESIGN 1.6)."""

    metric: str = "feature_mse"  # the abstract: "temporal feature errors guide a fine-grained selection"
    per_timestep: bool = False
    cache_budget_bytes: Optional[int] = None

    def __post_init__(self) -> None:
        _check_choice("method.select.metric", self.metric, ("feature_mse", "feature_cos", "block_output_mse"))


@dataclass
class MethodConfig:
    """A PTQ method as data: which stages run and with which settings (DESIGN 3, principles).

    Attributes:
        quantize: false only for the full-precision reference ``fp``.
        weight_init: initial weight range, ``minmax`` or ``shrink`` (the Lp search of DESIGN 1.1).
        recon: block reconstruction of the non-TIB units (Q-Diffusion / BRECQ).
        calib_steps: which sampling steps feed reconstruction: ``all``, ``uniform`` or ``normal``.
        tiar: reconstruct the TIB first against full-precision temporal features (DESIGN 1.4).
        fsc: per-timestep activation parameters for temporal features (DESIGN 1.4).
        fsc_scope: ``tib`` (temporal features only) or ``all`` (every activation quantizer).
        fsc_range: FSC's per-timestep range statistic: ``minmax`` (the paper's choice: min/max over the batches
            seen at ``t``), ``ema`` (the release's running min/max, momentum ``quant.ema_momentum``) or ``mse``
            (ours, ablation).
        maintenance: ``tib`` (quantized TIB runs), ``cache`` (DESIGN 1.5) or ``select`` (DESIGN 1.6); a cache is
            installed before block reconstruction, so blocks are fitted to the features they see at inference.
        cache_bits: bits of cached features; null means the activation bit-width.
        cache_fallback: run the TIB for timesteps missing from the cache instead of failing.
        split_shortcut: Q-Diffusion's separate quantizers for the two halves of ``cat(h, skip)``.
        act_recon: Q-Diffusion's activation pass (step sizes learned block by block), after activation init.
        act_range: the method's activation range estimator (``minmax`` / ``mse``); null means ``quant.act_range``.
        act_calib_steps: the steps activation ranges are computed on: ``all`` sampling steps, or ``recon_set``
            (the steps ``calib_steps`` selects, so PTQ4DM's distribution reaches its activation ranges).
        attention_matmuls: quantize q, k, the softmax probabilities and v (Q-Diffusion does,
            ``qdiff/quant_block.py:35-40, 136-137, 159-160, 273-283``; the released TFMQ-DM never switches them on,
            ``quant/quant_block.py:27-33, 281-282, 310, 338``).
    """

    name: str = field(default=MISSING, metadata=_role("never"))
    quantize: bool = True
    weight_init: str = "shrink"
    recon: ReconConfig = field(default_factory=ReconConfig)
    calib_steps: str = "all"
    tiar: bool = False
    fsc: bool = field(default=False, metadata=_role("fsc"))
    fsc_scope: str = field(default="tib", metadata=_role("fsc"))
    fsc_range: str = field(default="minmax", metadata=_role("fsc"))
    maintenance: str = field(default="tib", metadata=_role("maintenance"))
    cache_bits: Optional[int] = field(default=None, metadata=_role("maintenance"))
    cache_fallback: bool = field(default=False, metadata=_role("maintenance"))
    split_shortcut: bool = False
    select: SelectConfig = field(default_factory=SelectConfig, metadata=_role("maintenance"))
    act_recon: ActReconConfig = field(default_factory=ActReconConfig, metadata=_role("never"))
    act_range: Optional[str] = field(default=None, metadata=_role("never"))
    act_calib_steps: str = field(default="all", metadata=_role("never"))
    attention_matmuls: bool = field(default=True, metadata=_role("never"))

    def __post_init__(self) -> None:
        _check_choice("method.weight_init", self.weight_init, ("minmax", "shrink"))
        _check_choice("method.calib_steps", self.calib_steps, CALIB_STEP_SELECTIONS)
        _check_choice("method.fsc_scope", self.fsc_scope, ("tib", "all"))
        _check_choice("method.fsc_range", self.fsc_range, ("minmax", "mse", "ema"))
        _check_choice("method.maintenance", self.maintenance, MAINTENANCES)
        _check_range("method.cache_bits", self.cache_bits, (2, 16), allow_none=True)
        _check_choice("method.act_calib_steps", self.act_calib_steps, ("all", "recon_set"))
        if self.act_range is not None:
            _check_choice("method.act_range", self.act_range, ("minmax", "mse"))
        if self.fsc and self.act_recon.enabled:
            raise ValueError(
                "method.act_recon.enabled with method.fsc=true: the activation pass learns one step size per "
                "quantizer, FSC keeps one per timestep (the released TFMQ-DM does not run the pass)"
            )
        if self.fsc and self.act_calib_steps != "all":
            raise ValueError(
                "method.act_calib_steps=recon_set with method.fsc=true: FSC needs every sampling timestep "
                "calibrated; use act_calib_steps=all"
            )


@dataclass
class CalibConfig:
    """Calibration data: one full-precision sampling pass recorded at every step (DESIGN 1.2).

    Attributes:
        num_samples: trajectories recorded (each contributes one ``x_t`` per step).
        uniform_every: Q-Diffusion's stride over steps for ``calib_steps=uniform``.
        normal_mean / normal_std / normal_skew: PTQ4DM's distribution over the step position in [0, 1] (0 is the
            noisiest step). Defaults from its released DNTC script, ``quant_sample_ddim_in_backward_DNTC.sh:3-13``
            at 180a4d1: ``--calib_t_mode normal``, mean 0.4, std 0.4, over the sampling-loop index
            (``improved-diffusion/scripts/quant_image_sample.py:53-56``: ``int(N(mean, std) * T)``, clamped); a
            plain normal, so ``normal_skew`` is 0 (the paper's text calls it skewed without a shape).
        recon_samples: samples drawn from the selected steps to feed reconstruction.
        seed: seed of the recorded trajectories (independent of the evaluation noise).
        prompts: text-to-image calibration prompts, one per line (``null``: the shipped calibration set);
            trajectory ``j`` uses line ``j mod lines``. Separate from ``eval.prompts``.
        memory_budget_mb: megabytes of a unit's captured inputs and targets held in CPU memory at once; beyond it
            they are written to files under ``runtime.cache_dir/spill`` and read back batch by batch
            (:mod:`~tfmq_exp.recon.capture_buffer`). ``null``: no bound. Results do not depend on it.
    """

    num_samples: int = 128
    uniform_every: int = 5
    normal_mean: float = 0.4
    normal_std: float = 0.4
    normal_skew: float = 0.0
    recon_samples: int = 1024
    seed: int = 1234
    prompts: Optional[str] = None
    memory_budget_mb: Optional[float] = field(default=8192.0, metadata=_role("never"))

    def __post_init__(self) -> None:
        _check_range("calib.num_samples", self.num_samples, (1, 10_000_000))
        if self.memory_budget_mb is not None:
            _check_range("calib.memory_budget_mb", self.memory_budget_mb, (0, 1e9))
        _check_range("calib.uniform_every", self.uniform_every, (1, 10_000))


@dataclass
class EvalConfig:
    """Generation and metrics (torch-fidelity) settings.

    Attributes:
        num_samples: images generated for the metrics.
        batch_size: sampling batch size (results do not depend on it: noise is drawn per sample).
        seed_set: index of the evaluation noise set; sample ``i`` uses seed ``seed_set * 10**6 + i``.
        kid_subset_size: subset size for KID (capped by the smaller set).
        prc_neighborhood: k of the k-NN precision / recall.
        grid_size: samples shown in the PNG grid.
        reference: the real set of the RGB metrics: an image folder, a torch-fidelity registered input (e.g.
            ``cifar10-train``, fetched by torch-fidelity on the user's machine) or a statistics file (``.npz``
            with ``mu`` / ``sigma``, FID only); its Inception statistics are computed once and cached.
        inception_weights: a local copy of torch-fidelity's Inception-v3 weights (offline machines); ``null``
            looks in the torch hub cache.
        clip_model: a local ``CLIPModel`` directory (``save_pretrained`` form) for ``metrics.clip_score`` of
            text-to-image runs; ``null`` skips the CLIP score.
        prompts: text-to-image evaluation prompts, one per line (``null``: the shipped smoke set); sample ``i``
            uses line ``i mod lines``.
        fp_dtype: precision of the full-precision reference's sampling: ``float32``, or ``bfloat16`` / ``float16``
            mixed precision (:func:`~tfmq_exp.devices.sampling_precision`; ``float16`` on CUDA only). Quantized
            models always sample in float32 (the quantization simulation is fp32).
        inception_layer: the Inception-v3 feature layer of FID and KID in the ``rgb`` domain (torch-fidelity's
            ``feature_layer_fid`` / ``feature_layer_kid``): ``2048`` (the pool features every published FID uses,
            the default), or ``64`` / ``192`` / ``768`` (the earlier blocks; for sets smaller than the feature
            dimension, whose 2048-d covariance is singular, and for fast smoke runs). Numbers are comparable
            only at the same layer.
    """

    num_samples: int = 1000
    batch_size: int = 250
    seed_set: int = 0
    metrics: List[str] = field(default_factory=lambda: ["fid", "kid", "isc", "prc"])
    kid_subset_size: int = 500
    prc_neighborhood: int = 3
    grid_size: int = 64
    trajectory_samples: int = 64
    reference: Optional[str] = None
    inception_weights: Optional[str] = None
    clip_model: Optional[str] = None
    prompts: Optional[str] = None
    fp_dtype: str = "float32"
    inception_layer: str = "2048"

    def __post_init__(self) -> None:
        _check_choice("eval.fp_dtype", self.fp_dtype, ("float32", "bfloat16", "float16"))
        _check_choice("eval.inception_layer", str(self.inception_layer), INCEPTION_LAYERS)
        _check_range("eval.num_samples", self.num_samples, (2, 10_000_000))
        _check_range("eval.batch_size", self.batch_size, (1, 1_000_000))
        for metric in self.metrics:
            _check_choice("eval.metrics", metric, ("fid", "kid", "isc", "prc"))


@dataclass
class LoggerConfig:
    """W&B tracking. ``mode``: ``offline`` (default, no login), ``online``, ``disabled``."""

    name: str = "wandb"
    project: str = "tfmq-exp"
    entity: Optional[str] = None
    mode: str = "offline"
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_choice("logger.name", self.name, ("wandb", "none"))
        _check_choice("logger.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class RuntimeConfig:
    """Where and how things run.

    Attributes:
        threads: torch intra-op threads (1 is fastest on a shared 2-core machine).
        device: ``cpu``, ``cuda`` or ``auto``.
        devices: processes (one per device) that sample: evaluation, the full-precision reference and the
            calibration trajectories run under DDP on this many devices, with the same images as on one
            (:mod:`~tfmq_exp.eval.distributed`); reconstruction runs unit by unit on one.
        cache_dir: shared artifacts (calibration data, full-precision references); reused across runs.
        progress: show Lightning progress bars.
    """

    threads: int = 1
    device: str = "cpu"
    devices: int = 1
    cache_dir: str = "${oc.env:TFMQ_CACHE_DIR,${oc.env:HOME}/.cache/tfmq_exp}"
    progress: bool = True

    def __post_init__(self) -> None:
        _check_range("runtime.threads", self.threads, (1, 1024))
        _check_choice("runtime.device", self.device, ("cpu", "cuda", "auto"))
        _check_range("runtime.devices", self.devices, (1, 1024))


@dataclass
class TrainConfig:
    """Training of the embedded digits DDPM and feature extractor (``task=train_digits``)."""

    iters: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    ema_decay: float = 0.999
    out_dir: Optional[str] = None

    def __post_init__(self) -> None:
        _check_range("train.iters", self.iters, (1, 10_000_000))


@dataclass
class Config:
    """The root config: one field per group, plus the run's seed and task."""

    model: ModelConfig = MISSING
    sampler: SamplerConfig = MISSING
    quant: QuantConfig = MISSING
    method: MethodConfig = MISSING
    calib: CalibConfig = MISSING
    eval: EvalConfig = MISSING
    logger: LoggerConfig = MISSING
    runtime: RuntimeConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    task: str = "run"
    seed: int = 0
    artifact: Optional[str] = None
    save_artifact: bool = True

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)


def register_configs() -> None:
    """Register every schema in Hydra's ConfigStore, and the project's resolvers (idempotent)."""
    from tfmq_exp.config.resolvers import register_resolvers

    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="schema", name="model", node=ModelConfig)
    store.store(group="schema", name="sampler", node=SamplerConfig)
    store.store(group="schema", name="quant", node=QuantConfig)
    store.store(group="schema", name="method", node=MethodConfig)
    store.store(group="schema", name="logger", node=LoggerConfig)
    store.store(group="schema", name="calib", node=CalibConfig)
    store.store(group="schema", name="eval", node=EvalConfig)
    store.store(group="schema", name="runtime", node=RuntimeConfig)


def reconstruction_fields(cls: type, role: str) -> tuple[str, ...]:
    """Names of ``cls``'s fields whose :data:`RECON_ROLE` metadata is ``role``."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(RECON_ROLE) == role)
