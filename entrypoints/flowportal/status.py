"""flowportal_status: progress of every chunk, ETA, and (re)submission of what is missing.

Truth comes from the completion markers (a video is OK only if its marker is valid), the
per-chunk state files add FAILED reasons and measured durations. ``action=resubmit`` submits
an array over only the chunks that still miss videos (each task skips its marked videos);
arrays respect the cluster's MaxArraySize (read from ``scontrol show config``) by splitting
into several submissions with a chunk offset. Runs on a login node: no GPU held.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from containers.errors import UserError
from containers.runner import quote, which
from containers.runner import run as run_cmd
from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.batch import chunk_files, load_state, state_path
from entrypoints.flowportal.manifest import read_manifest

DEFAULT_MAX_ARRAY = 1001  # Slurm's default MaxArraySize


def summarize(batch_dir: Path) -> dict[str, Any]:
    """Per-chunk OK / FAILED / pending counts from markers + state files, with the mean rate."""
    chunks, durations = [], []
    done_dirs = set(os.listdir(batch_dir / "outputs")) if (batch_dir / "outputs").is_dir() else set()
    for path in chunk_files(batch_dir):
        i = int(path.stem[5:])
        rows = read_manifest(path)
        state = load_state(state_path(batch_dir, i))
        ok = failed = 0
        reasons: dict[str, str] = {}
        for r in rows:
            name = r["video_name"]
            if name in done_dirs and wd.is_complete(batch_dir / "outputs" / name):
                ok += 1
                s = state.get(name)
                if s and s.get("status") == "OK" and s.get("seconds"):
                    durations.append(float(s["seconds"]))
            elif state.get(name, {}).get("status") == "FAILED":
                failed += 1
                reasons[name] = f"{state[name].get('stage')}: {state[name].get('reason')}"
        pending = len(rows) - ok - failed
        label = "OK" if ok == len(rows) else ("FAILED" if pending == 0 else "pending")
        chunks.append(
            {
                "chunk": i,
                "total": len(rows),
                "ok": ok,
                "failed": failed,
                "pending": pending,
                "state": label,
                "failures": reasons,
            }
        )
    mean = sum(durations) / len(durations) if durations else None
    return {"chunks": chunks, "mean_seconds": mean, "measured": len(durations)}


def eta_seconds(summary: dict[str, Any], parallel: int) -> float | None:
    remaining = sum(c["pending"] + c["failed"] for c in summary["chunks"])
    if summary["mean_seconds"] is None:
        return None if remaining else 0.0
    busy = max(1, min(parallel, sum(1 for c in summary["chunks"] if c["pending"] or c["failed"])))
    return remaining * summary["mean_seconds"] / busy


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no video finished yet)"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render(summary: dict[str, Any], parallel: int) -> str:
    lines = ["chunk   total      OK  FAILED  pending  state"]
    for c in summary["chunks"]:
        lines.append(
            f"{c['chunk']:>5}  {c['total']:>6}  {c['ok']:>6}  {c['failed']:>6}  {c['pending']:>7}  "
            f"{c['state']}"
        )
    tot = {k: sum(c[k] for c in summary["chunks"]) for k in ("total", "ok", "failed", "pending")}
    lines.append(f"{'all':>5}  {tot['total']:>6}  {tot['ok']:>6}  {tot['failed']:>6}  {tot['pending']:>7}")
    mean = summary["mean_seconds"]
    rate = (
        f"{3600 / mean * parallel:.1f} videos/h over {parallel} tasks ({mean:.1f} s/video)"
        if mean
        else "no rate yet"
    )
    lines.append(f"rate: {rate}; ETA: {_hms(eta_seconds(summary, parallel))}")
    return "\n".join(lines)


def max_array_size() -> int:
    """MaxArraySize from ``scontrol show config`` when Slurm is reachable, else Slurm's default."""
    if not which("scontrol"):
        return DEFAULT_MAX_ARRAY
    try:
        res = run_cmd(["scontrol", "show", "config"], check=False, timeout=20)
    except UserError:
        return DEFAULT_MAX_ARRAY
    for ln in res.stdout.splitlines():
        key, _, val = ln.partition("=")
        if key.strip() == "MaxArraySize" and val.strip().isdigit():
            return int(val.strip())
    return DEFAULT_MAX_ARRAY


def array_groups(indices: list[int], max_size: int) -> list[tuple[int, list[int]]]:
    """Split chunk indices into (offset, task ids) with every task id < MaxArraySize."""
    groups: dict[int, list[int]] = {}
    for i in sorted(indices):
        off = (i // max_size) * max_size
        groups.setdefault(off, []).append(i - off)
    return sorted(groups.items())


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (Slurm's --array syntax)."""
    out: list[str] = []
    for i in sorted(ids):
        if out and i == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def sbatch_commands(cfg: Any, indices: list[int], max_size: int) -> list[list[str]]:
    script = str(Path(str(cfg.paths.repo)) / "slurm" / "flowportal_batch.sbatch")
    cmds = []
    for off, ids in array_groups(indices, max_size):
        array = _ranges(ids) + (f"%{int(cfg.max_parallel)}" if cfg.get("max_parallel") else "")
        exports = [
            "ALL",
            f"FLOWPORTAL_BATCH_DIR={cfg.batch_dir}",
            f"FLOWPORTAL_VIDEO_DIR={cfg.video_dir}",
            f"FLOWPORTAL_CHUNK_OFFSET={off}",
            f"FLOWPORTAL_PRESET={cfg.preset.name}",
        ]
        cmds.append(
            [
                "sbatch",
                "--parsable",
                f"--array={array}",
                f"--export={','.join(exports)}",
                *[str(a) for a in (cfg.sbatch_args or [])],
                script,
            ]
        )
    return cmds


def run(cfg: Any, run: Any) -> int:
    batch_dir = Path(str(cfg.batch_dir))
    if not (batch_dir / "manifest").is_dir():
        raise UserError(
            f"no manifest under {batch_dir}",
            where="batch_dir",
            fix="generate it: python -m entrypoints flowportal_manifest video_dir=... batch_dir=...",
        )
    with run.step("summarize"):
        summary = summarize(batch_dir)
    parallel = int(cfg.parallel or len(summary["chunks"]) or 1)
    run.report["status"] = {**summary, "eta_seconds": eta_seconds(summary, parallel)}
    print(render(summary, parallel))
    for c in summary["chunks"]:
        for name, why in list(c["failures"].items())[: int(cfg.show_failures)]:
            print(f"  chunk {c['chunk']} FAILED {name} {why}")
    action = str(cfg.action)
    if action == "status":
        return 0
    if action not in ("resubmit", "submit"):
        raise UserError(f"unknown action '{action}'", fix="use action=status, resubmit or submit")
    if not cfg.get("video_dir"):
        raise UserError("video_dir is not set", fix="pass video_dir=/path/to/videos (the batch reads them)")
    todo = [c["chunk"] for c in summary["chunks"] if action == "submit" or c["state"] != "OK"]
    if not todo:
        print("nothing to resubmit: every chunk is complete")
        return 0
    cmds = sbatch_commands(cfg, todo, max_array_size())
    for argv in cmds:
        print(quote(argv))
        if not bool(cfg.dry_run):
            res = run_cmd(argv, what="sbatch")
            print(f"submitted job {res.stdout.strip()}")
    return 0
