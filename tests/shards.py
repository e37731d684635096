"""``make test``: the whole suite as three pytest processes side by side, then their reports.

Why: most of the suite's wall time is waiting (Slurm time limits and continuations, emulated
aarch64 start-up, container starts), not CPU. The tests of the aarch64 node and arm64 builds
form one shard (their session owns the aarch64 spark1 and its SMB-like share), the other jobs
on the local Slurm, the share's own tests and the product recipes' builds (minutes each on a
fresh machine) a second, everything else (CPU-bound) the third;
each shard has its own pytest session, private Slurm cluster, share and temporary folder, so
they share nothing but the read-only world cache. The split follows per-file ``--durations``.
With arguments (``make test ARGS=...``) this is one plain pytest run.

Exit status: the worst of the shards'. Ctrl-C or SIGTERM reaches every shard, whose fixtures
stop their clusters and unmount their shares. A passing shard's temporary files (several GB of
SIF copies and shares) are removed; a failing shard's are kept and named.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARDS = (
    ("aarch64 node and builds", "arm64"),
    ("x86 Slurm jobs, SMB share, recipe builds", "(slurm or smb or recipe_build) and not arm64"),
    ("everything else", "not slurm and not smb and not recipe_build and not arm64"),
)


def main(argv: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest", "-q"]
    if argv:
        return subprocess.call([*pytest, *argv], cwd=REPO)
    work = Path(tempfile.mkdtemp(prefix="suite-test-shards-"))
    started = time.monotonic()
    procs: list[tuple[str, str, subprocess.Popen, Path]] = []
    print(f"make test: {len(SHARDS)} pytest shards side by side; logs in {work}", flush=True)
    try:
        for i, (name, expr) in enumerate(SHARDS):
            log = work / f"shard{i}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [*pytest, "-m", expr, f"--basetemp={work / f'tmp{i}'}"],
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C is passed on below, once, as SIGTERM
                )
            procs.append((name, expr, proc, log))
        codes = [proc.wait() for _, _, proc, _ in procs]
    except KeyboardInterrupt:
        for _, _, proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # what their plugins turn into Ctrl-C
        for _, _, proc, _ in procs:
            proc.wait()
        print("make test: interrupted", file=sys.stderr)
        return 130
    for i, ((name, expr, _, log), code) in enumerate(zip(procs, codes, strict=True)):
        print(f"\n===== shard: {name} (pytest -m '{expr}'), exit {code} =====", flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
        if code == 0:  # a passing shard's files (SIF copies, shares, clusters: GBs) go; a failing one's stay
            shutil.rmtree(work / f"tmp{i}", ignore_errors=True)
    if not any(codes):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"make test: the failing shards' files are kept in {work}", flush=True)
    # the first failing shard's status (a shard killed by a signal counts as 128 + its number)
    worst = next((c if c > 0 else 128 - c for c in codes if c != 0), 0)
    print(f"\nmake test: {len(SHARDS)} shards, exit codes {codes}, {time.monotonic() - started:.0f} s wall")
    return worst


def _term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _term)
    sys.exit(main(sys.argv[1:]))
