"""Stage models and SIFs from shared storage to node-local disk, incrementally and safely.

``stage(SRC, DSTDIR)`` mirrors ``SRC`` (a file or a tree) to ``DSTDIR/<basename of SRC>``:
basenames are kept because some tools find their weights by directory name. Why each rule:

- the manifest ``DSTDIR/.<name>.stage.json`` (relative path, size, mtime_ns, optional sha256) is
  written last, so a staged copy is complete exactly when its manifest matches it; it is
  removed before the first change, so a copy interrupted halfway (node killed, disk full)
  never looks complete;
- a per-node lock (``flock`` on ``DSTDIR/.<name>.stage.lock``) makes array tasks sharing a node
  wait for the first one instead of racing on the same files;
- each file is copied to a temporary name next to its target and renamed into place;
- the source is only read (SMB shares refuse chmod/chown/symlink): no ``copystat``, the
  destination gets the source's mtime through ``utime`` on the destination only;
- re-checking a staged tree compares ``stat`` results with the manifest: no file is read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from containers.atomic import write_json
from containers.errors import UserError
from containers.publish import sha256_file

MANIFEST_VERSION = 1
CHUNK = 8 << 20
# Names that mean "a writer has not finished": our own temp files, HF hub and browsers' partials.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # "the destination is full"
PARTIAL_SUFFIXES = (".part", ".partial", ".incomplete", ".crdownload", ".tmp")


@dataclass
class Entry:
    path: str
    size: int
    mtime_ns: int
    sha256: str | None = None
    link: str | None = None  # symlink target (kept as a link on the destination)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256:
            d["sha256"] = self.sha256
        if self.link is not None:
            d["link"] = self.link
        return d


@dataclass
class StageResult:
    """What one staging call did; ``copied == 0 and removed == 0`` is a no-op re-check."""

    dst: Path
    manifest: Path
    files: int = 0
    copied: int = 0
    removed: int = 0
    bytes_copied: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    waited: float = 0.0

    def summary(self) -> str:
        mb = self.bytes_copied / 1e6
        head = (
            f"staged {self.dst}: {self.files} files, {self.total_bytes / 1e6:.1f} MB; "
            f"copied {self.copied} ({mb:.1f} MB), removed {self.removed}, in {self.seconds:.2f} s"
        )
        if self.waited >= 0.5:
            head += f" (waited {self.waited:.1f} s for another task's lock)"
        return head


def manifest_path(dst_dir: Path, name: str) -> Path:
    return dst_dir / f".{name}.stage.json"


def lock_path(dst_dir: Path, name: str) -> Path:
    return dst_dir / f".{name}.stage.lock"


@contextlib.contextmanager
def node_lock(
    path: Path, *, timeout: float | None = None, on_wait: Callable[[str], None] | None = None
) -> Iterator[float]:
    """Hold an exclusive ``flock`` on ``path``; yields the seconds spent waiting for it.

    flock (not a pid file) because the kernel drops it when a task dies, so a killed array
    task never leaves the node locked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    t0 = time.monotonic()
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait and not told:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    on_wait(f"waiting for {holder} to finish staging (lock {path})")
                    told = True
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise UserError(
                        f"staging lock {path} still held after {timeout:g} s",
                        fix="check for a stuck staging task on this node",
                    ) from None
                time.sleep(0.05)
        waited = time.monotonic() - t0
        os.ftruncate(fd, 0)
        job = os.environ.get("SLURM_JOB_ID")
        os.pwrite(fd, f"pid {os.getpid()}{' job ' + job if job else ''}\n".encode(), 0)
        yield waited
    finally:
        os.close(fd)  # closing releases the flock


def _is_partial(name: str) -> bool:
    return name.endswith(PARTIAL_SUFFIXES) or (name.startswith(".") and ".part" in name)


def scan_source(src: Path) -> list[Entry]:
    """Stat every file under ``src`` (or ``src`` itself); refuse an incomplete source."""
    if not src.exists() and not src.is_symlink():
        raise UserError(
            f"staging source {src} does not exist",
            fix="check the path (models/SIFs on shared storage) or publish it first",
        )
    if src.is_file():
        st = src.stat()
        return [Entry(src.name, st.st_size, st.st_mtime_ns)]
    if not src.is_dir():
        raise UserError(
            f"staging source {src} is neither a file nor a directory", fix="stage a file or a folder"
        )
    entries: list[Entry] = []
    partial: list[str] = []

    def onerror(exc: OSError) -> None:
        raise UserError(
            f"cannot read {exc.filename}: {exc.strerror}",
            where="staging source",
            fix="check permissions on the shared storage",
        ) from None

    for root, dirs, files in os.walk(src, onerror=onerror):
        dirs.sort()
        rel_root = os.path.relpath(root, src)
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            full = os.path.join(root, name)
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if _is_partial(name):
                partial.append(rel)
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, 0, st.st_mtime_ns, link=os.readlink(full)))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(rel, st.st_size, st.st_mtime_ns))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    if partial:
        raise UserError(
            f"staging source {src} is incomplete: {len(partial)} partial file(s) such as {partial[0]}",
            fix="wait for the upload/download to finish, or remove the partial files",
        )
    if not entries:
        raise UserError(f"staging source {src} is empty", fix="publish the models/images there first")
    return entries


def read_manifest(path: Path) -> dict[str, Entry] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return None
    out = {}
    for d in data.get("files", []):
        out[d["path"]] = Entry(d["path"], d["size"], d["mtime_ns"], d.get("sha256"), d.get("link"))
    return out


def _dest_matches(target: Path, e: Entry, old: Entry | None) -> bool:
    """Stat-only: the staged file is the one the manifest recorded for this source state."""
    if old is None or (old.size, old.mtime_ns, old.link) != (e.size, e.mtime_ns, e.link):
        return False
    try:
        st = os.lstat(target)
    except OSError:
        return False
    if e.link is not None:
        return stat.S_ISLNK(st.st_mode) and os.readlink(target) == e.link
    return stat.S_ISREG(st.st_mode) and st.st_size == e.size and st.st_mtime_ns == e.mtime_ns


def _write_error(exc: OSError, path: Path) -> UserError:
    if exc.errno in _FULL:
        return UserError(
            f"destination is full while writing {path} ({exc.strerror})",
            where=str(path.parent),
            fix="free space on the node-local disk or stage fewer models",
        )
    return UserError(f"cannot write {path}: {exc.strerror}", fix="check the node-local destination")


def copy_file(src: Path, dst: Path, *, checksum: bool = False) -> str | None:
    """Stream ``src`` into ``dst`` in chunks (kernel-side when possible); return sha256 if asked."""
    h = hashlib.sha256() if checksum else None
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        if h is None:
            try:
                while os.copy_file_range(fi.fileno(), fo.fileno(), CHUNK):
                    pass
                return None
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                fi.seek(0)
                fo.seek(0)
                fo.truncate()
        while chunk := fi.read(CHUNK):
            fo.write(chunk)
            if h is not None:
                h.update(chunk)
    return h.hexdigest() if h is not None else None


def _remove_extras(dst: Path, keep: set[str]) -> int:
    """Delete what the source no longer has (files, links, then empty folders)."""
    removed = 0
    for root, dirs, files in os.walk(dst, topdown=False):
        rel_root = os.path.relpath(root, dst)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel not in keep:
                os.unlink(os.path.join(root, name))
                removed += 1
        if root != str(dst) and not os.listdir(root):
            os.rmdir(root)
    return removed


def stage(
    src: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    checksum: bool = False,
    verify: bool = False,
    lock_timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> StageResult:
    """Mirror ``src`` to ``dst_dir/<basename>``; see the module docstring for the guarantees.

    ``checksum`` records a sha256 per copied file (computed from the bytes read, then checked
    against the written file). ``verify`` re-reads every staged file against the manifest's
    sha256 (or size) even when stat says nothing changed.
    """
    t0 = time.monotonic()
    src = Path(os.path.abspath(src))
    dst_dir = Path(os.path.abspath(dst_dir))
    name = src.name
    if not name:
        raise UserError(f"cannot stage {src}: it has no basename", fix="stage a file or a named folder")
    entries = scan_source(src)
    single = src.is_file()
    target_root = dst_dir / name
    mpath = manifest_path(dst_dir, name)
    try:
        dst_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create staging destination {dst_dir}: {exc.strerror}",
            fix="set CONTAINERS_NODE_LOCAL (or paths.node_local) to a writable local disk",
        ) from None
    if single and target_root.is_dir():
        raise UserError(
            f"{target_root} is a folder but {src} is a file", fix="remove the folder or pick another DST"
        )
    result = StageResult(
        dst=target_root, manifest=mpath, files=len(entries), total_bytes=sum(e.size for e in entries)
    )
    with node_lock(lock_path(dst_dir, name), timeout=lock_timeout, on_wait=log) as waited:
        result.waited = waited
        old = read_manifest(mpath) or {}
        todo = []
        for e in entries:
            target = target_root if single else target_root / e.path
            if _dest_matches(target, e, old.get(e.path)) and (not verify or _verified(target, old[e.path])):
                e.sha256 = old[e.path].sha256
                if checksum and e.sha256 is None and e.link is None:
                    e.sha256 = sha256_file(target)
                continue
            todo.append(e)
        extras_possible = not single and target_root.is_dir() and set(old) != {e.path for e in entries}
        if not todo and not extras_possible and mpath.is_file() and not (checksum and _missing_sums(old)):
            result.seconds = time.monotonic() - t0
            return result
        # From here on the tree changes: it must not look complete until the new manifest lands.
        with contextlib.suppress(FileNotFoundError):
            mpath.unlink()
        if not single:
            target_root.mkdir(parents=True, exist_ok=True)
        for e in todo:
            target = target_root if single else target_root / e.path
            source = src if single else src / e.path
            _stage_one(source, target, e, checksum)
            result.copied += 1
            result.bytes_copied += e.size
        if not single:
            result.removed = _remove_extras(target_root, {e.path for e in entries})
        try:
            write_json(
                mpath,
                {
                    "version": MANIFEST_VERSION,
                    "source": str(src),
                    "name": name,
                    "kind": "file" if single else "tree",
                    "staged": time.time(),
                    "total_bytes": result.total_bytes,
                    "files": [e.as_dict() for e in entries],
                },
            )
        except OSError as exc:
            raise _write_error(exc, mpath) from None
    result.seconds = time.monotonic() - t0
    return result


def _missing_sums(old: dict[str, Entry]) -> bool:
    return any(e.sha256 is None and e.link is None for e in old.values())


def _verified(target: Path, e: Entry) -> bool:
    if e.link is not None:
        return True
    if e.sha256:
        return sha256_file(target) == e.sha256
    return target.stat().st_size == e.size


def _stage_one(source: Path, target: Path, e: Entry, checksum: bool) -> None:
    """Copy one file (or recreate one link) under a temporary name, verify, rename into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, target.parent) from None
    tmp = target.with_name(f".{target.name}.stage-{os.getpid()}.part")
    try:
        if e.link is not None:
            os.symlink(e.link, tmp)
            os.replace(tmp, target)
            return
        try:
            digest = copy_file(source, tmp, checksum=checksum)
        except OSError as exc:
            if not source.exists():
                raise UserError(
                    f"{source} disappeared while staging",
                    where="staging source",
                    fix="wait until the source is published completely, then stage again",
                ) from None
            if exc.errno in _FULL:
                raise _write_error(exc, target) from None
            raise UserError(
                f"cannot copy {source} to {target}: {exc.strerror}",
                fix="check the shared storage and the node-local disk",
            ) from None
        st = source.stat()
        if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
            raise UserError(
                f"{source} changed while it was being staged",
                where="staging source",
                fix="wait until it is completely written, then stage again",
            )
        got = tmp.stat().st_size
        if got != e.size:
            raise UserError(
                f"staged copy of {source} has {got} bytes, expected {e.size}",
                fix="check the node-local disk and stage again",
            )
        if checksum:
            if sha256_file(tmp) != digest:
                raise UserError(
                    f"checksum of the staged copy of {source} differs from the source's",
                    fix="check the node-local disk and stage again",
                )
            e.sha256 = digest
        os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check(src: str | os.PathLike[str], dst_dir: str | os.PathLike[str]) -> list[str]:
    """Stat-only comparison of a staged copy with its source; returns the differences."""
    src = Path(os.path.abspath(src))
    dst_dir = Path(os.path.abspath(dst_dir))
    old = read_manifest(manifest_path(dst_dir, src.name))
    if old is None:
        return [f"no complete staged copy of {src.name} in {dst_dir} (manifest missing)"]
    single = src.is_file()
    diffs = []
    entries = scan_source(src)
    for e in entries:
        target = dst_dir / src.name if single else dst_dir / src.name / e.path
        if not _dest_matches(target, e, old.get(e.path)):
            diffs.append(f"{e.path}: differs from the source")
    for p in set(old) - {e.path for e in entries}:
        diffs.append(f"{p}: no longer in the source")
    return diffs
