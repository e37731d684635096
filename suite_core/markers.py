"""Completion markers tied to what made the output: settings, inputs and code version.

A rerun may reuse an output only when its marker's fingerprint equals the fingerprint of the
run asking; a marker left by a run with other settings, other inputs or other code is "not done"
(the failure this prevents: pages made at ``conf=0.3`` reused by a rerun at ``conf=0.5``).
Inputs are fingerprinted by size and mtime (cheap, stat only); pass ``hash_inputs=True`` where a
content hash is affordable and mtimes are not trusted (copies that reset them).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

from suite_core.atomic import write_json

MARKER_VERSION = 1


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def file_facts(path: str | os.PathLike[str], *, content: bool = False) -> dict[str, Any]:
    """Size and mtime (ns) of ``path``, plus its sha256 when ``content``; missing files say so."""
    p = Path(path)
    return {"path": str(p), **_facts(p, content)}


def _facts(path: str | os.PathLike[str], content: bool) -> dict[str, Any]:
    """:func:`file_facts` without the path (one ``os.stat``, no Path made: status calls it per video)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"missing": True}
    facts: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if content:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        facts["sha256"] = h.hexdigest()
    return facts


def code_version(*modules: str) -> str:
    """A short hash of the source files of ``modules`` (dotted names): changes when the code does."""
    import importlib.util

    h = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec else None
        if origin and os.path.isfile(origin):
            h.update(name.encode())
            h.update(Path(origin).read_bytes())
    return h.hexdigest()[:16]


def fingerprint(settings: Mapping[str, Any] | None = None, inputs: Iterable[str | os.PathLike[str]] = (),
                code: str = "", *, hash_inputs: bool = False) -> str:
    """sha256 over canonical settings, the inputs' facts and the code version."""
    doc = {
        "v": MARKER_VERSION,
        "settings": settings or {},
        "inputs": [_facts(q, hash_inputs) | {"name": q.name}
                   for q in (p if isinstance(p, PurePath) else Path(p) for p in inputs)],
        "code": code,
    }
    return hashlib.sha256(_canonical(doc).encode()).hexdigest()


def write_marker(path: str | os.PathLike[str], digest: str, **facts: Any) -> Path:
    """Write the completion marker (atomically, and after the outputs it vouches for)."""
    return write_json(path, {"fingerprint": digest, **facts})


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker's content, or None when it is missing or unreadable (never trusted then)."""
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_done(path: str | os.PathLike[str], digest: str) -> bool:
    """True only when a readable marker exists and was made with exactly ``digest``."""
    data = read_marker(path)
    return bool(data) and data.get("fingerprint") == digest
