"""``ddp-env`` and ``ddp-check``: the multi-node DDP template's job-time environment, and a
preflight for hand-written multi-node batch scripts (see containers/ddp.py for the rules)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from suite_core.errors import UserError

COMMANDS = {
    "ddp-env": "print the rendezvous/thread/NCCL variables of this DDP job (used by slurm/ddp.sbatch)",
    "ddp-check": "check a multi-node sbatch script: task shape vs GPUs, python without srun, loader memory",
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "ddp-env":
        parser.add_argument("--launcher", choices=("srun", "torchrun"), default="srun")
        parser.add_argument("--nproc-per-node", type=int, help="torchrun ranks per node on GPU-less nodes")
    else:
        parser.add_argument("script", help="the batch script")
        parser.add_argument("sbatch_args", nargs="*", default=[],
                            help="sbatch options given on the command line (--nodes=4 ...), after --")
        parser.add_argument("--num-workers", type=int, help="data-loader workers per rank")
        parser.add_argument("--worker-rss", default="2G", help="RSS of one loader worker (default 2G)")
        parser.add_argument("--rank-rss", default="4G", help="RSS of one training process (default 4G)")
        parser.add_argument("--reserve", type=float, default=0.1, help="share of --mem kept free (0.1)")
    parser.add_argument("overrides", nargs="*", default=[], help=argparse.SUPPRESS)


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """For ddp-check, everything after ``--`` is sbatch options, verbatim."""
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = parser.parse_intermixed_args(argv)
    if args.command == "ddp-check":
        args.sbatch_args = [*args.sbatch_args, *extra]
    return args


def main(args: argparse.Namespace) -> int:
    return _env(args) if args.command == "ddp-env" else _check(args)


def _env(args: argparse.Namespace) -> int:
    """Shell assignments for every rank; a wrong task shape stops the job here with one line."""
    import shlex

    from containers.ddp import Shape, check_shape, cluster_ddp, job_env
    from suite_core.config import compose
    from suite_core.runner import run

    env = os.environ
    if not env.get("SLURM_JOB_ID") or not env.get("SLURM_JOB_NODELIST"):
        raise UserError("not inside a Slurm job (no SLURM_JOB_ID / SLURM_JOB_NODELIST)",
                        fix="submit with sbatch slurm/ddp.sbatch, or python -m containers submit")
    gpus = int(env.get("SLURM_GPUS_ON_NODE") or 0)
    per_node = int((env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1").split("(")[0])
    if "SLURM_NTASKS_PER_NODE" not in env and int(env.get("SLURM_NTASKS") or 1) > 1:
        raise UserError(f"the job was submitted with --ntasks={env.get('SLURM_NTASKS')} but no "
                        "--ntasks-per-node: "
                        "Slurm may pack ranks unevenly and Lightning refuses it",
                        where=f"Slurm job {env.get('SLURM_JOB_ID')}",
                        fix="sbatch --nodes=N --ntasks-per-node=<GPUs per node> "
                        "--gres=gpu:<type>:<GPUs per node>")
    check_shape(Shape(nodes=int(env.get("SLURM_JOB_NUM_NODES") or 1), ntasks_per_node=per_node,
                      gpus_per_node=gpus, launcher=args.launcher),
                where=f"Slurm job {env.get('SLURM_JOB_ID')}")
    cfg = compose(args.overrides)
    ddp_cfg = cluster_ddp(cfg.cluster)
    if args.nproc_per_node:
        ddp_cfg["nproc_per_node"] = args.nproc_per_node
    values = job_env(env, ddp_cfg, lambda argv: run(argv, timeout=60, what=argv[0]).stdout,
                     launcher=args.launcher)
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from containers.ddp import Loader, lint_script

    loader = None if args.num_workers is None else Loader(args.num_workers, args.worker_rss, args.rank_rss)
    errors, warnings = lint_script(Path(args.script), extra=args.sbatch_args, loader=loader,
                                   reserve=args.reserve)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if errors:
        for e in errors[1:]:
            print(f"  also: {e}", file=sys.stderr)
        raise UserError(errors[0])
    print(f"ok: {args.script}: task shape and launch line fit"
          + ("" if loader is None else ", loader memory fits"))
    return 0
