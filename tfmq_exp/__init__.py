"""tfmq-exp: post-training quantization of diffusion models with temporal feature maintenance (TFMQ)."""

__version__ = "0.1.0"
