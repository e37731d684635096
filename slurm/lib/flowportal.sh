# shellcheck shell=bash
# FlowPortal job preparation, shared by slurm/flowportal_cat.sbatch and flowportal_batch.sbatch.
# Source after suite_init.

# flowportal_prepare IMAGE: stage the model set (and the image's SIF, when a container runtime
# exists) to node-local disk, then set FP_EXEC_ARGS (for suite_exec) and FP_APP_ARGS (app overrides).
#   FLOWPORTAL_MODELS    the shared model set (default: <paths.models>/flowportal)
#   FLOWPORTAL_CHECKOUT  a FlowPortal checkout outside the image: bound read-only, used by the app
flowportal_prepare() {
  local image="$1" models="${FLOWPORTAL_MODELS:-}"
  if [[ -z "$models" ]]; then
    models="$("$PY" -c 'from containers.config import compose; print(compose([]).paths.models)')/flowportal" ||
      suite_die "cannot compose the config to find the model set" "export FLOWPORTAL_MODELS=/shared/models/flowportal"
  fi
  [[ -d "$models" ]] || suite_die "model set '$models' does not exist" \
    "put Wan2.1-Fun-V1.1-1.3B-Control, IC-Light/, MatAnyone/, Annotators/, hf/hub, torch/ there (docs/flowportal.md)"
  suite_log "staging $models -> $CONTAINERS_STAGED_MODELS (node-local)"
  suite_stage "$models" "$CONTAINERS_STAGED_MODELS"
  if [[ "${CONTAINERS_RUNTIME:-auto}" != host ]] && { command -v apptainer || command -v singularity; } >/dev/null 2>&1; then
    suite_stage --image "$image" -q   # the SIF for this node's arch, to node-local disk
  fi
  FP_EXEC_ARGS=("$image" --gpu)
  # the staged copy keeps its basename: TeaCache is chosen by a substring of the Wan directory name
  FP_APP_ARGS=("flowportal.models=$CONTAINERS_STAGED_MODELS/$(basename "$models")")
  if [[ -n "${FLOWPORTAL_CHECKOUT:-}" ]]; then
    FP_EXEC_ARGS+=(--bind "$FLOWPORTAL_CHECKOUT:$FLOWPORTAL_CHECKOUT:ro")
    FP_APP_ARGS+=("flowportal.checkout=$FLOWPORTAL_CHECKOUT")
  fi
}
