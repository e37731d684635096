# shellcheck shell=bash disable=SC2034,SC2153  # SUITE_* are read by exec.sh and job.env sets them
# The library every sbatch script sources (docs/slurm.md). On a compute node it needs bash, coreutils
# and Apptainer (or Singularity) only: every Python step (composing, model staging, the apps, their
# markers) runs inside the image. With runtime=host (a laptop, a node without Apptainer) the Python
# named by $PY (default: python3 on PATH) runs them; the login node's .venv is never assumed.
# Found through $CONTAINERS_REPO or $SLURM_SUBMIT_DIR, never $0 (a batch script runs from Slurm's
# spool copy). Works under plain bash.
#
# Functions other scripts call (keep these names): suite_log, suite_die, suite_init, suite_arch,
# suite_node, suite_sif, suite_bind, suite_run_job, suite_job_here, suite_array_item;
# suite_stage/suite_exec remain for runtime=host scripts.

_SUITE_LIB="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=slurm/lib/profiles.sh
source "$_SUITE_LIB/profiles.sh"

_suite_node_name() { printf '%s' "${SLURMD_NODENAME:-$(hostname -s 2>/dev/null || echo local)}"; }

# suite_log MSG...: a timestamped line on stderr (the job's log), so stages can be timed from logs.
suite_log() {
  printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$(_suite_node_name)" "$*" >&2
}

# suite_die MSG FIX: one error line and exit 2, like the Python side.
suite_die() {
  printf 'error: %s; fix: %s\n' "$1" "${2:-see docs/slurm.md}" >&2
  exit 2
}

# suite_mark EVENT [DETAIL]: a line "epoch-seconds job event detail" in the job's timeline
# ($SUITE_TIMELINE), the timestamps the run-path benchmark reads.
suite_mark() {
  [[ -n "${SUITE_TIMELINE:-}" ]] || return 0
  printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "${SLURM_JOB_ID:-local}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}" \
    "$1" "${2:-}" >>"$SUITE_TIMELINE" 2>/dev/null || true
}

# suite_arch: this node's CPU arch in the images' spelling (amd64, arm64).
suite_arch() {
  case "$(uname -m)" in
    x86_64 | amd64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# suite_init: repository, threads from the allocation, node facts. Runs no Python.
suite_init() {
  REPO="${CONTAINERS_REPO:-${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}}"
  [[ -f "$REPO/slurm/lib/common.sh" ]] ||
    suite_die "repository not found at '$REPO'" "sbatch from the repository, or export CONTAINERS_REPO=/path/to/repo"
  export REPO CONTAINERS_REPO="$REPO"
  # runtime=host asked for explicitly (a laptop, tests): "this Python" is the checkout's .venv when
  # it runs here, as before; with a container runtime no Python of ours is used outside the image.
  if [[ -z "${PY:-}" && "${CONTAINERS_RUNTIME:-}" == host ]]; then
    if "$REPO/.venv/bin/python" -c '' 2>/dev/null; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
  fi
  if [[ -n "${PY:-}" ]]; then export PY; fi
  # Threads: what the allocation grants, not the node's core count (oversubscription kills throughput).
  local threads="${SLURM_CPUS_PER_TASK:-}"
  if [[ -z "$threads" ]]; then threads="$(nproc 2>/dev/null || echo 1)"; fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
  export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
  export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}"
  export TOKENIZERS_PARALLELISM=false
  export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
  # For runtime=host scripts (suite_stage/suite_exec): this cluster's node-local root and caches.
  if suite_profile "${CONTAINERS_CLUSTER:-laptop}" 2>/dev/null && [[ -n "$NODE_LOCAL" ]]; then
    export CONTAINERS_NODE_LOCAL_ROOT="$NODE_LOCAL" CONTAINERS_STAGED_MODELS="$SUITE_P_STAGED_MODELS" \
      CONTAINERS_STAGED_IMAGES="$SUITE_P_STAGED_IMAGES"
    local kv
    for kv in "${SUITE_P_CACHE_ENV[@]}"; do
      export "${kv?}"
      mkdir -p "${kv#*=}" 2>/dev/null || true
    done
  fi
  suite_log "node $(_suite_node_name) arch $(uname -m)" \
    "job ${SLURM_JOB_ID:-none}${SLURM_ARRAY_TASK_ID:+[$SLURM_ARRAY_TASK_ID]}" \
    "partition ${SLURM_JOB_PARTITION:-none} cpus $OMP_NUM_THREADS gpus ${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-none}}"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >&2 || true
  fi
}

# ---- node values: the one rule (docs/slurm.md "Node values") ----------------------------------
# suite_node_root: NODE_LOCAL = $SUITE_NODE_FIXED (chosen at submit), else $CONTAINERS_NODE_LOCAL,
# else the folder named by $SUITE_NODE_VAR (e.g. SLURM_TMPDIR, Slurm's per-job local disk), else
# $SUITE_NODE_DEFAULT. The Python twin is suite_core.config._node_root (same inputs, same order).
suite_node_root() {
  NODE_LOCAL="${SUITE_NODE_FIXED:-${CONTAINERS_NODE_LOCAL:-}}"
  if [[ -z "$NODE_LOCAL" && -n "${SUITE_NODE_VAR:-}" ]]; then NODE_LOCAL="${!SUITE_NODE_VAR:-}"; fi
  NODE_LOCAL="${NODE_LOCAL:-${SUITE_NODE_DEFAULT:-}}"
}

# _suite_node_ready: NODE_LOCAL is a plain, writable folder; caches made; CONTAINERS_NODE_LOCAL_ROOT set.
_suite_node_ready() {
  local where
  where="node $(_suite_node_name)"
  [[ -n "$NODE_LOCAL" ]] || suite_die "no node-local root on $where" "export CONTAINERS_NODE_LOCAL=/local/disk/\$USER"
  [[ "$NODE_LOCAL" =~ ^/[A-Za-z0-9_./+@-]*$ ]] ||
    suite_die "node-local root '$NODE_LOCAL' is not a plain absolute path (on $where)" \
      "export CONTAINERS_NODE_LOCAL=<a local folder whose name has only letters, digits and _ . / + @ ->"
  if ! mkdir -p "$NODE_LOCAL" 2>/dev/null; then
    suite_die "cannot create the node-local root $NODE_LOCAL on $where" \
      "export CONTAINERS_NODE_LOCAL=<a writable local folder> (or free the disk)"
  fi
  local probe="$NODE_LOCAL/.suite-write-probe.$$"
  if ! { : >"$probe"; } 2>/dev/null; then
    suite_die "node-local root $NODE_LOCAL is read-only or full on $where" \
      "export CONTAINERS_NODE_LOCAL=<a writable local folder with space> and resubmit"
  fi
  rm -f "$probe"
  export CONTAINERS_NODE_LOCAL_ROOT="$NODE_LOCAL"
}

# _suite_deadline: CONTAINERS_DEADLINE = epoch seconds at which this job's time ends (node value
# ${node:deadline}); recomputed per job, so a continuation never inherits its parent's.
_suite_deadline() {
  [[ -n "${SLURM_JOB_ID:-}" && "${CONTAINERS_DEADLINE_JOB:-}" != "$SLURM_JOB_ID" ]] || return 0
  export CONTAINERS_DEADLINE="" CONTAINERS_DEADLINE_JOB="$SLURM_JOB_ID"
  command -v squeue >/dev/null 2>&1 || return 0
  local left d=0 h=0 m=0 s=0 t
  t="$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null | head -1 || true)"
  [[ "$t" =~ ^[0-9:-]+$ ]] || return 0 # UNLIMITED, NOT_SET, empty
  if [[ "$t" == *-* ]]; then d="${t%%-*}" t="${t#*-}"; fi
  local -a p
  IFS=: read -r -a p <<<"$t"
  case "${#p[@]}" in
    3) h="${p[0]}" m="${p[1]}" s="${p[2]}" ;;
    2) m="${p[0]}" s="${p[1]}" ;;
    1) m="${p[0]}" ;;
  esac
  left=$((10#$d * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s))
  export CONTAINERS_DEADLINE=$(($(date +%s) + left))
}

# _suite_elf_arch FILE: the CPU a program is built for (x86_64, aarch64), from its ELF header.
_suite_elf_arch() {
  local f bytes
  f="$(readlink -f "$1" 2>/dev/null || echo "$1")"
  bytes="$(od -An -tx1 -j18 -N2 "$f" 2>/dev/null | tr -d ' \n')"
  case "$bytes" in
    3e00) echo x86_64 ;;
    b700) echo aarch64 ;;
    *) echo "" ;;
  esac
}

# _suite_check_py: a $PY the user named must run here; else one line naming both arches.
_suite_check_py() {
  [[ -n "${PY:-}" && "${SUITE_PY_OK:-}" != "$PY" ]] || return 0
  local node_arch py_arch where
  where="node $(_suite_node_name)"
  node_arch="$(uname -m)"
  local login="${SUITE_LOGIN_ARCH:-}"
  [[ "$login" == "$node_arch" || "$login" == *native* ]] && login="" # the same machine kind: say nothing
  if ! command -v "$PY" >/dev/null 2>&1; then
    suite_die "PY=$PY does not exist on $where ($node_arch${login:+; a venv made on the $login login node is not there and could not run here})" \
      "unset PY: the steps run inside the $node_arch image (runtime=apptainer); or point PY at a $node_arch Python with the toolkit"
  fi
  if ! "$PY" -c 'import hydra, omegaconf' >/dev/null 2>&1; then
    py_arch="$(_suite_elf_arch "$(command -v "$PY")")"
    if [[ -n "$py_arch" && "$py_arch" != "$node_arch" ]]; then
      suite_die "PY=$PY is built for $py_arch but $where is $node_arch" \
        "unset PY: the steps run inside the $node_arch image (runtime=apptainer); a venv made on the $py_arch login node cannot run here"
    fi
    suite_die "PY=$PY cannot run the toolkit on $where ($node_arch): no hydra-core/omegaconf there" \
      "unset PY to run the steps inside the image, or make venv on a $node_arch machine and point PY at it"
  fi
  export SUITE_PY_OK="$PY"
}

# _suite_runtime WANTED: SUITE_RUNTIME (apptainer, singularity or host), SUITE_PY, SUITE_ENV_PREFIX.
_suite_runtime() {
  local wanted="${CONTAINERS_RUNTIME:-${1:-auto}}"
  _suite_check_py
  case "$wanted" in
    apptainer | singularity)
      command -v "$wanted" >/dev/null 2>&1 ||
        suite_die "runtime=$wanted but no '$wanted' on node $(_suite_node_name)" \
          "module load $wanted in the job script, or CONTAINERS_RUNTIME=host to run in this node's Python"
      SUITE_RUNTIME="$wanted" ;;
    host) SUITE_RUNTIME=host ;;
    auto | "")
      if command -v apptainer >/dev/null 2>&1; then SUITE_RUNTIME=apptainer
      elif command -v singularity >/dev/null 2>&1; then SUITE_RUNTIME=singularity
      else SUITE_RUNTIME=host; fi ;;
    *) suite_die "unknown runtime '$wanted'" "use CONTAINERS_RUNTIME=auto, apptainer, singularity or host" ;;
  esac
  SUITE_ENV_PREFIX="APPTAINERENV_"
  [[ "$SUITE_RUNTIME" == singularity ]] && SUITE_ENV_PREFIX="SINGULARITYENV_"
  if [[ "$SUITE_RUNTIME" == host ]]; then
    SUITE_PY="${PY:-$(command -v python3 || true)}"
    [[ -n "$SUITE_PY" ]] || suite_die "runtime=host but no python3 on node $(_suite_node_name)" \
      "install Apptainer on the node (the steps then run in the image), or export PY=/path/to/python"
    if [[ -z "${PY:-}" ]]; then PY="$SUITE_PY" _suite_check_py; fi
  fi
}

# _suite_secret_name NAME: true for names like HF_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD, WANDB_API_KEY
# (suite_core.secrets.looks_secret is the Python twin; tests/slurm/test_scripts.py checks they agree).
_suite_secret_name() {
  local u="${1^^}"
  local t="${u//TOKENIZER/}"
  [[ "$t" == *TOKEN* || "$u" == *SECRET* || "$u" =~ PASSW(OR)?D || "$u" == *CREDENTIAL* ||
    "$u" =~ (^|_)KEY$ || "$u" == *APIKEY* || "$u" == *_KEY_* ]]
}

# _suite_env: SUITE_PASS (this node's allowed variables, NAME=value), SUITE_HOST_ENV, SUITE_RUNTIME_ENV.
_suite_env() {
  local name prefix
  SUITE_PASS=() SUITE_HOST_ENV=() SUITE_RUNTIME_ENV=()
  while IFS= read -r name; do
    [[ -n "$name" ]] || continue
    local keep=""
    for prefix in "${SUITE_PASS_PREFIXES[@]}"; do [[ "$name" == "$prefix"* ]] && keep=1; done
    for prefix in "${SUITE_PASS_NAMES[@]}"; do [[ "$name" == "$prefix" ]] && keep=1; done
    [[ -n "$keep" ]] && ! _suite_secret_name "$name" && SUITE_PASS+=("$name=${!name}")
  done < <(compgen -e)
  for name in "${SUITE_HOST_NAMES[@]}"; do [[ -v "$name" ]] && SUITE_HOST_ENV+=("$name=${!name}"); done
  for name in "${SUITE_RT_NAMES[@]}"; do [[ -v "$name" ]] && SUITE_RUNTIME_ENV+=("$name=${!name}"); done
  return 0
}

# suite_container_env NAME=VALUE...: SUITE_CENV = this node's allowed variables and the given ones,
# as <runtime>ENV_NAME=VALUE for `env -i` (no --env: Apptainer passes these verbatim, no CSV). Apptainer
# writes each into a script the container sources (export NAME="value"), so $, ` and \ are escaped
# (containers.launch._sourced_value is the Python twin); a CR LF cannot be carried: one error line.
suite_container_env() {
  local kv name value
  SUITE_CENV=()
  for kv in "${SUITE_PASS[@]}" "$@"; do
    name="${kv%%=*}" value="${kv#*=}"
    if [[ "$value" == *$'\r\n'* ]]; then
      suite_die "environment variable $name holds a CR LF line break, which Apptainer drops" \
        "remove the carriage return from $name"
    fi
    value="${value//\\/\\\\}"
    value="${value//\$/\\\$}"
    value="${value//\`/\\\`}"
    SUITE_CENV+=("$SUITE_ENV_PREFIX$name=$value")
  done
}

_suite_gpu_present() { [[ -e /dev/nvidiactl ]] || compgen -G '/proc/driver/nvidia/gpus/*' >/dev/null; }

# suite_node JOBDIR [gpu|cpu]: everything a step needs from this node, by the job's job.env:
# NODE_LOCAL (the rule) and its folders, the runtime, the allowed variables, --nv for GPU steps on
# GPU nodes, the time left (CONTAINERS_DEADLINE). Every failure is one line.
suite_node() {
  local job="$1" kind="${2:-cpu}" d where
  where="node $(_suite_node_name)"
  if [[ ! -f "$job/job.env" ]]; then
    suite_die "job folder $job is not visible on $where" \
      "mount the shared storage there (the run dir must be on it), or resubmit with --run-dir on a shared folder"
  fi
  # shellcheck source=/dev/null
  source "$job/job.env"
  suite_node_root
  _suite_node_ready
  suite_job_paths
  mkdir -p "${SUITE_MKDIRS[@]}" 2>/dev/null ||
    suite_die "cannot create the cache folders under $NODE_LOCAL on $where" "free the node-local disk"
  _suite_runtime "${SUITE_RUNTIME_WANTED:-auto}"
  if [[ "$SUITE_RUNTIME" != host ]]; then
    for d in "${SUITE_SHARED[@]}"; do
      [[ -d "$d" ]] || suite_die "shared folder $d is not visible on $where" \
        "mount the shared storage on the node (or set CONTAINERS_IMAGES to a folder every node sees)"
    done
  fi
  _suite_deadline
  _suite_env
  SUITE_NV=()
  if [[ "$kind" == gpu && "$SUITE_RUNTIME" != host ]] && _suite_gpu_present; then SUITE_NV=(--nv); fi
  SUITE_BINDS=()
}

# suite_bind PATH rw|ro: bind PATH at the same path, when it exists on this node (Apptainer
# refuses missing sources; a declared input that is absent here is the app's error to report).
# A path with ',' or ':' (which --bind splits at) goes through --mount, whose fields are CSV.
suite_bind() {
  [[ -e "$1" ]] || return 0
  local spec="$1:$1" q
  if [[ "$1" == *[,:]* ]]; then
    q="${1//\"/\"\"}"
    spec="type=bind,\"source=$q\",\"destination=$q\""
    [[ "${2:-rw}" == ro ]] && spec+=",ro"
    SUITE_BINDS+=(--mount "$spec")
    return 0
  fi
  [[ "${2:-rw}" == ro ]] && spec+=":ro"
  SUITE_BINDS+=(--bind "$spec")
}

# suite_sif IMAGE: print the node-local copy of IMAGE's SIF for this node's arch, staging it first:
# the pointer file <image>-<arch>.current in $SUITE_IMAGES_DIR names the SIF (no symlinks on SMB);
# the copy lands under a temporary name and is renamed; a copy whose size and mtime match the
# share's is reused (stat only); the staged pointer is written last.
suite_sif() {
  local image="$1" arch where pattern ptr target src dst need avail
  where="node $(_suite_node_name)"
  arch="$(suite_arch)"
  local arches="${SUITE_IMG_ARCHES[$image]:-}"
  if [[ -n "$arches" && " $arches " != *" $arch "* ]]; then
    local why="${SUITE_IMG_WHY[$image]:-}"
    suite_die "image $image has no $arch build${why:+ ($why)}, and $where is $arch" \
      "run this step on a node of arch $arches (a partition of that arch)"
  fi
  [[ -d "$SUITE_IMAGES_DIR" ]] || suite_die "images folder $SUITE_IMAGES_DIR is not visible on $where" \
    "mount the shared storage on the node, or export CONTAINERS_IMAGES=<a folder every node sees>"
  pattern="${SUITE_IMG_POINTER[$image]:-$image-{arch\}.current}"
  ptr="$SUITE_IMAGES_DIR/${pattern//\{arch\}/$arch}"
  [[ -f "$ptr" ]] || suite_die "no $arch SIF for image $image in $SUITE_IMAGES_DIR (no pointer file $(basename "$ptr"))" \
    "build and publish it: make build IMAGE=$image on an $arch machine (make build-arm64 IMAGE=$image for arm64)"
  IFS= read -r target <"$ptr" || true
  [[ -n "$target" && "$target" != */* ]] || suite_die "pointer file $ptr is malformed (expected one SIF file name)" \
    "republish the image (make build IMAGE=$image)"
  src="$SUITE_IMAGES_DIR/$target"
  [[ -f "$src" ]] || suite_die "pointer $ptr names $target, which does not exist in $SUITE_IMAGES_DIR" \
    "republish the image (make build IMAGE=$image) or fix the pointer"
  dst="$SUITE_STAGED_IMAGES/$target"
  mkdir -p "$SUITE_STAGED_IMAGES" 2>/dev/null || suite_die "cannot create $SUITE_STAGED_IMAGES on $where" "free the node-local disk"
  if [[ "$(stat -c '%s %Y' "$dst" 2>/dev/null)" != "$(stat -L -c '%s %Y' "$src")" ]]; then
    exec {lock}>"$dst.lock" # array tasks on one node: the first copies, the others wait
    command -v flock >/dev/null 2>&1 && flock "$lock"
    if [[ "$(stat -c '%s %Y' "$dst" 2>/dev/null)" != "$(stat -L -c '%s %Y' "$src")" ]]; then
      need="$(stat -L -c %s "$src")"
      avail="$(($(df -Pk "$SUITE_STAGED_IMAGES" | awk 'NR==2 {print $4}') * 1024))"
      ((need < avail)) || suite_die "node-local disk is full: $target needs $need bytes, $SUITE_STAGED_IMAGES has $avail free on $where" \
        "free space there, or export CONTAINERS_NODE_LOCAL=<a local folder with space>"
      suite_log "staging $src -> $SUITE_STAGED_IMAGES"
      local tmp="$SUITE_STAGED_IMAGES/.$target.$$.part"
      if ! cp "$src" "$tmp" 2>/dev/null || ! touch -r "$src" "$tmp"; then
        rm -f "$tmp"
        suite_die "copying $src to $SUITE_STAGED_IMAGES failed on $where (disk full or share gone)" \
          "check free space on the node-local disk and that the share is mounted, then resubmit"
      fi
      mv -f "$tmp" "$dst"
      printf '%s\n' "$target" >"$SUITE_STAGED_IMAGES/.ptr.$$" && mv -f "$SUITE_STAGED_IMAGES/.ptr.$$" "$SUITE_STAGED_IMAGES/$(basename "$ptr")"
    fi
    exec {lock}>&-
  fi
  printf '%s\n' "$dst"
}

# ---- the step runner -------------------------------------------------------------------------
# suite_run_job JOBDIR [key=value ...]: run a job folder written by submit: every image of the job
# staged first, then the models its apps declare (stage.sh, inside the image), then each step's
# exec.sh in order. The first failing step stops the job with its exit code; exit 75 (time is
# up, work remains) or USR1 (sbatch --signal=B:USR1@N) chains a continuation of the same job
# (afterany); after exit 75 this one ends cleanly.
suite_run_job() {
  local job="$1" img step rc=0 task="${SLURM_ARRAY_TASK_ID:-}"
  shift
  suite_node "$job" cpu
  SUITE_TIMELINE="$job/timeline${task:+.$task}.tsv"
  # sbatch --signal=B:USR1@SECONDS (a job's sbatch_args): chain the continuation before the limit
  # kills the step; the continuation resumes what has no completion marker.
  _SUITE_CHAINED=""
  trap 'suite_log "time limit near (USR1)"; suite_continue "$job"' USR1
  if [[ -n "${_SUITE_EARLY_USR1:-}" ]]; then  # it came before this handler (the sbatch script noted it)
    suite_log "time limit near (USR1, before the job's handler was set)"
    suite_continue "$job"
  fi
  suite_mark job_start "node $(_suite_node_name) runtime $SUITE_RUNTIME"
  if [[ "$SUITE_RUNTIME" != host ]]; then
    for img in "${!SUITE_IMG_ARCHES[@]}"; do suite_sif "$img" >/dev/null; done
  fi
  suite_mark sifs_ready
  if ((${#SUITE_STAGED_PATHS[@]})); then
    # The staging step's last verdict, keyed by the stats (path, size, mtime in ns) of every source
    # and staged file: while none changed, the copy is current and no container needs to start.
    local stamp listing
    stamp="$NODE_LOCAL/.suite-stage/$(printf '%s\n' "${SUITE_STAGED_PATHS[@]}" | cksum | cut -d' ' -f1).stamp"
    listing="$(_suite_listing "${SUITE_STAGED_PATHS[@]}")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$listing" ]]; then
      suite_log "models of job $(basename "$job"): unchanged since they were staged (stat only)"
    else
      suite_log "staging the models of job $(basename "$job") -> $NODE_LOCAL"
      bash "$job/stage.sh" || suite_die "staging the models of job $(basename "$job") failed (exit $?)" \
        "read the error line above; nothing half-staged is trusted by a rerun"
      mkdir -p "$(dirname "$stamp")"
      _suite_listing "${SUITE_STAGED_PATHS[@]}" >"$stamp.$$" && mv -f "$stamp.$$" "$stamp"
    fi
  fi
  suite_mark models_ready
  local -a extra=("$@")
  if [[ -n "${CONTAINERS_ARRAY_MANIFEST:-}" ]]; then
    local item
    item="$(suite_array_item "$CONTAINERS_ARRAY_MANIFEST")"
    suite_log "array task ${task:-0} item: $item"
    extra+=("array_item=$item")
  fi
  for step in "${SUITE_STEPS[@]}"; do
    local -a report=()
    [[ -n "$task" ]] && report=("report_path=$job/steps/$step/run_report.$task.json")
    suite_log "step $step of job $(basename "$job")"
    suite_mark step_start "$step"
    # in the background and waited for: a trapped signal (USR1 near the time limit) interrupts wait
    bash "$job/steps/$step/exec.sh" "${report[@]}" "${extra[@]}" &
    local pid=$!
    rc=0
    wait "$pid" || rc=$?
    while kill -0 "$pid" 2>/dev/null; do
      rc=0
      wait "$pid" || rc=$?
    done
    suite_mark step_end "$step $rc"
    if ((rc == 75)); then
      suite_log "step $step stopped before the time limit with work left"
      suite_continue "$job"
      return 0
    fi
    if ((rc != 0)); then
      # the step printed its own error line; this says which step and how to rerun
      suite_log "step $step of job $(basename "$job") failed with exit code $rc; the later steps did not run;" \
        "report $job/steps/$step/run_report${task:+.$task}.json; rerun the job: sbatch $REPO/slurm/run_stage.sbatch $job"
      return "$rc"
    fi
  done
  suite_mark job_end
  suite_log "job $(basename "$job") done"
}

# _suite_listing PATH...: one checksum over every file's path, size and mtime (ns) under PATHs.
_suite_listing() {
  { find "$@" -printf '%p %s %T@\n' 2>/dev/null || true; } | sort | cksum
}

# suite_continue JOBDIR: resubmit this job (same array index) to start after this one ends.
suite_continue() {
  local job="$1" hop="${CONTAINERS_CONTINUATION:-0}" jid dep
  local -a args arr=()
  [[ -z "${_SUITE_CHAINED:-}" ]] || return 0 # once per job (USR1 and exit 75 may both come)
  _SUITE_CHAINED=1
  if [[ -z "${SLURM_JOB_ID:-}" || ! -f "$job/sbatch.args" ]]; then
    suite_log "not a submitted Slurm job: rerun $job by hand to continue"
    return 0
  fi
  if ((hop >= ${CONTAINERS_MAX_CONTINUATIONS:-20})); then
    suite_log "continuation limit (${CONTAINERS_MAX_CONTINUATIONS:-20}) reached: resubmit by hand"
    return 0
  fi
  mapfile -t args <"$job/sbatch.args"
  dep="afterany:$SLURM_JOB_ID"
  if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    dep="afterany:${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    arr=(--array="$SLURM_ARRAY_TASK_ID")
  fi
  local i
  for i in "${!args[@]}"; do
    [[ "${args[$i]}" == --export=* ]] && args[i]="${args[$i]},CONTAINERS_CONTINUATION=$((hop + 1))"
  done
  if jid="$(sbatch --parsable "${arr[@]}" --dependency="$dep" "${args[@]}")"; then
    suite_log "job $(basename "$job") continues in job ${jid%%;*} (continuation $((hop + 1)))"
  else
    suite_log "continuation sbatch failed: rerun $job by hand"
  fi
}

# ---- scripts that run their own steps (no job folder from submit) ----------------------------
# suite_here IMAGE: the cluster profile's roots (CONTAINERS_CLUSTER), the node rule, the runtime
# and this node's allowed variables; with a container runtime, IMAGE's SIF for this node's arch is
# staged to node-local disk (SUITE_SIF). Then suite_here_exec runs each step in it.
suite_here() {
  local image="$1" cluster="${CONTAINERS_CLUSTER:-laptop}"
  suite_profile "$cluster" || suite_die "unknown cluster '$cluster'" "export CONTAINERS_CLUSTER=torch, dgx_spark or laptop"
  _suite_node_ready
  # a job folder's job.env, sourced first, wins (its images dir, node root and image facts)
  SUITE_IMAGES_DIR="${SUITE_IMAGES_DIR:-$SUITE_P_IMAGES}" SUITE_STAGED_IMAGES="$SUITE_P_STAGED_IMAGES"
  declare -gA SUITE_IMG_POINTER SUITE_IMG_ARCHES SUITE_IMG_WHY
  _suite_runtime "${SUITE_RUNTIME_WANTED:-auto}"
  _suite_env
  SUITE_HERE_VARS=("PYTHONPATH=$REPO" PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1 "${SUITE_P_CACHE_ENV[@]}")
  SUITE_SIF=""
  if [[ "$SUITE_RUNTIME" != host ]]; then SUITE_SIF="$(suite_sif "$image")"; fi
}

# _suite_covered PATH: PATH is a bind source already, or lies under one.
_suite_covered() {
  local i src
  for ((i = 1; i < ${#SUITE_BINDS[@]}; i += 2)); do
    src="${SUITE_BINDS[$i]%%:*}"
    [[ "$1" == "$src" || "$1" == "${src%/}/"* ]] && return 0
  done
  return 1
}

# suite_here_exec [--gpu] [--bind SRC:DST[:ro]]... -- CMD...: run CMD in the image suite_here
# staged, with the repository, scratch and node-local root bound (models read-only), the
# allowed variables and PYTHONPATH=$REPO; --nv only with --gpu on a node with a GPU. With
# runtime=host CMD runs here, a leading `python` being $SUITE_PY (checked to run on this node).
suite_here_exec() {
  local -a nv=() extra=()
  local spec d
  while [[ $# -gt 0 && "$1" != -- ]]; do
    case "$1" in
      --gpu) if _suite_gpu_present; then nv=(--nv); fi ;;
      --bind) extra+=("$2") && shift ;;
      *) suite_die "suite_here_exec: unknown option '$1'" "use --gpu, --bind SRC:DST[:ro], then -- CMD" ;;
    esac
    shift
  done
  [[ "${1:-}" == -- ]] && shift
  _suite_env # variables the script exported since suite_here
  if [[ "$SUITE_RUNTIME" == host ]]; then
    if [[ "$1" == python || "$1" == python3 ]]; then set -- "$SUITE_PY" "${@:2}"; fi
    (cd "$REPO" && exec env -i "${SUITE_HOST_ENV[@]}" "${SUITE_PASS[@]}" "${SUITE_HERE_VARS[@]}" "$@")
    return
  fi
  SUITE_BINDS=()
  for d in "$REPO" "$SUITE_P_SCRATCH" "$NODE_LOCAL"; do _suite_covered "$d" || suite_bind "$d" rw; done
  _suite_covered "$SUITE_P_MODELS" || suite_bind "$SUITE_P_MODELS" ro
  for spec in "${extra[@]}"; do
    d="${spec%%:*}"
    [[ "$spec" != *,* ]] || suite_die "path in bind '$spec' contains ','" "Apptainer cannot bind such paths; rename or move the folder"
    if [[ -e "$d" ]] && ! _suite_covered "$d"; then SUITE_BINDS+=(--bind "$spec"); fi
  done
  suite_container_env "${SUITE_HERE_VARS[@]}"
  env -i "${SUITE_RUNTIME_ENV[@]}" "${SUITE_CENV[@]}" \
    "$SUITE_RUNTIME" exec "${nv[@]}" --cleanenv --no-home "${SUITE_BINDS[@]}" --pwd "$REPO" "$SUITE_SIF" "$@"
}

# suite_job_here IMAGE PIPELINE [submit arguments...]: what the plain sbatch scripts do. Compose the
# pipeline's job for this allocation once, inside IMAGE (python -m containers submit --here), then
# run it with suite_run_job. The cluster profile (CONTAINERS_CLUSTER) says where images live.
suite_job_here() {
  local image="$1" job
  shift
  suite_here "$image"
  job="$(suite_here_exec -- python -m containers submit "$@" --here)" || exit $?
  job="${job##*$'\n'}"
  suite_log "job folder $job"
  suite_run_job "$job"
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

# ---- runtime=host helpers (scripts that drive the toolkit in this node's Python) ---------------
# suite_stage SRC DST [args...] and suite_exec IMAGE [...] -- CMD: python -m containers stage/exec
# in $PY (checked: it must run here). Prefer job folders (suite_job_here) on nodes with Apptainer.
_suite_host_py() {
  SUITE_PY="${PY:-$(command -v python3 || true)}"
  [[ -n "$SUITE_PY" ]] || suite_die "no python3 on node $(_suite_node_name)" "export PY=/path/to/python"
  PY="$SUITE_PY" _suite_check_py
}

suite_stage() {
  _suite_host_py
  "$SUITE_PY" -m containers stage "$@"
}

suite_exec() {
  _suite_host_py
  "$SUITE_PY" -m containers exec "$@"
}
