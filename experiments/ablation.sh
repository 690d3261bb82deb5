#!/usr/bin/env bash
# The ablation sweep on the embedded benchmark, then its report:
#   experiments/ablation.sh                                  # default size (conf/experiment/ablation.yaml)
#   EXPERIMENT=ablation_full experiments/ablation.sh         # the `full` variant for bigger machines
#   experiments/ablation.sh model=digits quant=w4a8,w8a4     # extra arguments override the sweep
# TFMQ_JOBS sets the parallel jobs (default 2); TFMQ_SWEEP names the sweep (and its W&B group).
set -euo pipefail
export TFMQ_SWEEP="${TFMQ_SWEEP:-ablation_$(date +%Y-%m-%d_%H-%M-%S)}"
tfmq-exp --multirun "+experiment=${EXPERIMENT:-ablation}" "$@"
tfmq-report "multirun/${TFMQ_SWEEP}" --wandb "${WANDB_MODE:-offline}"
