# shellcheck shell=bash
# FlowPortal job preparation, shared by slurm/flowportal_cat.sbatch and flowportal_batch.sbatch.
# Source after suite_init.

# flowportal_prepare IMAGE: the image's SIF for this node's arch (container runtimes) and the model
# set staged to node-local disk, every Python step inside the image (suite_here/suite_here_exec;
# with runtime=host in this node's Python); then FP_EXEC_ARGS (options for suite_exec, runtime=host)
# and FP_APP_ARGS (app overrides). Sets FP_STAGING_S to the seconds staging took (the batch report
# shows it per task).
#   FLOWPORTAL_MODELS    the shared model set (default: <paths.models>/flowportal); a status-quo
#                        pretrained_models/ tree works too with flowportal.layout=status_quo
#   FLOWPORTAL_CHECKOUT  a FlowPortal checkout outside the image: bound read-only, used by the app
flowportal_prepare() {
  local image="$1" models="${FLOWPORTAL_MODELS:-}" t0=$SECONDS
  FP_IMAGE="$image"
  suite_here "$image"
  if [[ -z "$models" ]]; then
    models="$(suite_here_exec -- python -c 'from suite_core.config import compose; print(compose([]).paths.models)')" ||
      suite_die "cannot compose the config to find the model set" "export FLOWPORTAL_MODELS=/shared/models/flowportal"
    models="${models##*$'\n'}/flowportal"
  fi
  [[ -d "$models" ]] || suite_die "model set '$models' does not exist" \
    "put Wan2.1-Fun-V1.1-1.3B-Control, IC-Light/, MatAnyone/, Annotators/, hf/hub, torch/ there (docs/flowportal.md)"
  suite_log "staging $models -> $CONTAINERS_STAGED_MODELS (node-local)"
  suite_here_exec --bind "$models:$models:ro" -- python -m containers stage "$models" "$CONTAINERS_STAGED_MODELS" ||
    suite_die "staging the model set $models failed (exit $?)" "read the error line above, then resubmit"
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

# flowportal_input_binds APP OVERRIDES...: runtime=host only (suite_exec): add a --bind for every
# input/output path the app's resolved config declares (binds_ro / binds_rw) to FP_EXEC_ARGS. In a
# container runtime the job folder's exec.sh binds them (flowportal_job_here).
flowportal_input_binds() {
  local out line
  out="$(suite_here_exec -- python -m entrypoints.flowportal.binds "$@")" || exit 2
  while IFS= read -r line; do
    [[ -n "$line" ]] && FP_EXEC_ARGS+=("$line")
  done <<<"$out"
}

# flowportal_job_here APP RUN_DIR OVERRIDES...: with a container runtime, compose APP for this
# allocation once inside the image (python -m containers submit app --here, the plain scripts'
# code path) into RUN_DIR; prints the step's exec.sh, which binds what the app declares.
flowportal_job_here() {
  local app="$1" run_dir="$2" job a groups=""
  local -a rest=()
  shift 2
  for a in "$@"; do  # preset= picks a config group: the step composes with it (app settings get ++)
    if [[ "$a" == preset=* ]]; then
      [[ "${a#preset=}" =~ ^[A-Za-z0-9_-]+$ ]] || suite_die "preset '${a#preset=}' is not a plain name" \
        "FLOWPORTAL_PRESET=dgx_fast or quality (hydra_conf/preset/)"
      groups+="${groups:+,}'$a'"
    else
      rest+=("$a")
    fi
  done
  job="$(suite_here_exec -- python -m containers submit app \
    "pipeline.modes.one.run.steps=[{app:$app,image:$FP_IMAGE,overrides:[$groups]}]" \
    "++pipeline.modes.one.run.gpu=true" "++pipeline.modes.one.run.partition=${SLURM_JOB_PARTITION:-here}" \
    "${rest[@]}" --run-dir "$run_dir" --here)" || exit $?
  job="${job##*$'\n'}"
  printf '%s\n' "$job/steps/01-$app/exec.sh"
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
