"""Publish a built SIF into the shared image directory: chunked, resumable, verified, atomic.

Why not ``cp``: multi-GB copies to SMB shares stall and get killed, and a half-copied SIF under
its final name is read by the next job as a corrupt image. Here the copy goes to a hidden
``.<name>.partial`` in the destination directory, continues from where a killed copy stopped,
is verified by size and sha256 against the source, fsynced, renamed into place, and only then
is the ``<env>-<arch>.current`` pointer (a plain file naming the SIF: SMB has no symlinks)
written, atomically, last.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from containers.stage import sha256_file
from suite_core.atomic import write_text
from suite_core.errors import UserError

CHUNK = 64 << 20
# A name part that becomes a file name in the images dir: no separators, no "..", no hidden files.
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def partial_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.partial")


@dataclass(frozen=True)
class Copied:
    dst: Path
    bytes_copied: int
    resumed_from: int
    skipped: bool
    sha256: str


def _fsync_dir(directory: Path) -> None:
    """Persist the rename; some network filesystems refuse a directory fsync, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def copy_resumable(src: Path, dst: Path, *, chunk: int = CHUNK,
                   on_chunk: Callable[[int], None] | None = None) -> Copied:
    """Copy ``src`` to ``dst`` so that ``dst`` exists only complete and verified.

    A leftover partial copy is continued (its size is the resume offset); the final size and
    sha256 decide, so a partial that does not match the source is discarded and the copy redone
    once. ``on_chunk(bytes_so_far)`` is called after each chunk (progress; tests inject failures).
    """
    src, dst = Path(src), Path(dst)
    size = src.stat().st_size
    src_sha = sha256_file(src)
    if dst.is_file() and dst.stat().st_size == size and sha256_file(dst) == src_sha:
        return Copied(dst, 0, 0, True, src_sha)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dst)
    for _attempt in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        if offset > size:
            part.unlink()
            offset = 0
        resumed = offset
        with open(src, "rb") as fin, open(part, "ab") as fout:
            fin.seek(offset)
            while block := fin.read(chunk):
                fout.write(block)
                offset += len(block)
                if on_chunk:
                    on_chunk(offset)
            fout.flush()
            os.fsync(fout.fileno())
        if part.stat().st_size == size and sha256_file(part) == src_sha:
            with contextlib.suppress(OSError):  # SMB may refuse chmod; other users must read it
                os.chmod(part, 0o644)
            os.replace(part, dst)
            _fsync_dir(dst.parent)
            return Copied(dst, size - resumed, resumed, False, src_sha)
        part.unlink()  # the partial was not a prefix of this source: start over once
    raise UserError(f"copy of {src} to {dst} does not verify (size/sha256 differ twice)",
                    fix="check the destination filesystem (space, quota, a flaky mount) and rerun")


def publish(sif: Path, images_dir: Path, *, name: str, arch: str, lockhash: str,
            chunk: int = CHUNK, on_chunk: Callable[[int], None] | None = None,
            sif_pattern: str | None = None, pointer_pattern: str | None = None) -> tuple[Path, Copied]:
    """Copy ``sif`` to ``<images_dir>/<name>-<arch>-<lockhash>.sif``, then point the pointer at it.

    The name patterns are the image config's ``sif`` / ``pointer`` keys (defaults in images.py).
    """
    from containers.images import POINTER_PATTERN, SIF_PATTERN, pointer_path
    from containers.sif import read_sif

    for what, value in (("lock hash", lockhash), ("image name", name), ("arch", arch)):
        check_name_part(what, value)
    info = read_sif(sif, with_labels=False)
    if info.arch != arch:
        raise UserError(f"{sif} is an image for {info.arch}, not {arch}", fix="publish it under its own arch")
    images_dir = Path(images_dir)
    dst = images_dir / (sif_pattern or SIF_PATTERN).format(name=name, arch=arch, lockhash=lockhash)
    pointer = pointer_path(images_dir, name, arch, pointer_pattern or POINTER_PATTERN)
    for p in (dst, pointer):
        if os.path.dirname(os.path.normpath(p)) != os.path.normpath(images_dir):
            raise UserError(f"{p.name} would be written outside the images directory", where=str(images_dir),
                            fix="fix the sif/pointer patterns in the image config")
    try:
        copied = copy_resumable(Path(sif), dst, chunk=chunk, on_chunk=on_chunk)
        write_text(pointer, dst.name + "\n")
    except OSError as exc:
        raise _destination_error(exc, images_dir, Path(sif)) from None
    with contextlib.suppress(OSError):
        os.chmod(pointer, 0o644)
    return pointer, copied


def check_name_part(what: str, value: str) -> str:
    """Refuse a value that would become a path (``a/../../x``) or a hidden file in the images dir."""
    if not _NAME_PART.fullmatch(str(value)) or ".." in str(value):
        raise UserError(f"{what} {value!r} cannot be part of a file name", where="publish",
                        fix=f"use letters, digits, '.', '_', '+' and '-' only for the {what} "
                            "(the default lock hash is 12 hex digits)")
    return str(value)


def _destination_error(exc: OSError, images_dir: Path, sif: Path) -> UserError:
    where = str(exc.filename or images_dir)
    if where == str(sif):
        return UserError(f"cannot read the built image: {exc.strerror}", where=where,
                         fix="check the SIF path and its permissions")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return UserError(f"the images directory is full ({exc.strerror})", where=where,
                         fix="free space there (old SIFs not named by a .current pointer can go) and rerun: "
                             "the copy resumes")
    return UserError(f"cannot write the image: {exc.strerror}", where=where,
                     fix="publish to a writable images directory (--dir DIR or paths.images)")
