"""What both sides import: the host toolkit (``containers``) and the apps inside the images
(``entrypoints``) depend on this package, and it on neither (``make lint`` checks that with
import-linter): errors, atomic writes, the subprocess runner, arch names, config composition,
fingerprinted markers, run-dir locks and secret rules.

Light imports only: it runs on a login node's plain Python and inside every image.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "hydra_conf"

__all__ = ["CONF_DIR", "REPO_ROOT"]
