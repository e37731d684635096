# shellcheck shell=bash
# FlowPortal job preparation, shared by slurm/flowportal_cat.sbatch and flowportal_batch.sbatch.
# Source after suite_init.

# flowportal_prepare IMAGE: stage the model set (and the image's SIF, when a container runtime
# exists) to node-local disk, then set FP_EXEC_ARGS (for suite_exec) and FP_APP_ARGS (app overrides).
# Sets FP_STAGING_S to the seconds staging took (the batch report shows it per task).
#   FLOWPORTAL_MODELS    the shared model set (default: <paths.models>/flowportal); a status-quo
#                        pretrained_models/ tree works too with flowportal.layout=status_quo
#   FLOWPORTAL_CHECKOUT  a FlowPortal checkout outside the image: bound read-only, used by the app
flowportal_prepare() {
  local image="$1" models="${FLOWPORTAL_MODELS:-}" t0=$SECONDS
  if [[ -z "$models" ]]; then
    models="$("$PY" -c 'from suite_core.config import compose; print(compose([]).paths.models)')/flowportal" ||
      suite_die "cannot compose the config to find the model set" "export FLOWPORTAL_MODELS=/shared/models/flowportal"
  fi
  [[ -d "$models" ]] || suite_die "model set '$models' does not exist" \
    "put Wan2.1-Fun-V1.1-1.3B-Control, IC-Light/, MatAnyone/, Annotators/, hf/hub, torch/ there (docs/flowportal.md)"
  suite_log "staging $models -> $CONTAINERS_STAGED_MODELS (node-local)"
  suite_stage "$models" "$CONTAINERS_STAGED_MODELS"
  if [[ "${CONTAINERS_RUNTIME:-auto}" != host ]] && { command -v apptainer || command -v singularity; } >/dev/null 2>&1; then
    suite_stage --image "$image" -q   # the SIF for this node's arch, to node-local disk
  fi
  # shellcheck disable=SC2034  # read by the sbatch scripts
  FP_STAGING_S=$((SECONDS - t0))
  FP_EXEC_ARGS=("$image" --gpu)
  # the staged copy keeps its basename: TeaCache is chosen by a substring of the Wan directory name
  FP_APP_ARGS=("flowportal.models=$CONTAINERS_STAGED_MODELS/$(basename "$models")")
  if [[ -n "${FLOWPORTAL_CHECKOUT:-}" ]]; then
    FP_EXEC_ARGS+=(--bind "$FLOWPORTAL_CHECKOUT:$FLOWPORTAL_CHECKOUT:ro")
    FP_APP_ARGS+=("flowportal.checkout=$FLOWPORTAL_CHECKOUT")
  fi
}

# flowportal_input_binds APP OVERRIDES...: add a --bind for every input/output path the app's
# resolved config declares (binds_ro / binds_rw) to FP_EXEC_ARGS: inputs outside scratch, the
# repository and the models are otherwise invisible inside the container.
flowportal_input_binds() {
  local out line
  out="$("$PY" -m entrypoints.flowportal.binds "$@")" || exit 2
  while IFS= read -r line; do
    [[ -n "$line" ]] && FP_EXEC_ARGS+=("$line")
  done <<<"$out"
}

# flowportal_to_seconds T: Slurm's [days-]hh:mm:ss | hh:mm:ss | mm:ss | minutes -> seconds;
# nothing for UNLIMITED, NOT_SET, INVALID or anything else (then no deadline is set).
flowportal_to_seconds() {
  local t="$1" d=0 h=0 m=0 s=0
  local -a p
  [[ "$t" =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]] || return 0
  if [[ "$t" == *-* ]]; then d="${t%%-*}"; t="${t#*-}"; fi
  IFS=: read -r -a p <<<"$t"
  case "${#p[@]}" in
    3) h="${p[0]}" m="${p[1]}" s="${p[2]}" ;;
    2) if [[ "$d" != 0 ]]; then h="${p[0]}" m="${p[1]}"; else m="${p[0]}" s="${p[1]}"; fi ;;
    1) if [[ "$d" != 0 ]]; then h="${p[0]}"; else m="${p[0]}"; fi ;;
  esac
  echo $((10#$d * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s))
}

# flowportal_sbatch_opts_from_job LINE: the resource options of a job, one per line, from its
# `scontrol -o show job` line, so a continuation asks for what the submitted task had
# (partition, account, QOS, time, memory, CPUs, GPUs, features, reservation, job name, logs).
# Slurm does not show --signal: FLOWPORTAL_SIGNAL (e.g. B:USR1@300) carries it.
flowportal_sbatch_opts_from_job() {
  local line=" $1 " key val
  local -A f=()
  for key in JobName Partition Account QOS TimeLimit MinMemoryNode MinMemoryCPU CPUs/Task TresPerNode \
    Features Reservation StdOut StdErr ArrayJobId ArrayTaskId; do
    if [[ "$line" =~ [[:space:]]${key}=([^[:space:]]*) ]]; then f[$key]="${BASH_REMATCH[1]}"; fi
  done
  local ids="${f[ArrayJobId]:-}_${f[ArrayTaskId]:-}" name="${f[JobName]:-}"
  [[ "$ids" == _* || "$ids" == *_ ]] && ids=_
  [[ -n "$name" ]] && echo "--job-name=$name"
  for key in Partition Account QOS Reservation; do
    val="${f[$key]:-}"
    [[ -n "$val" && "$val" != "(null)" ]] && echo "--${key,,}=$val"
  done
  val="${f[TimeLimit]:-}"
  [[ -n "$val" && "$val" != UNLIMITED && "$val" != Partition_Limit ]] && echo "--time=$val"
  val="${f[MinMemoryNode]:-}"
  [[ -n "$val" && "$val" != 0 ]] && echo "--mem=$val"
  val="${f[MinMemoryCPU]:-}"
  [[ -n "$val" && "$val" != 0 ]] && echo "--mem-per-cpu=$val"
  val="${f[CPUs/Task]:-}"
  [[ -n "$val" && "$val" != N/A ]] && echo "--cpus-per-task=$val"
  val="${f[TresPerNode]:-}"
  if [[ -n "$val" && "$val" != "(null)" ]]; then
    val="${val#gres:}" val="${val#gres/}"
    echo "--gres=${val//=/:}"
  fi
  val="${f[Features]:-}"
  [[ -n "$val" && "$val" != "(null)" ]] && echo "--constraint=$val"
  for key in StdOut StdErr; do
    val="${f[$key]:-}"
    [[ -n "$val" && "$val" != /dev/null ]] || continue
    # back to a pattern in the file name: this task's ids would name the continuation's log after it
    [[ "$ids" != _ && "$val" == */* ]] && val="${val%/*}/$(name="${val##*/}"; echo "${name//${ids}/%A_%a}")"
    if [[ "$key" == StdOut ]]; then echo "--output=$val"; else echo "--error=$val"; fi
  done
  [[ -n "${FLOWPORTAL_SIGNAL:-}" ]] && echo "--signal=$FLOWPORTAL_SIGNAL"
  return 0
}
