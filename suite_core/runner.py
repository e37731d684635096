"""The one seam through which every subprocess is started.

argv lists only (never a shell string built from user data); a missing program and a failing
command become :class:`~suite_core.errors.UserError` lines that name the command and the last
thing it said. Tests replace nothing here: they run real programs or check built argv lists.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from suite_core.errors import UserError


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def quote(argv: Sequence[str]) -> str:
    """The exact, copy-pasteable shell form of an argv list."""
    return shlex.join([str(a) for a in argv])


def which(program: str, path: str | None = None) -> str | None:
    return shutil.which(program, path=path)


def _last_words(text: str) -> str:
    """The most useful line of a failing tool's stderr (Apptainer's FATAL line if any)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("FATAL", "ERROR", "sbatch: error", "error:")):
            return ln
    return lines[-1] if lines else ""


def run(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, capture: bool = True, check: bool = True,
        timeout: float | None = None, input: str | None = None, what: str | None = None) -> Result:
    """Run ``argv`` and return its result.

    ``check`` turns a non-zero exit into a UserError naming ``what`` (default: the program) and
    the command's own last error line, because that line is what a user can act on.
    """
    args = tuple(str(a) for a in argv)
    if not args:
        raise ValueError("empty argv")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            args, env=dict(env) if env is not None else None, cwd=cwd, text=True,
            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
            timeout=timeout, input=input, check=False,
        )
    except FileNotFoundError as exc:
        missing = args[0] if not cwd or Path(cwd).is_dir() else str(cwd)
        raise UserError(f"'{missing}' was not found", where=what or quote(args[:3]),
                        fix=f"install {Path(args[0]).name} or put it on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise UserError(f"'{quote(args[:4])}' took longer than {timeout:g} s",
                        fix="check the service it talks to") from exc
    result = Result(args, proc.returncode, proc.stdout or "", proc.stderr or "",
                    time.monotonic() - start)
    if check and proc.returncode != 0:
        said = _last_words(result.stderr) or _last_words(result.stdout)
        raise UserError(f"{what or Path(args[0]).name} failed with exit code {proc.returncode}"
                        + (f": {said}" if said else ""), where=quote(args)[:300])
    return result


def start(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike[str] | None = None, what: str | None = None) -> subprocess.Popen:
    """Start a long-lived helper with pipes to its stdin and stdout (text, line-buffered)."""
    args = [str(a) for a in argv]
    try:
        return subprocess.Popen(args, env=dict(env) if env is not None else None, cwd=cwd, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
    except FileNotFoundError as exc:
        raise UserError(f"'{args[0]}' was not found", where=what or quote(args[:3]),
                        fix=f"install {Path(args[0]).name} or put it on PATH") from exc


def exec_replace(argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> None:
    """Replace this process with ``argv`` (so signals and exit codes pass straight through)."""
    if cwd:
        os.chdir(cwd)
    program = argv[0] if os.sep in argv[0] else (which(argv[0], env.get("PATH")) or argv[0])
    try:
        os.execve(program, list(argv), dict(env))
    except FileNotFoundError as exc:
        raise UserError(f"'{argv[0]}' was not found", fix="install it or put it on PATH") from exc
