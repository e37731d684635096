"""flowportal_status: progress of every chunk, where the time goes, ETA, and resubmission.

Truth comes from the completion markers: a video is OK only if its marker carries the
fingerprint of this batch's recorded settings, its row and its input (settings.py). The
per-chunk state files add FAILED reasons, attempts and timings (median/p90 per stage and the
gaps between them, stats.py). The manifest used is verified against ``manifest.json``.

``action=resubmit`` submits an array over the chunks that still miss videos, with the batch's
recorded settings (``settings=recorded``: a resubmission never changes the preset), skipping
chunks that are running or queued in Slurm (jobs named ``fp-<batch id>-o<offset>`` by this
command, and chunks whose claim is held by a live job). Arrays respect the cluster's
MaxArraySize (``scontrol show config``) by splitting with a chunk offset. Runs on a login node.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from entrypoints.flowportal import claims, stats
from entrypoints.flowportal import manifest as mf
from entrypoints.flowportal import settings as st
from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.batch import load_state, load_tasks, state_path, tasks_path
from suite_core.errors import UserError
from suite_core.runner import quote, which
from suite_core.runner import run as run_cmd

DEFAULT_MAX_ARRAY = 1001  # Slurm's default MaxArraySize
ACTIONS = ("status", "resubmit", "submit")


def batch_id(batch_dir: Path) -> str:
    """A short id of the batch dir, in the job names of its submissions (what squeue shows)."""
    return hashlib.sha256(str(batch_dir.resolve()).encode()).hexdigest()[:8]


def job_name(batch_dir: Path, offset: int) -> str:
    return f"fp-{batch_id(batch_dir)}-o{offset}"


def summarize(
    batch_dir: Path, *, man: mf.Manifest | None = None, max_attempts: int | None = None
) -> dict[str, Any]:
    """Per-chunk OK / FAILED / given-up / pending counts, timings, and the recorded settings."""
    man = man or mf.load(batch_dir)
    rec = st.read_record(batch_dir)
    video_dir = Path(str(man.info.get("video_dir") or ""))
    src_prompt, prompts = mf.read_prompts(man.prompts())
    chunks, durations, entries, tasks = [], [], [], []
    outputs = os.fspath(batch_dir / "outputs")  # joined as strings below: once per finished video
    done_dirs = set(os.listdir(outputs)) if os.path.isdir(outputs) else set()
    for i in range(man.num_chunks):
        rows = mf.read_manifest(man.chunk(i))
        state = load_state(state_path(batch_dir, i))
        ctasks = load_tasks(tasks_path(batch_dir, i))
        tasks += ctasks
        ok = failed = gave_up = 0
        reasons: dict[str, str] = {}
        for r in rows:
            name = r["video_name"]
            s = state.get(name) if isinstance(state.get(name), dict) else {}
            complete = False
            if name in done_dirs:
                fp = None
                if rec is not None:
                    src = mf.resolve_input(video_dir, name)
                    fp = st.video_fingerprint(
                        rec["digest"], r, prompts.get(str(r["prompt_id"]), ""), src_prompt, src
                    )
                complete = wd.is_complete(os.path.join(outputs, name), fp)
            if complete:
                ok += 1
                if s.get("status") == "OK" and s.get("seconds"):
                    durations.append(float(s["seconds"]))
                    entries.append(s)
            elif s.get("status") == "FAILED":
                failed += 1
                gave = (
                    bool(s.get("gave_up"))
                    if max_attempts is None
                    else int(s.get("attempts") or 1) >= max_attempts
                )
                gave_up += gave
                reasons[name] = f"{s.get('stage')}: {s.get('reason')} (attempts {s.get('attempts', 1)}" + (
                    ", gave up)" if gave else ")"
                )
        pending = len(rows) - ok - failed
        label = "OK" if ok == len(rows) else ("FAILED" if pending == 0 else "pending")
        chunks.append(
            {
                "chunk": i,
                "total": len(rows),
                "ok": ok,
                "failed": failed,
                "gave_up": gave_up,
                "pending": pending,
                "state": label,
                "failures": reasons,
            }
        )
    mean = sum(durations) / len(durations) if durations else None
    return {
        "chunks": chunks,
        "mean_seconds": mean,
        "measured": len(durations),
        "timings": stats.aggregate(entries, tasks),
        "recorded": rec is not None,
        "preset": ((rec or {}).get("settings") or {}).get("preset", {}).get("name"),
    }


def eta_seconds(summary: dict[str, Any], parallel: int) -> float | None:
    remaining = sum(c["pending"] + c["failed"] - c.get("gave_up", 0) for c in summary["chunks"])
    if summary["mean_seconds"] is None:
        return None if remaining else 0.0
    busy = max(1, min(parallel, sum(1 for c in summary["chunks"] if c["pending"] or c["failed"])))
    return remaining * summary["mean_seconds"] / busy


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no video finished yet)"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render(summary: dict[str, Any], parallel: int, busy: dict[int, str] | None = None) -> str:
    busy = busy or {}
    lines = ["chunk   total      OK  FAILED  pending  state"]
    for c in summary["chunks"]:
        extra = f"  ({busy[c['chunk']]})" if c["chunk"] in busy else ""
        gave = f"  {c['gave_up']} gave up" if c.get("gave_up") else ""
        lines.append(
            f"{c['chunk']:>5}  {c['total']:>6}  {c['ok']:>6}  {c['failed']:>6}  {c['pending']:>7}  "
            f"{c['state']}{gave}{extra}"
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
    if summary.get("preset"):
        lines.append(f"settings: recorded in batch.json (preset {summary['preset']})")
    lines.append(stats.render(summary["timings"]))
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


def queued_chunks(batch_dir: Path) -> dict[int, str]:
    """Chunks with a pending or running array task of this batch (by job name), from ``squeue -r``."""
    if not which("squeue"):
        return {}
    argv = ["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%j|%K|%T|%i"]
    try:
        res = run_cmd(argv, check=False, timeout=30)
    except UserError:
        return {}
    prefix = f"fp-{batch_id(batch_dir)}-o"
    out: dict[int, str] = {}
    for ln in res.stdout.splitlines():
        parts = ln.strip().split("|")
        if len(parts) != 4 or not parts[0].startswith(prefix) or parts[2] not in claims.ACTIVE:
            continue
        off, task = parts[0][len(prefix) :], parts[1]
        if off.isdigit() and task.isdigit():
            out[int(off) + int(task)] = f"{parts[2].lower()} in Slurm job {parts[3]}"
    return out


def claimed_chunks(batch_dir: Path) -> dict[int, str]:
    """Chunks whose claim is held by a live driver (covers hand-submitted jobs too)."""
    me = {**claims.holder_facts(), "job": ""}
    out: dict[int, str] = {}
    for name, h in claims.holders(batch_dir, "chunk").items():
        idx = name.removeprefix("chunk")
        if idx.isdigit() and claims.alive(h, me):
            out[int(idx)] = f"running: {claims.describe(h)}"
    return out


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


def _no_comma(value: str, key: str) -> str:
    if "," in value:
        raise UserError(
            f"{key}={value!r} contains a comma: sbatch --export and Apptainer binds split on commas",
            where=key,
            fix="rename or move the folder to a path without commas",
        )
    return value


def sbatch_commands(
    cfg: Any, indices: list[int], max_size: int, *, preset: str, app_args: list[str]
) -> list[list[str]]:
    script = str(Path(str(cfg.paths.repo)) / "slurm" / "flowportal_batch.sbatch")
    batch_dir = Path(_no_comma(str(cfg.batch_dir), "batch_dir"))
    video_dir = _no_comma(str(cfg.video_dir), "video_dir")
    cmds = []
    for off, ids in array_groups(indices, max_size):
        array = _ranges(ids) + (f"%{int(cfg.max_parallel)}" if cfg.get("max_parallel") else "")
        exports = [
            "ALL",
            f"FLOWPORTAL_BATCH_DIR={batch_dir}",
            f"FLOWPORTAL_VIDEO_DIR={video_dir}",
            f"FLOWPORTAL_CHUNK_OFFSET={off}",
            f"FLOWPORTAL_PRESET={preset}",
        ]
        cmds.append(
            [
                "sbatch",
                "--parsable",
                f"--array={array}",
                f"--job-name={job_name(batch_dir, off)}",
                f"--export={','.join(exports)}",
                *[str(a) for a in (cfg.sbatch_args or [])],
                script,
                *app_args,
            ]
        )
    return cmds


def _submission(cfg: Any, batch_dir: Path) -> tuple[str, list[str]]:
    """(preset name, app args) for a submission: the recorded settings when the batch has them."""
    rec = st.read_record(batch_dir)
    asked = cfg.get("preset")
    asked_name = str(asked.name) if asked is not None and asked.get("name") else None
    extra = [str(a) for a in (cfg.get("app_args") or [])]
    if rec is not None:
        name = str((rec["settings"].get("preset") or {}).get("name"))
        if asked_name and asked_name != name:
            raise UserError(
                f"preset={asked_name} but this batch was started with preset {name} (batch.json)",
                where=str(batch_dir / st.BATCH_FILE),
                fix=f"leave preset out (resubmissions reuse {name}), or start a new batch_dir",
            )
        return name, ["settings=recorded", *extra]
    if not asked_name:
        raise UserError(
            "this batch has no recorded settings yet and no preset was given",
            where="preset",
            fix="pass preset=dgx_fast (or quality): the first task records it for the whole batch",
        )
    return asked_name, ["settings=request", *extra]


def run(cfg: Any, run: Any) -> int:
    batch_dir = Path(str(cfg.batch_dir))
    action = str(cfg.action)
    if action not in ACTIONS:
        raise UserError(
            f"unknown action '{action}'", where="action", fix="use action=status, resubmit or submit"
        )
    man = mf.load(batch_dir)
    max_attempts = int(cfg.max_attempts) if cfg.get("max_attempts") is not None else None
    with run.step("summarize"):
        summary = summarize(batch_dir, man=man, max_attempts=max_attempts)
    parallel = int(cfg.parallel or len(summary["chunks"]) or 1)
    busy = {**claimed_chunks(batch_dir), **queued_chunks(batch_dir)}
    run.report["status"] = {
        **summary,
        "eta_seconds": eta_seconds(summary, parallel),
        "busy": {str(k): v for k, v in busy.items()},
    }
    print(render(summary, parallel, busy))
    for c in summary["chunks"]:
        for name, why in list(c["failures"].items())[: int(cfg.show_failures)]:
            print(f"  chunk {c['chunk']} FAILED {name} {why}")
    if action == "status":
        return 0
    if not cfg.get("video_dir"):
        raise UserError(
            "video_dir is not set",
            where="video_dir",
            fix="pass video_dir=/path/to/videos (the batch reads them)",
        )
    preset, app_args = _submission(cfg, batch_dir)
    if max_attempts is not None:
        app_args.append(f"max_attempts={max_attempts}")
    todo = []
    for c in summary["chunks"]:
        missing = c["pending"] + c["failed"] - c.get("gave_up", 0)
        if action == "resubmit" and not missing:
            continue
        if c["chunk"] in busy:
            print(f"chunk {c['chunk']}: not resubmitted, {busy[c['chunk']]}")
            continue
        todo.append(c["chunk"])
    gave = sum(c.get("gave_up", 0) for c in summary["chunks"])
    if gave:
        print(
            f"note: {gave} videos gave up after their attempts and are not retried: fix the cause, then "
            "resubmit with max_attempts=N (N above the attempts shown)"
        )
    if not todo:
        print("nothing to resubmit: every chunk is complete, running or queued")
        return 0
    cmds = sbatch_commands(cfg, todo, max_array_size(), preset=preset, app_args=app_args)
    for argv in cmds:
        print(quote(argv))
        if not bool(cfg.dry_run):
            res = run_cmd(argv, what="sbatch")
            print(f"submitted job {res.stdout.strip()}")
    return 0
