"""The app registry: ``hydra_conf/app/<name>.yaml`` files that declare ``app_module`` and
``app_summary`` on top-level lines, read with a regular expression (no YAML import) so ``--help``
stays fast and adding an app touches no shared registry. Shared by the apps' CLI
(``python -m entrypoints``) and the submit side, which checks step apps before submitting.
"""


from __future__ import annotations

import re
from pathlib import Path

from suite_core import CONF_DIR

APP_DIR = CONF_DIR / "app"
_KEY = re.compile(r"^(app_module|app_summary):\s*(.+?)\s*$", re.M)


def discover(app_dir: Path = APP_DIR) -> dict[str, tuple[str, str]]:
    """name -> (module, one-line summary), for every app config that names a module."""
    apps: dict[str, tuple[str, str]] = {}
    for conf in sorted(app_dir.glob("*.yaml")):
        keys = dict(_KEY.findall(conf.read_text(encoding="utf-8")))
        if "app_module" in keys:
            apps[conf.stem] = (keys["app_module"].strip("'\""), keys.get("app_summary", "").strip("'\""))
    return apps
