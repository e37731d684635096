"""Host-side toolkit: compose config, resolve images, launch entrypoints, build, stage, submit.

Runs on a login node's plain Python: nothing here imports torch, paddle or onnxruntime.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "hydra_conf"

__all__ = ["CONF_DIR", "REPO_ROOT"]
