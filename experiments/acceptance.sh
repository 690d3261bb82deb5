#!/usr/bin/env bash
# The fidelity acceptance protocol (issue 13), one setting per call, then its report:
#   experiments/acceptance.sh quant=w4a8 model=digits
#   experiments/acceptance.sh quant=w8a4 model=digits
#   experiments/acceptance.sh quant=w4a8t4 model=digits_ss
set -euo pipefail
export TFMQ_SWEEP="${TFMQ_SWEEP:-acceptance_$(date +%Y-%m-%d_%H-%M-%S)}"
tfmq-exp --multirun +experiment=acceptance "$@"
tfmq-report "multirun/${TFMQ_SWEEP}" --wandb "${WANDB_MODE:-offline}"
