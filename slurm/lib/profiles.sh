# shellcheck shell=bash disable=SC2034
# Generated from hydra_conf/cluster/*.yaml, hydra_conf/paths/ and containers/launch.py by
# containers.jobdir.profiles_sh; tests/slurm/test_scripts.py checks it is current (regenerate
# with UPDATE_GOLDEN=1). Read by slurm/lib/common.sh before any Python can run on a node.

# suite_profile CLUSTER: the cluster's roots, with the same environment overrides as hydra_conf;
# applies the node rule (suite_node_root) for NODE_LOCAL.
suite_profile() {
  case "$1" in
    dgx_spark)
      SUITE_NODE_DEFAULT="/mnt/nvme/${USER:-nobody}"
      SUITE_NODE_VAR=""
      SUITE_LOGIN_ARCH="x86_64"
      suite_node_root
      SUITE_P_SHARED="${CONTAINERS_SHARED_ROOT:-/mnt/shared/${USER:-nobody}/gpu-image-suite}"
      SUITE_P_SCRATCH="${CONTAINERS_SCRATCH:-${CONTAINERS_SHARED_ROOT:-/mnt/shared/${USER:-nobody}/gpu-image-suite}/scratch}"
      SUITE_P_RUNS="${CONTAINERS_SCRATCH:-${CONTAINERS_SHARED_ROOT:-/mnt/shared/${USER:-nobody}/gpu-image-suite}/scratch}/runs"
      SUITE_P_IMAGES="${CONTAINERS_IMAGES:-${CONTAINERS_SHARED_ROOT:-/mnt/shared/${USER:-nobody}/gpu-image-suite}/images}"
      SUITE_P_MODELS="${CONTAINERS_MODELS:-${CONTAINERS_SHARED_ROOT:-/mnt/shared/${USER:-nobody}/gpu-image-suite}/models}"
      SUITE_P_STAGED_IMAGES="${NODE_LOCAL}/images"
      SUITE_P_STAGED_MODELS="${NODE_LOCAL}/models"
      SUITE_P_CACHE_ENV=("HF_HOME=${NODE_LOCAL}/cache/hf" "TORCH_HOME=${NODE_LOCAL}/cache/torch" "TRITON_CACHE_DIR=${NODE_LOCAL}/cache/triton" "TORCHINDUCTOR_CACHE_DIR=${NODE_LOCAL}/cache/inductor" "PADDLE_PDX_CACHE_HOME=${NODE_LOCAL}/cache/paddlex" "XDG_CACHE_HOME=${NODE_LOCAL}/cache" "MPLCONFIGDIR=${NODE_LOCAL}/cache/matplotlib")
      ;;
    laptop)
      SUITE_NODE_DEFAULT="${HOME:-/tmp}/.cache/gpu-image-suite/local"
      SUITE_NODE_VAR=""
      SUITE_LOGIN_ARCH="${CONTAINERS_HOST_ARCH:-native}"
      suite_node_root
      SUITE_P_SHARED="${CONTAINERS_SHARED_ROOT:-${HOME:-/tmp}/.cache/gpu-image-suite}"
      SUITE_P_SCRATCH="${CONTAINERS_SCRATCH:-${HOME:-/tmp}/.cache/gpu-image-suite/scratch}"
      SUITE_P_RUNS="${CONTAINERS_SCRATCH:-${HOME:-/tmp}/.cache/gpu-image-suite/scratch}/runs"
      SUITE_P_IMAGES="${CONTAINERS_IMAGES:-${CONTAINERS_SHARED_ROOT:-${HOME:-/tmp}/.cache/gpu-image-suite}/images}"
      SUITE_P_MODELS="${CONTAINERS_MODELS:-${CONTAINERS_SHARED_ROOT:-${HOME:-/tmp}/.cache/gpu-image-suite}/models}"
      SUITE_P_STAGED_IMAGES="${NODE_LOCAL}/images"
      SUITE_P_STAGED_MODELS="${NODE_LOCAL}/models"
      SUITE_P_CACHE_ENV=("HF_HOME=${NODE_LOCAL}/cache/hf" "TORCH_HOME=${NODE_LOCAL}/cache/torch" "TRITON_CACHE_DIR=${NODE_LOCAL}/cache/triton" "TORCHINDUCTOR_CACHE_DIR=${NODE_LOCAL}/cache/inductor" "PADDLE_PDX_CACHE_HOME=${NODE_LOCAL}/cache/paddlex" "XDG_CACHE_HOME=${NODE_LOCAL}/cache" "MPLCONFIGDIR=${NODE_LOCAL}/cache/matplotlib")
      ;;
    torch)
      SUITE_NODE_DEFAULT="/tmp/${USER:-nobody}"
      SUITE_NODE_VAR="SLURM_TMPDIR"
      SUITE_LOGIN_ARCH="x86_64"
      suite_node_root
      SUITE_P_SHARED="${CONTAINERS_SHARED_ROOT:-/scratch/${USER:-nobody}/gpu-image-suite}"
      SUITE_P_SCRATCH="${CONTAINERS_SCRATCH:-/scratch/${USER:-nobody}}"
      SUITE_P_RUNS="${CONTAINERS_SCRATCH:-/scratch/${USER:-nobody}}/runs"
      SUITE_P_IMAGES="${CONTAINERS_IMAGES:-${CONTAINERS_SHARED_ROOT:-/scratch/${USER:-nobody}/gpu-image-suite}/images}"
      SUITE_P_MODELS="${CONTAINERS_MODELS:-${CONTAINERS_SHARED_ROOT:-/scratch/${USER:-nobody}/gpu-image-suite}/models}"
      SUITE_P_STAGED_IMAGES="${NODE_LOCAL}/images"
      SUITE_P_STAGED_MODELS="${NODE_LOCAL}/models"
      SUITE_P_CACHE_ENV=("HF_HOME=${NODE_LOCAL}/cache/hf" "TORCH_HOME=${NODE_LOCAL}/cache/torch" "TRITON_CACHE_DIR=${NODE_LOCAL}/cache/triton" "TORCHINDUCTOR_CACHE_DIR=${NODE_LOCAL}/cache/inductor" "PADDLE_PDX_CACHE_HOME=${NODE_LOCAL}/cache/paddlex" "XDG_CACHE_HOME=${NODE_LOCAL}/cache" "MPLCONFIGDIR=${NODE_LOCAL}/cache/matplotlib")
      ;;
    *) return 1 ;;
  esac
}

# Variables a step may see (containers/launch.py): names, prefixes; the host runtime's extras;
# what the container runtime itself needs.
SUITE_PASS_NAMES=(
  CUDA_VISIBLE_DEVICES
  NVIDIA_VISIBLE_DEVICES
  CUDA_DEVICE_ORDER
  GPU_DEVICE_ORDINAL
  OMP_NUM_THREADS
  MKL_NUM_THREADS
  OPENBLAS_NUM_THREADS
  TOKENIZERS_PARALLELISM
  PYTORCH_CUDA_ALLOC_CONF
  TZ
  LANG
  LC_ALL
  TERM
  USER
  NO_COLOR
  SSL_CERT_FILE
  MASTER_ADDR
  MASTER_PORT
  WORLD_SIZE
  RANK
  LOCAL_RANK
  LOCAL_WORLD_SIZE
  NODE_RANK
  SLURMD_NODENAME
)
SUITE_PASS_PREFIXES=(
  SLURM_
  CONTAINERS_
  FLOWPORTAL_
  NEWSBAG_
  NCCL_
  TORCH_NCCL_
  GLOO_
)
SUITE_HOST_NAMES=(
  PATH
  HOME
  LD_LIBRARY_PATH
  VIRTUAL_ENV
  TMPDIR
)
SUITE_RT_NAMES=(
  PATH
  HOME
  USER
  LANG
  TERM
  APPTAINER_TMPDIR
  APPTAINER_CACHEDIR
  SINGULARITY_TMPDIR
  SINGULARITY_CACHEDIR
  APPTAINER_CONFIGDIR
)
