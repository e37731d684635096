"""User-facing errors: one line that says what, where and how to fix; exit code 2; no traceback.

Every command's main runs under :func:`guard`, which also turns an ``OSError`` that escaped the
code (a read-only or full destination, a path that is a file, a symlink loop) into one line that
names the path and the fix: a traceback is never the answer to a filesystem the user can fix.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable

# errno -> what the user can do about it (the message already says what happened and where).
_OS_FIXES = {
    errno.EACCES: "check the permissions, or choose a location you can write",
    errno.EPERM: "this filesystem refuses the operation (SMB shares refuse chmod and symlinks); "
                 "choose a local path",
    errno.EROFS: "the filesystem is read-only: choose a writable location",
    errno.ENOSPC: "free space there, or choose another location",
    errno.EDQUOT: "your quota is used up there: free space or choose another location",
    errno.EFBIG: "the file is too large for that filesystem: choose another location",
    errno.ENOENT: "check that the path exists (a parent folder may be missing)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "the path is a folder where a file was expected: name a file",
    errno.ELOOP: "the path goes through a symbolic link loop: fix or remove the link",
    errno.EEXIST: "something already exists there: remove it or choose another path",
    errno.ENAMETOOLONG: "shorten the path",
    errno.EIO: "the storage reported an I/O error: check the disk or the mount, then rerun",
    errno.ESTALE: "the network filesystem handle went stale: rerun",
}


class UserError(Exception):
    """A mistake the user can fix. Printed as a single line by :func:`guard`."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None,
                 code: int = 2) -> None:
        self.what, self.where, self.fix, self.code = what, where, fix, code
        super().__init__(self.line())

    def line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"(in {self.where})")
        text = " ".join(parts)
        if self.fix:
            text += f"; fix: {self.fix}"
        return " ".join(text.split())  # guarantee one line


# Temporary names our atomic writers use (suite_core.atomic, stage): the user knows the final name.
_TEMP_NAME = r"^\.(?P<name>.+)\.(?:[A-Za-z0-9_]{8}|stage-.+-\d+)\.part(?:\.\w+)?$"


def _user_path(path: object) -> str:
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    head, _, base = text.rpartition("/")
    import re  # compiled only on an error path: start-up of every command stays lean

    m = re.match(_TEMP_NAME, base)
    return f"{head}/{m['name']}" if m and head else (m["name"] if m else text)


def from_os_error(exc: OSError, doing: str | None = None) -> UserError:
    """The one-line UserError for an OSError: what failed, on which path(s), and the fix."""
    what = exc.strerror or type(exc).__name__
    if doing:
        what = f"cannot {doing}: {what}"
    paths = [_user_path(p) for p in (exc.filename, exc.filename2) if p is not None]
    return UserError(what, where=" -> ".join(paths) or None,
                     fix=_OS_FIXES.get(exc.errno or 0, "check the path and the filesystem, then rerun"))


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit; the one exit path for user mistakes."""
    from suite_core.secrets import mask

    print(f"error: {mask(' '.join(str(message).split()))}", file=sys.stderr)
    raise SystemExit(code)


def guard(fn: Callable[..., object]) -> Callable[..., object]:
    """Turn :class:`UserError`, an escaped ``OSError`` and Ctrl-C raised by a CLI main into one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(exc.line(), exc.code)
        except OSError as exc:
            fail(from_os_error(exc).line(), 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper
