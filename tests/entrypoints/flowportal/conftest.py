"""Fixtures for the FlowPortal tests: the honest checkout fixture, a staged model set, MP4s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CHECKOUT = REPO / "tests" / "fixtures" / "flowportal_checkout"
WAN_FILES = (
    "models_t5_umt5-xxl-enc-bf16.pth",
    "diffusion_pytorch_model.safetensors",
    "Wan2.1_VAE.pth",
    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    "config.json",
)


def entry(
    *args: str, env_extra: dict[str, str] | None = None, timeout: int = 180
) -> subprocess.CompletedProcess:
    """``python -m entrypoints <args>`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "entrypoints", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env_extra or {})),
        timeout=timeout,
    )


def make_manifest(videos: Path, batch: Path, *, num_select: int, num_chunks: int) -> Path:
    """Run the manifest app on ``videos`` into ``batch`` (it must succeed)."""
    res = entry(
        "flowportal_manifest",
        f"video_dir={videos}",
        f"batch_dir={batch}",
        f"num_select={num_select}",
        f"num_chunks={num_chunks}",
    )
    assert res.returncode == 0, res.stderr
    return batch


def batch_overrides(batch: Path, videos: Path) -> list[str]:
    """flowportal_batch overrides for a tiny run on the fixture checkout (no chunk index)."""
    return [
        f"batch_dir={batch}",
        f"video_dir={videos}",
        f"flowportal.checkout={CHECKOUT}",
        "preset=dgx_fast",
        "video.height=24",
        "video.width=32",
    ]


def make_mp4(path: Path, frames: int, fps: float = 24.0, size: tuple[int, int] = (32, 24)) -> Path:
    """A real MP4 with ``frames`` frames (a moving disc), written with OpenCV."""
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(frames):
        f = np.full((h, w, 3), 20, np.uint8)
        cv2.circle(f, (4 + i % (w - 8), h // 2), h // 4, (200, 180, 160), -1)
        out.write(f)
    out.release()
    return path


def stage_models(root: Path) -> Path:
    """A staged model set with the layout the app checks (tiny placeholder files)."""
    m = root / "flowportal"
    for d in (
        "Wan2.1-Fun-V1.1-1.3B-Control",
        "IC-Light/models",
        "MatAnyone",
        "Annotators",
        "hf/hub/models--stablediffusionapi--realistic-vision-v51",
        "hf/hub/models--zhengpeng7--BiRefNet",
        "torch/hub/checkpoints",
    ):
        (m / d).mkdir(parents=True, exist_ok=True)
    for f in WAN_FILES:
        (m / "Wan2.1-Fun-V1.1-1.3B-Control" / f).write_text("{}")
    for f in (
        "IC-Light/models/iclight_sd15_fc.safetensors",
        "IC-Light/models/iclight_sd15_fbc.safetensors",
        "MatAnyone/matanyone.pth",
        "Annotators/ControlNetHED.pth",
        "hf/hub/models--stablediffusionapi--realistic-vision-v51/refs/main",
        "hf/hub/models--zhengpeng7--BiRefNet/refs/main",
        "torch/hub/checkpoints/resnet50-0676ba61.pth",
    ):
        (m / f).parent.mkdir(parents=True, exist_ok=True)
        (m / f).write_text("w")
    return m


def upstream_checkout(dst: Path) -> Path:
    """The upstream variant: the fixture with its ``# fork-only`` flag lines deleted."""
    shutil.copytree(CHECKOUT, dst)
    for py in dst.rglob("*.py"):
        text = py.read_text()
        py.write_text(
            "".join(ln for ln in text.splitlines(keepends=True) if not ln.rstrip().endswith("# fork-only"))
        )
    return dst


@pytest.fixture
def staged(isolated_roots) -> Path:
    return stage_models(isolated_roots / "nvme" / "models")


@pytest.fixture
def small(tmp_path) -> list[str]:
    """Overrides for a tiny, fast single-video run on the fixture checkout."""
    video = make_mp4(tmp_path / "in" / "cat.mp4", 160)
    return [
        f"flowportal.checkout={CHECKOUT}",
        f"video.input={video}",
        "video.height=24",
        "video.width=32",
        "video.k_frames=9",
    ]
