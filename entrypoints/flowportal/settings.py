"""What makes a batch's outputs what they are: recorded once per batch, fingerprinted per video.

A batch dir mixes no presets: the first driver records the output settings (preset values,
resolution, prompts' negative, partial edit, blurring, the checkout's code version, the model
set's names and sizes) in ``batch.json``; every later driver compares its own with them and a
difference is one line naming the key (``settings=recorded`` reuses them instead: what
``flowportal_status action=resubmit`` passes). A video's completion marker carries
``suite_core.markers.fingerprint`` of those settings plus the row (k_frames, prompts) and the
input video's size and mtime: a marker made any other way is "not done".

``SCHEMAS`` gives the types and ranges of the FlowPortal apps' settings (structured configs the
framework validates at composition): ``video.k_frames=abc``, ``input_fps=0``, ``workers=0`` or
``prompts_tar=[]`` are one line naming the key, before anything runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite_core.errors import UserError
from suite_core.markers import fingerprint

BATCH_FILE = "batch.json"
SETTINGS_MODES = ("request", "recorded", "replace")
VIDEO_KEYS = ("height", "width", "fps", "partial_edit", "transfer_blurring", "negative_prompt", "bg_path")


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    with contextlib.suppress(Exception):
        return OmegaConf.to_container(node, resolve=True)
    return node


def code_version(root: Path) -> str:
    """sha256 (16 hex) of the checkout's code that makes outputs, by content (not mtime or path).

    The five scripts' folders (their ``*.py``), the Python packages beside them (``videox_fun/``,
    MatAnyone's ``matanyone/``) and ``config/``: two copies of one revision give one version.
    """
    from entrypoints.flowportal.checkout import SCRIPTS

    files: set[Path] = set()
    for rel in SCRIPTS.values():
        d = (root / rel).parent
        if not d.is_dir():
            continue
        files.update(p for p in d.glob("*.py") if p.is_file())
        for pkg in d.iterdir():
            if pkg.is_dir() and (pkg / "__init__.py").is_file():
                files.update(p for p in pkg.rglob("*.py") if p.is_file())
    conf = root / "config"
    if conf.is_dir():
        files.update(p for p in conf.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))
    h = hashlib.sha256()
    for p in sorted(files, key=lambda q: q.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def output_settings(cfg: Any, checkout: Any, models: dict[str, int]) -> dict[str, Any]:
    """Every setting that changes a batch's outputs (and nothing that does not, e.g. paths)."""
    from entrypoints.flowportal.stages import teacache_active

    preset = _plain(cfg.preset)
    return {
        "preset": preset,
        "video": {k: _plain(cfg.video.get(k)) for k in VIDEO_KEYS},
        "teacache_active": teacache_active(cfg)[0],
        "flavor": checkout.flavor,
        "code": code_version(checkout.root),
        "models": models,
    }


def digest(settings: dict[str, Any]) -> str:
    return fingerprint(settings)


def video_fingerprint(
    settings_digest: str, row: dict[str, Any], prompt_tar: str, prompt_src: str, source: Path | None
) -> str:
    """The fingerprint a video's marker must carry: batch settings + its row + its input video."""
    per_video = {
        "batch": settings_digest,
        "k_frames": int(row["k_frames"]),
        "prompt_tar": prompt_tar,
        "prompt_src": prompt_src,
    }
    return fingerprint(per_video, [source] if source is not None else [])


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: recorded {a!r}, this run {b!r}"]


def read_record(batch_dir: Path) -> dict[str, Any] | None:
    import time

    path = batch_dir / BATCH_FILE
    try:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:  # an exclusive create being written this instant (no-hard-link shares)
            time.sleep(0.5)
            data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read {BATCH_FILE}: {exc}",
            where=str(path),
            fix="restore it, or pass settings=replace to record this run's settings",
        ) from None
    if not isinstance(data, dict) or "digest" not in data or "settings" not in data:
        raise UserError(
            f"{BATCH_FILE} is damaged",
            where=str(path),
            fix="pass settings=replace to record this run's settings",
        )
    return data


def _create_exclusive(path: Path, doc: dict[str, Any]) -> bool:
    """Write ``doc`` to ``path`` only if it does not exist yet (first writer wins).

    A hard link of a complete temporary file is atomic and refuses an existing name; where the
    share has no hard links (SMB) an ``O_EXCL`` create is the fallback (readers retry a partial read).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass
        from entrypoints.flowportal.claims import create_exclusive

        return create_exclusive(path, text)
    except OSError as exc:
        raise UserError(
            f"cannot write {path.name}: {exc.strerror}",
            where=str(path.parent),
            fix="make the batch dir writable",
        ) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def record_or_check(batch_dir: Path, settings: dict[str, Any], mode: str, holder: dict[str, str]) -> str:
    """Record the batch's settings (first run) or refuse a run whose settings differ."""
    from suite_core.atomic import write_json

    if mode not in SETTINGS_MODES:
        raise UserError(
            f"settings={mode!r} is not one of {', '.join(SETTINGS_MODES)}",
            where="settings",
            fix="pass settings=request (default), recorded or replace",
        )
    d = digest(settings)
    doc = {"digest": d, "settings": settings, "recorded_by": holder}
    if mode == "replace":
        write_json(batch_dir / BATCH_FILE, doc)
        return d
    if _create_exclusive(batch_dir / BATCH_FILE, doc):
        return d
    rec = read_record(batch_dir)
    assert rec is not None
    if rec["digest"] == d:
        return d
    diffs = _diff(rec["settings"], settings)
    name = (rec["settings"].get("preset") or {}).get("name")
    asked = (settings.get("preset") or {}).get("name")
    if name != asked:  # the preset first: it explains most of the other differences
        diffs = [
            f"preset: recorded {name}, this run {asked}",
            *(d for d in diffs if not d.startswith("preset.")),
        ]
    first = diffs[0] if diffs else "settings differ"
    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
    raise UserError(
        f"this batch dir was started with other settings: {first}{more}",
        where=str(batch_dir / BATCH_FILE),
        fix=f"rerun with the recorded ones (settings=recorded, as flowportal_status action=resubmit does; "
        f"preset={name}), or use a new batch_dir, or settings=replace to redo every video with these",
    )


def apply_recorded(cfg: Any, batch_dir: Path) -> dict[str, Any]:
    """Put the recorded preset and video settings into ``cfg`` (values as data, never interpolated)."""
    from omegaconf import OmegaConf, open_dict

    rec = read_record(batch_dir)
    if rec is None:
        raise UserError(
            f"settings=recorded but {batch_dir / BATCH_FILE} does not exist yet",
            where="settings",
            fix="run the first task with an explicit preset= (settings=request records it)",
        )
    s = rec["settings"]

    def escape(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("${", "\\${")
        if isinstance(v, dict):
            return {k: escape(x) for k, x in v.items()}
        if isinstance(v, list):
            return [escape(x) for x in v]
        return v

    with open_dict(cfg):
        cfg.preset = OmegaConf.create(escape(s["preset"]))
        for k, v in s["video"].items():
            cfg.video[k] = escape(v)
    return rec

FPS = {"gt": 0, "fix": "pass input_fps=<frames per second > 0>"}


@dataclass
class Video:
    k_frames: int = field(default=49, metadata={"ge": 9, "fix": "pass video.k_frames=N (N >= 9)"})
    fps: float = field(default=8.0, metadata={"gt": 0})
    height: int = field(default=480, metadata={"ge": 16})
    width: int = field(default=720, metadata={"ge": 16})
    transfer_blurring: float = field(default=0.2, metadata={"ge": 0})


@dataclass
class FlowPortal:
    dry_run: bool = False
    video: Video = field(default_factory=Video)


@dataclass
class BatchVideo:
    height: int = field(default=480, metadata={"ge": 16})
    width: int = field(default=848, metadata={"ge": 16})
    transfer_blurring: float = field(default=0.4, metadata={"ge": 0})


@dataclass
class Batch:
    input_fps: float = field(default=24.0, metadata=FPS)
    chunk: int | None = field(default=None, metadata={"ge": 0})
    chunk_offset: int = field(default=0, metadata={"ge": 0})
    deadline_margin_s: float = field(default=120.0, metadata={"ge": 0})
    video: BatchVideo = field(default_factory=BatchVideo)


@dataclass
class Manifest:
    input_fps: float = field(default=24.0, metadata=FPS)
    target_fps: float = field(default=8.0, metadata={"gt": 0})
    num_select: int = field(default=8000, metadata={"ge": 0})
    num_chunks: int = field(default=10, metadata={"ge": 1})
    seed: int = 42
    workers: int = field(default=8, metadata={"ge": 1, "fix": "pass workers=N threads (N >= 1)"})
    prompt_src: str = ""
    prompts_tar: list[str] = field(default_factory=list, metadata={
        "min_items": 1, "fix": "give at least one target prompt: prompts_tar=['a person is signing ...']"})


@dataclass
class Status:
    parallel: int | None = field(default=None, metadata={"ge": 1})
    max_parallel: int | None = field(default=None, metadata={"ge": 1})
    show_failures: int = field(default=5, metadata={"ge": 0})
    dry_run: bool = False


SCHEMAS: dict[str, type] = {
    "flowportal": FlowPortal,
    "flowportal_batch": Batch,
    "flowportal_manifest": Manifest,
    "flowportal_status": Status,
}
