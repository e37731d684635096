"""Write a job folder that a compute node runs with bash and Apptainer only.

``submit`` composes once (here, on the submitting side) and writes, per job::

    jobs/<job>/job.env                 what the node-side runner needs (sourced by suite_node)
    jobs/<job>/stage.yaml, stage.sh    the models the steps' apps declare, and the container
                                       command that stages them to node-local disk
    jobs/<job>/steps/NN-<app>/config.yaml   the step's fully resolved config
    jobs/<job>/steps/NN-<app>/exec.sh       the exact container command, runnable by hand

Nothing on the node composes again. Values only the node knows stay ``${node:NAME}`` tokens in
``config.yaml`` (read back by the app through the ``node`` resolver) and become ``"$NODE_LOCAL"``
(or ``"$CONTAINERS_DEADLINE"``) in the shell files; ``suite_node`` in ``slurm/lib/common.sh``
sets them by one rule (docs/slurm.md, "Node values"). So staging, binds and the app read the
same resolved values.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from suite_core.config import NODE_MARK as TOKEN  # node values while submit composes
from suite_core.errors import UserError

NODE_SHELL = {"local_root": "NODE_LOCAL", "deadline": "CONTAINERS_DEADLINE"}
HEADER = "# Written by `python -m containers submit` (docs/slurm.md, \"What submit writes\")."


def shell_word(value: Any) -> str:
    """``value`` quoted for bash, with node tokens expanded on the node (``'a'"$NODE_LOCAL"'/b'``).

    Node values are plain paths or numbers (suite_node refuses anything else), so the
    expansion needs no further quoting.
    """
    text = str(value)
    parts: list[str] = []
    pos = 0
    for m in TOKEN.finditer(text):
        if m[1] not in NODE_SHELL:
            raise UserError(f"unknown node value '${{node:{m[1]}}}'",
                            fix=f"use one of: {', '.join(NODE_SHELL)}")
        if m.start() > pos:
            parts.append(shlex.quote(text[pos:m.start()]))
        parts.append(f'"${NODE_SHELL[m[1]]}"')
        pos = m.end()
    if pos < len(text) or not parts:
        parts.append(shlex.quote(text[pos:]))
    return "".join(parts)


def _array(name: str, values: Iterable[Any], indent: str = "") -> str:
    items = [shell_word(v) for v in values]
    if not items:
        return f"{indent}{name}=()"
    return f"{indent}{name}=(\n" + "".join(f"{indent}  {i}\n" for i in items) + f"{indent})"


def _check_path(value: str, what: str) -> None:
    # ',' and ':' are fine: suite_bind passes such a path with --mount (quoted CSV fields)
    if "\n" in TOKEN.sub("", value):
        raise UserError(f"{what} {value!r} contains a newline",
                        fix="Apptainer cannot bind such paths; rename or move the folder")


def step_script(cfg: Any, *, title: str, job_dir: Path, image: str, gpu: bool,
                argv: Sequence[str], extra_ro: Sequence[str] = (), extra_rw: Sequence[str] = ()) -> str:
    """exec.sh: the step's container command (or, with runtime=host, this node's Python).

    ``extra_rw`` (staging destinations) are bound writable, and a read-only bind of the same path
    is dropped; ``extra_ro`` (staging sources) are bound read-only.
    """
    from containers.launch import Bind, bind_candidates, static_env

    repo = str(cfg.paths.repo)
    env = static_env(cfg)
    env.setdefault("CONTAINERS_CLUSTER", str(cfg.cluster.name))
    writable = {str(p) for p in extra_rw}
    binds = [b for b in bind_candidates(cfg) if not (b.ro and b.src in writable)]
    seen = {b.src for b in binds}
    for path, ro in [*((p, True) for p in extra_ro), *((p, False) for p in extra_rw)]:
        path = str(path)
        if path not in seen and (os.path.isabs(path) or path.startswith("\x03node:")):
            binds.append(Bind(path, path, ro))
            seen.add(path)
    # a path under a bind of the same mode is already visible
    binds = [b for b in binds if not any(o is not b and o.ro == b.ro
                                         and b.src.startswith(o.src.rstrip("/") + "/") for o in binds)]
    for b in binds:
        _check_path(b.src, "bind path")
    lines = [
        "#!/usr/bin/env bash",
        f"# {title}",
        HEADER,
        "# Runs as is on a compute node: bash exec.sh [key=value ...]. suite_node applies the node rule",
        "# (NODE_LOCAL, runtime, this node's allowed variables); suite_bind binds a source that exists.",
        "set -euo pipefail",
        f"source {shell_word(Path(repo) / 'slurm' / 'lib' / 'common.sh')}",
        f"suite_node {shell_word(job_dir)} {'gpu' if gpu else 'cpu'}",
        _array("vars", (f"{k}={v}" for k, v in sorted(env.items()))),
        "cmd=(" + " ".join(shell_word(a) for a in argv) + ' "$@")',
        "# slurm/lib/ddp_task.sh (torchrun) puts its launcher's words between python and the module",
        'if [[ -n "${SUITE_LAUNCHER:-}" ]]; then read -r -a launch <<<"$SUITE_LAUNCHER" && '
        'cmd=("${cmd[0]}" "${launch[@]}" "${cmd[@]:1}"); fi',
        'if [[ "$SUITE_RUNTIME" == host ]]; then',
        f"  cd {shell_word(repo)}",
        '  exec env -i "${SUITE_HOST_ENV[@]}" "${SUITE_PASS[@]}" "${vars[@]}" "$SUITE_PY" "${cmd[@]:1}"',
        "fi",
        *(f"suite_bind {shell_word(b.src)} {'ro' if b.ro else 'rw'}" for b in binds),
        f"sif=\"$(suite_sif {shell_word(image)})\"",
        'suite_container_env "${vars[@]}"',
        'exec env -i "${SUITE_RUNTIME_ENV[@]}" "${SUITE_CENV[@]}" \\',
        '  "$SUITE_RUNTIME" exec "${SUITE_NV[@]}" --cleanenv --no-home "${SUITE_BINDS[@]}" '
        f'--pwd {shell_word(repo)} "$sif" "${{cmd[@]}}"',
    ]
    return "\n".join(lines) + "\n"


def model_stage_list(cfgs: Iterable[Any], job_stage: Iterable[Any], node_local: str) -> list[dict[str, Any]]:
    """Every model the job's steps read, from their configs, plus the job's own ``stage:`` list.

    An app declares a model it reads with a ``stage_src`` key (``${paths.models}/<rel>``) next to
    the staged path it opens (``${paths.staged_models}/<rel>/...``): ``<paths.models>/<rel>`` is
    staged into ``<paths.staged_models>/<parent of rel>``, so the basename and the relative
    layout are kept. A ``stage_src`` outside ``paths.models`` lands in ``paths.staged_models``.
    """
    from omegaconf import OmegaConf

    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(src: str, dst: str, checksum: bool = False) -> None:
        if (src, dst) not in seen:
            seen.add((src, dst))
            rows.append({"src": src, "dst": dst, "checksum": bool(checksum)})

    for s in job_stage:
        dst = str(s.dst)
        add(str(s.src), dst if dst.startswith(("/", "\x03node:")) else f"{node_local}/{dst}", s.checksum)
    for cfg in cfgs:
        models, staged = str(cfg.paths.models).rstrip("/"), str(cfg.paths.staged_models).rstrip("/")
        for src in _stage_srcs(OmegaConf.to_container(cfg, resolve=False)):
            rel = os.path.relpath(src, models) if src.startswith(models + "/") else os.path.basename(src)
            parent = os.path.dirname(rel)
            add(src, f"{staged}/{parent}" if parent else staged)
    return rows


def _stage_srcs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "stage_src" and isinstance(v, str) and v:
                yield v.rstrip("/")
            else:
                yield from _stage_srcs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _stage_srcs(v)


def job_env(*, job: Any, plan: Any, base: Any, images: dict[str, Any], node_fixed: str | None,
            mkdirs: Sequence[str], shared: Sequence[str], steps: Sequence[str],
            staged: Sequence[str] = ()) -> str:
    """job.env: the node-side runner's inputs (rule inputs, images, dirs), as bash assignments."""
    from containers.images import POINTER_PATTERN
    from containers.launch import HOST_ONLY, PASS_PREFIXES, PASS_THROUGH

    cl = base.cluster
    exports = {
        "CONTAINERS_CLUSTER": str(cl.name),
        "CONTAINERS_REPO": str(base.paths.repo),
        "CONTAINERS_JOB_DIR": str(job.dir),
        "CONTAINERS_GPU_STAGE": "1" if job.gpu else "0",
    }
    if job.gpu_guard:
        exports["CONTAINERS_GPU_GUARD"] = str(getattr(job.gpu_guard, "value", job.gpu_guard))
    if job.array_manifest:
        exports["CONTAINERS_ARRAY_MANIFEST"] = str(job.array_manifest)
    lines = [
        f"# shellcheck shell=bash disable=SC2034\n# Job '{job.name}' of pipeline {plan.pipeline} "
        f"(mode {plan.mode}, cluster {plan.cluster}).",
        HEADER,
        *(f"export {k}={shell_word(v)}" for k, v in exports.items()),
        f"SUITE_RUNTIME_WANTED={shell_word(base.runtime)}",
        "# the node rule's inputs (docs/slurm.md \"Node values\")",
        f"SUITE_NODE_FIXED={shell_word(node_fixed or '')}",
        f"SUITE_NODE_DEFAULT={shell_word(cl.node_local_default)}",
        f"SUITE_NODE_VAR={shell_word(cl.get('node_local_job_var') or '')}",
        f"SUITE_IMAGES_DIR={shell_word(base.paths.images)}",
        f"SUITE_LOGIN_ARCH={shell_word(_uname(cl.login_arch))}",
        _array("SUITE_SHARED", shared),
        _array("SUITE_STEPS", steps),
        _array("SUITE_PASS_NAMES", PASS_THROUGH),
        _array("SUITE_PASS_PREFIXES", PASS_PREFIXES),
        _array("SUITE_HOST_NAMES", HOST_ONLY),
        "# per image: its pointer file name ({arch} filled on the node), arches, why others are missing",
        "declare -gA SUITE_IMG_POINTER=() SUITE_IMG_ARCHES=() SUITE_IMG_WHY=()",
    ]
    for name, img in images.items():
        why = "; ".join(f"{a}: {w}" for a, w in (img.get("unsupported") or {}).items())
        lines += [
            f"SUITE_IMG_POINTER[{shell_word(name)}]="
            + shell_word(str(img.get("pointer") or POINTER_PATTERN).replace("{name}", name)),
            f"SUITE_IMG_ARCHES[{shell_word(name)}]={shell_word(' '.join(str(a) for a in img.arches))}",
            f"SUITE_IMG_WHY[{shell_word(name)}]={shell_word(why)}",
        ]
    lines += [
        "# node-local paths, known once NODE_LOCAL is",
        "suite_job_paths() {",
        f"  SUITE_STAGED_IMAGES={shell_word(base.paths.staged_images)}",
        _array("SUITE_MKDIRS", mkdirs, indent="  "),
        "  # every staging source and its staged copy: their stats are the stage check's inputs",
        _array("SUITE_STAGED_PATHS", staged, indent="  "),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _uname(arch: Any) -> str:
    """amd64 -> x86_64, arm64 -> aarch64 (what `uname -m` says on a node); other text as is."""
    from suite_core.arch import UNAME

    return UNAME.get(str(arch), str(arch))


_BASH_SAFE = re.compile(r'^(?:[^$`"\\]|\$\{[A-Za-z_][A-Za-z0-9_]*(?::-)?)*$')


def _dq(value: Any) -> str:
    """A generated bash expression in double quotes; literal text must hold no $ ` " \\."""
    from suite_core.config import SHELL_CLOSE, SHELL_OPEN

    text = "" if value is None else str(value).replace(SHELL_OPEN, "${").replace(SHELL_CLOSE, "}")
    if not _BASH_SAFE.match(text):
        raise UserError(f"cannot write '{text}' as a bash expression", where="hydra_conf",
                        fix="keep $, backquotes, double quotes and backslashes out of root paths")
    return f'"{text}"'


def profiles_sh(config_dir: Path | None = None) -> str:
    """slurm/lib/profiles.sh: every cluster's roots as bash, for scripts that run before any Python.

    Composed from hydra_conf itself (config.shell_expressions), so the node applies the same
    defaults and environment overrides as the Python side.
    """
    from containers import CONF_DIR
    from containers.launch import HOST_ONLY, PASS_PREFIXES, PASS_THROUGH, RUNTIME_ENV, cache_env
    from suite_core.config import compose, groups, shell_expressions

    conf = config_dir or CONF_DIR
    out = [
        "# shellcheck shell=bash disable=SC2034",
        "# Generated from hydra_conf/cluster/*.yaml, hydra_conf/paths/ and containers/launch.py by",
        "# containers.jobdir.profiles_sh; tests/slurm/test_scripts.py checks it is current (regenerate",
        "# with UPDATE_GOLDEN=1). Read by slurm/lib/common.sh before any Python can run on a node.",
        "",
        "# suite_profile CLUSTER: the cluster's roots, with the same environment overrides as hydra_conf;",
        "# applies the node rule (suite_node_root) for NODE_LOCAL.",
        "suite_profile() {",
        '  case "$1" in',
    ]
    with shell_expressions():
        for name in groups(conf)["cluster"]:
            cfg = compose([f"cluster={name}", "~local"], config_dir=conf)
            p, cl = cfg.paths, cfg.cluster
            out += [
                f"    {name})",
                f"      SUITE_NODE_DEFAULT={_dq(cl.node_local_default)}",
                f"      SUITE_NODE_VAR={_dq(cl.get('node_local_job_var') or '')}",
                f"      SUITE_LOGIN_ARCH={_dq(_uname(cl.login_arch))}",
                "      suite_node_root",
                *(f"      SUITE_P_{k.upper()}={_dq(p[k])}" for k in
                  ("shared", "scratch", "runs", "images", "models", "staged_images", "staged_models")),
                "      SUITE_P_CACHE_ENV=("
                + " ".join(_dq(f"{k}={v}") for k, v in cache_env(cfg).items()) + ")",
                "      ;;",
            ]
    out += [
        "    *) return 1 ;;",
        "  esac",
        "}",
        "",
        "# Variables a step may see (containers/launch.py): names, prefixes; the host runtime's extras;",
        "# what the container runtime itself needs.",
        _array("SUITE_PASS_NAMES", PASS_THROUGH),
        _array("SUITE_PASS_PREFIXES", PASS_PREFIXES),
        _array("SUITE_HOST_NAMES", HOST_ONLY),
        _array("SUITE_RT_NAMES", RUNTIME_ENV),
    ]
    return "\n".join(out) + "\n"
