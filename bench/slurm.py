"""Benchmark of the Slurm layer: staging against ``cp -a`` and ``rsync -a``; submit latency.

Staging: a synthetic model tree (default 300 MB in 2,000 files plus one 200 MB file;
``--issue-size``: 2 GB in 2,000 files plus one 2 GB file) is copied to a fresh destination by
``python -m containers stage``, ``cp -a`` and ``rsync -a`` (first copy), then each is run again
on the complete copy (no-op re-check; ``cp -a`` has none and copies everything again). All
in one run, as ratios, median of ``--repeat`` runs; the page cache is warm for every method alike.

Submit latency: on the private local Slurm (root only), ``python -m containers submit selftest
mode=chain`` (3 jobs, afterok) from command start to return, and until all three completed.

    python bench/slurm.py [--issue-size] [--repeat 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from suite_core.runner import quote, run, which  # noqa: E402


def make_tree(root: Path, files: int, total_mb: int, big_mb: int) -> Path:
    """``files`` small files summing ``total_mb`` over 4 folders, plus one ``big_mb`` file."""
    src = root / "src" / "synthetic-model"
    per = max(1, (total_mb << 20) // max(files, 1))
    block = os.urandom(min(per, 8 << 20))
    for i in range(files):
        d = src / f"shard{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"part{i:05d}.bin", "wb") as fh:
            left = per
            while left > 0:
                fh.write(block[: min(left, len(block))])
                left -= len(block)
    if big_mb:
        chunk = os.urandom(8 << 20)
        with open(src / "model.safetensors", "wb") as fh:
            for _ in range(max(1, big_mb // 8)):
                fh.write(chunk)
    return src


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    run(argv, env=env, timeout=3600)
    return time.perf_counter() - t0


def bench_staging(work: Path, src: Path, repeat: int) -> list[tuple[str, float, float]]:
    py = sys.executable
    methods = {
        "stage": lambda dst: [py, "-m", "containers", "stage", "-q", str(src), str(dst)],
        "cp -a": lambda dst: ["cp", "-a", str(src), str(dst) + "/"],
        "rsync -a": lambda dst: ["rsync", "-a", str(src), str(dst) + "/"],
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    for name, argv in methods.items():
        firsts, rechecks = [], []
        for r in range(repeat):
            dst = work / f"dst-{name.split()[0]}-{r}"
            dst.mkdir()
            firsts.append(_timed(argv(dst), env))
            rechecks.append(_timed(argv(dst), env))
            shutil.rmtree(dst)
        rows.append((name, statistics.median(firsts), statistics.median(rechecks)))
    return rows


def bench_submit(repeat: int) -> list[str]:
    """Submit latency of a 3-job chain on the private local Slurm, or why it was not measured."""
    from tests.plugins.slurm_cluster import LocalSlurm, why_unavailable

    reason = why_unavailable()
    if reason:
        return [f"submit latency: not measured ({reason})"]
    root = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    cluster = LocalSlurm(root / "cluster")
    scratch = root / "scratch"
    env = {
        **cluster.env,
        "CONTAINERS_RUNTIME": "host",
        "CONTAINERS_GPU_GUARD": "warn",
        "PYTHONPATH": str(REPO),
        "CONTAINERS_SCRATCH": str(scratch),
        "CONTAINERS_NODE_LOCAL": str(root / "nvme"),
        "CONTAINERS_SHARED_ROOT": str(root / "shared"),
    }
    submits, completes = [], []
    try:
        cluster.start()
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = run(
                [sys.executable, "-m", "containers", "submit", "selftest", "cluster=torch", "mode=chain"],
                env=env,
                cwd=REPO,
                timeout=120,
            )
            submits.append(time.perf_counter() - t0)
            ids = [
                ln.split()[1]
                for ln in res.stdout.splitlines()
                if ln.startswith("  ") and len(ln.split()) > 2 and ln.split()[1].isdigit()
            ]
            states = cluster.wait(ids, timeout=300, poll=0.1)
            completes.append(time.perf_counter() - t0)
            bad = {k: v for k, v in states.items() if v != ["COMPLETED"]}
            if bad:
                return [f"submit latency: chain failed: {bad}"]
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return [
        f"submit 3-job afterok chain (command start to return), median of {repeat}: "
        f"{statistics.median(submits):.2f} s",
        f"  until all 3 jobs COMPLETED (each job: node-env + doctor, host runtime): "
        f"{statistics.median(completes):.2f} s",
    ]


def ensure_rsync() -> str | None:
    if which("rsync"):
        return None
    if os.geteuid() == 0 and which("apt-get"):
        run(["apt-get", "install", "-y", "--no-install-recommends", "rsync"], check=False, timeout=600)
    return None if which("rsync") else "rsync is not installed (apt-get install rsync)"


def main(out_dir: str | os.PathLike[str] = REPO / "bench" / "results", argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench/slurm.py", description=__doc__.splitlines()[0])
    ap.add_argument("--issue-size", action="store_true", help="2 GB in 2,000 files plus one 2 GB file")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--total-mb", type=int, default=300)
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-submit", action="store_true", help="skip the Slurm submit latency")
    ap.add_argument("--work", help="scratch folder for the trees (default: a temporary folder)")
    a = ap.parse_args(argv if argv is not None else [])
    if a.issue_size:
        a.total_mb, a.big_mb = 2048, 2048
    missing = ensure_rsync()
    if missing:
        raise SystemExit(f"error: {missing}; fix: install rsync to compare against it")
    lines = [
        f"# bench/slurm.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} CPUs), Python {platform.python_version()}",
        "# command: "
        + quote(["python", "bench/slurm.py", *argv] if argv else ["python", "-m", "bench", "slurm"]),
        "",
    ]
    work = Path(tempfile.mkdtemp(prefix="bench-stage-", dir=a.work))
    try:
        t0 = time.perf_counter()
        src = make_tree(work, a.files, a.total_mb, a.big_mb)
        made = time.perf_counter() - t0
        lines.append(
            f"tree: {a.files} files, {a.total_mb} MB + one {a.big_mb} MB file "
            f"(made in {made:.1f} s, same filesystem as {work})"
        )
        rows = bench_staging(work, src, a.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = {name: (first, again) for name, first, again in rows}
    lines.append(f"{'method':<10} {'first copy s':>13} {'re-check s':>11}  (median of {a.repeat})")
    for name, first, again in rows:
        lines.append(f"{name:<10} {first:>13.3f} {again:>11.3f}")
    st_first, st_again = base["stage"]
    lines += [
        "",
        "ratios (stage / other; < 1 means stage is faster):",
        f"  first copy: stage/cp -a = {st_first / base['cp -a'][0]:.2f}, "
        f"stage/rsync -a = {st_first / base['rsync -a'][0]:.2f}",
        f"  re-check:   stage/rsync -a = {st_again / base['rsync -a'][1]:.2f}, "
        f"stage/cp -a (cp copies again) = {st_again / base['cp -a'][1]:.3f}",
        "",
    ]
    lines += bench_submit(a.repeat) if not a.no_submit else ["submit latency: skipped (--no-submit)"]
    text = "\n".join(lines) + "\n"
    out = Path(out_dir) / "slurm.txt"
    from suite_core.atomic import write_text

    write_text(out, text)
    print(text, end="")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(argv=sys.argv[1:])
