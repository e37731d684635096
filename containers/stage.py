"""Stage models and SIFs from shared storage to node-local disk: incremental, resumable, safe.

``stage(SRC, DSTDIR)`` mirrors ``SRC`` (a file or a tree) to ``DSTDIR/<basename of SRC>``:
basenames are kept because some tools find their weights by directory name. Why each rule:

- the manifest ``DSTDIR/.<name>.stage.manifest`` (a header line, then one tab-separated line
  per file: relative path, size, mtime_ns, optional sha256 and link target) is written last, so
  a staged copy is complete exactly when its manifest matches it; it is removed before the first
  change, so a copy interrupted halfway (node killed, disk full) never looks complete;
- a kill must not cost the bytes already copied (models are tens of GB over a ~200 MB/s share):
  while the tree changes, ``DSTDIR/.<name>.stage.journal`` lists every file already in place
  (one manifest line appended after each file is in place), and a file larger than ``RESUMABLE`` is copied in
  ``CHUNK``-sized pieces into ``.<file>.stage-<host>-<pid>.part`` with a ``.log`` beside it that
  names the source version (size, mtime) and each finished chunk. A rerun trusts the journal's
  files whose stat still matches, continues a dead writer's part from its logged chunks, and
  deletes parts of writers that are gone (pid not alive on this host);
- a per-node lock (``flock`` on ``DSTDIR/.<name>.stage.lock``) makes array tasks sharing a node
  wait for the first one instead of racing on the same files;
- the source is only read (SMB shares refuse chmod/chown/symlink): no ``copystat``, the
  destination gets the source's mtime through ``utime`` on the destination only;
- re-checking a staged tree compares ``stat`` results with the manifest: no file is read. It
  runs at every job start, so this module imports only what that check needs (no pathlib,
  hashlib, json (and with it re) or tempfile until a copy or a checksum asks for them), reads a
  plain-text manifest and compares plain values: the whole no-op is one ``scandir`` pass over
  the source plus one ``lstat`` per staged file. The JSON manifest of earlier versions
  (``.<name>.stage.json``) is still read, so an upgrade does not restage every node; anything
  that does not parse completely (torn, foreign, another version, a row of another shape) is no
  manifest: the files are re-checked against the journal and copied, never trusted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from operator import attrgetter

from suite_core.errors import UserError

if False:  # typing and pathlib cost ~3 and ~5 ms of start-up; annotations are strings (from __future__)
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import Any

MANIFEST_VERSION = 2  # 2: text, a line per file; 1 (JSON, ``.<name>.stage.json``) is still read
_MAGIC = "containers-stage-manifest"
CHUNK = 16 << 20          # unit of copy, of resume and of one parallel task within a large file
RESUMABLE = 2 * CHUNK     # files above this are copied chunk by chunk with a resume log
_BUF = 8 << 20            # read/write buffer when the kernel cannot copy file to file
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # "the destination is full"
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF)
# Names that mean "a writer has not finished": our own temp files, HF hub and browsers' partials.
PARTIAL_SUFFIXES = (".part", ".partial", ".incomplete", ".crdownload", ".tmp")
HOST = os.uname().nodename


class Entry:
    """One file or link of the source as the manifest records it (plain class: import cost)."""

    __slots__ = ("link", "mtime_ns", "path", "sha256", "size")

    def __init__(self, path: str, size: int, mtime_ns: int, sha256: str | None = None,
                 link: str | None = None) -> None:
        self.path, self.size, self.mtime_ns, self.sha256, self.link = path, size, mtime_ns, sha256, link

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256:
            d["sha256"] = self.sha256
        if self.link is not None:
            d["link"] = self.link
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        return cls(d["path"], d["size"], d["mtime_ns"], d.get("sha256"), d.get("link"))

    def __repr__(self) -> str:
        return f"Entry({self.as_dict()!r})"


class StageResult:
    """What one staging call did; ``copied == 0 and removed == 0`` is a no-op re-check."""

    def __init__(self, dst: Path | str, manifest: Path | str, files: int = 0, total_bytes: int = 0) -> None:
        self._dst, self._manifest = os.fspath(dst), os.fspath(manifest)  # Paths made on demand
        self.files, self.total_bytes = files, total_bytes
        self.copied = self.removed = self.bytes_copied = self.resumed = self.bytes_resumed = 0
        self.cleaned = 0  # orphaned parts of dead writers removed
        self.seconds = self.waited = 0.0

    @property
    def dst(self) -> Path:
        from pathlib import Path

        return Path(self._dst)

    @property
    def manifest(self) -> Path:
        from pathlib import Path

        return Path(self._manifest)

    def summary(self) -> str:
        mb = self.bytes_copied / 1e6
        head = (
            f"staged {self._dst}: {self.files} files, {self.total_bytes / 1e6:.1f} MB; "
            f"copied {self.copied} ({mb:.1f} MB), removed {self.removed}, in {self.seconds:.2f} s"
        )
        if self.resumed:
            head += f"; resumed {self.resumed} (kept {self.bytes_resumed / 1e6:.1f} MB already copied)"
        if self.cleaned:
            head += f"; removed {self.cleaned} orphaned part file(s) of dead writers"
        if self.waited >= 0.5:
            head += f" (waited {self.waited:.1f} s for another task's lock)"
        return head


def manifest_path(dst_dir: Path | str, name: str) -> Path:
    from pathlib import Path

    return Path(dst_dir, f".{name}.stage.manifest")


def journal_path(dst_dir: Path | str, name: str) -> Path:
    from pathlib import Path

    return Path(dst_dir, f".{name}.stage.journal")


def lock_path(dst_dir: Path | str, name: str) -> Path:
    from pathlib import Path

    return Path(dst_dir, f".{name}.stage.lock")


def part_path(target: Path, pid: int | None = None, host: str = HOST) -> Path:
    """The temporary name of ``target`` while this process writes it (host and pid: who writes)."""
    return target.with_name(f".{target.name}.stage-{host}-{os.getpid() if pid is None else pid}.part")


def announce_holder(path: Path) -> None:
    """Write who holds the lock into it, for the message a waiting task prints.

    Fixed width, no truncate; skipped by a no-op re-check, whose write could wait on the
    writeback of the lock file's page right after a large copy.
    """
    job = os.environ.get("SLURM_JOB_ID")
    holder = f"pid {os.getpid()} on {HOST}{' job ' + job if job else ''}"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, holder.ljust(199).encode()[:199] + b"\n", 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def node_lock(
    path: Path, *, timeout: float | None = None, on_wait: Callable[[str], None] | None = None,
    announce: bool = True,
) -> Iterator[float]:
    """Hold an exclusive ``flock`` on ``path``; yields the seconds spent waiting for it.

    flock (not a pid file) because the kernel drops it when a task dies, so a killed array
    task never leaves the node locked. ``announce=False`` leaves the holder line to the caller
    (:func:`announce_holder`, once it is about to change something).
    """
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _write_error(exc, path) from None
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
        if announce:
            announce_holder(path)
        yield waited
    finally:
        os.close(fd)  # closing releases the flock


_NAME = attrgetter("name")  # sort key of DirEntries (operator: already loaded by ``-m``'s runpy)


def scan_source(src: Path | str) -> list[Entry]:
    """Stat every file under ``src`` (or ``src`` itself) once; refuse an incomplete source."""
    return _scan(os.fspath(src))[0]


def _scan(src: str) -> tuple[list[Entry], bool]:
    """:func:`scan_source` and whether ``src`` is a single file (no second stat on the share)."""
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise UserError(
            f"staging source {src} does not exist",
            fix="check the path (models/SIFs on shared storage) or publish it first",
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read staging source {src}: {exc.strerror}",
                        fix="check permissions on the shared storage") from None
    if stat.S_ISREG(st.st_mode):
        return [Entry(os.path.basename(src), st.st_size, st.st_mtime_ns)], True
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(
            f"staging source {src} is neither a file nor a directory", fix="stage a file or a folder"
        )
    entries: list[Entry] = []
    partial: list[str] = []
    stack = [("", src)]
    # One scandir per folder, read through its descriptor: the one lstat per entry is then
    # relative to the folder (no walk of the whole share path for each file).
    while stack:
        rel_root, full_root = stack.pop()
        try:
            fd = os.open(full_root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise UserError(f"cannot read {full_root}: {exc.strerror}",
                            where="staging source", fix="check permissions on the shared storage") from None
        subdirs = []
        try:
            with os.scandir(fd) as it:
                items = sorted(it, key=_NAME)
            for d in items:
                name = d.name
                rel = rel_root + name
                if name.endswith(PARTIAL_SUFFIXES) or (name[0] == "." and ".part" in name):  # unfinished
                    partial.append(rel)
                    continue
                try:
                    s = d.stat(follow_symlinks=False)
                    mode = s.st_mode
                    if stat.S_ISREG(mode):
                        entries.append(Entry(rel, s.st_size, s.st_mtime_ns))
                    elif stat.S_ISDIR(mode):
                        subdirs.append((f"{rel}/", f"{full_root}/{name}"))
                    elif stat.S_ISLNK(mode):
                        entries.append(Entry(rel, 0, s.st_mtime_ns, link=os.readlink(name, dir_fd=fd)))
                except FileNotFoundError:
                    continue  # removed between listing and stat: it is not part of this source state
        except OSError as exc:
            raise UserError(f"cannot read {full_root}/{exc.filename or ''}: {exc.strerror}",
                            where="staging source", fix="check permissions on the shared storage") from None
        finally:
            os.close(fd)
        stack.extend(reversed(subdirs))
    if partial:
        raise UserError(
            f"staging source {src} is incomplete: {len(partial)} partial file(s) such as {partial[0]}",
            fix="wait for the upload/download to finish, or remove the partial files",
        )
    if not entries:
        raise UserError(f"staging source {src} is empty", fix="publish the models/images there first")
    return entries, False


def _read_rows(path: Path | str) -> dict[str, list[Any]] | None:
    """The manifest's files as ``path -> [path, size, mtime_ns, sha256, link]``; None: not trusted."""
    return _load_rows(path)[0]


def _load_rows(path: Path | str) -> tuple[dict[str, list[Any]] | None, bool]:
    """:func:`_read_rows` and whether the rows came from a version-1 manifest (to be rewritten).

    The header names the version and the number of files, and the text must end with a newline:
    another version, a torn or foreign file, a row of another shape or a count that differs is no
    manifest at all (the caller then re-checks every file against the journal and copies it), it
    is never half-trusted. Without one, the JSON manifest of version 1 beside it is read.
    """
    try:
        with open(path, "rb") as fh:
            lines = fh.read().decode("utf-8", "surrogateescape").split("\n")
    except FileNotFoundError:
        old = _read_v1(f"{os.fspath(path)[:-len('manifest')]}json")
        return old, old is not None
    except OSError:
        return None, False
    head = lines[0].split("\t")
    if head[0] != f"{_MAGIC} {MANIFEST_VERSION}" or len(head) < 3 or lines[-1] != "":
        return None, False
    try:
        rows = _parse_rows(lines[1:-1])
        return (rows if len(rows) == int(head[2]) == len(lines) - 2 else None), False
    except (ValueError, KeyError, IndexError):
        return None, False


def _parse_rows(lines: list[str]) -> dict[str, list[Any]]:
    """Lines of five tab-separated fields: path, size, mtime_ns, sha256, link (ValueError or
    KeyError on any other shape)."""
    rows = {}
    for ln in lines:
        p, size, mtime, sha, link = ln.split("\t")
        if "\\" in p:
            p = _unescape(p)
        if "\\" in link:
            link = _unescape(link)
        rows[p] = [p, int(size), int(mtime), sha or None, link or None]
    return rows


def _read_v1(path: str) -> dict[str, list[Any]] | None:
    """The JSON manifest of version 1 (a dict per file), still trusted: it was written last too."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    import json  # only when there is one: json (with re) costs more than a whole no-op re-check

    try:
        data = json.loads(raw)
        if data["version"] != 1 or type(data["version"]) is not int:
            return None
        files = data["files"]
        rows = {d["path"]: [d["path"], d["size"], d["mtime_ns"], d.get("sha256"), d.get("link")]
                for d in files}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return rows if len(rows) == len(files) else None


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n"}


def _escape(text: str) -> str:
    """Backslash, tab and newline escaped: any file name fits in one tab-separated field."""
    return text.translate(_ESCAPES) if ("\\" in text or "\t" in text or "\n" in text) else text


def _unescape(text: str) -> str:
    out, i = [], 0
    while (j := text.find("\\", i)) >= 0:
        out += (text[i:j], _UNESCAPES[text[j + 1]])  # another escape (or none): KeyError/IndexError
        i = j + 2
    out.append(text[i:])
    return "".join(out)


def _row(e: Entry) -> str:
    """One manifest or journal line (no sha256 or link: empty field; a link target is never empty)."""
    link = "" if e.link is None else _escape(e.link)
    return f"{_escape(e.path)}\t{e.size}\t{e.mtime_ns}\t{e.sha256 or ''}\t{link}\n"


def read_manifest(path: Path | str) -> dict[str, Entry] | None:
    """The manifest's entries by relative path, or None when there is no trustworthy manifest."""
    rows = _read_rows(path)
    if rows is None:
        return None
    return {p: Entry(*r) for p, r in rows.items()}


def read_journal(path: Path | str) -> dict[str, Entry]:
    """Files an interrupted staging had put in place (a torn last line, or a line of an older
    version, is skipped: that file is copied again)."""
    out: dict[str, Entry] = {}
    try:
        with open(path, "rb") as fh:
            lines = fh.read().decode("utf-8", "surrogateescape").split("\n")
    except OSError:
        return out
    for ln in lines[:-1]:  # the last piece is empty, or a line the kill cut short
        with contextlib.suppress(ValueError, KeyError, IndexError):
            for p, r in _parse_rows([ln]).items():
                out[p] = Entry(*r)
    return out


def _dest_matches(target: str, e: Entry, row: list[Any] | None) -> bool:
    """Stat-only: the staged file is the one the manifest (or journal) recorded for this source state."""
    if row is None or row[1] != e.size or row[2] != e.mtime_ns or row[4] != e.link:
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
            where=os.path.dirname(os.fspath(path)),
            fix="free space on the node-local disk or stage fewer models",
        )
    return UserError(f"cannot write {path}: {exc.strerror}",
                     fix="check the node-local destination (writable, not a file, space left)")


def sha256_file(path: Path, chunk: int = _BUF) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _copy_range(fi: int, fo: int, offset: int, length: int, h: Any = None) -> None:
    """Copy ``length`` bytes at ``offset`` from fd ``fi`` to fd ``fo`` (kernel-side when possible)."""
    end = offset + length
    if h is None:
        try:
            while offset < end:
                n = os.copy_file_range(fi, fo, end - offset, offset, offset)
                if n == 0:
                    raise OSError(errno.EIO, "source ended early")
                offset += n
            return
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
    buf = bytearray(min(_BUF, max(length, 1)))
    view = memoryview(buf)
    while offset < end:
        n = os.preadv(fi, [view[: min(len(buf), end - offset)]], offset)
        if n == 0:
            raise OSError(errno.EIO, "source ended early")
        if h is not None:
            h.update(view[:n])
        done = 0
        while done < n:
            done += os.pwrite(fo, view[done:n], offset + done)
        offset += n


class SourceChanged(Exception):
    """The source's size or mtime moved while it was copied (seen on the open descriptor)."""


def copy_file(src: Path | str, dst: Path | str, *, checksum: bool = False, size: int | None = None,
              mtime_ns: int | None = None, exclusive: bool = False) -> str | None:
    """Copy ``src`` into a new ``dst`` whole; return its sha256 (of the bytes read) if asked.

    With ``size``/``mtime_ns`` (the listed version): exactly ``size`` bytes are copied, the source
    must still have that size and mtime afterwards (checked on the open descriptor, no second
    lookup on the share: :class:`SourceChanged` otherwise), and ``dst`` gets that mtime.
    ``exclusive``: ``dst`` must not exist (FileExistsError, raised before anything is written).
    """
    h = None
    if checksum:
        import hashlib

        h = hashlib.sha256()
    fi = os.open(src, os.O_RDONLY)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC), 0o666)
        try:
            _copy_range(fi, fo, 0, os.fstat(fi).st_size if size is None else size, h)
            if size is not None:
                st = os.fstat(fi)
                if st.st_size != size or (mtime_ns is not None and st.st_mtime_ns != mtime_ns):
                    raise SourceChanged(str(src))
            if mtime_ns is not None:
                os.utime(fo, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fo)
    finally:
        os.close(fi)
    return h.hexdigest() if h is not None else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _parts_of(target: Path) -> list[tuple[Path, str, int]]:
    """(path, host, pid) of every part file of ``target`` in its folder."""
    prefix = f".{target.name}.stage-"
    out = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return out
    for n in names:
        if not (n.startswith(prefix) and n.endswith(".part")):
            continue
        host, _, pid = n[len(prefix):-len(".part")].rpartition("-")
        if pid.isdigit():  # no host: the older ".NAME.stage-PID.part", always written on this node
            out.append((target.parent / n, host or HOST, int(pid)))
    return out


def _unlink(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _log_of(part: Path | str) -> Path:
    from pathlib import Path

    return Path(f"{part}.log")


def _read_log(log: Path, e: Entry, checksum: bool) -> dict[int, str | None] | None:
    """Chunks a part already holds for this source version, or None when the log does not fit."""
    try:
        with open(log, "rb") as fh:
            lines = fh.read().splitlines()
        import json

        head = json.loads(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if (head.get("size"), head.get("mtime_ns"), head.get("chunk")) != (e.size, e.mtime_ns, CHUNK):
        return None
    done: dict[int, str | None] = {}
    for ln in lines[1:]:
        parts = ln.decode(errors="replace").split()
        if parts and parts[0].isdigit() and (not checksum or len(parts) > 1):
            done[int(parts[0])] = parts[1] if len(parts) > 1 else None
    return done


def adopt_or_clean(target: Path, e: Entry | None,
                   checksum: bool) -> tuple[Path | None, dict[int, str | None], int]:
    """Take over the best part file of a dead writer on this host; delete the others.

    Returns (part to continue or None, its finished chunks, number of orphans deleted). Parts
    of a live process or of another host are left alone: their writer may still be running.
    """
    best: tuple[Path, dict[int, str | None]] | None = None
    cleaned = 0
    for path, host, pid in _parts_of(target):
        if host != HOST or (pid != os.getpid() and _pid_alive(pid)):
            continue
        done = _read_log(_log_of(path), e, checksum) if e is not None else None
        try:
            size_ok = done is not None and os.path.getsize(path) == e.size  # type: ignore[union-attr]
        except OSError:
            size_ok = False
        if size_ok and done and (best is None or len(done) > len(best[1])):
            if best is not None:
                _unlink(best[0], _log_of(best[0]))
                cleaned += 1
            best = (path, done)
            continue
        _unlink(path, _log_of(path))
        cleaned += 1
    if best is None:
        return None, {}, cleaned
    mine = part_path(target)
    if best[0] != mine:
        os.replace(best[0], mine)  # node-local: rename is fine; the pid in the name is now ours
        os.replace(_log_of(best[0]), _log_of(mine))
    return mine, best[1], cleaned


class _Copier:
    """Copies the todo list, sequentially or with ``jobs`` threads; appends finished files to the journal.

    Work items are whole small files and single chunks of large ones, so several streams help
    both a tree of many small files and one large file (a share's per-stream throughput is low).
    """

    def __init__(self, src: str, target_root: str, single: bool, checksum: bool, journal_fd: int,
                 result: StageResult) -> None:
        import _thread  # the lock alone: threading's import is only paid by --jobs

        self.src, self.root, self.single, self.checksum = src, target_root, single, checksum
        self.journal_fd, self.result = journal_fd, result
        self.lock = _thread.allocate_lock()
        self.pid = os.getpid()  # in temporary names (one getpid per file was a syscall each)
        self.stop = False
        self.fds: list[int] = []  # resume logs held open while their chunks copy

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def plan(self, todo: list[Entry]) -> list[Callable[[], None]]:
        """A task per small file (``partial``: no Python frame of its own) and per missing chunk.

        Paths are strings: pathlib objects cost more than the copy of a small file.
        """
        from functools import partial  # already imported by the command line

        tasks: list[Callable[[], None]] = []
        made: set[str] = set()
        small, single, src, root = self._small, self.single, self.src, self.root
        for e in todo:
            if single:
                source, target = src, root
            else:
                source, target = f"{src}/{e.path}", f"{root}/{e.path}"
            parent = os.path.dirname(target)
            if parent not in made:
                try:
                    os.makedirs(parent, exist_ok=True)
                except FileExistsError:
                    raise UserError(f"{parent} is a file in the staged copy, but the source has a "
                                    "folder there", fix=f"remove {parent} and stage again") from None
                except OSError as exc:
                    raise _write_error(exc, parent) from None
                made.add(parent)
            if e.link is None and e.size > RESUMABLE:
                from pathlib import Path

                tasks += self._chunk_tasks(Path(source), Path(target), e)
            else:
                tasks.append(partial(small, source, target, e))
        return tasks

    def run(self, tasks: list[Callable[[], None]], jobs: int) -> None:
        if jobs <= 1 or len(tasks) <= 1:
            for t in tasks:
                t()
            return
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage") as pool:
            futures = [pool.submit(self._guarded, t) for t in tasks]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                self.stop = True
                for f in futures:
                    f.cancel()
                wait(futures)
                raise failed[0].exception()  # type: ignore[misc]

    def _guarded(self, task: Callable[[], None]) -> None:
        if not self.stop:
            task()

    def _finished(self, e: Entry, nbytes: int, resumed: int = 0) -> None:
        line = _row(e).encode("utf-8", "surrogateescape")
        with self.lock:
            os.write(self.journal_fd, line)
            self.result.copied += 1
            self.result.bytes_copied += nbytes
            if resumed:
                self.result.resumed += 1
                self.result.bytes_resumed += resumed

    def _check_source(self, source: Path | str, e: Entry, part: Path | str,
                      err: OSError | None = None) -> None:
        """After a copy (or a failed one): the source must still be the version we listed."""
        from pathlib import Path

        part = Path(part)
        try:
            st = os.stat(source)
        except FileNotFoundError:
            _unlink(part, _log_of(part))
            raise UserError(f"{source} disappeared while staging", where="staging source",
                            fix="wait until the source is published completely, then stage again") from None
        if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
            _unlink(part, _log_of(part))
            raise UserError(f"{source} changed while it was being staged", where="staging source",
                            fix="wait until it is completely written, then stage again")
        if err is not None:
            if err.errno in _FULL:
                raise _write_error(err, part)
            raise UserError(f"cannot copy {source} to {part.parent}: {err.strerror}",
                            fix="check the shared storage and the node-local disk")

    def _small(self, source: str, target: str, e: Entry) -> None:
        """One file whole (or one link), verified, then listed in the journal.

        A file of a tree that is not there yet is written under its own name (``O_EXCL``: never
        over anything, never through a link), saving a rename per file; the journal line comes
        after it, so a kill leaves it unlisted and the rerun replaces it. Anything already there
        (an older version, a killed writer's remains, a link) and a single-file source (a SIF)
        are written under a temporary name and renamed over it, so a job still reading the old
        file keeps reading it whole.
        """
        made = target
        try:
            if e.link is not None:
                made = self._tmp(target)
                _unlink(made)
                os.symlink(e.link, made)
                os.replace(made, target)
                self._finished(e, 0)
                return
            try:
                if self.single:
                    made = self._tmp(target)
                    digest = copy_file(source, made, checksum=self.checksum, size=e.size, mtime_ns=e.mtime_ns)
                else:
                    try:
                        digest = copy_file(source, target, checksum=self.checksum, size=e.size,
                                           mtime_ns=e.mtime_ns, exclusive=True)
                    except FileExistsError:  # raised by the exclusive open, before anything was written
                        made = self._tmp(target)
                        digest = copy_file(source, made, checksum=self.checksum, size=e.size,
                                           mtime_ns=e.mtime_ns)
            except (OSError, SourceChanged) as exc:
                self._check_source(source, e, made, exc if isinstance(exc, OSError) else None)
                raise UserError(f"{source} changed while it was being staged", where="staging source",
                                fix="wait until it is completely written, then stage again") from None
            if self.checksum:
                if sha256_file(made) != digest:
                    raise UserError(f"checksum of the staged copy of {source} differs from the source's",
                                    fix="check the node-local disk and stage again")
                e.sha256 = digest
            if made != target:  # written under a temporary name
                os.replace(made, target)
        except UserError:
            _unlink(made)
            raise
        except OSError as exc:
            _unlink(made)
            raise _write_error(exc, target) from None
        except BaseException:
            _unlink(made)
            raise
        self._finished(e, e.size)

    def _tmp(self, target: str) -> str:
        """The temporary name of a small file or link that replaces what is there."""
        head, _, name = target.rpartition("/")
        return f"{head}/.{name}.stage-{HOST}-{self.pid}.part"

    def _chunk_tasks(self, source: Path, target: Path, e: Entry) -> list[Callable[[], None]]:
        """Tasks for the chunks a large file still lacks; the last one to finish renames it."""
        part, done, cleaned = adopt_or_clean(target, e, self.checksum)
        self.result.cleaned += cleaned
        log = _log_of(part or part_path(target))
        try:
            if part is None:
                part = part_path(target)
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                try:
                    os.ftruncate(fd, e.size)
                finally:
                    os.close(fd)
                import json

                head = {"size": e.size, "mtime_ns": e.mtime_ns, "chunk": CHUNK, "source": str(source)}
                with open(log, "wb") as fh:
                    fh.write((json.dumps(head) + "\n").encode())
            log_fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            self.fds.append(log_fd)
        except OSError as exc:
            _unlink(part_path(target), log)
            raise _write_error(exc, target) from None
        n = (e.size + CHUNK - 1) // CHUNK
        missing = [i for i in range(n) if i not in done]
        kept = e.size - sum(min(CHUNK, e.size - i * CHUNK) for i in missing)
        state = {"left": len(missing), "hashes": dict(done)}
        assert part is not None

        def chunk(i: int) -> None:
            off, length = i * CHUNK, min(CHUNK, e.size - i * CHUNK)
            h = None
            if self.checksum:
                import hashlib

                h = hashlib.sha256()
            try:
                fi = os.open(source, os.O_RDONLY)
                try:
                    fo = os.open(part, os.O_WRONLY)
                    try:
                        _copy_range(fi, fo, off, length, h)
                    finally:
                        os.close(fo)
                finally:
                    os.close(fi)
            except OSError as exc:
                self._check_source(source, e, part, exc)
                raise
            with self.lock:
                os.write(log_fd, f"{i} {h.hexdigest() if h else ''}\n".encode())
                state["hashes"][i] = h.hexdigest() if h else None
                state["left"] -= 1
                last = state["left"] == 0
            if last:
                self._finish_large(source, target, e, part, log_fd, state["hashes"], kept)

        if not missing:  # every chunk was there: only the final checks and the rename remain
            return [lambda: self._finish_large(source, target, e, part, log_fd, state["hashes"], kept)]
        return [lambda i=i: chunk(i) for i in missing]

    def _finish_large(self, source: Path, target: Path, e: Entry, part: Path, log_fd: int,
                      hashes: dict[int, str | None], kept: int) -> None:
        del log_fd  # closed with the others by close()
        self._check_source(source, e, part)
        try:
            got = os.stat(part).st_size
            if got != e.size:
                _unlink(part, _log_of(part))
                raise UserError(f"staged copy of {source} has {got} bytes, expected {e.size}",
                                fix="check the node-local disk and stage again")
            if self.checksum:  # chunks were hashed from the source's bytes: check the copy against them
                import hashlib

                whole = hashlib.sha256()
                with open(part, "rb") as fh:
                    for i in range(len(hashes)):
                        block = fh.read(CHUNK)
                        whole.update(block)
                        if hashlib.sha256(block).hexdigest() != hashes.get(i):
                            _unlink(part, _log_of(part))
                            raise UserError(
                                f"checksum of chunk {i} of the staged copy of {source} differs from the "
                                "source's", fix="check the node-local disk and stage again")
                e.sha256 = whole.hexdigest()
            os.utime(part, ns=(e.mtime_ns, e.mtime_ns))
            os.replace(part, target)
            _unlink(_log_of(part))
        except OSError as exc:
            raise _write_error(exc, target) from None
        self._finished(e, e.size - kept, kept)


def stage(
    src: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    checksum: bool = False,
    verify: bool = False,
    jobs: int = 1,
    lock_timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> StageResult:
    """Mirror ``src`` to ``dst_dir/<basename>``; see the module docstring for the guarantees.

    ``checksum`` records a sha256 per copied file (computed from the bytes read, then checked
    against the written file). ``verify`` re-reads every staged file against the manifest's
    sha256 (or size) even when stat says nothing changed. ``jobs`` copies with that many streams.
    """
    t0 = time.monotonic()
    src_s, dst_s = os.path.abspath(src), os.path.abspath(dst_dir)
    name = os.path.basename(src_s)
    if not name:
        raise UserError(f"cannot stage {src_s}: it has no basename", fix="stage a file or a named folder")
    if jobs < 1:
        raise UserError(f"--jobs {jobs} is not a number of copy streams", fix="pass --jobs 1 or more")
    entries, single = _scan(src_s)
    base = dst_s.rstrip("/")  # strings, not Paths: this runs at every job start
    root = f"{base}/{name}"
    mpath, jpath, lock = (f"{base}/.{name}.stage.{k}" for k in ("manifest", "journal", "lock"))
    try:
        os.makedirs(dst_s, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create staging destination {dst_s}: {exc.strerror}",
            fix="set CONTAINERS_NODE_LOCAL (or paths.node_local) to a writable local disk",
        ) from None
    try:
        there = os.lstat(root).st_mode
    except FileNotFoundError:
        there = None
    except OSError as exc:
        raise _write_error(exc, root) from None
    if single and there is not None and os.path.isdir(root):
        raise UserError(f"{root} is a folder but {src_s} is a file",
                        fix="remove the folder or pick another DST")
    if not single and there is not None and (stat.S_ISREG(there) or stat.S_ISLNK(there)):
        raise UserError(f"{root} is a file but {src_s} is a folder",
                        fix="remove the file or pick another DST")
    result = StageResult(root, mpath, len(entries), sum(e.size for e in entries))
    with node_lock(lock, timeout=lock_timeout, on_wait=log, announce=False) as waited:
        result.waited = waited
        rows, legacy = _load_rows(mpath)
        journal = os.path.exists(jpath)
        known = rows or {}
        if journal:  # an interrupted staging: what it had put in place counts as much as the manifest
            known = {**known, **{p: [e.path, e.size, e.mtime_ns, e.sha256, e.link]
                                 for p, e in read_journal(jpath).items()}}
        todo = []
        lookup = known.get
        for e in entries:  # stat only: one lstat per staged file, no read
            k = lookup(e.path)
            target = root if single else f"{root}/{e.path}"
            if k is None or not _dest_matches(target, e, k) or (verify and not _verified(target, k)):
                todo.append(e)
                continue
            e.sha256 = k[3] if type(k[3]) is str else None
            if checksum and e.sha256 is None and e.link is None:
                e.sha256 = sha256_file(target)
        # every source file matched a row, so the manifest lists exactly the source when the counts agree
        complete = rows is not None and not journal and not todo and len(rows) == len(entries)
        if complete and not (checksum and _missing_sums(rows)):  # type: ignore[arg-type]
            if legacy:  # the same facts in today's format, once (the JSON one is then removed)
                _write_manifest(mpath, src_s, single, entries, result.total_bytes)
            result.seconds = time.monotonic() - t0
            return result
        _change(src_s, root, single, entries, todo, rows, jpath, mpath, lock, checksum, jobs, result,
                fresh=not single and there is None)
    result.seconds = time.monotonic() - t0
    return result


def _change(src: str, root: str, single: bool, entries: list[Entry], todo: list[Entry],
            rows: dict[str, list[Any]] | None, jpath: str, mpath: str, lock: str, checksum: bool,
            jobs: int, result: StageResult, *, fresh: bool) -> None:
    """Bring the staged copy to the source's state (under the node lock): copy, remove, manifest last.

    Paths stay strings here (pathlib is imported only for large files and single-file sources).
    """
    names = {e.path for e in entries}
    extras_possible = not single and not fresh and (rows is None or set(rows) != names)
    # From here on the tree changes: it must not look complete until the new manifest lands,
    # and what is already in place is listed in the journal first, so a kill loses nothing.
    try:
        announce_holder(lock)
        pending = {id(e) for e in todo}
        _start_journal(jpath, [e for e in entries if id(e) not in pending])
        _unlink(mpath, f"{mpath[:-len('manifest')]}json")  # and a version-1 manifest: never trusted again
        jfd = os.open(jpath, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise _write_error(exc, jpath) from None
    try:
        if not single:
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise _write_error(exc, root) from None
        copier = _Copier(src, root, single, checksum, jfd, result)
        try:
            copier.run(copier.plan(todo), jobs)
        finally:
            copier.close()
    finally:
        os.close(jfd)
    if single:
        from pathlib import Path

        _, _, cleaned = adopt_or_clean(Path(root), None, checksum)
        result.cleaned += cleaned
    elif not fresh and (extras_possible or result.copied):
        try:
            result.removed = _remove_extras(root, names)
        except OSError as exc:
            raise _write_error(exc, root) from None
    _write_manifest(mpath, src, single, entries, result.total_bytes)
    _unlink(jpath)


def _write_manifest(mpath: str, src: str, single: bool, entries: list[Entry], total: int) -> None:
    """Header (magic and version, kind, number of files, bytes, when, source), then a line per file;
    plain text because it is parsed at every job start. A version-1 manifest beside it goes."""
    head = (f"{_MAGIC} {MANIFEST_VERSION}\t{'file' if single else 'tree'}\t{len(entries)}\t"
            f"{total}\t{time.time():.3f}\t{_escape(src)}\n")
    try:
        _replace_text(mpath, head + "".join(_row(e) for e in entries))
    except OSError as exc:
        raise _write_error(exc, mpath) from None
    _unlink(f"{mpath[:-len('manifest')]}json")


def _replace_text(path: Path | str, text: str) -> None:
    """Temporary name, then rename: readers see the old file or the new one, never half of one.

    No fsync, on purpose: this is a node-local cache whose files are not fsynced either (``cp -a``
    does not), and an fsync here would wait for the whole copy's writeback. After a node crash
    the manifest may be lost (the next job re-stages), and a file whose data never reached the
    disk comes back short (ext4 and xfs grow the on-disk size only as data lands), which the stat
    check catches; ``--verify`` re-reads every file when in doubt.
    """
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _start_journal(path: Path | str, in_place: list[Entry]) -> None:
    """Rewrite the journal with what is verified in place now (compacts an old one)."""
    _replace_text(path, "".join(_row(e) for e in in_place))


def _remove_extras(dst: Path | str, keep: set[str]) -> int:
    """Delete what the source no longer has (files, links, other writers' leftovers, empty folders)."""
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


def _missing_sums(rows: dict[str, list[Any]]) -> bool:
    return any(not r[3] and r[4] is None for r in rows.values())


def _verified(target: str, row: list[Any]) -> bool:
    """``--verify``: the staged bytes still have the recorded sha256 (or, without one, the size)."""
    if row[4] is not None:
        return True
    if row[3]:
        return sha256_file(target) == row[3]
    return os.stat(target).st_size == row[1]


def check(src: str | os.PathLike[str], dst_dir: str | os.PathLike[str]) -> list[str]:
    """Stat-only comparison of a staged copy with its source; returns the differences."""
    src_s, dst_s = os.path.abspath(src), os.path.abspath(dst_dir)
    name = os.path.basename(src_s)
    root = f"{dst_s.rstrip('/')}/{name}"
    rows = _read_rows(f"{dst_s.rstrip('/')}/.{name}.stage.manifest")
    if rows is None:
        return [f"no complete staged copy of {name} in {dst_s} (manifest missing)"]
    entries, single = _scan(src_s)
    diffs = []
    for e in entries:
        if not _dest_matches(root if single else f"{root}/{e.path}", e, rows.get(e.path)):
            diffs.append(f"{e.path}: differs from the source")
    for p in set(rows) - {e.path for e in entries}:
        diffs.append(f"{p}: no longer in the source")
    return diffs
