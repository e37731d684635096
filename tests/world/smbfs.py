"""SMB-like shared storage for the tests: a FUSE passthrough that refuses what the DGX Spark share refuses.

The Spark cluster's shared storage is an SMB share mounted without Unix extensions: chmod, chown,
symlinks and hard links fail with EPERM, while plain writes, renames and timestamps work. Local
disk accepts all of them, so a suite on local disk cannot see ``python -m venv``, ``git clone`` or
``shutil.copymode`` breaking there. This module mounts a folder through FUSE (fusepy over Debian's
libfuse2) with exactly those refusals and ``allow_other``, so slurmd jobs and the arm64 node's root
(which binds the mount at the same path) see the same share.

Run as a daemon: ``python -m tests.world.smbfs SOURCE MOUNTPOINT [--parent PID]`` (foreground;
SIGTERM, SIGINT or the death of ``--parent`` unmounts). :class:`SmbShare` starts and stops it;
:func:`sweep_dead_mounts` lazily unmounts leftovers of a daemon that was killed outright.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from suite_core.runner import run

FSNAME = "gpu-suite-smb"  # the mount's source in /proc/self/mountinfo: how leftovers are recognised
REPO = Path(__file__).resolve().parents[2]
# Debian's FUSE 2 library (fusepy loads it with ctypes) and rsync (how trees reach the share today).
PACKAGES = ("libfuse2", "rsync")


def why_unavailable() -> str | None:
    """None when a share can be mounted here, else which piece is missing and how to get it."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing (load it: modprobe fuse; in a container: --device /dev/fuse)"
    if os.getuid() != 0 and "user_allow_other" not in _fuse_conf():
        return "allow_other needs root or 'user_allow_other' in /etc/fuse.conf"
    if not ctypes.util.find_library("fuse") or not shutil.which("rsync"):
        if os.getuid() == 0 and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            argv = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
            if run(argv, env=env, timeout=600, check=False).returncode != 0:
                run(["apt-get", "update"], env=env, timeout=600, check=False)
                run(argv, env=env, timeout=600, check=False)
        if not ctypes.util.find_library("fuse"):
            return "libfuse2 is missing (apt-get install libfuse2)"
        if not shutil.which("rsync"):
            return "rsync is missing (apt-get install rsync)"
    try:
        import fuse  # noqa: F401  (fusepy)
    except (ImportError, OSError) as exc:
        return f"fusepy cannot be imported ({exc}); install the dev extra: make venv"
    return None


def _fuse_conf() -> str:
    try:
        return Path("/etc/fuse.conf").read_text()
    except OSError:
        return ""


# ------------------------------------------------------------------ the filesystem (daemon side)
def _operations(source: str):
    """The passthrough Operations class; built lazily so importing this module needs no fusepy."""
    from fuse import FuseOSError, Operations

    def refused(*_args):
        raise FuseOSError(errno.EPERM)

    class SmbLike(Operations):
        """Every call goes to ``source`` except the four an SMB share without Unix extensions refuses."""

        chmod = chown = symlink = link = refused

        def __init__(self, root: str) -> None:
            self.root = os.path.realpath(root)

        def _p(self, path: str | None) -> str | None:
            return None if path is None else os.path.join(self.root, path.lstrip("/"))

        def __call__(self, op, path, *args):
            try:
                return super().__call__(op, self._p(path) if op != "init" else path, *args)
            except OSError as exc:
                if isinstance(exc, FuseOSError):
                    raise
                raise FuseOSError(exc.errno or errno.EIO) from None

        # metadata
        def access(self, path, mode):
            if not os.access(path, mode):
                raise FuseOSError(errno.EACCES)

        def getattr(self, path, fh=None):
            st = os.lstat(path)
            keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")
            return {k: getattr(st, k) for k in keys}

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(path)]

        def readlink(self, path):  # links made on the backing folder directly stay readable
            return os.readlink(path)

        def statfs(self, path):
            sv = os.statvfs(path)
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                    "f_flag", "f_frsize", "f_namemax")
            return {k: getattr(sv, k) for k in keys}

        def utimens(self, path, times=None):
            os.utime(path, times)

        # namespace
        def mkdir(self, path, mode):
            os.mkdir(path, mode)

        def rmdir(self, path):
            os.rmdir(path)

        def unlink(self, path):
            os.unlink(path)

        def rename(self, old, new):
            os.rename(old, self._p(new))

        def mknod(self, path, mode, dev):
            raise FuseOSError(errno.EPERM)  # no FIFOs or device nodes on an SMB share

        # data
        def create(self, path, mode, fi=None):
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

        def open(self, path, flags):
            return os.open(path, flags)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(path, length)

        def flush(self, path, fh):
            return 0

        def fsync(self, path, datasync, fh):
            (os.fdatasync if datasync else os.fsync)(fh)

        def release(self, path, fh):
            os.close(fh)

    return SmbLike(source)


def _die_with(parent: int) -> None:
    """Ask the kernel for SIGTERM when ``parent`` dies, so a killed test run still unmounts."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request was in place
        raise SystemExit(1)


def serve(source: Path, mountpoint: Path, parent: int | None = None) -> None:
    from fuse import FUSE

    if parent:
        _die_with(parent)
    # libfuse installs its SIGTERM/SIGINT/SIGHUP handlers (leave the loop, then unmount) only where
    # the handler is the default one.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    FUSE(_operations(str(source)), str(mountpoint), foreground=True, allow_other=True,
         fsname=FSNAME, subtype="smblike")


# ------------------------------------------------------------------ mounting (test side)
def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount this process sees."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fstype, source = right.split()[:2]
            point = left.split()[4].replace("\\040", " ")
            out.append((point, fstype, source))
    return out


def is_mounted(path: Path) -> bool:
    return any(p == str(path) for p, _, _ in mounts())


def _unmount(path: Path) -> None:
    """Lazy unmount: a shell still sitting in the share must not keep it mounted."""
    if os.getuid() == 0:
        run(["umount", "-l", str(path)], check=False, timeout=30)
    else:
        run(["fusermount", "-u", "-z", str(path)], check=False, timeout=30)


def sweep_dead_mounts() -> list[str]:
    """Unmount shares whose daemon is gone (ENOTCONN); a live share of another run is left alone."""
    swept = []
    for point, fstype, source in mounts():
        if source != FSNAME or not fstype.startswith("fuse"):
            continue
        try:
            os.stat(point)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                _unmount(Path(point))
                swept.append(point)
    return swept


@dataclass
class SmbShare:
    """One mounted share: ``backing`` holds the bytes, ``path`` is what jobs and nodes use."""

    backing: Path
    path: Path
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 20) -> SmbShare:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        sweep_dead_mounts()
        log = self.backing.parent / f"{self.path.name}.smbfs.log"
        argv = [sys.executable, "-m", "tests.world.smbfs", str(self.backing), str(self.path),
                "--parent", str(os.getpid())]
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_mounted(self.path):
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        raise RuntimeError(f"the SMB-like FUSE share did not mount on {self.path}: {tail.strip()}")

    def stop(self) -> None:
        """SIGTERM (the daemon unmounts itself), then a lazy unmount if anything is still there."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if is_mounted(self.path):
            _unmount(self.path)

    def __enter__(self) -> SmbShare:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.world.smbfs", description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="backing folder (holds the bytes)")
    ap.add_argument("mountpoint", type=Path)
    ap.add_argument("--parent", type=int, help="unmount when this process dies")
    a = ap.parse_args(argv)
    for p in (a.source, a.mountpoint):
        if not p.is_dir():
            print(f"error: {p} is not a folder; fix: create it first", file=sys.stderr)
            return 2
    serve(a.source, a.mountpoint, a.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
