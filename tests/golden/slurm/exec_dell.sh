#!/usr/bin/env bash
# newsbag, job infer, step 3: dell in image mineru-dell-py310 (GPU)
# Written by `python -m containers submit` (docs/slurm.md, "What submit writes").
# Runs as is on a compute node: bash exec.sh [key=value ...]. suite_node applies the node rule
# (NODE_LOCAL, runtime, this node's allowed variables); suite_bind binds a source that exists.
set -euo pipefail
source <REPO>/slurm/lib/common.sh
suite_node <RUN>/jobs/infer gpu
vars=(
  CONTAINERS_CLUSTER=torch
  CONTAINERS_REPO=<REPO>
  HF_DATASETS_OFFLINE=1
  HF_HOME="$NODE_LOCAL"/cache/hf
  HF_HUB_OFFLINE=1
  MPLCONFIGDIR="$NODE_LOCAL"/cache/matplotlib
  PADDLEOCR_DISABLE_AUTO_LOGGING_CONFIG=1
  PADDLE_PDX_CACHE_HOME="$NODE_LOCAL"/cache/paddlex
  PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK=True
  PYTHONNOUSERSITE=1
  PYTHONPATH=<REPO>
  PYTHONUNBUFFERED=1
  TORCHINDUCTOR_CACHE_DIR="$NODE_LOCAL"/cache/inductor
  TORCH_HOME="$NODE_LOCAL"/cache/torch
  TRANSFORMERS_OFFLINE=1
  TRITON_CACHE_DIR="$NODE_LOCAL"/cache/triton
  XDG_CACHE_HOME="$NODE_LOCAL"/cache
)
cmd=(python -m entrypoints dell --config-path <RUN>/jobs/infer/steps/03-dell --config-name config "$@")
# slurm/lib/ddp_task.sh (torchrun) puts its launcher's words between python and the module
if [[ -n "${SUITE_LAUNCHER:-}" ]]; then read -r -a launch <<<"$SUITE_LAUNCHER" && cmd=("${cmd[0]}" "${launch[@]}" "${cmd[@]:1}"); fi
if [[ "$SUITE_RUNTIME" == host ]]; then
  cd <REPO>
  exec env -i "${SUITE_HOST_ENV[@]}" "${SUITE_PASS[@]}" "${vars[@]}" "$SUITE_PY" "${cmd[@]:1}"
fi
suite_bind <ROOT>/scratch rw
suite_bind "$NODE_LOCAL" rw
suite_bind <ROOT>/shared/models ro
suite_bind <REPO> rw
suite_bind "$NODE_LOCAL"/models ro
sif="$(suite_sif mineru-dell-py310)"
suite_container_env "${vars[@]}"
exec env -i "${SUITE_RUNTIME_ENV[@]}" "${SUITE_CENV[@]}" \
  "$SUITE_RUNTIME" exec "${SUITE_NV[@]}" --cleanenv --no-home "${SUITE_BINDS[@]}" --pwd <REPO> "$sif" "${cmd[@]}"
