"""Copy the next video(s) of a chunk from the shared filesystem to node-local disk in the background.

Stage 1 and the driver's own frame count read each input from the share (SMB: ~200 MB/s and
a latency per open); with ``prefetch=N`` the next N inputs are copied to the workdir's
``inputs/`` while the current video runs, so a video starts from NVMe. A failed copy is not a
failed video: the input is then read from the share as before. Copies are atomic (temporary
name, size checked, rename) and deleted after their video.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from suite_core.atomic import atomic_path


def _copy(src: Path, dst: Path) -> tuple[Path, float]:
    t = time.monotonic()
    with atomic_path(dst, suffix=src.suffix) as tmp:
        shutil.copyfile(src, tmp)
        if tmp.stat().st_size != src.stat().st_size:
            raise OSError(f"short copy of {src}")
    return dst, time.monotonic() - t


class Prefetcher:
    """One background copier; ``get`` waits for a scheduled copy (or copies now) and says how long."""

    def __init__(self, dst_dir: Path, depth: int) -> None:
        self.dst_dir = dst_dir
        self.depth = max(0, int(depth))
        self.pool = ThreadPoolExecutor(1) if self.depth else None
        self.jobs: dict[str, Future] = {}

    def _dst(self, name: str, src: Path) -> Path:
        return self.dst_dir / f"{name}{src.suffix}"

    def schedule(self, name: str, src: Path) -> None:
        if self.pool is not None and name not in self.jobs:
            self.dst_dir.mkdir(parents=True, exist_ok=True)
            self.jobs[name] = self.pool.submit(_copy, src, self._dst(name, src))

    def get(self, name: str, src: Path) -> tuple[Path, dict[str, float | str]]:
        """(path to read the input from, facts: wait seconds, copy seconds, where)."""
        if self.pool is None:
            return src, {"where": "share"}
        t = time.monotonic()
        job = self.jobs.get(name)
        try:
            if job is None:
                self.dst_dir.mkdir(parents=True, exist_ok=True)
                path, copy_s = _copy(src, self._dst(name, src))
                ahead = False
            else:
                path, copy_s = job.result()
                ahead = True
        except OSError as exc:
            return src, {"where": "share", "error": str(exc)[:200], "wait": round(time.monotonic() - t, 3)}
        return path, {
            "where": "nvme",
            "wait": round(time.monotonic() - t, 3),
            "copy": round(copy_s, 3),
            "ahead": ahead,
        }

    def discard(self, name: str, src: Path) -> None:
        self.jobs.pop(name, None)
        with contextlib.suppress(OSError):
            self._dst(name, src).unlink()

    def close(self) -> None:
        if self.pool is not None:
            for job in self.jobs.values():
                job.cancel()
            self.pool.shutdown(wait=True)
