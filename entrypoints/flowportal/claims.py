"""One driver per chunk and per video, across nodes of a shared (SMB/NFS) filesystem.

``flock`` is per node on SMB (and on NFS without a lock manager), so two array tasks on two
nodes would both get "the" lock. A claim is therefore a file created with ``O_CREAT|O_EXCL``
(atomic on SMB and NFSv3+): it holds host, pid and Slurm job id. A second driver reads it and
stops with one line naming the holder, unless the holder is provably gone: its Slurm job is no
longer pending/running (``squeue``), or, without a job id, its pid is dead on this very host.
A stale claim is taken over by renaming it to a unique name first (only one renamer can win)
and re-creating it exclusively; a holder whose liveness cannot be known (another host, no
Slurm) is never taken over: the message says which file to delete once that run is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from suite_core.errors import UserError
from suite_core.rundir import holder_facts
from suite_core.runner import run as run_cmd
from suite_core.runner import which

# Slurm states of a job that runs or will run. Not COMPLETING: its processes are being killed, and
# the continuation that depends on it (afterany) may see it in that state for a few seconds.
ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SIGNALING",
    "STOPPED",
}


def describe(h: dict[str, Any]) -> str:
    job = f", Slurm job {h['job']}" if h.get("job") else ""
    return f"host {h.get('host')} pid {h.get('pid')}{job} since {h.get('since')}"


def slurm_state(job: str) -> str | None:
    """The job's state per ``squeue`` ('' when Slurm no longer lists it), None without Slurm."""
    if not which("squeue"):
        return None
    try:
        res = run_cmd(["squeue", "-h", "-j", str(job), "-o", "%T"], check=False, timeout=30)
    except UserError:
        return None
    if res.returncode != 0:
        said = (res.stderr or "").lower()
        return "" if "invalid job id" in said else None
    return res.stdout.strip().splitlines()[0].strip() if res.stdout.strip() else ""


def alive(h: dict[str, Any], me: dict[str, str]) -> bool | None:
    """True/False when known; None when it cannot be known from here."""
    if h.get("host") == me["host"] and str(h.get("pid")) == me["pid"]:
        return False  # ourselves earlier (a retry in this process): take it back
    if h.get("job"):
        if h["job"] == me.get("job") and me.get("job"):
            return False  # Slurm runs one instance of a job: an earlier run of our own (requeued) job
        state = slurm_state(str(h["job"]))
        if state is not None:
            return state.split()[0] in ACTIVE if state else False
    if h.get("host") == me["host"]:
        try:
            os.kill(int(h["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, TypeError):
            return True
        return True
    return None


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    raw = path.read_text(encoding="utf-8")
    try:
        h = json.loads(raw)
    except ValueError:
        h = {}
    return raw, h if isinstance(h, dict) else {}


def create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` only if it does not exist (``O_EXCL``: works on SMB too)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def acquire(path: Path, what: str, **extra: Any) -> dict[str, Any]:
    """Claim ``path`` for this process or raise a one-line UserError naming the holder."""
    me = {**holder_facts(), **{k: str(v) for k, v in extra.items()}}
    text = json.dumps(me)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if create_exclusive(path, text):
                return me
            try:
                raw, h = _read(path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            live = alive(h, me)
            if live is None:
                raise UserError(
                    f"{what} is claimed by {describe(h)} (cannot tell from here whether it runs)",
                    where=str(path),
                    fix=f"if that run is gone, delete {path}",
                )
            if live:
                raise UserError(
                    f"{what} is already being processed by {describe(h)}",
                    where=str(path),
                    fix="wait for it (flowportal_status shows it), or scancel that job first",
                )
            tomb = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(path, tomb)  # one renamer wins; the others find nothing or a fresh claim
            except FileNotFoundError:
                continue
            try:
                moved = tomb.read_text(encoding="utf-8")
            except OSError:
                moved = raw
            if moved != raw:  # we moved someone's fresh claim: put it back and let them have it
                create_exclusive(path, moved)
            with contextlib.suppress(OSError):
                tomb.unlink()
        raise UserError(
            f"{what}: could not claim it (others keep claiming it)",
            where=str(path),
            fix="check for duplicate submissions with squeue",
        )
    except OSError as exc:
        raise UserError(
            f"cannot write the claim for {what}: {exc.strerror}",
            where=str(path.parent),
            fix="make the batch dir writable",
        ) from None


def release(path: Path, mine: dict[str, Any]) -> None:
    """Remove the claim if it is still ours (never someone else's)."""
    with contextlib.suppress(OSError):
        _, h = _read(path)
        if h.get("host") == mine["host"] and str(h.get("pid")) == str(mine["pid"]):
            path.unlink()


@contextlib.contextmanager
def held(path: Path, what: str, **extra: Any) -> Iterator[dict[str, Any]]:
    mine = acquire(path, what, **extra)
    try:
        yield mine
    finally:
        release(path, mine)


def claim_path(batch_dir: Path, kind: str, name: str) -> Path:
    return batch_dir / "claims" / kind / f"{name}.json"


def holders(batch_dir: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Every claim of ``kind`` (``chunk`` or ``video``) by name, with its holder."""
    out: dict[str, dict[str, Any]] = {}
    d = batch_dir / "claims" / kind
    if not d.is_dir():
        return out
    for p in d.glob("*.json"):
        with contextlib.suppress(OSError):
            out[p.stem] = _read(p)[1]
    return out


def this_host() -> str:
    return socket.gethostname()
