"""Image facts and SIF resolution: which file runs image X on this node's arch.

Images are published as ``<name>-<arch>-<lockhash>.sif`` with a small pointer file
``<name>-<arch>.current`` naming the current one (SMB shares have no symlinks). A node-local
staged copy is preferred over the shared one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from containers.sif import SifInfo, read_sif
from suite_core.arch import normalize
from suite_core.errors import UserError

# Defaults of the `sif` / `pointer` keys of hydra_conf/image/*.yaml.
SIF_PATTERN = "{name}-{arch}-{lockhash}.sif"
POINTER_PATTERN = "{name}-{arch}.current"


def pointer_path(directory: Path, name: str, arch: str, pattern: str = POINTER_PATTERN) -> Path:
    """Where the pointer naming the current SIF of ``name`` on ``arch`` lives in ``directory``."""
    return Path(directory) / pattern.format(name=name, arch=arch)


@dataclass(frozen=True)
class ResolvedImage:
    name: str
    arch: str
    sif: Path | None        # None for the host runtime when no SIF exists
    info: SifInfo | None


def image_names(cfg_dir: Path) -> list[str]:
    return sorted(p.stem for p in (cfg_dir / "image").glob("*.yaml"))


def check_arch_supported(image: Any, arch: str) -> None:
    """Refuse an arch the recipe does not support, saying why when the config knows."""
    arches = [normalize(a) for a in image.arches]
    if arch in arches:
        return
    why = (image.get("unsupported") or {}).get(arch)
    raise UserError(
        f"image {image.name} has no {arch} build" + (f": {why}" if why else ""),
        where=f"hydra_conf/image/{image.name}.yaml (arches: {', '.join(arches)})",
        fix=f"run it on a node of arch {' or '.join(arches)}")


def pointer_target(directory: Path, image: Any, arch: str) -> Path | None:
    """The SIF named by ``<name>-<arch>.current`` in ``directory``, if that pointer exists."""
    pointer = pointer_path(directory, image.name, arch, str(image.get("pointer") or POINTER_PATTERN))
    if not pointer.is_file():
        return None
    try:
        target = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):  # binary junk or an unreadable file: malformed, one line
        target = ""
    if not target or "/" in target or "\n" in target or "\0" in target or target in (".", ".."):
        raise UserError(f"pointer file {pointer} is malformed (expected one SIF file name)",
                        fix="republish the image (make build) or fix the file by hand")
    return directory / target


def resolve_sif(image: Any, arch: str, search: list[Path], *, explicit: str | None = None,
                required: bool = True) -> ResolvedImage:
    """Find the SIF for ``image`` on ``arch``: explicit path, staged copy, then shared dir."""
    check_arch_supported(image, arch)
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    else:
        for d in search:
            sif = pointer_target(d, image, arch)
            if sif is not None:
                candidates.append(sif)
    for sif in candidates:
        if sif.is_file() or explicit:
            info = read_sif(sif)
            if info.arch != arch:
                raise UserError(
                    f"image {sif} is built for {info.arch} but this node is {arch}",
                    fix=f"use the {arch} build ({image.name}-{arch}-*.sif; make build-{arch})")
            return ResolvedImage(image.name, arch, sif, info)
        raise UserError(f"pointer names {sif}, which does not exist",
                        fix="republish the image (make build) or restage it")
    if required:
        where = ", ".join(str(d) for d in search) or "(no image directory configured)"
        raise UserError(f"no {arch} SIF for image {image.name}", where=where,
                        fix=f"build it (make build IMAGE={image.name}) or pass image_sif=PATH")
    return ResolvedImage(image.name, arch, None, None)
