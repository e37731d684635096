"""``stage``, ``submit`` and ``preflight``: the Slurm layer's commands.

``submit`` composes a pipeline once on the login node, writes every job's folder (resolved
configs, the exact container commands) into the run directory, submits the chain and returns at
once (it never waits for jobs). ``submit --here`` writes one job's folder for the current
allocation instead: what the plain sbatch scripts run inside the image at job start.
"""

from __future__ import annotations

import os
import sys

from suite_core.errors import UserError

if False:  # typing only (annotations are strings): a no-op ``stage`` at job start skips argparse
    import argparse

COMMANDS = {
    "stage": "copy models/SIFs to node-local disk: incremental, locked per node, manifest last",
    "submit": "submit a pipeline as chained sbatch jobs (afterok), or render it with --dry-run",
    "preflight": "ask Slurm (sbatch --test-only) whether every job of a pipeline would be accepted",
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    import argparse

    if name == "stage":
        parser.add_argument("src", nargs="?", help="file or folder on shared storage")
        parser.add_argument(
            "dst",
            nargs="?",
            help="destination folder; SRC lands in DST/<basename of SRC>; "
            "a relative DST is taken under the node-local root (paths.node_local)",
        )
        parser.add_argument("--image", help="stage this image's current SIF (and its pointer) for this arch")
        parser.add_argument("--job", metavar="JOBDIR", help="stage the models a submitted job's steps read "
                            "(JOBDIR/stage.yaml, with this node's values)")
        parser.add_argument("--checksum", action="store_true", help="record a sha256 per copied file")
        parser.add_argument(
            "--verify",
            action="store_true",
            help="re-read staged files against the manifest even when stat matches",
        )
        parser.add_argument("--check", action="store_true", help="only report differences (stat-only)")
        parser.add_argument("--lock-timeout", type=float, default=None, help="give up waiting after N s")
        parser.add_argument("--jobs", "-j", type=int, default=1,
                            help="copy streams (small files and chunks of large ones in parallel)")
        parser.add_argument("--quiet", "-q", action="store_true")
        parser.add_argument("overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    elif name in ("submit", "preflight"):
        parser.add_argument("pipeline", help="name from hydra_conf/pipeline/")
        parser.add_argument(
            "overrides",
            nargs="*",
            help="cluster=torch, gpu=l40s|h200|split, mode=NAME, other Hydra overrides; "
            "experiment pipelines also take seeds=[1,2,3] and resume=RUN_DIR",
        )
        parser.add_argument("--only", default="", help="comma list of jobs to submit (others are left out)")
        parser.add_argument("--input-dir", help="directory of inputs (scans, videos) for the pipeline's apps")
        parser.add_argument("--recursive", action="store_true", help="also read inputs in subdirectories")
        parser.add_argument("--run-dir", help="run directory (default: <paths.runs>/<pipeline>/<time>)")
        if name == "submit":
            parser.add_argument("--dry-run", action="store_true", help="render everything with fake job ids")
            parser.add_argument("--here", action="store_true",
                                help="write one job's folder for this allocation and print its path; "
                                "submit nothing (what the plain sbatch scripts run at job start)")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    return parser.parse_intermixed_args(argv)


def main(args: argparse.Namespace) -> int:
    return {"stage": _stage, "submit": _submit, "preflight": _preflight}[args.command](args)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def fast(name: str, argv: list[str]) -> int | None:
    """``stage SRC /ABS/DST [-q] [-j N]`` without argparse: the form job starts run, whose no-op
    re-check is mostly start-up. Anything else (other options, a relative DST that needs the
    config, a value that looks like an option) returns None and goes through argparse, so this
    never gives a command line another meaning."""
    if name != "stage":
        return None
    quiet, jobs, paths = False, 1, []
    it = iter(argv)
    for a in it:
        if a in ("-q", "--quiet"):
            quiet = True
        elif a in ("-j", "--jobs"):
            n = next(it, "")
            if not (n.isascii() and n.isdigit()):
                return None
            jobs = int(n)
        elif not a or a.startswith("-") or "=" in a:
            return None
        else:
            paths.append(a)
    if len(paths) != 2 or not paths[1].startswith("/"):
        return None
    return _stage_paths(paths[0], paths[1], quiet=quiet, jobs=jobs)


def _stage_paths(src: str, dst: str, *, quiet: bool, jobs: int, checksum: bool = False, verify: bool = False,
                 lock_timeout: float | None = None) -> int:
    from containers.stage import stage

    res = stage(src, dst, checksum=checksum, verify=verify, lock_timeout=lock_timeout, log=_err, jobs=jobs)
    if not quiet:
        print(res.summary())
    return 0


def _stage(args: argparse.Namespace) -> int:
    from containers.stage import check

    if args.image:
        return _stage_image(args)
    if args.job:
        return _stage_job(args)
    if "=" in (args.dst or "") or not args.src or not args.dst:
        raise UserError(
            "stage needs SRC and DST",
            where="python -m containers stage",
            fix="python -m containers stage /shared/models/x models (or --image NAME)",
        )
    dst = args.dst
    if not os.path.isabs(dst):
        from suite_core.config import compose

        dst = os.path.join(str(compose(args.overrides).paths.node_local), dst)
    if args.check:
        diffs = check(args.src, dst)
        for d in diffs:
            print(d)
        return 1 if diffs else 0
    return _stage_paths(args.src, dst, quiet=args.quiet, jobs=args.jobs, checksum=args.checksum,
                        verify=args.verify, lock_timeout=args.lock_timeout)


def _stage_image(args: argparse.Namespace) -> int:
    """Stage the SIF a pointer names, then write the pointer next to it (pointer last)."""
    from pathlib import Path

    from containers.images import pointer_path, pointer_target, resolve_sif
    from containers.stage import stage
    from suite_core.arch import host_arch
    from suite_core.atomic import write_text
    from suite_core.config import compose

    cfg = compose([f"image={args.image}", *args.overrides])
    arch = host_arch()
    shared = Path(str(cfg.paths.images))
    staged = Path(args.dst) if args.dst else Path(str(cfg.paths.staged_images))
    resolved = resolve_sif(cfg.image, arch, [shared])
    res = stage(resolved.sif, staged, checksum=args.checksum, lock_timeout=args.lock_timeout, log=_err,
                jobs=args.jobs)
    pointer = pointer_path(staged, cfg.image.name, arch, str(cfg.image.pointer))
    if pointer_target(staged, cfg.image, arch) != staged / resolved.sif.name:
        write_text(pointer, resolved.sif.name + "\n")
    if not args.quiet:
        print(res.summary())
    return 0


def _stage_job(args: argparse.Namespace) -> int:
    """Stage every row of JOBDIR/stage.yaml (written by submit) with this node's values."""
    from pathlib import Path

    from containers.stage import stage
    from suite_core.config import load_resolved

    rows = (load_resolved(Path(args.job) / "stage.yaml") or {}).get("stage") or []
    for row in rows:
        res = stage(row["src"], row["dst"], checksum=bool(row.get("checksum")),
                    lock_timeout=args.lock_timeout, log=_err)
        if not args.quiet:
            print(res.summary(), flush=True)
    return 0


def _plan(args: argparse.Namespace):
    from pathlib import Path

    from containers.submit import build_plan

    if args.input_dir is not None:
        path = Path(args.input_dir).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"input directory {args.input_dir} does not exist or is not a directory",
                            where="--input-dir",
                            fix="pass a folder of inputs readable from the compute nodes")
        value = str(path).replace("\\", "\\\\").replace("'", "\\'")
        args.overrides.append(f"input_dir='{value}'")
    if args.recursive:
        args.overrides.append("recursive=true")
    only = [o for o in args.only.split(",") if o]
    here = bool(getattr(args, "here", False))
    plan = build_plan(args.pipeline, args.overrides, only=only, run_dir=args.run_dir, here=here)
    if here and len(plan.jobs) != 1:
        raise UserError(f"--here runs one job, and pipeline {plan.pipeline} (mode {plan.mode}) has "
                        f"{len(plan.jobs)}: {', '.join(j.name for j in plan.jobs)}",
                        where="python -m containers submit --here", fix="pick one with --only JOB")
    return plan


def _submit(args: argparse.Namespace) -> int:
    from containers import experiment
    from containers.submit import submit, watch_hint, write_job_files
    from suite_core.runner import quote

    if experiment.is_experiment(args.pipeline):  # kind: experiment (DAG x seeds, resume): its own module
        return experiment.cli(args)
    plan = _plan(args)
    write_job_files(plan)
    if args.here:
        print(plan.jobs[0].dir)
        return 0
    ids = submit(plan, dry_run=args.dry_run)
    head = "dry run (fake job ids, nothing submitted)" if args.dry_run else "submitted"
    print(f"{head}: pipeline {plan.pipeline}, mode {plan.mode}, cluster {plan.cluster}")
    print(f"run dir: {plan.run_dir}")
    w = max(len(j.name) for j in plan.jobs)
    for j in plan.jobs:
        res = j.gres or "cpu"
        dep = f"  after {','.join(j.after)}" if j.after else ""
        array = next((a.removeprefix("--array=") for a in j.argv if a.startswith("--array=")), None)
        arr = f"  array {array}" if array is not None else ""
        print(f"  {j.name.ljust(w)}  {ids[j.name]:>8}  {j.partition:<14} {res}{dep}{arr}")
        if args.dry_run:
            print(f"    {quote(j.argv)}")
    if not args.dry_run:
        print(watch_hint(plan, ids))
    return 0


def _preflight(args: argparse.Namespace) -> int:
    from containers import experiment
    from containers.submit import preflight, report_preflight

    if experiment.is_experiment(args.pipeline):
        return experiment.cli(args, preflight=True)
    plan = _plan(args)
    return report_preflight(preflight(plan), f"pipeline {plan.pipeline}")
