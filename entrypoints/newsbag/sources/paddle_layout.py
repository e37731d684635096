"""App module for ``paddle_layout``: PaddleOCR ``LayoutDetection`` (see ``sources.paddle``)."""

from __future__ import annotations

from typing import Any

FLAGS = {"--input-dir": "input_dir", "--recursive": "recursive?"}


def run(cfg: Any, run: Any) -> int:
    from entrypoints.newsbag.sources.paddle import run_layout

    return run_layout(cfg, run)
