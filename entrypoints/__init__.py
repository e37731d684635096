"""Apps that run inside the images (``python -m entrypoints <app> [overrides]``).

Only the standard library is imported at start-up; each app imports its heavy libraries
(torch, paddle, onnxruntime) inside the functions that need them.

Apps are found from ``hydra_conf/app/<name>.yaml``: each declares ``app_module`` and
``app_summary`` on top-level lines, read here with a regular expression (no YAML import)
so ``--help`` stays fast and adding an app touches no shared registry.
"""

from __future__ import annotations

import re
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent / "hydra_conf" / "app"
_KEY = re.compile(r"^(app_module|app_summary):\s*(.+?)\s*$", re.M)


def discover(app_dir: Path = APP_DIR) -> dict[str, tuple[str, str]]:
    """name -> (module, one-line summary), for every app config that names a module."""
    apps: dict[str, tuple[str, str]] = {}
    for conf in sorted(app_dir.glob("*.yaml")):
        keys = dict(_KEY.findall(conf.read_text(encoding="utf-8")))
        if "app_module" in keys:
            apps[conf.stem] = (keys["app_module"].strip("'\""), keys.get("app_summary", "").strip("'\""))
    return apps
