#!/usr/bin/env bash
# The ablation sweep on the embedded benchmark, then its report:
#   experiments/ablation.sh                 # default size (see conf/experiment/ablation.yaml)
#   experiments/ablation.sh eval.num_samples=2000 seed=0,1,2,3,4   # the `full` variant for bigger machines
# Extra arguments are Hydra overrides of the sweep. TFMQ_JOBS sets the parallel jobs (default 2).
set -euo pipefail
export TFMQ_SWEEP="${TFMQ_SWEEP:-ablation_$(date +%Y-%m-%d_%H-%M-%S)}"
tfmq-exp --multirun +experiment=ablation "$@"
tfmq-report "multirun/${TFMQ_SWEEP}" --wandb "${WANDB_MODE:-offline}"
