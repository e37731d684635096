"""FlowPortal benchmarks: batch-driver overhead per video, ``status`` over 21,529 entries, manifest time.

The model stages are the checkout fixture's stand-ins; the driver overhead is each video's wall
time minus the time spent inside its five stage processes (skip check, workdir cleaning,
publishing with sha256, marker, progress-log rewrite). Run: ``python -m bench.flowportal``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from containers.runner import run  # noqa: E402

COMMAND = f"{Path(sys.executable).name} -m bench.flowportal"


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var, sub in (
        ("CONTAINERS_SCRATCH", "scratch"),
        ("CONTAINERS_NODE_LOCAL", "nvme"),
        ("CONTAINERS_SHARED_ROOT", "shared"),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(root / sub)
    env.pop("CONTAINERS_CLUSTER", None)
    return env


def bench_driver(root: Path, n: int = 12) -> list[str]:
    from tests.entrypoints.flowportal.conftest import batch_overrides, make_mp4, stage_models

    env = _env(root)
    stage_models(root / "nvme" / "models")
    videos = root / "videos"
    for i in range(n):
        make_mp4(videos / f"v{i:02d}.mp4", 40)
    batch = root / "batch"
    py = [sys.executable, "-m", "entrypoints"]
    run([*py, "flowportal_manifest", f"video_dir={videos}", f"batch_dir={batch}", "num_select=0",
         "num_chunks=1"], cwd=REPO, env=env)
    argv = [*py, "flowportal_batch", *batch_overrides(batch, videos), "chunk=0"]
    first = run(argv, cwd=REPO, env=env).seconds
    rerun = run(argv, cwd=REPO, env=env).seconds
    state = json.loads((batch / "progress" / "chunk0.json").read_text())
    stage_s: dict[str, float] = {}
    for v in state:  # per-stage process times are recorded in each video's marker
        marker = json.loads((batch / "outputs" / v / ".complete.json").read_text())
        stage_s[v] = sum(float(s["seconds"]) for s in marker["stages"])
    over = [float(state[v]["seconds"]) - stage_s[v] for v in state]
    return [
        f"batch driver, {n} videos (fixture stages, 9 frames 32x24):",
        f"  overhead per video (wall - stage processes): median {statistics.median(over) * 1000:.0f} ms, "
        f"max {max(over) * 1000:.0f} ms",
        f"  stage processes per video: median {statistics.median(stage_s.values()):.2f} s "
        "(fixture, not models)",
        f"  whole chunk first run: {first:.2f} s; rerun with every video marked (skip path): {rerun:.2f} s",
    ]


def bench_status(root: Path, total: int = 21529, chunks: int = 10, done_ratio: float = 0.6) -> list[str]:
    from entrypoints.flowportal.manifest import csv_text
    from entrypoints.flowportal.status import render, summarize

    batch = root / "status"
    rows = [
        {"video_name": f"vid_{i:06d}", "n_frames": 150, "k_frames": 49, "prompt_id": i % 10}
        for i in range(total)
    ]
    size = -(-total // chunks)
    (batch / "manifest").mkdir(parents=True)
    for c in range(chunks):
        (batch / "manifest" / f"chunk{c}.csv").write_text(csv_text(rows[c * size : (c + 1) * size]))
    rng = random.Random(0)
    done = rng.sample(range(total), int(total * done_ratio))
    t0 = time.monotonic()
    for i in done:
        d = batch / "outputs" / f"vid_{i:06d}"
        d.mkdir(parents=True)
        (d / "output_video.mp4").write_bytes(b"x" * 64)
        (d / ".complete.json").write_text(json.dumps({"files": {"output_video.mp4": {"bytes": 64}}}))
    setup = time.monotonic() - t0
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        s = summarize(batch)
        render(s, chunks)
        times.append(time.monotonic() - t0)
    cli = run([sys.executable, "-m", "entrypoints", "flowportal_status", f"batch_dir={batch}"],
              cwd=REPO, env=_env(root)).seconds
    ok = sum(c["ok"] for c in s["chunks"])
    return [
        f"status over {total} entries in {chunks} chunks ({ok} with markers; setup {setup:.1f} s):",
        f"  summarize+render in-process: median {statistics.median(times):.3f} s of 3",
        f"  python -m entrypoints flowportal_status (whole CLI): {cli:.2f} s",
    ]


def bench_manifest(root: Path, n_files: int = 120) -> list[str]:
    from types import SimpleNamespace

    from entrypoints.flowportal.manifest import build
    from tests.entrypoints.flowportal.conftest import make_mp4

    videos = root / "mvideos"
    for i in range(n_files):
        make_mp4(videos / f"m{i:04d}.mp4", 30 + (i * 7) % 200)
    cli = run([sys.executable, "-m", "entrypoints", "flowportal_manifest", f"video_dir={videos}",
               f"batch_dir={root / 'mbatch'}", "num_select=40"], cwd=REPO, env=_env(root)).seconds
    rep = json.loads((root / "mbatch" / "jobs" / "manifest" / "run_report.json").read_text())
    probe = next(s for s in rep["steps"] if s["name"] == "probe")["seconds_probe"]
    rng = random.Random(1)
    counts = {f"h2s_{i:06d}.mp4": rng.randint(10, 600) for i in range(31047)}
    cfg = SimpleNamespace(
        input_fps=24,
        target_fps=8,
        seed=42,
        num_select=8000,
        num_chunks=10,
        mode="unselected",
        prompts_tar=list(range(10)),
    )
    t0 = time.monotonic()
    res = build(counts, cfg=cfg)
    sel = time.monotonic() - t0
    return [
        f"manifest: {n_files} real MP4s (OpenCV frame counts, 8 threads): probe {probe:.2f} s "
        f"({probe / n_files * 1000:.1f} ms/video), whole CLI {cli:.2f} s",
        f"  selection + chunking for 31,047 videos (synthetic counts): {sel * 1000:.0f} ms "
        f"({len(res['unselected'])} unselected in {len(res['chunks'])} chunks)",
        f"  extrapolated probe for 31,047 tiny MP4s: {probe / n_files * 31047:.0f} s (real How2Sign files "
        "sit on shared storage: the open/read latency there dominates)",
    ]


def main(out_dir: str | os.PathLike[str] | None = None) -> None:
    out = Path(out_dir) if out_dir else REPO / "bench" / "results"
    with tempfile.TemporaryDirectory(prefix="bench-flowportal-") as tmp:
        root = Path(tmp)
        lines = [
            f"# FlowPortal benchmarks; command: {COMMAND} (from the repository root)",
            f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}",
            *bench_driver(root),
            *bench_status(root),
            *bench_manifest(root),
        ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "flowportal.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
