"""The per-run working directory the FlowPortal scripts expect, and atomic, marked outputs.

The scripts resolve ``config/``, ``datasets/``, ``results/`` and ``./pretrained_models/...``
against the cwd, so each run gets its own directory on node-local disk (never the shared
SMB/NFS tree: SMB has no symlinks, and scripts writing frames there is slow). Links point at
the staged models; where a link is impossible the small items (``config/``,
``matanyone.pth``) are copied and the big ones are reached by the absolute paths the commands
pass anyway. Final outputs leave the workdir only after the stage succeeded: they are copied
under a temporary name, renamed, and a completion marker (sizes + sha256) is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from entrypoints.flowportal.manifest import frame_count
from entrypoints.flowportal.stages import model_paths
from suite_core.atomic import atomic_path, write_json
from suite_core.errors import UserError

MARKER = ".complete.json"


def layout(cfg: Any, checkout_root: Path, workdir: Path) -> dict[str, str]:
    """What the workdir holds and where each entry points (for dry runs and the report)."""
    models = model_paths(cfg)
    wan = Path(models["wan"])
    entries = {
        "config/": f"copy of {checkout_root / 'config'}",
        "datasets/<video>/": "inputs and intermediates of stages 1-4 (deleted after success)",
        "results/flow-edit-<video>/": "stage 5 output, moved to outputs/ only after it succeeded",
        "pretrained_models/matanyone.pth": f"-> {models['matanyone']} (MatAnyone loads it from the cwd)",
        "pretrained_models/Annotators": f"-> {models['annotators']}",
        "pretrained_models/IC-Light": f"-> {Path(models['iclight_fc']).parent.parent}",
        f"pretrained_models/{wan.name}": f"-> {wan} (basename kept: TeaCache keys on it)",
        "logs/<video>/<stage>.log": "stdout+stderr of each stage",
    }
    return {str(workdir / k) + ("/" if k.endswith("/") else ""): v for k, v in entries.items()}


def _link_or_copy(src: Path, dst: Path, mode: str, small: bool) -> str:
    if dst.is_symlink() or dst.exists():
        return "present"
    if not src.exists():
        return "missing"
    if mode in ("auto", "symlink"):
        try:
            dst.symlink_to(src, target_is_directory=src.is_dir())
            return "symlink"
        except OSError as exc:
            if mode == "symlink":
                raise UserError(
                    f"cannot create symlink {dst}: {exc.strerror}",
                    where=str(dst.parent),
                    fix="put flowportal.workdir_root on node-local disk, or link_mode=copy",
                ) from None
    if small:
        with atomic_path(dst) as tmp:
            if src.is_dir():
                tmp.unlink()
                shutil.copytree(src, tmp)
            else:
                shutil.copy2(src, tmp)
        return "copy"
    return "by-path"  # too big to copy; the stage commands pass the staged path


def prepare(cfg: Any, checkout_root: Path, workdir: Path) -> dict[str, str]:
    """Create the workdir; returns how each entry was provided (symlink/copy/by-path/missing)."""
    mode = str(cfg.flowportal.link_mode)
    if mode not in ("auto", "symlink", "copy"):
        raise UserError(f"unknown flowportal.link_mode '{mode}'", fix="use auto, symlink or copy")
    for sub in ("datasets", "results", "pretrained_models", "logs"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    conf = checkout_root / "config"
    if not (workdir / "config").exists():
        if not conf.is_dir():
            raise UserError(
                f"the checkout has no config/ directory ({conf})",
                where="flowportal.checkout",
                fix="use a complete FlowPortal checkout (config/wan2.1/wan_civitai.yaml)",
            )
        with atomic_path(workdir / "config") as tmp:
            tmp.unlink()
            shutil.copytree(conf, tmp)
    done["config"] = "copy"
    models = model_paths(cfg)
    pm = workdir / "pretrained_models"
    done["matanyone.pth"] = _link_or_copy(Path(models["matanyone"]), pm / "matanyone.pth", mode, small=True)
    done["Annotators"] = _link_or_copy(Path(models["annotators"]), pm / "Annotators", mode, small=False)
    done["IC-Light"] = _link_or_copy(
        Path(models["iclight_fc"]).parent.parent, pm / "IC-Light", mode, small=False
    )
    wan = Path(models["wan"])
    done[wan.name] = _link_or_copy(wan, pm / wan.name, mode, small=False)
    return done


def clean_video(workdir: Path, name: str) -> None:
    """Remove a video's intermediates and its workdir copy of results from the workdir."""
    shutil.rmtree(workdir / "datasets" / name, ignore_errors=True)
    shutil.rmtree(workdir / "results" / f"flow-edit-{name}", ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_complete(out_dir: Path | str, fingerprint: str | None = None) -> bool:
    """Trust the marker only if it was made with ``fingerprint`` and every file keeps its size.

    ``fingerprint=None`` checks the files alone (for tools that cannot know the settings).
    """
    from suite_core.markers import read_marker

    base = os.fspath(out_dir)  # strings, not Paths: status runs this for every finished video
    info = read_marker(os.path.join(base, MARKER))
    if not info or not isinstance(info.get("files"), dict):
        return False
    if fingerprint is not None and info.get("fingerprint") != fingerprint:
        return False
    for name, facts in info["files"].items():
        try:
            if os.stat(os.path.join(base, name)).st_size != facts["bytes"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return bool(info["files"])


def sweep_parts(out_dir: Path) -> list[str]:
    """Delete temporary files a killed publish left (``.<name>.<random>.part<suffix>``)."""
    gone = []
    with contextlib.suppress(OSError):
        for p in out_dir.iterdir():
            if p.name.startswith(".") and ".part" in p.name and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    gone.append(p.name)
    return gone


def publish(
    workdir: Path, name: str, out_dir: Path, facts: dict[str, Any], fingerprint: str
) -> dict[str, Any]:
    """Copy the finished outputs of ``name`` from the workdir into ``out_dir`` (see publish_files)."""
    res = workdir / "results" / f"flow-edit-{name}"
    wanted = {
        "output_video.mp4": res / "output_video.mp4",
        "compare_output_video.mp4": res / "compare_output_video.mp4",
        f"{name}_reference.png": workdir / "datasets" / name / f"{name}_reference.png",
    }
    main = wanted["output_video.mp4"]
    if not main.is_file() or main.stat().st_size == 0 or frame_count(main) == 0:
        raise UserError(
            f"stage flowportal exited 0 but {main} is missing, empty or unreadable",
            where=str(res),
            fix="check the stage log; the video stays unmarked and is redone",
        )
    return publish_files(out_dir, name, wanted, facts, fingerprint)


def publish_files(
    out_dir: Path, name: str, wanted: dict[str, Path], facts: dict[str, Any], fingerprint: str
) -> dict[str, Any]:
    """Copy ``wanted`` (those that exist) into ``out_dir`` atomically, then write the marker last."""
    with contextlib.suppress(FileNotFoundError):
        (out_dir / MARKER).unlink()
    sweep_parts(out_dir)
    files: dict[str, Any] = {}
    for dst_name, src in wanted.items():
        if not src.is_file():
            continue
        dst = out_dir / dst_name
        with atomic_path(dst, suffix=src.suffix) as tmp:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        files[dst_name] = {"bytes": dst.stat().st_size, "sha256": _sha256(dst)}
    marker = {"fingerprint": fingerprint, "video": name, "files": files, **facts}
    write_json(out_dir / MARKER, marker)
    return marker
