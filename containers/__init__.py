"""Host-side toolkit: compose config, resolve images, launch entrypoints, build, stage, submit.

Runs on a login node's plain Python: nothing here imports torch, paddle or onnxruntime. What the
apps share with it (errors, atomic writes, the runner, config) lives in ``suite_core``.
``REPO_ROOT``/``CONF_DIR`` are looked up on first use (no pathlib at ``import containers``: the
no-op ``stage`` at every job start is mostly start-up).
"""

from __future__ import annotations

if False:  # typing only (annotations are strings; ``typing`` costs ms of start-up)
    from pathlib import Path

__all__ = ["CONF_DIR", "REPO_ROOT"]


def __getattr__(name: str) -> Path:
    if name in ("REPO_ROOT", "CONF_DIR"):
        import suite_core

        return getattr(suite_core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
