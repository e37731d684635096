"""Apps that run inside the images (``python -m entrypoints <app> [overrides]``).

Only the standard library is imported at start-up; each app imports its heavy libraries
(torch, paddle, onnxruntime) inside the functions that need them.

Apps are found from ``hydra_conf/app/<name>.yaml`` by the registry in ``suite_core.apps``.
"""

from suite_core.apps import APP_DIR, discover

__all__ = ["APP_DIR", "discover"]
