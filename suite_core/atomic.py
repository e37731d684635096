"""Atomic outputs: write to a temporary name in the same directory, fsync, then rename.

A reader (or a rerun) sees either the old complete file or the new complete file, never a
half-written one; completion markers are written last with the same mechanism.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    """The mode a plain open() would give (mkstemp's 0600 would hide outputs from the group)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dst``; rename it onto ``dst`` only if the block succeeds.

    ``suffix`` keeps an extension on the temporary name for writers that infer the format
    from it (e.g. ``.png``, ``.mp4``).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=f".part{suffix}", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    with contextlib.suppress(OSError):  # SMB shares refuse chmod: keep whatever they give
        os.chmod(tmp_path, _MODE)
    try:
        yield tmp_path
        os.replace(tmp_path, dst)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(dst)  # write()/fsync() errors name no file: say which output failed
        raise


def write_bytes(dst: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(dst)


def write_text(dst: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(dst, text.encode("utf-8"))


def write_json(dst: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(dst, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
