"""User-facing errors: one line that says what, where and how to fix; exit code 2; no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit; the one exit path for user mistakes."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


def guard(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn :class:`UserError` (and Ctrl-C) raised by a CLI main into a one-line exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(exc.line(), exc.code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper
