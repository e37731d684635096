#!/usr/bin/env bash
# One srun task of slurm/ddp.sbatch. Every Python step runs inside the image (runtime=host: in this
# node's Python), so the node needs only bash and Apptainer:
#   bash slurm/lib/ddp_task.sh stage IMAGE [JOB_ENV]                 one per node: the SIF to node-local disk
#   bash slurm/lib/ddp_task.sh LAUNCHER job EXEC_SH                  a job folder's step (its exec.sh)
#   bash slurm/lib/ddp_task.sh LAUNCHER image IMAGE gpu|cpu -- CMD...  a command by hand
# LAUNCHER srun: this task is one rank; torchrun: this task starts the node's ranks (c10d
# rendezvous on the first node), torchrun itself running in the image.
set -euo pipefail
# shellcheck source=slurm/lib/common.sh
source "${CONTAINERS_REPO:?slurm/ddp.sbatch exports CONTAINERS_REPO}/slurm/lib/common.sh"
REPO="$CONTAINERS_REPO"
if [[ "$1" == stage ]]; then
  if [[ -n "${3:-}" ]]; then
    # shellcheck source=/dev/null
    source "$3" # the job folder's job.env: its images dir and node rule, as on the batch node
  fi
  suite_here "$2"
  exit 0
fi
launcher="$1" what="$2"
shift 2
export NODE_RANK="${SLURM_NODEID:-0}"
if [[ "$launcher" == torchrun ]]; then
  # torchrun sets RANK/LOCAL_RANK/WORLD_SIZE for the ranks it starts; exec.sh puts these words
  # between the image's python and the step's module (python -m torch.distributed.run ... -m entrypoints ...)
  export SUITE_LAUNCHER="-m torch.distributed.run --nnodes=${SLURM_JOB_NUM_NODES:-1} --nproc-per-node=$LOCAL_WORLD_SIZE --rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT --rdzv-id=$SLURM_JOB_ID"
else
  # one rank per task: the values Lightning's SLURMEnvironment derives from the same SLURM_* variables
  export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID"
fi
if [[ "$what" == job ]]; then
  exec bash "$1"
fi
image="$1" kind="$2"
shift 2
[[ "${1:-}" == -- ]] && shift
suite_here "$image"
if [[ "$launcher" == torchrun ]]; then
  # "python X" runs as X under torchrun's own interpreter (the image's); anything else with --no-python
  read -r -a words <<<"$SUITE_LAUNCHER"
  if [[ "$1" == python || "$1" == python3 ]]; then set -- python "${words[@]}" "${@:2}"
  else set -- python "${words[@]}" --no-python "$@"; fi
fi
opts=()
[[ "$kind" == gpu ]] && opts=(--gpu)
suite_here_exec "${opts[@]}" -- "$@"
