"""flowportal: one video through the five stages (the cat demo by default).

``dry_run=true`` prints the five exact, shell-quoted commands and the working-dir layout,
after the checks that need no models (checkout, flags, presets), and runs nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from entrypoints.flowportal import checkout as co
from entrypoints.flowportal import execute, modelset
from entrypoints.flowportal import settings as st
from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.manifest import k_frames_for, probe
from entrypoints.flowportal.stages import Video, build, teacache_active
from suite_core.errors import UserError


def video_from_cfg(cfg: Any, root: Path) -> Video:
    v = cfg.video
    src = Path(str(v.input)) if v.get("input") else root / "datasets" / "cat.mp4"
    try:
        k = int(v.k_frames)
    except (TypeError, ValueError):
        raise UserError(
            f"video.k_frames={v.k_frames!r} is not a whole number",
            where="video.k_frames",
            fix="use one of 49, 41, 21, 13, 9",
        ) from None
    return Video(
        name=str(v.name),
        input=str(src),
        k_frames=k,
        prompt_tar=str(v.prompt_tar),
        prompt_src=str(v.prompt_src),
        negative_prompt=str(v.negative_prompt),
    )


def plan_text(cfg: Any, checkout: co.Checkout, video: Video, work: Path) -> str:
    """The dry-run text: preset, checkout, TeaCache verdict, five commands, layout."""
    stages = build(cfg, checkout, video)
    active, why = teacache_active(cfg)
    lines = [
        f"# preset {cfg.preset.name}; {checkout.flavor} checkout {checkout.root}",
        f"# TeaCache {'active' if active else 'inactive'}: {why}",
        f"# working directory (cwd of every stage): {work}",
    ]
    for i, s in enumerate(stages, 1):
        lines += [f"# stage {i}/5 {s.name} ({'GPU' if s.gpu else 'CPU'})", s.shell()]
    lines.append("# working-directory layout")
    lines += [f"{k}  {v}" for k, v in wd.layout(cfg, checkout.root, work).items()]
    return "\n".join(lines)


def run(cfg: Any, run: Any) -> int:
    checkout = co.load(
        cfg.flowportal.checkout, flavor=str(cfg.flowportal.flavor), need_fbc=bool(cfg.video.get("bg_path"))
    )
    video = video_from_cfg(cfg, checkout.root)
    work = Path(str(cfg.flowportal.workdir_root)) / Path(str(cfg.run_dir)).name / video.name
    active, why = teacache_active(cfg)
    run.report["flowportal"] = {
        "preset": str(cfg.preset.name),
        "checkout": str(checkout.root),
        "flavor": checkout.flavor,
        "teacache_active": active,
        "teacache_why": why,
        "workdir": str(work),
    }
    if bool(cfg.dry_run):
        print(plan_text(cfg, checkout, video, work))
        for need in modelset.missing(cfg, checkout.root):
            print(
                f"# note: not staged yet: stage {need.stage} needs {need.what} at {need.options[0]}",
                file=sys.stderr,
            )
        return 0
    if not Path(video.input).is_file():
        raise UserError(
            f"input video {video.input} does not exist",
            where="video.input",
            fix="pass video.input=/path/to/video.mp4",
        )
    n, fps = probe(Path(video.input))
    if n == 0:
        raise UserError(
            f"input video {video.input} is unreadable (OpenCV cannot decode it)",
            where="video.input",
            fix="re-encode it as H.264 MP4",
        )
    fits = k_frames_for(n, float(cfg.get("input_fps") or fps or 24.0), float(cfg.video.fps))
    if fits is None or video.k_frames > fits:
        raise UserError(
            f"input video {video.input} has {n} frames: too short for k_frames={video.k_frames} "
            f"at {cfg.video.fps} fps",
            where="video.k_frames",
            fix=f"use video.k_frames={fits}" if fits else "use a video with >= 9 frames at the target fps",
        )
    execute.preflight(cfg, checkout)
    run.report["flowportal"]["links"] = wd.prepare(cfg, checkout.root, work)
    run.save()
    out_dir = Path(str(cfg.run_dir)) / "outputs" / video.name
    settings = st.output_settings(cfg, checkout, modelset.facts(cfg, checkout.root))
    fp = st.video_fingerprint(
        st.digest(settings),
        {"k_frames": video.k_frames},
        video.prompt_tar,
        video.prompt_src,
        Path(video.input),
    )
    env = execute.stage_env(cfg)
    runner = execute.stage_runner(cfg, env)
    try:
        outcome = execute.run_video(
            cfg,
            checkout,
            video,
            work,
            out_dir,
            env=env,
            fingerprint=fp,
            runner=runner,
            step=run.step,
            failed_logs=Path(str(cfg.run_dir)) / "logs",
        )
    finally:
        runner.close()
    run.report["flowportal"]["outcome"] = outcome.__dict__
    if outcome.status == "OK":
        for f in sorted(out_dir.iterdir()):
            if not f.name.startswith("."):
                run.output(f)
    run.save()
    print(run.timing_table())
    if outcome.status == "FAILED":
        print(f"error: video {video.name} failed at stage {outcome.stage}: {outcome.reason}", file=sys.stderr)
        return 1
    print(f"{outcome.status} {video.name} -> {out_dir} (TeaCache {'active' if active else 'inactive'})")
    return 0
