"""``exec`` and ``shell``: run a command inside an image for this node's arch.

``IMAGE`` is an image name from ``hydra_conf/image/`` or a path to a ``.sif`` file; Hydra
overrides (``cluster=torch``, ``paths.models=/x``) may follow it before ``--``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from suite_core.arch import host_arch, normalize
from suite_core.errors import UserError

COMMANDS = {
    "exec": "run a command inside an image for this node's arch (or in this Python)",
    "shell": "open an interactive shell inside an image",
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("image", help="image name (hydra_conf/image/) or a .sif path")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cluster=torch")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="gpu", action="store_true", default=None,
                   help="GPU stage: add --nv where an NVIDIA GPU exists (default: image's gpu)")
    g.add_argument("--cpu", dest="gpu", action="store_false", help="CPU stage: never --nv")
    parser.add_argument("--runtime", help="auto | apptainer | singularity | host")
    parser.add_argument("--arch", help="node arch to resolve the SIF for (default: this machine)")
    parser.add_argument("--gpu-present", choices=("auto", "yes", "no"), default="auto",
                        help="pretend a GPU is (not) present, to dry-run a GPU node's command")
    parser.add_argument("--bind", action="append", default=[], metavar="SRC[:DST[:ro]]",
                        help="extra bind mount (repeatable)")
    parser.add_argument("--cwd", help="working directory inside (default: the repository)")
    parser.add_argument("--dry-run", action="store_true", help="print the exact command only")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Everything after the first ``--`` is the command, verbatim."""
    if "--" in argv:
        i = argv.index("--")
        head, command = argv[:i], argv[i + 1:]
    else:
        head, command = argv, []
    args = parser.parse_intermixed_args(head)
    args.cmd = command
    if args.command == "exec" and not command:
        parser.error("no command: put it after --, e.g. -- python -m entrypoints doctor")
    return args


def main(args: argparse.Namespace) -> int:
    from containers.images import resolve_sif
    from containers.launch import detect_runtime, make_cache_dirs, nvidia_gpu_present, plan_exec
    from containers.sif import read_sif
    from suite_core.config import compose
    from suite_core.runner import exec_replace

    is_path = args.image.endswith(".sif") or os.sep in args.image
    overrides = list(args.overrides)
    if args.runtime:
        overrides.append(f"runtime={args.runtime}")
    if not is_path:
        overrides.insert(0, f"image={args.image}")
    cfg = compose(overrides)
    runtime, warnings = detect_runtime(str(cfg.runtime), dry_run=args.dry_run)
    arch = normalize(args.arch) if args.arch else host_arch()
    sif = None
    if is_path:
        if runtime != "host":
            info = read_sif(args.image)
            if info.arch != arch:
                raise UserError(f"image {args.image} is built for {info.arch} but this node is {arch}",
                                fix=f"use an {arch} build of the image")
        sif = Path(args.image)
        gpu = bool(args.gpu)
    else:
        gpu = bool(cfg.image.gpu) if args.gpu is None else args.gpu
        if runtime != "host" or (args.arch and arch != host_arch()):
            search = [Path(str(cfg.paths.staged_images)), Path(str(cfg.paths.images))]
            sif = resolve_sif(cfg.image, arch, search, explicit=cfg.get("image_sif"),
                              required=runtime != "host").sif
    present = {"yes": True, "no": False}.get(args.gpu_present)
    if present is None:
        present = nvidia_gpu_present()
    plan = plan_exec(cfg, command=args.cmd, runtime=runtime, sif=sif, gpu=gpu,
                     gpu_present=present, cwd=args.cwd, extra_binds=args.bind,
                     subcommand="shell" if args.command == "shell" else "exec")
    for w in [*warnings, *plan.warnings]:
        print(f"warning: {w}", file=sys.stderr)
    if args.dry_run:
        print(plan.shell())
        return 0
    make_cache_dirs(cfg)
    exec_replace(plan.argv, plan.env, plan.cwd)
    return 0  # not reached
