"""Seconds a job spends before its app starts, per step, on a warm node, from the job's own timestamps.

A submitted job folder (one step, the doctor in the mineru-dell-py310 image, plus a staged model
set of ``--files`` files) runs once to warm the node (SIF and models copied to node-local disk),
then ``--repeat`` more times. From each run's ``timeline.tsv`` (written by slurm/lib/common.sh)
and the step's run report: the SIF stage check (pointer read, stat), the model stage check (the
stats of every source and staged file against the record of the last staging, in bash; and, on
alternate runs with that record removed, ``python -m containers stage --job`` inside the image),
and the step's container start up to the app (step wall time minus the app's own seconds, so
Python's start, reading config.yaml and the interpreter's exit count as "before").

Peers run side by side on the same trees: ``rsync -a`` re-checking the staged model set and the
SIF (no-op), and a bare ``apptainer exec SIF true`` (the least any container start costs).
With the test world (root) the real Apptainer runs; elsewhere runtime=host, and the file says so.

    python bench/runpath.py [--files 2000] [--repeat 5]      (make bench ARGS=runpath)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from suite_core.runner import quote, run, which  # noqa: E402

IMAGE = "mineru-dell-py310"


def world_apptainer(bin_dir: Path, work: Path) -> tuple[Path | None, str]:
    """(the world's test SIF with a real-Apptainer launcher on bin_dir, why not)."""
    try:
        from tests.world import images, pieces, rootfs
        from tests.world.launcher import write_launcher

        why = rootfs.why_unavailable(pieces.SID_APPTAINER)
        if why:
            return None, why
        sid = rootfs.ensure(pieces.SID_APPTAINER)
        sif = images.test_sif(rootfs.host_arch())
        write_launcher(bin_dir, sid, [str(REPO), str(work), str(rootfs.cache_dir())])
        return sif, ""
    except Exception as exc:  # any missing piece: measure with runtime=host and say why
        return None, " ".join(str(exc).split())[:200]


def model_set(root: Path, files: int) -> Path:
    src = root / "bench-set"
    block = os.urandom(4096)
    for i in range(files):
        d = src / f"shard{i % 8}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part{i:05d}.bin").write_bytes(block)
    return src


def events(timeline: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for ln in timeline.read_text().splitlines():
        t, _job, event = ln.split("\t")[:3]
        out.setdefault(event, float(t))
    return out


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    run(argv, env=env, timeout=600)
    return time.perf_counter() - t0


def main(out_dir: str | os.PathLike[str] = REPO / "bench" / "results", argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench/runpath.py", description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000, help="files in the staged model set")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv if argv is not None else [])
    work = Path(tempfile.mkdtemp(prefix="bench-runpath-"))
    try:
        lines = _bench(work, a.files, a.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = [
        f"# bench/runpath.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}",
        "# command: " + (quote(["python", "bench/runpath.py", *argv]) if argv else "python -m bench runpath")
        + "   (make bench ARGS=runpath)",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    from suite_core.atomic import write_text

    out = Path(out_dir) / "runpath.txt"
    write_text(out, text)
    print(text, end="")
    print(f"wrote {out}")


def _bench(work: Path, files: int, repeat: int) -> list[str]:
    roots = {k: work / k for k in ("shared", "scratch", "nvme")}
    for p in roots.values():
        p.mkdir()
    bin_dir = work / "bin"
    bin_dir.mkdir()
    sif, why = world_apptainer(bin_dir, work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CONTAINERS_", "PY"))}
    env.update({"CONTAINERS_SHARED_ROOT": str(roots["shared"]), "CONTAINERS_SCRATCH": str(roots["scratch"]),
                "CONTAINERS_NODE_LOCAL": str(roots["nvme"]), "CONTAINERS_GPU_GUARD": "off"})
    images = roots["shared"] / "images"
    images.mkdir()
    if sif is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        published = images / f"{IMAGE}-amd64-bench.sif"
        shutil.copy2(sif, published)
        (images / f"{IMAGE}-amd64.current").write_text(published.name + "\n")
        runtime = "apptainer (the test world's real Apptainer 1.4.5 through its launcher)"
    else:
        env.update({"CONTAINERS_RUNTIME": "host", "PY": sys.executable})
        runtime = f"host (this Python; no real Apptainer here: {why})"
    src = model_set(roots["shared"] / "models", files)
    run_dir = work / "run"
    run([sys.executable, "-m", "containers", "submit", "selftest", "cluster=torch", "--only", "post",
         "--dry-run", "--run-dir", str(run_dir),
         f"+pipeline.modes.single.post.stage=[{{src:'{src}',dst:models}}]"], env=env, cwd=REPO, timeout=120)
    job = run_dir / "jobs" / "post"
    report = job / "steps" / "01-doctor" / "run_report.json"
    script = [str(REPO / "slurm" / "run_stage.sbatch"), str(job)]
    warm = timed(["bash", *script], env)  # the first run copies the SIF and the models
    rows = []
    in_image = []  # the model check when its bash stamp is gone: stage --job in the image (stat only)
    stamps = roots["nvme"] / ".suite-stage"
    for i in range(2 * repeat):
        if i % 2:
            shutil.rmtree(stamps, ignore_errors=True)
        (job / "timeline.tsv").unlink()
        proc = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return [f"runpath: the job failed: {proc.stderr.strip().splitlines()[-1:]}"]
        ev = events(job / "timeline.tsv")
        if i % 2:
            in_image.append(ev["models_ready"] - ev["sifs_ready"])
            continue
        app_s = float(json.loads(report.read_text())["seconds"])
        step_pre = ev["step_end"] - ev["step_start"] - app_s
        rows.append({"sif": ev["sifs_ready"] - ev["job_start"],
                     "models": ev["models_ready"] - ev["sifs_ready"],
                     "step": step_pre, "total": ev["models_ready"] - ev["job_start"] + step_pre})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    peers = {}
    staged = roots["nvme"] / "models"
    if which("rsync"):
        peers["rsync -a model set (no-op)"] = statistics.median(
            timed(["rsync", "-a", str(src), f"{staged}/"], env) for _ in range(repeat))
    if sif is not None:
        peers["rsync -a SIF (no-op)"] = statistics.median(
            timed(["rsync", "-a", str(published), f"{roots['nvme'] / 'images'}/"], env)
            for _ in range(repeat))
        staged_sif = roots["nvme"] / "images" / published.name
        peers["apptainer exec SIF true"] = statistics.median(
            timed(["apptainer", "exec", "--cleanenv", "--no-home", str(staged_sif), "true"], env)
            for _ in range(repeat))
    lines = [
        f"runtime: {runtime}",
        f"job: one step (doctor in {IMAGE}); model set: {files} files in 8 folders, staged once "
        f"(warm-up run {warm:.1f} s), then {repeat} runs on the warm node",
        "",
        f"{'before the app starts (seconds, median of ' + str(repeat) + ')':<52} {'s':>7}",
        f"{'  SIF stage check (pointer, stat; shell)':<52} {med['sif']:>7.3f}",
        f"{'  model stage check (stats vs the last staging; bash)':<52} {med['models']:>7.3f}",
        f"{'    the same when that record is gone (stage --job in':<52}",
        f"{'    the image: container start, then stat only)':<52} {statistics.median(in_image):>7.3f}",
        f"{'  step: exec.sh start to the app (container start)':<52} {med['step']:>7.3f}",
        f"{'  total per job with one step (target < 3 s)':<52} {med['total']:>7.3f}",
        "",
        "peers, same trees, side by side:",
        *(f"  {name:<50} {s:>7.3f}" for name, s in peers.items()),
    ]
    if "rsync -a model set (no-op)" in peers:
        ratio = med["models"] / peers["rsync -a model set (no-op)"]
        lines.append(f"ratio model stage check / rsync -a no-op: {ratio:.2f}")
    if "apptainer exec SIF true" in peers:
        ratio = med["step"] / peers["apptainer exec SIF true"]
        lines.append(f"ratio step start / bare apptainer exec true: {ratio:.2f}")
    return lines


if __name__ == "__main__":
    main(argv=sys.argv[1:])
