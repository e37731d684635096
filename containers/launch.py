"""Build the exact command that runs an entrypoint: in Apptainer, Singularity, or this Python.

Each flag is here for a reason a user has been burnt by:
``--cleanenv`` + explicit ``--env``: host variables (a login node's PYTHONPATH, ~/.local)
leak into containers otherwise; ``--nv`` only for GPU stages on GPU nodes; ``--no-home``:
user site-packages in $HOME break images; caches on node-local disk: Triton/Inductor/HF caches
on shared storage race and stall; offline flags: compute nodes have no (reliable) internet.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers.errors import UserError
from containers.runner import quote, which

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


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    ro: bool = False

    def spec(self) -> str:
        for p in (self.src, self.dst):
            if ":" in p or "," in p:
                raise UserError(f"bind path '{p}' contains ':' or ','",
                                fix="Apptainer cannot bind such paths; rename or move the folder")
        return f"{self.src}:{self.dst}" + (":ro" if self.ro else "")


@dataclass
class Plan:
    """What to run: argv, the environment of the launched process and its working dir."""

    runtime: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    container_env: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def shell(self) -> str:
        """Exact shell command (host runtime: with ``env -i`` so the environment is explicit)."""
        if self.runtime == "host":
            env = [f"{k}={v}" for k, v in sorted(self.env.items())]
            cd = ["cd", self.cwd, "&&"] if self.cwd else []
            return (quote(cd[:2]) + " && " if cd else "") + quote(["env", "-i", *env, *self.argv])
        verbatim = [f"{k}={v}" for k, v in sorted(self.env.items())
                    if k.startswith(("APPTAINERENV_", "SINGULARITYENV_"))]
        return quote(["env", *verbatim, *self.argv] if verbatim else self.argv)


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
    from containers.secrets import drop_secret_vars

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


def bind_candidates(cfg: Any, extra: Sequence[str] = ()) -> list[Bind]:
    """Every bind a run of ``cfg`` may need, at the same paths, whether or not it exists here.

    Scratch, the node-local root, models (read-only), the checkout, staged models (read-only),
    and every path the run reads or writes elsewhere, as its app declares them: ``binds_ro``
    (read-only, e.g. ``binds_ro: ["${video.input}"]``) and ``binds_rw`` (null entries skipped).
    """
    p = cfg.paths
    pairs: list[tuple[Any, bool]] = [(p.scratch, False), (p.node_local, False), (p.models, True),
                                     (p.repo, False), (p.staged_models, True)]
    for key, ro in (("binds_ro", True), ("binds_rw", False)):
        pairs += [(path, ro) for path in (cfg.get(key) or []) if path not in (None, "")]
    binds: list[Bind] = []
    seen: set[str] = set()
    for src, ro in pairs:
        s = str(src)
        if s in seen or not (os.path.isabs(s) or s.startswith("\x03node:")):  # a node value (submit)
            continue
        seen.add(s)
        binds.append(Bind(s, s, ro))
    for spec in extra:
        src, _, rest = str(spec).partition(":")
        dst, _, mode = rest.partition(":")
        binds.append(Bind(src, dst or src, mode == "ro"))
    return binds


def default_binds(cfg: Any, extra: Sequence[str] = ()) -> list[Bind]:
    """The binds whose source exists here (Apptainer refuses a bind whose source does not)."""
    n = len(extra)
    cands = bind_candidates(cfg, extra)
    own, given = (cands[:-n], cands[-n:]) if n else (cands, [])
    return [b for b in own if Path(b.src).exists()] + given


def _sourced_value(key: str, value: str) -> str:
    """``value`` escaped for the shell line Apptainer writes it into.

    Apptainer (1.4.5 measured) turns every ``--env`` and ``APPTAINERENV_*`` value into
    ``export KEY="value"`` (escaping only ``"``) in a script the container sources: ``$``, backticks
    and ``\\`` are live there, so a value ``$(id)`` would run ``id`` and ``$HOME`` would expand.
    Escaping them makes the value arrive as written. A CR before LF is dropped by that shell and
    cannot be escaped: refused.
    """
    if "\r\n" in value:
        raise UserError(f"environment variable {key} holds a CR LF line break, which Apptainer drops",
                        fix=f"remove the carriage return from {key}")
    return value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")


def _env_flag(key: str, value: str) -> str | None:
    """``KEY=VALUE`` as Apptainer's ``--env`` reads it back exactly, or None where it cannot.

    ``--env`` is pflag's string-to-string flag (Apptainer 1.3 to 1.5): an item with one ``=`` is
    only stripped of every leading and trailing ``"`` (no CSV: the value ``say "hi"`` sent
    CSV-quoted arrives as ``say ""hi``); an item with two or more ``=`` is read as one CSV record
    of ``k=v`` fields.
    Values those rules would alter (a trailing ``"`` in the first case, a carriage return in the
    second) return None: they go through ``APPTAINERENV_KEY`` instead, which is passed verbatim.
    """
    item = f"{key}={value}"
    if item.count("=") == 1:
        if value.endswith('"'):
            return None
        return f'"{item}"' if any(c in value for c in ",\n") else item  # the quotes are stripped again
    if "\r" in value:
        return None
    if any(c in value for c in ',"\n'):
        return '"' + item.replace('"', '""') + '"'
    return item


def plan_exec(cfg: Any, *, command: Sequence[str], runtime: str, sif: Path | None,
              gpu: bool, gpu_present: bool, environ: Mapping[str, str] | None = None,
              cwd: str | None = None, extra_binds: Sequence[str] = (),
              subcommand: str = "exec") -> Plan:
    """Return the Plan for running ``command`` with ``runtime`` (``subcommand`` exec or shell)."""
    if not command and subcommand == "exec":
        raise UserError("no command given to run",
                        fix="add one after --, e.g. -- python -m entrypoints doctor")
    environ = os.environ if environ is None else environ
    cenv = container_env(cfg, environ)
    warnings: list[str] = []
    cwd = cwd or str(cfg.paths.repo)
    if runtime == "host":
        argv = list(command) or [environ.get("SHELL", "/bin/bash")]
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the current Python: its venv has the host toolkit
        env = {k: environ[k] for k in HOST_ONLY if k in environ}
        env.update(cenv)
        if gpu and not gpu_present:
            warnings.append("GPU stage on a machine without an NVIDIA GPU: expect the CPU fallback")
        return Plan("host", argv, env, cwd, cenv, warnings)
    if sif is None:
        raise UserError("no SIF image to run", fix="build one (make build) or pass image_sif=PATH")
    argv = [runtime, subcommand]
    if gpu and gpu_present:
        argv.append("--nv")
    elif gpu:
        warnings.append("GPU stage but no NVIDIA GPU on this node: not adding --nv")
    argv += ["--cleanenv", "--no-home"]
    for b in default_binds(cfg, extra_binds):
        argv += ["--bind", b.spec()]
    argv += ["--cwd" if runtime == "apptainer" else "--pwd", cwd]
    verbatim: dict[str, str] = {}
    for k, v in sorted(cenv.items()):
        sourced = _sourced_value(k, v)
        flag = _env_flag(k, sourced)
        if flag is None:
            verbatim[f"{'APPTAINER' if runtime == 'apptainer' else 'SINGULARITY'}ENV_{k}"] = sourced
        else:
            argv += ["--env", flag]
    argv += [str(sif), *command]
    env = {k: environ[k] for k in RUNTIME_ENV if k in environ}
    env.update(verbatim)
    return Plan(runtime, argv, env, None, cenv, warnings)
