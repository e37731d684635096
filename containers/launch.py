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

from suite_core.env import (  # noqa: F401  (re-exported: the launcher's public names)
    CACHE_VARS,
    HOST_ONLY,
    PASS_PREFIXES,
    PASS_THROUGH,
    RUNTIME_ENV,
    RUNTIMES,
    cache_env,
    container_env,
    detect_runtime,
    make_cache_dirs,
    nvidia_gpu_present,
    passthrough_env,
    static_env,
)
from suite_core.errors import UserError
from suite_core.runner import quote


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    ro: bool = False

    def args(self) -> list[str]:
        """``--bind SRC:DST[:ro]``; a path with ',' or ':' (which --bind splits at) goes through
        ``--mount``, whose fields are CSV: quoted, with '"' doubled (checked with Apptainer 1.4.5)."""
        for p in (self.src, self.dst):
            if "\n" in p:
                raise UserError(f"bind path {p!r} contains a newline",
                                fix="Apptainer cannot bind such paths; rename or move the folder")
        if any(c in self.src + self.dst for c in ",:"):
            fields = ["type=bind", _csv(f"source={self.src}"), _csv(f"destination={self.dst}")]
            return ["--mount", ",".join(fields + (["ro"] if self.ro else []))]
        return ["--bind", f"{self.src}:{self.dst}" + (":ro" if self.ro else "")]


def _csv(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'


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
        argv += b.args()
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
