"""App module for ``paddle_vl15``: ``PaddleOCRVL(pipeline_version="v1.5")`` (see ``sources.paddle``)."""

from __future__ import annotations

from typing import Any

FLAGS = {"--input-dir": "input_dir", "--recursive": "recursive?"}


def run(cfg: Any, run: Any) -> int:
    from entrypoints.newsbag.sources.paddle import run_vl

    return run_vl(cfg, run)
