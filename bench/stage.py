"""Staging benchmark: ``containers stage`` against ``cp -a`` and ``rsync -a``, side by side.

The tree is the issue's: 2,000 files (1.2 GB in 4 folders) plus two 400 MB files, 2 GB in all
(``--scale 0.1`` for a quick look). Each repeat runs every method once, interleaved (the order
rotates, so each method takes each place in turn), so page cache and writeback fall on all of
them alike: before each timed copy the source is read into the page cache and ``sync`` writes
back what is dirty; the table holds
medians of ``--repeat`` (9) repeats, and a ratio is the median of the per-repeat ratios. A copy
is emptied right after it is timed (letting a repeat's 8 GB pile up taxed whichever method came
last with page-cache reclaim), by truncating its files, not deleting them: ext4 without a
journal (this kind of VM disk) skips every inode freed in the last 5 s (300 s while its table
block is dirty) when it allocates one, so 2,000 files created right after 2,000 were deleted
spend up to a third of their CPU time in ``recently_deleted`` (``perf``), a tax that fell on
whichever method ran after a deletion and made the per-repeat ratios swing from 0.3 to 1.8. A
node-local NVMe (ext4 with a journal, xfs) does not do this; a truncated file frees its blocks
and page cache as a deleted one does, and keeps its inode. For the same reason the work folder
gets ``chattr +T`` where the filesystem has it: ext4 then places each copy's folder in a little
used block group instead of the one of ``/tmp``, where other processes' deleted files would tax
the copy the same way (``perf`` showed it with and without). CPU seconds (user + system, from
``getrusage`` of the child) are shown beside the wall times: on a shared machine they move
less than wall time, which also holds the time spent waiting for a CPU; the ratio of the fastest
run of each method (the least disturbed one) is shown beside the median for the same reason:

- first copy to a fresh destination: ``stage`` (one stream), ``stage --jobs N``, ``cp -a``,
  ``rsync -a``;
- no-op re-check on a complete copy made once by each tool: ``stage`` and ``rsync -a``
  (``python -c pass`` shown for the interpreter's own start-up), 11 runs each per repeat,
  alternating, median per repeat (one 50 ms run is at the mercy of anything else on the
  machine), after a ``sync``: a job start on a warm node finds a copy made long before, not one
  whose 2 GB are still being written back (which taxed whichever method had copied fastest);
- resume: a ``stage`` process is killed (SIGKILL, by the runner's timeout) about halfway; the
  bytes missing at the kill are what the destination lacks (complete files plus the allocated
  blocks of partial ones), and the rerun's ``bytes_copied`` is compared with them.

Byte-code caching is on (``PYTHONDONTWRITEBYTECODE`` unset), as on a user's checkout.

    python bench/stage.py [--scale 1.0] [--repeat 9] [--jobs 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
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

from suite_core.errors import UserError  # noqa: E402
from suite_core.runner import quote, run, which  # noqa: E402


def make_tree(root: Path, scale: float) -> tuple[Path, int, int]:
    """2,000 files of 1.2 GB total in 4 folders plus two 400 MB files (times ``scale``)."""
    src = root / "src" / "model"
    files, small_total, big = 2000, int(1200 * scale) << 20, int(400 * scale) << 20
    per = max(1, small_total // files)
    block = os.urandom(8 << 20)
    for i in range(files):
        d = src / f"shard{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        off = (i * 4099) % (len(block) - per) if per < len(block) else 0
        (d / f"part{i:05d}.bin").write_bytes(block[off: off + per])
    for j in range(2):
        with open(src / f"model-{j}.safetensors", "wb") as fh:
            left = big
            while left > 0:
                fh.write(block[: min(left, len(block))])
                left -= len(block)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    return src, files + 2, total


CPU: dict[str, list[float]] = {}   # user + system seconds per timed command, by key
USER: dict[str, list[float]] = {}  # user seconds alone (the interpreter's share of a copy)
NOOP_RUNS = 11


def _timed(argv: list[str], env: dict[str, str], key: str | None = None) -> float:
    """Wall seconds of one command; its CPU seconds (user + sys) are kept under ``key``."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run(argv, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if key:
        CPU.setdefault(key, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        USER.setdefault(key, []).append(after.ru_utime - before.ru_utime)
    return wall


def discard(tree: Path) -> None:
    """Empty a timed copy: truncate its files (blocks and page cache go), keep their inodes.

    Deleting them would make the next method's file creations skip 2,000 recently freed inodes
    on a journal-less ext4 (see the module docstring); the trees go with the work folder.
    """
    for root, _, files in os.walk(tree):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.truncate(p, 0)


def _sync() -> None:
    os.sync()


def warm(src: Path) -> None:
    """Read the source into the page cache before each timed copy, so every method starts from the
    same state: other work on the machine evicts some of it between copies, and whichever method
    came first after that paid for reading it from disk."""
    buf = bytearray(8 << 20)
    for root, _, files in os.walk(src):
        for name in files:
            with open(os.path.join(root, name), "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def present_bytes(dst: Path, src: Path) -> int:
    """Bytes already in the destination: complete files, plus the written blocks of partial ones."""
    have = 0
    for p in dst.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        if p.name.endswith(".part"):
            st = p.stat()
            have += min(st.st_blocks * 512, st.st_size)
            continue
        rel = p.relative_to(dst)
        s = src / rel
        if s.is_file() and s.stat().st_size == p.stat().st_size:
            have += p.stat().st_size
    return have


def spread(work: Path) -> str:
    """``chattr +T`` on the work folder (see the module docstring); what the header says about it."""
    if which("chattr") and run(["chattr", "+T", str(work)], check=False).returncode == 0:
        return "folders spread over block groups (chattr +T)"
    return "chattr +T not available here"


def bench(work: Path, src: Path, total: int, repeat: int, jobs: int) -> dict[str, list[float]]:
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(REPO)
    stage = [py, "-m", "containers", "stage", "-q"]
    firsts = {  # stage and cp -a side by side in three of the four rotations (the ratio with a target)
        "stage": lambda d: [*stage, str(src), str(d)],
        "cp -a": lambda d: ["cp", "-a", str(src), f"{d}/"],
        f"stage -j{jobs}": lambda d: [*stage, "--jobs", str(jobs), str(src), str(d)],
        "rsync -a": lambda d: ["rsync", "-a", str(src), f"{d}/"],
    }
    rechecks = {"stage": firsts["stage"], "rsync -a": firsts["rsync -a"]}
    out: dict[str, list[float]] = {k: [] for k in [*(f"first {m}" for m in firsts),
                                                    *(f"noop {m}" for m in rechecks),
                                                    "python -c pass", "resume ratio", "kill at"]}
    run([*stage, str(src), str(work / "warm")], env=env)  # byte-code written once, like any checkout
    discard(work / "warm")
    made = {name: work / f"noop-{name.replace(' ', '')}" for name in rechecks}  # what the re-checks find
    for name, dst in made.items():
        dst.mkdir()
        run(rechecks[name](dst), env=env)
    for r in range(repeat):
        order = list(firsts.items())
        order = order[r % len(order):] + order[:r % len(order)]  # each method takes each place in turn
        for name, argv in order:
            dst = work / f"dst-{r}-{name.replace(' ', '')}"
            dst.mkdir()
            warm(src)
            _sync()
            out[f"first {name}"].append(_timed(argv(dst), env, f"first {name}"))
            discard(dst)
        # no-op re-checks: NOOP_RUNS each, alternating, on copies synced to disk; the median per repeat
        _sync()
        runs: dict[str, list[float]] = {k: [] for k in [*rechecks, "python -c pass"]}
        for i in range(NOOP_RUNS):
            for name in (list(rechecks) if i % 2 == 0 else list(reversed(rechecks))):
                runs[name].append(_timed(rechecks[name](made[name]), env, f"noop {name}"))
            runs["python -c pass"].append(_timed([py, "-c", "pass"], env, "python -c pass"))
        for name, vals in runs.items():
            out[name if name.startswith("python") else f"noop {name}"].append(statistics.median(vals))
        # resume: kill a one-stream stage about halfway through, then rerun it
        dst = work / f"dst-{r}-resume"
        dst.mkdir()
        _sync()
        half = statistics.median(out["first stage"]) * 0.5
        with contextlib.suppress(UserError):  # killed by the runner's timeout: what we want
            run(firsts["stage"](dst), env=env, timeout=half)
        missing = total - present_bytes(dst / src.name, src)
        from containers.stage import stage as stage_fn

        res = stage_fn(src, dst)
        out["resume ratio"].append(res.bytes_copied / missing if missing else float("nan"))
        out["kill at"].append(1 - missing / total)
        discard(dst)
    return out


def ensure_tools() -> str | None:
    if not which("rsync") and os.geteuid() == 0 and which("apt-get"):
        run(["apt-get", "install", "-y", "--no-install-recommends", "rsync"], check=False, timeout=600)
    return None if which("rsync") else "rsync is not installed (apt-get install rsync)"


def main(out_dir: str | os.PathLike[str] = REPO / "bench" / "results", argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench/stage.py", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="tree size factor (1.0 = the issue's 2 GB)")
    ap.add_argument("--repeat", type=int, default=9, help="repeats (medians; the issue asks for at least 5)")
    ap.add_argument("--jobs", type=int, default=4, help="streams for the parallel stage")
    ap.add_argument("--work", help="scratch folder for the trees (default: a temporary folder)")
    a = ap.parse_args(argv if argv is not None else [])
    missing = ensure_tools()
    if missing:
        raise SystemExit(f"error: {missing}; fix: install rsync to compare against it")
    cmd = ["python", "bench/stage.py", *argv] if argv else ["python", "-m", "bench", "stage"]
    lines = [
        f"# bench/stage.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} CPUs), Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the start (other work on the machine skews every ratio)",
        "# command: " + quote(cmd) + ("   (make bench ARGS=stage)" if not argv else ""),
        "",
    ]
    work = Path(tempfile.mkdtemp(prefix="bench-stage-", dir=a.work))
    try:
        placed = spread(work)
        t0 = time.perf_counter()
        src, nfiles, total = make_tree(work, a.scale)
        lines.append(f"tree: {nfiles} files, {total / 2**30:.2f} GiB (2,000 files + two "
                     f"{400 * a.scale:.0f} MB files; made in {time.perf_counter() - t0:.1f} s on the "
                     f"filesystem of {work.parent}, {placed}); median of {a.repeat}, methods "
                     "interleaved in rotating order, source read into the page cache before each timed "
                     "copy, each copy truncated (not deleted) after it is timed")
        res = bench(work, src, total, a.repeat, a.jobs)
        lines[0] += f", {os.getloadavg()[0]:.1f} at the end"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    j = f"stage -j{a.jobs}"
    user = {k: statistics.median(v) for k, v in USER.items()}
    lines += ["", f"{'first copy':<22} {'wall s':>8} {'GB/s':>7} {'cpu s':>7} {'user s':>7}"]
    for m in ("stage", j, "cp -a", "rsync -a"):
        k = f"first {m}"
        lines.append(f"  {m:<20} {med[k]:>8.3f} {total / 1e9 / med[k]:>7.2f} {cpu[k]:>7.3f} {user[k]:>7.3f}")
    lines += ["", f"{'no-op re-check':<22} {'wall s':>8} {'':>7} {'cpu s':>7}"]
    for m in ("stage", "rsync -a", "python -c pass"):
        k = m if m.startswith("python") else f"noop {m}"
        lines.append(f"  {m:<20} {med[k]:>8.3f} {'':>7} {cpu[k]:>7.3f}")

    def paired(a_key: str, b_key: str, source: dict[str, list[float]] = res) -> str:
        """Median over repeats of (a / b) within one repeat: slow drifts of a shared machine cancel."""
        vals = [x / y for x, y in zip(source[a_key], source[b_key], strict=True) if y]
        return f"{statistics.median(vals):.2f}  (per repeat: {', '.join(f'{v:.2f}' for v in vals)})"

    def cpu_ratio(a_key: str, b_key: str) -> str:
        return f"{cpu[a_key] / cpu[b_key]:.2f}"

    resumes = [x for x in res["resume ratio"] if x == x]  # nan: the kill came after the copy finished
    lines += [
        "",
        "ratios, median of the per-repeat ratios (> 1 means stage is faster); cpu: ratio of median CPU s",
        f"  first copy   stage vs cp -a      {paired('first cp -a', 'first stage')}   (target >= 0.95)",
        f"               the same, CPU s     {paired('first cp -a', 'first stage', CPU)}",
        f"               fastest of each     {min(res['first cp -a']) / min(res['first stage']):.2f}  "
        "(wall: the least disturbed run of each; cpu "
        f"{min(CPU['first cp -a']) / min(CPU['first stage']):.2f})",
        f"  first copy   stage vs rsync -a   {paired('first rsync -a', 'first stage')}"
        f"   cpu {cpu_ratio('first rsync -a', 'first stage')}",
        f"  no-op        stage vs rsync -a   {paired('noop rsync -a', 'noop stage')}   (target >= 1, aim 3)"
        f"   cpu {cpu_ratio('noop rsync -a', 'noop stage')}",
        f"  parallel     {j} vs stage       {paired('first stage', f'first {j}')}   "
        f"(speed-up of {a.jobs} streams over one here: {os.cpu_count()} CPUs, one local disk; "
        "streams pay off where one stream is slow, e.g. an SMB share)",
        f"  resume       bytes copied by the rerun / bytes missing at the kill: "
        f"{statistics.median(resumes) if resumes else float('nan'):.3f}   (target <= 1.1)",
        f"               killed at {100 * med['kill at']:.0f} % of the bytes (median); per repeat: "
        f"{', '.join(f'{x:.3f}' for x in res['resume ratio'])}",
        "",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(out_dir) / "stage.txt"
    from suite_core.atomic import write_text

    write_text(out, text)
    print(text, end="")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(argv=sys.argv[1:])
