"""The environment rules both sides apply: what crosses into a container, where caches go,
which runtime runs a step, whether an NVIDIA GPU is here.

The launcher (``containers.launch``) turns them into ``--env`` flags; an app running with
``runtime=host`` (``entrypoints.framework``) applies the same ones to itself, so a laptop run and
a container run see the same variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from suite_core.errors import UserError
from suite_core.runner import which

RUNTIMES = ("apptainer", "singularity", "host")

# Variables copied from the caller when set; SLURM_* and CONTAINERS_* by prefix.
PASS_THROUGH = (
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GPU_DEVICE_ORDINAL",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "PYTORCH_CUDA_ALLOC_CONF", "TZ", "LANG", "LC_ALL", "TERM", "USER", "NO_COLOR",
    "SSL_CERT_FILE",
    # DDP rendezvous (slurm/ddp.sbatch): every rank needs them inside the image
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
    "SLURMD_NODENAME",  # which node a rank ran on (the run report's slurm.node)
)
PASS_PREFIXES = ("SLURM_", "CONTAINERS_", "FLOWPORTAL_", "NEWSBAG_", "NCCL_", "TORCH_NCCL_", "GLOO_")
# Variables a host-runtime process needs that a container gets from its image.
# Caches the doctor checks for writability (the ML libraries' own; XDG/matplotlib are incidental).
CACHE_VARS = ("HF_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "PADDLE_PDX_CACHE_HOME")
HOST_ONLY = ("PATH", "HOME", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "TMPDIR")
# What the container runtime itself may see (not the process inside: --cleanenv).
RUNTIME_ENV = ("PATH", "HOME", "USER", "LANG", "TERM", "APPTAINER_TMPDIR", "APPTAINER_CACHEDIR",
               "SINGULARITY_TMPDIR", "SINGULARITY_CACHEDIR", "APPTAINER_CONFIGDIR")


def detect_runtime(requested: str, *, path: str | None = None,
                   dry_run: bool = False) -> tuple[str, list[str]]:
    """Resolve ``auto`` to apptainer, then singularity, else host (with a warning).

    A dry run may name a runtime this machine lacks: rendering a compute node's command on a
    login node is what it is for.
    """
    requested = (requested or "auto").lower()
    if requested not in (*RUNTIMES, "auto"):
        raise UserError(f"unknown runtime '{requested}'",
                        fix="use runtime=auto, apptainer, singularity or host")
    if requested == "host":
        return "host", []
    if requested in ("apptainer", "singularity"):
        if not which(requested, path) and not dry_run:
            raise UserError(f"runtime={requested} but no '{requested}' is on PATH",
                            fix=f"module load {requested}, or use runtime=host to run in this Python")
        return requested, []
    for name in ("apptainer", "singularity"):
        if which(name, path):
            return name, []
    return "host", ["no apptainer or singularity on PATH: running in this Python (runtime=host)"]


def nvidia_gpu_present() -> bool:
    """True where the NVIDIA driver exposes a GPU (what ``--nv`` needs)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return Path("/dev/nvidiactl").exists() or (gpus.is_dir() and any(gpus.iterdir()))


def cache_env(cfg: Any) -> dict[str, str]:
    """Cache variables -> node-local directories (the one place that maps them)."""
    caches = cfg.paths.caches
    return {
        "HF_HOME": str(caches.hf),
        "TORCH_HOME": str(caches.torch),
        "TRITON_CACHE_DIR": str(caches.triton),
        "TORCHINDUCTOR_CACHE_DIR": str(caches.inductor),
        "PADDLE_PDX_CACHE_HOME": str(caches.paddlex),
        "XDG_CACHE_HOME": str(cfg.paths.cache),
        "MPLCONFIGDIR": str(Path(str(cfg.paths.cache)) / "matplotlib"),
    }


def make_cache_dirs(cfg: Any) -> dict[str, str]:
    """Create every cache directory (a process inside the image cannot create host paths)."""
    env = cache_env(cfg)
    for path in env.values():
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create cache dir {path}: {exc.strerror}", where="node-local disk",
                            fix="set CONTAINERS_NODE_LOCAL to a writable node-local directory") from None
    return env


def passthrough_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's variables a process may see: the allowlist and the allowed prefixes, minus any
    whose name looks secret (CONTAINERS_HF_TOKEN & co. never cross over; slurm/lib/common.sh's
    _suite_secret_name is the node side's twin)."""
    from suite_core.secrets import drop_secret_vars

    env = {k: environ[k] for k in PASS_THROUGH if k in environ}
    env.update({k: v for k, v in environ.items() if k.startswith(PASS_PREFIXES)})
    return drop_secret_vars(env)


def static_env(cfg: Any) -> dict[str, str]:
    """Variables that follow from the config alone (caches, offline flags, the checkout)."""
    env = cache_env(cfg)
    env.update({
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(cfg.paths.repo),
        "CONTAINERS_REPO": str(cfg.paths.repo),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True",
        "PADDLEOCR_DISABLE_AUTO_LOGGING_CONFIG": "1",
    })
    return env


def container_env(cfg: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables the entrypoint sees, identical for every runtime."""
    env = passthrough_env(environ)
    env.update(static_env(cfg))
    if "cluster" in cfg and cfg.cluster.get("name"):
        env.setdefault("CONTAINERS_CLUSTER", str(cfg.cluster.name))
    return env
