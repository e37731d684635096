# shellcheck shell=bash
# The library every sbatch script sources (see docs/slurm.md). Found through $CONTAINERS_REPO or
# $SLURM_SUBMIT_DIR, never $0: a batch script runs from Slurm's spool copy. Works under plain bash.

# suite_log MSG...: a timestamped line on stderr (the job's log), so stages can be timed from logs.
suite_log() {
  printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${SLURMD_NODENAME:-$(hostname -s 2>/dev/null || echo local)}" "$*" >&2
}

# suite_die MSG FIX: one error line and exit 2, like the Python side.
suite_die() {
  printf 'error: %s; fix: %s\n' "$1" "${2:-see docs/slurm.md}" >&2
  exit 2
}

# suite_init: repository, Python, threads from the allocation, caches on node-local disk, node facts.
suite_init() {
  REPO="${CONTAINERS_REPO:-${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}}"
  [[ -f "$REPO/slurm/lib/common.sh" ]] ||
    suite_die "repository not found at '$REPO'" "sbatch from the repository, or export CONTAINERS_REPO=/path/to/repo"
  export REPO CONTAINERS_REPO="$REPO"
  if [[ -z "${PY:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
  fi
  [[ -n "$PY" ]] || suite_die "no python3 on this node" "module load python, or make venv in $REPO"
  export PY
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  # Threads: what the allocation grants, not the node's core count (oversubscription kills throughput).
  local threads="${SLURM_CPUS_PER_TASK:-}"
  if [[ -z "$threads" ]]; then threads="$(nproc 2>/dev/null || echo 1)"; fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
  export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
  export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}"
  export TOKENIZERS_PARALLELISM=false
  export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
  # Caches (HF, torch, Triton, Inductor, PaddleX) on node-local disk: on shared storage they race.
  local assignments
  assignments="$("$PY" -m containers node-env)" || suite_die "cannot set up node-local caches" \
    "set CONTAINERS_NODE_LOCAL to a writable local folder"
  eval "$assignments"
  local arch gpus
  arch="$(uname -m)"
  gpus="${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-none}}"
  suite_log "node ${SLURMD_NODENAME:-$(hostname -s 2>/dev/null || echo local)} arch $arch" \
    "job ${SLURM_JOB_ID:-none}${SLURM_ARRAY_TASK_ID:+[$SLURM_ARRAY_TASK_ID]}" \
    "partition ${SLURM_JOB_PARTITION:-none} cpus $OMP_NUM_THREADS gpus $gpus"
  suite_log "repo $REPO python $PY node-local $CONTAINERS_NODE_LOCAL_ROOT"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >&2 || true
  fi
}

# suite_stage SRC DST [args...]: copy to node-local disk (locked per node, manifest-verified).
suite_stage() {
  "$PY" -m containers stage "$@"
}

# suite_exec IMAGE [--gpu|--cpu] [overrides...] -- CMD...: run CMD in the image (runtime from
# $CONTAINERS_RUNTIME: auto, apptainer, singularity or host).
suite_exec() {
  "$PY" -m containers exec "$@"
}

# suite_array_item MANIFEST: the line of MANIFEST this array task handles (0-based task id).
suite_array_item() {
  local manifest="$1" idx="${SLURM_ARRAY_TASK_ID:-0}"
  [[ -r "$manifest" ]] || suite_die "array manifest '$manifest' cannot be read" "check the path"
  local item
  item="$(grep -v '^[[:space:]]*$' "$manifest" | sed -n "$((idx + 1))p")"
  [[ -n "$item" ]] || suite_die "array task $idx has no line in $manifest" "submit --array=0-(lines-1)"
  printf '%s\n' "$item"
}
