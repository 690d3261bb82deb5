#!/usr/bin/env bash
# Issue 15's acceptance: every model family end to end on tiny random-weight pipelines of the real diffusers
# classes, saved with save_pretrained and loaded by path as real weights are; torch-fidelity's Inception path on a
# random-init weights file; the CLIP score from a tiny CLIP model. Offline, on CPU. Short schedules (10 sampling
# steps, 16 calibration trajectories, 300 AdaRound iterations) keep the 20 runs near 30 min on 2 cores; each
# summary.json still records every unit's convergence.
#   experiments/families.sh [OUT_DIR]          (default: experiments/results/families)
set -euo pipefail
OUT="${1:-experiments/results/families}"
ASSETS="${OUT}/assets"
mkdir -p "${ASSETS}/reference"
python -m tfmq_exp.eval.tiny_fidelity inception "${ASSETS}/inception.pth"
python -m tfmq_exp.eval.tiny_fidelity clip "${ASSETS}/clip"
for kind in pixel latent class_conditional text_to_image sdxl; do
  python -m tfmq_exp.models.tiny_pipelines "${kind}" "${ASSETS}/${kind}"
done
python - "${ASSETS}/reference" <<'PY'
import sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for index in range(32):
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(f"{sys.argv[1]}/{index}.png")
PY
PROMPTS="$(python -c 'from tfmq_exp.eval.conditions import PROMPTS_DIR; print(PROMPTS_DIR)')"
declare -A KIND=([ddpm_cifar10]=pixel [ldm_celebahq]=latent [ldm_imagenet]=class_conditional [sd_v1_4]=text_to_image [sdxl]=sdxl)
for model in ddpm_cifar10 ldm_celebahq ldm_imagenet sd_v1_4 sdxl; do
  extra=()
  [[ ${model} == ldm_imagenet ]] && extra+=(model.null_class=null sampler.guidance_scale=3.0)  # null: the last row
  [[ ${model} == sd_v1_4 || ${model} == sdxl ]] && extra+=(sampler=plms50 "eval.prompts=${PROMPTS}/eval_smoke.txt"
    "calib.prompts=${PROMPTS}/calib_smoke.txt" "eval.clip_model=${ASSETS}/clip")
  for method in fp qdiffusion tfmq tfmq_cache; do
    tfmq-exp "model=${model}" "model.path=${ASSETS}/${KIND[${model}]}" "method=${method}" quant=w8a8 \
      eval.num_samples=16 sampler.num_steps=10 calib.num_samples=16 calib.recon_samples=128 method.recon.iters=300 \
      method.act_recon.iters=100 runtime.threads=1 "eval.reference=${ASSETS}/reference" "eval.inception_weights=${ASSETS}/inception.pth" \
      "${extra[@]}" logger=none runtime.progress=false "runtime.cache_dir=${OUT}/cache" \
      "hydra.run.dir=${OUT}/${model}/${method}"
  done
done
rm -rf "${OUT}/cache" "${ASSETS}"  # 100 MB of random weights and caches; every run keeps its summary.json
