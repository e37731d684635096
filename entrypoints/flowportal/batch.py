"""flowportal_batch: one array task = one manifest chunk, video after video.

Per video: skip only when its completion marker was made with this batch's settings, this row
and this input (fingerprint); else run the five stages in the chunk's node-local workdir,
publish atomically, clean intermediates, and record the outcome with its timings. One driver
per chunk and per video (claims.py: exclusive claim files naming their holder). A failure is
recorded with its stage and reason and the loop goes on; a video that failed ``max_attempts``
times is not tried again until the limit is raised. The next video's input is copied to
node-local disk while the current one runs (``prefetch``). Work stops cleanly before the job's
time limit (exit 75) so the sbatch script can chain a continuation.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from entrypoints.flowportal import checkout as co
from entrypoints.flowportal import claims, execute, modelset, stats
from entrypoints.flowportal import manifest as mf
from entrypoints.flowportal import settings as st
from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.prefetch import Prefetcher
from entrypoints.flowportal.stages import Video
from entrypoints.framework import now_iso
from suite_core.atomic import write_json, write_text
from suite_core.errors import UserError
from suite_core.rundir import holder_facts

EXIT_CONTINUE = 75  # EX_TEMPFAIL: time is up, work remains; the sbatch script chains a continuation


def state_path(batch_dir: Path, i: int) -> Path:
    return batch_dir / "progress" / f"chunk{i}.json"


def tasks_path(batch_dir: Path, i: int) -> Path:
    return batch_dir / "progress" / f"chunk{i}.tasks.json"


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_tasks(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def chunk_index(cfg: Any) -> int:
    raw = cfg.chunk if cfg.chunk is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if raw is None:
        raise UserError("no chunk index", where="chunk", fix="pass chunk=N or run as a Slurm array task")
    try:
        return int(raw) + int(cfg.chunk_offset or 0)
    except (TypeError, ValueError):
        raise UserError(
            f"chunk index {raw!r} (offset {cfg.chunk_offset!r}) is not a number",
            where="chunk",
            fix="pass chunk=N (an array task sets it from SLURM_ARRAY_TASK_ID)",
        ) from None


def check_range(man: mf.Manifest, i: int) -> None:
    n = man.num_chunks
    if not 0 <= i < n:
        raise UserError(
            f"chunk {i} is out of range: the manifest has {n} chunks (0-{n - 1})",
            where=str(man.gen_dir),
            fix=f"use chunk=0..{n - 1} (--array=0-{n - 1})",
        )


def render_log(rows: list[dict[str, Any]], state: dict[str, Any]) -> str:
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
        if s["status"] == "FAILED" and s.get("attempts"):
            parts.append(f"attempts={s['attempts']}" + (" gave-up" if s.get("gave_up") else ""))
        if s.get("seconds") is not None and s["status"] == "OK":
            parts.append(f"seconds={s['seconds']:.1f}")
        out.append(" ".join(parts))
    return "\n".join(out) + ("\n" if out else "")


def precheck(
    r: dict[str, Any],
    src: Path | None,
    local: Path | None,
    prompts: dict[str, str],
    cfg: Any,
    video_dir: Path,
) -> str | None:
    """Reason a row cannot run (missing input, unknown prompt id, unreadable, too short at its fps)."""
    if src is None:
        return f"input video {video_dir / (r['video_name'] + '.mp4')} does not exist"
    if str(r["prompt_id"]) not in prompts:
        return f"prompt id {r['prompt_id']} is not in the prompts file"
    n, fps = mf.probe(local or src)
    if n == 0:
        return "unreadable video (OpenCV cannot decode it)"
    rate = fps if fps > 0 else float(cfg.input_fps)
    k = mf.k_frames_for(n, rate, float(cfg.video.fps))
    if k is None:
        return f"too short: {n} frames at {rate:g} fps give fewer than 9 frames at {cfg.video.fps} fps"
    if int(r["k_frames"]) > k:
        return (
            f"k_frames={r['k_frames']} but at its real {rate:g} fps the video has only enough frames for {k} "
            "(regenerate the manifest: it now reads each video's rate)"
        )
    return None


def sweep_workdirs(root: Path, mine: Path) -> list[str]:
    """Remove ``chunk<k>-j<job>`` / ``-p<pid>`` workdirs of jobs that are gone (killed tasks' leftovers)."""
    gone = []
    me = holder_facts()
    if not root.is_dir():
        return gone
    for d in root.glob("chunk*-*"):
        if d == mine or not d.is_dir():
            continue
        tag = d.name.rsplit("-", 1)[-1]
        holder = (
            {"job": tag[1:], "host": "", "pid": ""}
            if tag.startswith("j")
            else {"host": me["host"], "pid": tag[1:]}
            if tag.startswith("p")
            else None
        )
        if holder is None or not tag[1:].isdigit():
            continue
        if claims.alive(holder, me) is False:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d.name)
    return gone


def _deadline(cfg: Any) -> float | None:
    raw = cfg.get("deadline") or os.environ.get("FLOWPORTAL_DEADLINE")  # env: resolved configs keep null
    if raw in (None, "", "null"):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise UserError(
            f"deadline={raw!r} is not epoch seconds",
            where="deadline",
            fix="leave it unset (the sbatch script sets it from the job's time limit)",
        ) from None
    if value <= time.time():
        print(
            f"warning: ignoring deadline {raw}: it is in the past (a stale FLOWPORTAL_DEADLINE?)", flush=True
        )
        return None
    return value


def batch_settings(cfg: Any, batch_dir: Path) -> tuple[co.Checkout, dict[str, Any], str]:
    """(checkout, output settings, settings mode) after the checks every batch run makes first."""
    mode = str(cfg.get("settings") or "request")
    if mode not in st.SETTINGS_MODES:
        raise UserError(
            f"settings={mode!r} is not one of {', '.join(st.SETTINGS_MODES)}",
            where="settings",
            fix="pass settings=request (default), recorded or replace",
        )
    if mode == "recorded":
        st.apply_recorded(cfg, batch_dir)
    checkout = co.load(
        cfg.flowportal.checkout, flavor=str(cfg.flowportal.flavor), need_fbc=bool(cfg.video.get("bg_path"))
    )
    execute.preflight(cfg, checkout)
    return checkout, st.output_settings(cfg, checkout, modelset.facts(cfg, checkout.root)), mode


def run(cfg: Any, run: Any) -> int:
    t_start = time.monotonic()
    batch_dir = Path(str(cfg.batch_dir))
    i = chunk_index(cfg)
    man = mf.load(batch_dir)
    check_range(man, i)
    rows = mf.read_manifest(man.chunk(i))
    src_prompt, prompts = mf.read_prompts(man.prompts())
    checkout, settings, mode = batch_settings(cfg, batch_dir)
    max_attempts = int(cfg.max_attempts)
    if max_attempts < 1:
        raise UserError(f"max_attempts={max_attempts}", where="max_attempts", fix="use max_attempts >= 1")
    deadline = _deadline(cfg)
    with claims.held(claims.claim_path(batch_dir, "chunk", f"chunk{i}"), f"chunk {i} of {batch_dir}"):
        sdigest = st.record_or_check(batch_dir, settings, mode, holder_facts())
        return _loop(
            cfg,
            run,
            batch_dir,
            i,
            rows,
            src_prompt,
            prompts,
            checkout,
            sdigest,
            deadline,
            max_attempts,
            t_start,
        )


def _loop(
    cfg: Any,
    run: Any,
    batch_dir: Path,
    i: int,
    rows: list[dict[str, Any]],
    src_prompt: str,
    prompts: dict[str, str],
    checkout: co.Checkout,
    sdigest: str,
    deadline: float | None,
    max_attempts: int,
    t_start: float,
) -> int:
    job = os.environ.get("SLURM_JOB_ID")
    root = Path(str(cfg.flowportal.workdir_root))
    work = root / f"chunk{i}-{'j' + job if job else 'p' + str(os.getpid())}"
    swept = sweep_workdirs(root, work)
    run.report["flowportal"] = {
        "chunk": i,
        "videos": len(rows),
        "workdir": str(work),
        "swept_workdirs": swept,
        "links": wd.prepare(cfg, checkout.root, work),
        "flavor": checkout.flavor,
        "preset": str(cfg.preset.name),
        "settings_digest": sdigest,
    }
    env = execute.stage_env(cfg)
    spath, tpath = state_path(batch_dir, i), tasks_path(batch_dir, i)
    log = batch_dir / "progress" / f"chunk{i}.log"
    state = load_state(spath)
    tasks = load_tasks(tpath)
    task = {
        "job": job,
        "host": holder_facts()["host"],
        "started": now_iso(),
        "staging_s": float(cfg.staging_seconds) if cfg.get("staging_seconds") not in (None, "") else None,
        "startup_s": None,
        "videos_run": 0,
        "stopped": None,
    }
    tasks.append(task)
    video_dir = Path(str(cfg.video_dir))
    stop_file = batch_dir / "control" / f"chunk{i}.stop"
    failed_logs = Path(str(cfg.failed_logs_dir)) if cfg.get("failed_logs_dir") else None
    counts = {"OK": 0, "SKIPPED": 0, "FAILED": 0, "GAVE_UP": 0, "BUSY": 0}
    todo = []
    for n, r in enumerate(rows, 1):
        name = r["video_name"]
        src = mf.resolve_input(video_dir, name)
        fp = st.video_fingerprint(sdigest, r, prompts.get(str(r["prompt_id"]), ""), src_prompt, src)
        s = state.get(name) or {}
        if wd.is_complete(batch_dir / "outputs" / name, fp):
            counts["SKIPPED"] += 1
            if s.get("status") not in ("OK", "SKIPPED"):
                state[name] = {"status": "SKIPPED", "reason": "complete marker present", "at": now_iso()}
        elif s.get("status") == "FAILED" and int(s.get("attempts") or 0) >= max_attempts:
            counts["GAVE_UP"] += 1
            s["gave_up"] = True
        else:
            todo.append((n, r, src, fp))
    prefetch = Prefetcher(work / "inputs", int(cfg.prefetch))
    runner = execute.stage_runner(cfg, env)
    durations = [
        float(s["seconds"])
        for s in state.values()
        if isinstance(s, dict) and s.get("status") == "OK" and s.get("seconds")
    ]
    stopped = None
    last_end: float | None = None
    try:
        for k, (n, r, src, fp) in enumerate(todo):
            name = r["video_name"]
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
            for _, nr, nsrc, _ in todo[k + 1 : k + 1 + int(cfg.prefetch)]:
                if nsrc is not None:
                    prefetch.schedule(nr["video_name"], nsrc)
            t_video = time.monotonic()
            if task["startup_s"] is None:
                task["startup_s"] = round(t_video - t_start, 3)
            try:
                vclaim = claims.acquire(claims.claim_path(batch_dir, "video", name), f"video {name}", chunk=i)
            except UserError as exc:
                counts["BUSY"] += 1
                print(f"  skip {name}: {exc.what}", flush=True)
                continue
            try:
                entry = _one(
                    cfg,
                    run,
                    batch_dir,
                    r,
                    n,
                    len(rows),
                    src,
                    fp,
                    prompts,
                    src_prompt,
                    checkout,
                    work,
                    env,
                    runner,
                    prefetch,
                    video_dir,
                    failed_logs,
                    state.get(name) or {},
                )
            finally:
                claims.release(claims.claim_path(batch_dir, "video", name), vclaim)
                if src is not None:
                    prefetch.discard(name, src)
            entry["gap_before"] = round(t_video - last_end, 3) if last_end is not None else None
            last_end = time.monotonic()
            status = entry["status"]
            counts[status] = counts.get(status, 0) + 1
            task["videos_run"] += 1
            state[name] = entry
            if status == "OK":
                durations.append(float(entry["seconds"]))
            elif status == "FAILED":
                run.skip(name, f"FAILED at {entry.get('stage')}: {entry.get('reason')}")
            write_json(spath, state)
            write_text(log, render_log(rows, state))
    finally:
        runner.close()
        prefetch.close()
        task["stopped"] = stopped
        write_json(tpath, tasks)
        write_json(spath, state)
        write_text(log, render_log(rows, state))
    return _finish(cfg, run, batch_dir, i, rows, state, tasks, counts, stopped, runner, log)


def _one(
    cfg: Any,
    run: Any,
    batch_dir: Path,
    r: dict[str, Any],
    n: int,
    total: int,
    src: Path | None,
    fp: str,
    prompts: dict[str, str],
    src_prompt: str,
    checkout: co.Checkout,
    work: Path,
    env: dict[str, str],
    runner: Any,
    prefetch: Prefetcher,
    video_dir: Path,
    failed_logs: Path | None,
    before: dict[str, Any],
) -> dict[str, Any]:
    """One video: recheck, precheck, five stages, publish; its state entry with timings."""
    name = r["video_name"]
    out_dir = batch_dir / "outputs" / name
    if wd.is_complete(out_dir, fp):  # finished meanwhile by another driver (the same video in two chunks)
        return {"status": "SKIPPED", "reason": "complete marker present", "at": now_iso()}
    wd.sweep_parts(out_dir)
    local, pf = (None, {"where": "none"}) if src is None else prefetch.get(name, src)
    t = time.monotonic()
    reason = precheck(r, src, local, prompts, cfg, video_dir)
    pre_s = round(time.monotonic() - t, 3)
    attempts = int(before.get("attempts") or 0) if before.get("status") == "FAILED" else 0
    if reason:
        outcome = execute.Outcome(name, "FAILED", "input", reason)
    else:
        video = Video(
            name=name,
            input=str(local or src),
            k_frames=int(r["k_frames"]),
            prompt_tar=prompts[str(r["prompt_id"])],
            prompt_src=src_prompt,
            negative_prompt=str(cfg.video.negative_prompt),
        )
        print(f"[{n}/{total}] {name} k_frames={r['k_frames']} prompt_id={r['prompt_id']}", flush=True)
        outcome = execute.run_video(
            cfg,
            checkout,
            video,
            work,
            out_dir,
            env=env,
            fingerprint=fp,
            runner=runner,
            failed_logs=failed_logs,
        )
    entry: dict[str, Any] = {
        "status": outcome.status,
        "stage": outcome.stage,
        "reason": outcome.reason,
        "seconds": outcome.seconds,
        "stages": outcome.stages,
        "publish": outcome.publish_seconds or None,
        "cleanup": outcome.cleanup_seconds or None,
        "precheck": pre_s,
        "prefetch": pf,
        "at": now_iso(),
        "job": os.environ.get("SLURM_JOB_ID"),
    }
    if outcome.status == "FAILED":
        entry["attempts"] = attempts + 1
        entry["gave_up"] = entry["attempts"] >= int(cfg.max_attempts)
        if outcome.logs:
            entry["logs"] = outcome.logs
    print(
        f"  {outcome.status} {name}"
        + (f" at {outcome.stage}: {outcome.reason}" if outcome.reason else "")
        + (f" (attempt {entry['attempts']}/{int(cfg.max_attempts)})" if outcome.status == "FAILED" else "")
        + f" ({outcome.seconds:.1f} s)",
        flush=True,
    )
    return entry


def _finish(
    cfg: Any,
    run: Any,
    batch_dir: Path,
    i: int,
    rows: list[dict[str, Any]],
    state: dict[str, Any],
    tasks: list[dict[str, Any]],
    counts: dict[str, int],
    stopped: str | None,
    runner: Any,
    log: Path,
) -> int:
    done = counts["OK"] + counts["SKIPPED"] + counts["FAILED"] + counts["GAVE_UP"]
    pending = len(rows) - done
    names = {r["video_name"] for r in rows}
    timings = stats.aggregate((s for k, s in state.items() if k in names and isinstance(s, dict)), tasks)
    summary = {
        "chunk": i,
        "total": len(rows),
        **{k.lower(): v for k, v in counts.items()},
        "pending": pending,
        "stopped": stopped,
        "timings": timings,
    }
    if isinstance(runner, execute.Resident):
        summary["resident"] = runner.pool.summary()
    run.report["flowportal"]["summary"] = summary
    run.save()
    print(stats.render(timings))
    given_up = [n for n, s in state.items() if n in names and isinstance(s, dict) and s.get("gave_up")]
    print(
        f"chunk {i}: {len(rows)} videos: {counts['OK']} OK, {counts['SKIPPED']} skipped (done before), "
        f"{counts['FAILED']} failed, {pending} pending"
        + (f"; stopped: {stopped}" if stopped else "")
        + (f"; {len(given_up)} gave up after {int(cfg.max_attempts)} attempts" if given_up else "")
        + (f"; {counts['BUSY']} claimed by another driver" if counts["BUSY"] else "")
    )
    if stopped:
        return EXIT_CONTINUE
    if counts["FAILED"] or given_up:
        what = f"{counts['FAILED']} videos failed" if counts["FAILED"] else "no new failures"
        more = (
            (
                f"; {len(given_up)} gave up ({', '.join(given_up[:3])}{'...' if len(given_up) > 3 else ''}): "
                f"fix the cause, then rerun with max_attempts={int(cfg.max_attempts) + 1}"
            )
            if given_up
            else ""
        )
        print(f"error: {what}{more}; see {log}", file=sys.stderr)
        return 1
    return 0
