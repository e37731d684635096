"""Recipes: how long offline lint takes (it runs in make test) and publish copy throughput.

Publish throughput is measured on this machine's temp disk, chunked and verified as in
production (source hash, copy, re-read and hash the copy); it is a floor for the per-byte cost
our verification adds, not a measure of an SMB share.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _lint_times(n: int) -> list[float]:
    from containers.runner import run

    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        run([sys.executable, "-m", "containers", "lint"], cwd=REPO, what="containers lint")
        out.append(time.perf_counter() - t0)
    return out


def _publish_rate(size: int) -> tuple[float, float]:
    """(MB/s of a full verified copy, MB/s of plain shutil.copyfile) on the temp disk."""
    import shutil

    from containers.publish import copy_resumable

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.bin"
        with open(src, "wb") as fh:
            for _ in range(size >> 20):
                fh.write(os.urandom(1 << 20))
        t0 = time.perf_counter()
        copy_resumable(src, Path(tmp) / "out" / "dst.sif")
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        shutil.copyfile(src, Path(tmp) / "plain.bin")
        plain = time.perf_counter() - t0
    return size / 2**20 / ours, size / 2**20 / plain


def main(out_dir: Path) -> None:
    from containers.locks import load_images, read_lock

    times = _lint_times(5)
    ours, plain = _publish_rate(512 << 20)
    specs = load_images().values()
    locks = [s.lock_path(a) for s in specs for a in s.arches]
    packages = sum(len(read_lock(p).requirements) for p in locks)
    lines = ["command: make bench ARGS=recipes   (python -m bench recipes)",
             f"machine: {platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores", "",
             f"python -m containers lint ({len(specs)} definitions, {len(locks)} locks, "
             f"{packages} pinned packages):",
             f"  median {statistics.median(times):.3f} s, min {min(times):.3f} s over {len(times)} runs", "",
             "publish of a 512 MiB file on the temp disk (chunked, fsync, size + sha256 verified):",
             f"  {ours:.0f} MiB/s verified copy vs {plain:.0f} MiB/s plain shutil.copyfile",
             "  (verification reads the source and the copy once more each; on an SMB share the",
             "  network write dominates)"]
    (out_dir / "recipes.txt").write_text("\n".join(lines) + "\n")
