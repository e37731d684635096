"""What both sides import: the host toolkit (``containers``) and the apps inside the images
(``entrypoints``) depend on this package, and it on neither (``make lint`` checks that with
import-linter): errors, atomic writes, the subprocess runner, arch names, config composition,
fingerprinted markers, run-dir locks and secret rules.

Light imports only: it runs on a login node's plain Python and inside every image. ``REPO_ROOT``
and ``CONF_DIR`` are made on first use: importing ``pathlib`` here (re, fnmatch, urllib.parse) was
a quarter of the start-up of ``python -m containers stage``, which runs at every job start.
"""

from __future__ import annotations

import os

if False:  # typing only (annotations are strings)
    from pathlib import Path

_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

__all__ = ["CONF_DIR", "REPO_ROOT"]


def __getattr__(name: str) -> Path:
    if name in ("REPO_ROOT", "CONF_DIR"):
        from pathlib import Path

        root = Path(_ROOT)
        globals().update(REPO_ROOT=root, CONF_DIR=root / "hydra_conf")
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
