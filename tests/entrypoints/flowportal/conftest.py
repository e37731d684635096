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


def mpath(batch: Path, name: str) -> Path:
    """A file of the batch's current, verified manifest generation (chunk0.csv, prompts.txt ...)."""
    from entrypoints.flowportal.manifest import load

    return load(batch).path(name)


def edit_chunk(batch: Path, name: str, append: str) -> None:
    """Regenerate the manifest with ``append`` added to one file (as another generator would write it)."""
    from entrypoints.flowportal.manifest import load, write_generation

    man = load(batch)
    files = {f: (man.gen_dir / f).read_text() for f in man.info["files"]}
    files[name] += append
    summary = {k: v for k, v in man.info.items() if k not in ("generation", "previous_generation", "files")}
    write_generation(batch, files, summary)


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


HF_REV = "0123456789abcdef0123456789abcdef01234567"
# relative file -> the folder key of flowportal.layouts (suite, status_quo)
MODEL_FILES = [
    *[("wan", f) for f in WAN_FILES],
    ("wan", "google/umt5-xxl/tokenizer_config.json"),
    ("wan", "google/umt5-xxl/spiece.model"),
    ("iclight_dir", "iclight_sd15_fc.safetensors"),
    ("iclight_dir", "iclight_sd15_fbc.safetensors"),
    ("matanyone", ""),
    ("annotators", "ControlNetHED.pth"),
    ("annotators", "dpt_hybrid-midas-501f0c75.pt"),
    ("torch_home", "hub/checkpoints/resnet50-19c8e357.pth"),
    ("torch_home", "hub/checkpoints/resnet18-5c106cde.pth"),
    *[
        ("hf_hub", f"models--zhengpeng7--BiRefNet/snapshots/{HF_REV}/{f}")
        for f in ("config.json", "model.safetensors", "birefnet.py", "BiRefNet_config.py")
    ],
    *[
        ("hf_hub", f"models--stablediffusionapi--realistic-vision-v51/snapshots/{HF_REV}/{f}")
        for f in (
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
        )
    ],
]
LAYOUTS = {
    "suite": {
        "wan": "Wan2.1-Fun-V1.1-1.3B-Control",
        "iclight_dir": "IC-Light/models",
        "matanyone": "MatAnyone/matanyone.pth",
        "annotators": "Annotators",
        "hf_hub": "hf/hub",
        "torch_home": "torch",
    },
    "status_quo": {
        "wan": "models/Diffusion_Transformer/Wan2.1-Fun-V1.1-1.3B-Control",
        "iclight_dir": "IC-Light/models",
        "matanyone": "MatAnyone/pretrained_models/matanyone.pth",
        "annotators": "Annotators",
        "hf_hub": ".huggingface_cache/hub",
        "torch_home": "torch_hub_cache",
    },
}


def stage_models(
    root: Path,
    *,
    layout: str = "suite",
    name: str = "flowportal",
    skip: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Path:
    """A model set with every file the stages open (tiny placeholder files), in ``layout``.

    ``skip``: relative paths left out; ``extra``: relative paths added (e.g. a wrong ResNet name).
    """
    m = root / name
    folders = LAYOUTS[layout]
    for key, rel in MODEL_FILES:
        path = f"{folders[key]}/{rel}" if rel else folders[key]
        if path in skip:
            continue
        (m / path).parent.mkdir(parents=True, exist_ok=True)
        (m / path).write_text("{}" if path.endswith(".json") else "w")
    for repo in ("models--zhengpeng7--BiRefNet", "models--stablediffusionapi--realistic-vision-v51"):
        ref = m / folders["hf_hub"] / repo / "refs" / "main"
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(HF_REV)
    for path in extra:
        (m / path).parent.mkdir(parents=True, exist_ok=True)
        (m / path).write_text("w")
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
