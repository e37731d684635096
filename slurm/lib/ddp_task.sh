#!/usr/bin/env bash
# One srun task of slurm/ddp.sbatch: one rank (launcher srun) or one node's torchrun (launcher
# torchrun), started in the image through `python -m containers exec` (--nv only for GPU jobs).
#   bash slurm/lib/ddp_task.sh LAUNCHER IMAGE [--gpu|--cpu] -- CMD...
set -euo pipefail
launcher="$1"
shift
exec_args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  exec_args+=("$1")
  shift
done
shift
export NODE_RANK="${SLURM_NODEID:-0}"
if [[ "$launcher" == torchrun ]]; then
  # torchrun sets RANK/LOCAL_RANK/WORLD_SIZE for the ranks it starts; c10d rendezvous on the first node.
  # "python X" runs as X under torchrun's own interpreter (the image's); anything else with --no-python.
  if [[ "$1" == python || "$1" == python3 ]]; then shift; else set -- --no-python "$@"; fi
  exec "$PY" -m containers exec "${exec_args[@]}" -- python -m torch.distributed.run \
    --nnodes="${SLURM_JOB_NUM_NODES:-1}" --nproc-per-node="$LOCAL_WORLD_SIZE" \
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" "$@"
fi
# One rank per task: the values Lightning's SLURMEnvironment derives from the same SLURM_* variables.
export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID"
exec "$PY" -m containers exec "${exec_args[@]}" -- "$@"
