#!/usr/bin/env bash
# One method across bit-widths, then its report:  experiments/bits.sh method=tfmq
set -euo pipefail
export TFMQ_SWEEP="${TFMQ_SWEEP:-bits_$(date +%Y-%m-%d_%H-%M-%S)}"
tfmq-exp --multirun +experiment=bits "$@"
tfmq-report "multirun/${TFMQ_SWEEP}" --wandb "${WANDB_MODE:-offline}"
