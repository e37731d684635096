"""Run directories with one writer at a time, and unique names under concurrency.

Two runs writing into one run dir interleave their outputs and both exit 0; so a writer takes an
advisory lock (``.writer.lock`` holding host, pid and Slurm job id) for the whole run, and a
second writer stops with one line naming the holder. The lock is ``fcntl.flock`` on an open file:
released by the kernel when the process dies, so a killed run never leaves a stale lock.
New run-dir names are created with ``mkdir`` (atomic), adding a suffix when the name is taken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from suite_core.errors import UserError

LOCK_NAME = ".writer.lock"


def holder_facts() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid()),
            "job": os.environ.get("SLURM_JOB_ID", ""), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _describe(raw: str) -> str:
    try:
        h = json.loads(raw)
        job = f", Slurm job {h['job']}" if h.get("job") else ""
        return f"host {h['host']} pid {h['pid']}{job} since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def writer_lock(run_dir: str | os.PathLike[str], *, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the run dir's writer lock for the block, or raise a one-line UserError.

    ``name`` picks a finer unit inside one folder (an array task's own report in a shared job folder).
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / name, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot create the run directory lock: {exc.strerror}", where=str(run_dir),
                        fix="choose a writable run_dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(f"cannot lock the run directory: {exc.strerror}", where=str(run_dir),
                                fix="use a run_dir on a filesystem with file locks") from None
            held = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            raise UserError(f"run directory is being written by {_describe(held)}", where=str(run_dir),
                            fix="wait for that run, or give this one another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_facts()).encode(), 0)
        yield run_dir
    finally:
        os.close(fd)


def unique_dir(parent: str | os.PathLike[str], name: str) -> Path:
    """Create and return ``parent/name`` (or ``name-2``, ``name-3``...): never one another caller got."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = parent / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise UserError("too many run directories with one name", where=str(parent / name),
                    fix="clean old runs")
