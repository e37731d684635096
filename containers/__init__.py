"""Host-side toolkit: compose config, resolve images, launch entrypoints, build, stage, submit.

Runs on a login node's plain Python: nothing here imports torch, paddle or onnxruntime. What the
apps share with it (errors, atomic writes, the runner, config) lives in ``suite_core``.
"""

from suite_core import CONF_DIR, REPO_ROOT

__all__ = ["CONF_DIR", "REPO_ROOT"]
