"""flowportal_batch: one array task = one manifest chunk, video after video.

Per video: skip only when its completion marker is valid; else run the five stages in the
chunk's node-local workdir, publish atomically, clean intermediates, and record the outcome.
A failure is recorded with its stage and reason and the loop goes on. The progress log is
re-rendered from a per-chunk state file after each video, so totals are always right and a
resubmission never duplicates lines. Work stops cleanly before the job's time limit (exit 75)
so the sbatch script can chain a continuation.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from containers.atomic import write_json, write_text
from containers.errors import UserError
from entrypoints.flowportal import checkout as co
from entrypoints.flowportal import execute
from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.manifest import frame_count, k_frames_for, read_manifest, read_prompts
from entrypoints.flowportal.stages import Video
from entrypoints.framework import now_iso

EXIT_CONTINUE = 75  # EX_TEMPFAIL: time is up, work remains; the sbatch script chains a continuation


def chunk_files(batch_dir: Path) -> list[Path]:
    files = [p for p in (batch_dir / "manifest").glob("chunk*.csv") if p.stem[5:].isdigit()]
    return sorted(files, key=lambda p: int(p.stem[5:]))


def chunk_path(batch_dir: Path, index: Any) -> Path:
    files = chunk_files(batch_dir)
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise UserError(
            f"chunk index {index!r} is not a number",
            where="chunk",
            fix="pass chunk=N (an array task sets it from SLURM_ARRAY_TASK_ID)",
        ) from None
    if not files:
        raise UserError(
            f"no chunk*.csv under {batch_dir / 'manifest'}",
            where="batch_dir",
            fix="generate the manifest first: python -m entrypoints flowportal_manifest ...",
        )
    if not 0 <= i < len(files):
        raise UserError(
            f"chunk {i} is out of range: the manifest has {len(files)} chunks (0-{len(files) - 1})",
            where=str(batch_dir / "manifest"),
            fix=f"use chunk=0..{len(files) - 1} (--array=0-{len(files) - 1})",
        )
    return batch_dir / "manifest" / f"chunk{i}.csv"


def state_path(batch_dir: Path, i: int) -> Path:
    return batch_dir / "progress" / f"chunk{i}.json"


def load_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def render_log(rows: list[dict[str, Any]], state: dict[str, dict[str, Any]]) -> str:
    """``i/N STATUS video [stage] [reason=...] [seconds=...]``, one line per video with a state."""
    n = len(rows)
    out = []
    for i, r in enumerate(rows, 1):
        s = state.get(r["video_name"])
        if not s:
            continue
        parts = [f"{i}/{n}", s["status"], r["video_name"]]
        if s.get("stage"):
            parts.append(s["stage"])
        if s.get("reason"):
            parts.append("reason=" + " ".join(str(s["reason"]).split()))
        if s.get("seconds") is not None and s["status"] == "OK":
            parts.append(f"seconds={s['seconds']:.1f}")
        out.append(" ".join(parts))
    return "\n".join(out) + ("\n" if out else "")


def precheck(r: dict[str, Any], video_dir: Path, prompts: dict[str, str], cfg: Any) -> str | None:
    """Reason a row cannot run (missing input, unreadable, too short, unknown prompt id)."""
    src = video_dir / f"{r['video_name']}.mp4"
    if not src.is_file():
        return f"input video {src} does not exist"
    if str(r["prompt_id"]) not in prompts:
        return f"prompt id {r['prompt_id']} is not in the prompts file"
    n = frame_count(src)
    if n == 0:
        return "unreadable video (OpenCV cannot decode it)"
    k = k_frames_for(n, float(cfg.input_fps), float(cfg.video.fps))
    if k is None:
        return f"too short: {n} frames give fewer than 9 frames at {cfg.video.fps} fps"
    if int(r["k_frames"]) > k:
        return f"k_frames={r['k_frames']} but the video has only enough frames for {k}"
    return None


def run(cfg: Any, run: Any) -> int:
    batch_dir = Path(str(cfg.batch_dir))
    index = cfg.chunk if cfg.chunk is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if index is None:
        raise UserError("no chunk index", where="chunk", fix="pass chunk=N or run as a Slurm array task")
    index = int(index) + int(cfg.chunk_offset) if str(index).lstrip("-").isdigit() else index
    cpath = chunk_path(batch_dir, index)
    i = int(index)
    rows = read_manifest(cpath)
    src_prompt, prompts = read_prompts(batch_dir / "manifest" / "prompts.txt")
    checkout = co.load(cfg.flowportal.checkout, flavor=str(cfg.flowportal.flavor))
    execute.preflight(cfg)
    work = Path(str(cfg.flowportal.workdir_root)) / f"chunk{i}-{os.environ.get('SLURM_JOB_ID', os.getpid())}"
    run.report["flowportal"] = {
        "chunk": i,
        "videos": len(rows),
        "workdir": str(work),
        "links": wd.prepare(cfg, checkout.root, work),
        "flavor": checkout.flavor,
    }
    env = execute.stage_env(cfg)
    spath = state_path(batch_dir, i)
    log = batch_dir / "progress" / f"chunk{i}.log"
    state = load_state(spath)
    video_dir = Path(str(cfg.video_dir))
    raw = cfg.get("deadline") or os.environ.get("FLOWPORTAL_DEADLINE")  # env: resolved configs keep null
    deadline = float(raw) if raw else None
    stop_file = batch_dir / "control" / f"chunk{i}.stop"
    durations = [s["seconds"] for s in state.values() if s.get("status") == "OK" and s.get("seconds")]
    counts = {"OK": 0, "SKIPPED": 0, "FAILED": 0}
    stopped = None
    for n, r in enumerate(rows, 1):
        name = r["video_name"]
        out_dir = batch_dir / "outputs" / name
        if wd.is_complete(out_dir):
            counts["SKIPPED"] += 1
            if state.get(name, {}).get("status") not in ("OK", "SKIPPED"):
                state[name] = {"status": "SKIPPED", "reason": "complete marker present", "at": now_iso()}
            continue
        if stop_file.exists():
            stopped = f"stop requested ({stop_file})"
            break
        if deadline is not None:
            need = (sum(durations) / len(durations) if durations else 0.0) * 1.2 + float(
                cfg.deadline_margin_s
            )
            if time.time() + need > deadline:
                stopped = f"{deadline - time.time():.0f} s left, a video needs ~{need:.0f} s"
                break
        reason = precheck(r, video_dir, prompts, cfg)
        if reason:
            outcome = execute.Outcome(name, "FAILED", "input", reason)
        else:
            video = Video(
                name=name,
                input=str(video_dir / f"{name}.mp4"),
                k_frames=int(r["k_frames"]),
                prompt_tar=prompts[str(r["prompt_id"])],
                prompt_src=src_prompt,
                negative_prompt=str(cfg.video.negative_prompt),
            )
            print(f"[{n}/{len(rows)}] {name} k_frames={r['k_frames']} prompt_id={r['prompt_id']}", flush=True)
            outcome = execute.run_video(cfg, checkout, video, work, out_dir, env=env)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        state[name] = {
            "status": outcome.status,
            "stage": outcome.stage,
            "reason": outcome.reason,
            "seconds": outcome.seconds,
            "at": now_iso(),
        }
        if outcome.status == "OK":
            durations.append(outcome.seconds)
            for st in outcome.stages:
                run.report["steps"].append(
                    {"name": st["name"], "status": st["status"], "seconds": st["seconds"], "video": name}
                )
        else:
            run.skip(name, f"FAILED at {outcome.stage}: {outcome.reason}")
        print(
            f"  {outcome.status} {name}"
            + (f" at {outcome.stage}: {outcome.reason}" if outcome.reason else "")
            + f" ({outcome.seconds:.1f} s)",
            flush=True,
        )
        write_json(spath, state)
        write_text(log, render_log(rows, state))
    write_json(spath, state)
    write_text(log, render_log(rows, state))
    pending = len(rows) - sum(counts.values())
    summary = {
        "chunk": i,
        "total": len(rows),
        **{k.lower(): v for k, v in counts.items()},
        "pending": pending,
        "stopped": stopped,
    }
    per_stage: dict[str, list[float]] = {}
    for st in run.report["steps"]:
        if st.get("video"):
            per_stage.setdefault(st["name"], []).append(float(st["seconds"]))
    if per_stage:
        print("stage             videos  mean s")
        for name, secs in per_stage.items():
            print(f"{name:<16}  {len(secs):>6}  {sum(secs) / len(secs):>6.1f}")
    summary["stage_mean_seconds"] = {k: round(sum(v) / len(v), 3) for k, v in per_stage.items()}
    run.report["flowportal"]["summary"] = summary
    run.save()
    print(
        f"chunk {i}: {len(rows)} videos: {counts['OK']} OK, {counts['SKIPPED']} skipped (done before), "
        f"{counts['FAILED']} failed, {pending} pending" + (f"; stopped: {stopped}" if stopped else "")
    )
    if stopped:
        return EXIT_CONTINUE
    if counts["FAILED"]:
        print(f"error: {counts['FAILED']} videos failed; see {log}", file=sys.stderr)
        return 1
    return 0
