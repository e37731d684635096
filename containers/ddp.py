"""Multi-node DDP on Slurm: the job shape, the rendezvous environment, and a memory preflight.

Every rule here is a way a 4-node x 4-GPU Lightning job has failed:

- ``--ntasks=8`` on one node with 4 GPUs: ranks 4-7 have no GPU and rendezvous waits at
  "MEMBER: 1/8" forever. With ``srun`` as the launcher there is one task per GPU
  (``--ntasks-per-node`` = GPUs per node); with ``torchrun`` one task per node that starts the
  node's ranks itself. Anything else is refused before submission.
- ``python train.py`` instead of ``srun python train.py`` in the batch script: one process
  starts, the other ranks never do ("1/16 clients joined"). The template always launches with
  ``srun``; :func:`lint_script` finds the mistake in a hand-written script, and
  :func:`launched_without_srun` lets a starting rank stop with one line instead of waiting.
- 8 data-loader workers per GPU on 16 GPUs and the job was OOM-killed in system RAM:
  :func:`memory_check` adds up ranks x (rank RSS + workers x worker RSS) per node against the
  memory the request gets per node, and refuses with the numbers.

``MASTER_ADDR``/``MASTER_PORT`` follow Lightning's ``SLURMEnvironment`` (first host of the node
list; port 15000 + the last 4 digits of the job id), so a Lightning script sees the same values
whether or not our variables reach it, and ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` equal the
``SLURM_*`` values Lightning reads itself.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from suite_core.errors import UserError

LAUNCHERS = ("srun", "torchrun")
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.I)
_UNIT_GB = {"K": 1 / (1024 * 1024), "M": 1 / 1024, "": 1 / 1024, "G": 1.0, "T": 1024.0}


def parse_mem_gb(text: str | int | float | None, *, what: str = "mem",
                 where: str | None = None) -> float | None:
    """Slurm memory (``256G``, ``64000`` = MB, ``1.5T``) in GB (1G = 1024M, as Slurm counts)."""
    if text is None or text == "":
        return None
    if isinstance(text, int | float):
        return float(text) / 1024  # a bare number is MB, as for sbatch --mem
    m = _MEM.match(str(text))
    if not m:
        raise UserError(f"{what} '{text}' is not a Slurm memory size", where=where,
                        fix="write e.g. 64G, 512M or 1T")
    return float(m[1]) * _UNIT_GB[m[2].upper()]


def _gb(x: float) -> str:
    return f"{x:.0f} GB" if abs(x - round(x)) < 0.05 else f"{x:.1f} GB"


@dataclass
class Shape:
    """What the job asks Slurm for, per node (``--gres`` and ``--mem`` are per node)."""

    nodes: int
    ntasks_per_node: int
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    launcher: str = "srun"
    mem_per_node: str | None = None   # --mem
    mem_per_gpu: str | None = None    # --mem-per-gpu
    mem_per_cpu: str | None = None    # --mem-per-cpu
    procs_per_node: int | None = None  # torchrun --nproc-per-node on CPU-only nodes
    gpu_type: str | None = None

    @property
    def ranks_per_node(self) -> int:
        if self.launcher == "torchrun":
            return self.gpus_per_node or self.procs_per_node or 1
        return self.ntasks_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def node_mem_gb(self) -> tuple[float | None, str]:
        """Memory per node in GB and where that number comes from."""
        if self.mem_per_node is not None:
            return parse_mem_gb(self.mem_per_node), f"--mem={self.mem_per_node}"
        if self.mem_per_gpu is not None and self.gpus_per_node:
            per = parse_mem_gb(self.mem_per_gpu, what="mem_per_gpu") or 0.0
            return per * self.gpus_per_node, f"--mem-per-gpu={self.mem_per_gpu} x {self.gpus_per_node} GPUs"
        if self.mem_per_cpu is not None:
            cpus = self.cpus_per_task * self.ntasks_per_node
            per = parse_mem_gb(self.mem_per_cpu, what="mem_per_cpu") or 0.0
            return per * cpus, f"--mem-per-cpu={self.mem_per_cpu} x {cpus} CPUs"
        return None, "no memory request"


@dataclass
class Loader:
    """The training script's data loading, per rank; RSS values are declared or measured
    (``exp_train`` records ``rank_max_rss_gb`` and ``loader_worker_max_rss_gb`` in its run report)."""

    num_workers: int = 0
    worker_rss: str = "2G"
    rank_rss: str = "4G"


def check_shape(shape: Shape, *, where: str) -> list[str]:
    """Refuse shapes that hang at rendezvous; return warnings for merely wasteful ones."""
    if shape.launcher not in LAUNCHERS:
        raise UserError(f"DDP launcher '{shape.launcher}' is unknown", where=where,
                        fix=f"use launcher: {' or '.join(LAUNCHERS)}")
    if shape.nodes < 1 or shape.ntasks_per_node < 1:
        raise UserError(f"DDP job asks for {shape.nodes} node(s) x {shape.ntasks_per_node} task(s)",
                        where=where, fix="set nodes and ntasks_per_node to 1 or more")
    g = shape.gpus_per_node
    if shape.launcher == "torchrun":
        if shape.ntasks_per_node != 1:
            raise UserError(
                f"torchrun starts each node's ranks itself, but the job asks for {shape.ntasks_per_node} "
                f"tasks per node: every node would run {shape.ntasks_per_node} torchrun agents that "
                "fight over one rendezvous", where=where,
                fix="set ntasks_per_node: 1 with launcher: torchrun (or launcher: srun, one task per GPU)")
        return []
    if g and shape.ntasks_per_node > g:
        raise UserError(
            f"{shape.ntasks_per_node} tasks per node but {g} GPUs per node: ranks "
            f"{g}-{shape.ntasks_per_node - 1} of each node get no GPU of their own and rendezvous waits "
            f"at 'MEMBER: {g}/{shape.ntasks_per_node}' until the time limit", where=where,
            fix=f"set ntasks_per_node: {g} (one srun task per GPU), or launcher: torchrun with 1 task "
            "per node")
    if g and shape.ntasks_per_node < g:
        raise UserError(
            f"{shape.ntasks_per_node} tasks per node for {g} GPUs per node: Lightning's SLURM detection "
            f"expects one task per GPU (SLURM_NTASKS = devices x nodes) and {g - shape.ntasks_per_node} "
            "GPU(s) per node would idle", where=where,
            fix=f"set ntasks_per_node: {g}, or gpus: {shape.ntasks_per_node}")
    return []


@dataclass
class MemoryVerdict:
    ok: bool
    line: str
    warnings: list[str] = field(default_factory=list)
    need_per_node_gb: float = 0.0
    usable_per_node_gb: float | None = None


def memory_check(shape: Shape, loader: Loader, *, reserve: float = 0.1) -> MemoryVerdict:
    """Refuse a request whose ranks and loader workers cannot fit in a node's memory.

    Per node: ranks x (rank RSS + num_workers x worker RSS) must fit in the memory Slurm grants
    per node less ``reserve`` (the page cache is charged to the job's cgroup too). The message
    gives the job-wide and per-node numbers and the largest ``num_workers`` that fits.
    """
    warnings: list[str] = []
    w_gb = parse_mem_gb(loader.worker_rss, what="worker_rss") or 0.0
    r_gb = parse_mem_gb(loader.rank_rss, what="rank_rss") or 0.0
    rpn = shape.ranks_per_node
    nw = loader.num_workers
    need = rpn * (r_gb + nw * w_gb)
    mem, source = shape.node_mem_gb()
    ranks = shape.world_size
    workers = ranks * nw
    head = (f"{ranks} ranks x {nw} workers x ~{_gb(w_gb)} = {_gb(workers * w_gb)} of data-loader workers"
            f" + {ranks} ranks x ~{_gb(r_gb)} = {_gb(need * shape.nodes)}")
    cpus = shape.cpus_per_task * shape.ntasks_per_node
    procs = rpn * (1 + nw)
    if procs > cpus:
        warnings.append(
            f"{rpn} ranks x (1 + {nw} workers) = {procs} busy processes per node on {cpus} CPUs "
            f"({shape.cpus_per_task} per task): loader workers will fight for cores; "
            f"set cpus_per_task to {math.ceil(procs / shape.ntasks_per_node)} or num_workers to "
            f"{max(0, cpus // rpn - 1)}")
    if mem is None:
        warnings.append(f"{head}, and the request sets no memory ({source}): the cluster's default "
                        "per-CPU memory applies; set mem per node")
        return MemoryVerdict(True, head, warnings, need)
    usable = mem * (1 - reserve)
    per_node = (f"per node {rpn} ranks need {_gb(need)} > {_gb(usable)} usable of {_gb(mem)} "
                f"({source}; {reserve:.0%} kept for page cache)")
    if need <= usable:
        return MemoryVerdict(True, f"{head} fits: per node {_gb(need)} <= {_gb(usable)} usable of "
                             f"{_gb(mem)} ({source})", warnings, need, usable)
    fit = math.floor((usable / rpn - r_gb) / w_gb) if w_gb else nw
    need_mem = math.ceil(need / (1 - reserve))
    fixes = [f"mem={need_mem}G per node"]
    if fit >= 0:
        fixes.insert(0, f"num_workers={fit}")
    line = (f"{head} > {_gb(usable * shape.nodes)} usable for the job ({_gb(mem)} per node x "
            f"{shape.nodes}); {per_node}; fix: {' or '.join(fixes)}")
    return MemoryVerdict(False, line, warnings, need, usable)


def cluster_ddp(cluster: object) -> dict[str, object]:
    """The cluster profile's ``ddp:`` block as a plain dict (empty where the profile has none)."""
    from omegaconf import OmegaConf

    node = cluster.get("ddp") if hasattr(cluster, "get") else None
    return dict(OmegaConf.to_container(node, resolve=True) or {}) if node is not None else {}


# --------------------------------------------------------------------------- at job time
def master_port(job_id: str, base: int = 15000) -> int:
    """Lightning's rule: base + the last 4 digits of the job id (the same on every rank)."""
    digits = re.sub(r"\D", "", job_id)[-4:] or "0"
    return base + int(digits)


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True


def master_addr(nodelist: str, run: Callable[[Sequence[str]], str],
                resolves: Callable[[str], bool] = _resolves) -> str:
    """First host of the allocation; its Slurm ``NodeAddr`` when the name does not resolve."""
    hosts = run(["scontrol", "show", "hostnames", nodelist]).split()
    if not hosts:
        raise UserError(f"scontrol listed no hosts for SLURM_JOB_NODELIST={nodelist!r}",
                        fix="run inside a Slurm allocation")
    first = hosts[0]
    if resolves(first):
        return first
    shown = run(["scontrol", "-o", "show", "node", first])
    m = re.search(r"\bNodeAddr=(\S+)", shown)
    if m and resolves(m[1]):
        return m[1]
    raise UserError(f"the first node '{first}' of the allocation does not resolve and Slurm knows no "
                    "address for it", where="MASTER_ADDR",
                    fix="add the node names to DNS or /etc/hosts, or set NodeAddr in slurm.conf")


# slurm/ddp.sbatch looks the first node up with scontrol outside the image (Slurm's clients are
# not in it) and passes "NAME NODEADDR" here; ddp-env, inside the image, picks what resolves.
MASTER_CANDIDATES = "CONTAINERS_DDP_MASTER_CANDIDATES"


def pick_master(candidates: Sequence[str], resolves: Callable[[str], bool] = _resolves) -> str:
    """The first of (first node's name, its NodeAddr) that resolves here."""
    for host in candidates:
        if resolves(host):
            return host
    raise UserError(f"the first node '{candidates[0]}' of the allocation does not resolve and neither does "
                    f"its Slurm address ({' '.join(candidates[1:]) or 'none'})", where="MASTER_ADDR",
                    fix="add the node names to DNS or /etc/hosts, or set NodeAddr in slurm.conf")


def job_env(environ: Mapping[str, str], ddp_cfg: Mapping[str, object],
            run: Callable[[Sequence[str]], str], *, launcher: str = "srun",
            resolves: Callable[[str], bool] = _resolves) -> dict[str, str]:
    """Variables every rank of this job shares (per-rank RANK/LOCAL_RANK come from srun's task).

    Thread and allocator settings from the allocation; NCCL and friends from the cluster profile
    (``cluster.ddp.env``), so the fabric's settings live in one place.
    """
    job_id = environ.get("SLURM_JOB_ID")
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not job_id or not nodelist:
        raise UserError("not inside a Slurm job (no SLURM_JOB_ID / SLURM_JOB_NODELIST)",
                        fix="submit with sbatch slurm/ddp.sbatch, or python -m containers submit")
    base = int(str(ddp_cfg.get("port_base", 15000)))
    given = environ.get(MASTER_CANDIDATES, "").split()
    env: dict[str, str] = {
        "MASTER_ADDR": pick_master(given, resolves) if given else master_addr(nodelist, run, resolves),
        "MASTER_PORT": str(master_port(job_id, base)),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    nodes = int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    cpus = int(environ.get("SLURM_CPUS_PER_TASK") or 1)
    if launcher == "torchrun":
        nproc = int(environ.get("SLURM_GPUS_ON_NODE") or ddp_cfg.get("nproc_per_node") or 1)
        env.update({"WORLD_SIZE": str(nodes * nproc), "LOCAL_WORLD_SIZE": str(nproc),
                    "OMP_NUM_THREADS": str(max(1, cpus // nproc))})
    else:
        per_node = environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or "1"
        env.update({"WORLD_SIZE": environ.get("SLURM_NTASKS", str(nodes * int(per_node))),
                    "LOCAL_WORLD_SIZE": per_node, "OMP_NUM_THREADS": str(cpus)})
    env["MKL_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    for key, value in dict(ddp_cfg.get("env") or {}).items():
        if value is not None:
            env[str(key)] = str(value)
    return env


def launched_without_srun(environ: Mapping[str, str]) -> str | None:
    """Why this process cannot be one rank of the job (a ``python`` run without ``srun``), or None."""
    tasks = int(environ.get("SLURM_NTASKS") or 1)
    if tasks <= 1 or ("LOCAL_RANK" in environ and "TORCHELASTIC_RUN_ID" in environ):
        return None
    if "SLURM_STEP_NUM_TASKS" in environ and "SLURM_PROCID" in environ:
        return None
    return (f"this process is the batch script's only task, not one of the job's {tasks} srun tasks: "
            f"1 of {tasks} ranks would join and rendezvous would wait for the other {tasks - 1} "
            f"until the time limit ('1/{tasks} clients joined')")


# --------------------------------------------------------------------------- hand-written scripts
_DIRECTIVE = re.compile(r"^#SBATCH\s+(.*)$")
_LAUNCH = re.compile(r"^\s*(?:exec\s+)?(?:\S+/)?(python\d?(?:\.\d+)?|torchrun|accelerate|deepspeed)\b")


def _options(tokens: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    short = {"-N": "nodes", "-n": "ntasks", "-c": "cpus-per-task", "-G": "gpus", "-p": "partition"}
    it = iter(tokens)
    for tok in it:
        if tok.startswith("--"):
            key, eq, val = tok[2:].partition("=")
            out[key] = val if eq else "true"
        elif tok in short:
            out[short[tok]] = next(it, "")
        elif tok[:2] in short and len(tok) > 2:
            out[short[tok[:2]]] = tok[2:]
    return out


def lint_script(path: Path, *, extra: Sequence[str] = (), loader: Loader | None = None,
                reserve: float = 0.1) -> tuple[list[str], list[str]]:
    """Errors and warnings for a hand-written multi-node batch script (``ddp-check``)."""
    import shlex

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}", fix="pass the batch script's path") from None
    directives: list[str] = []
    body: list[tuple[int, str]] = []
    for n, ln in enumerate(text.splitlines(), 1):
        m = _DIRECTIVE.match(ln.strip())
        if m and not body:
            directives += shlex.split(m[1], comments=True)
        elif ln.strip() and not ln.lstrip().startswith("#"):
            body.append((n, ln))
    opts = _options([*directives, *extra])
    errors: list[str] = []
    nodes = int(str(opts.get("nodes", "1")).split("-")[0] or 1)
    gres = opts.get("gres", "")
    m = re.search(r"gpu(?::([A-Za-z0-9_]+))?:(\d+)", gres)
    gpus = int(m[2]) if m else 0
    ntasks_pn = opts.get("ntasks-per-node")
    ntasks = opts.get("ntasks")
    name = path.name
    if ntasks and not ntasks_pn:
        n = int(ntasks)
        if (gpus and n > gpus * nodes) or (nodes == 1 and gpus and n != gpus):
            errors.append(f"{name}: --ntasks={n} on {nodes} node(s) with {gpus} GPU(s) per node: tasks are "
                          f"not one per GPU and rendezvous waits at 'MEMBER: 1/{n}'; "
                          f"fix: --ntasks-per-node={gpus or 1} --nodes=N")
        else:
            errors.append(f"{name}: --ntasks={n} without --ntasks-per-node: Slurm may pack the tasks on "
                          f"few nodes and Lightning refuses it; fix: --ntasks-per-node={gpus or 1} "
                          f"--nodes={nodes}")
    multi = nodes > 1 or int(ntasks or ntasks_pn or 1) > 1
    for n, ln in body:
        lm = _LAUNCH.match(ln)
        if multi and lm and not re.match(r"^\s*(?:exec\s+)?srun\b", ln):
            world = nodes * int(ntasks_pn or 1) if not ntasks else int(ntasks)
            errors.append(f"{name}:{n}: '{ln.strip()[:60]}' starts {lm[1]} without srun: only the batch "
                          f"script's one task runs, so 1 of {world} ranks joins "
                          f"('1/{world} clients joined'); "
                          f"fix: 'srun {ln.strip()[:50]}', or use slurm/ddp.sbatch")
    warnings: list[str] = []
    if ntasks_pn and not errors:
        shape = Shape(nodes=nodes, ntasks_per_node=int(ntasks_pn), gpus_per_node=gpus,
                      cpus_per_task=int(opts.get("cpus-per-task", 1)), mem_per_node=opts.get("mem"),
                      mem_per_gpu=opts.get("mem-per-gpu"), mem_per_cpu=opts.get("mem-per-cpu"),
                      launcher="torchrun" if any("torchrun" in b for _, b in body) else "srun")
        try:
            warnings += check_shape(shape, where=name)
        except UserError as exc:
            errors.append(exc.line())
        if loader is not None and not errors:
            verdict = memory_check(shape, loader, reserve=reserve)
            warnings += verdict.warnings
            if not verdict.ok:
                errors.append(f"{name}: {verdict.line}")
    return errors, warnings
