"""Which pages a run reads, and loading each one with a clear reason when it cannot be used.

A directory of scans always holds some junk: notes, checksums, half-copied or corrupt files,
a 20,000-pixel panorama. None of those may stop a run; each becomes one ``skipped`` entry with
its reason, and the other pages go on. Only "nothing to do at all" (missing or empty input
directory) is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from containers.errors import UserError
from entrypoints.newsbag.schema import page_id_for

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".gif", ".pgm", ".ppm")
# Files that belong next to pages and are not pages themselves (no skip entry for them).
COMPANION_SUFFIXES = (".gt.json",)
DEFAULT_MAX_MEGAPIXELS = 80.0


class PageSkip(Exception):
    """A page that cannot be used; ``str(exc)`` is the reason recorded in the report."""


@dataclass(frozen=True)
class PageInput:
    page_id: str
    path: Path


def discover(input_dir: str | os.PathLike[str] | None, *, recursive: bool = False
             ) -> tuple[list[PageInput], list[tuple[str, str]]]:
    """Image pages under ``input_dir`` (sorted, unique ids) and (item, reason) for the rest."""
    if input_dir in (None, "", "None"):
        raise UserError("no input directory given", where="input_dir",
                        fix="pass input_dir=DIR (or --input-dir DIR)")
    root = Path(str(input_dir)).expanduser()
    if not root.exists():
        raise UserError(f"input directory {root} does not exist", where="input_dir",
                        fix="pass an existing directory of page images")
    if not root.is_dir():
        raise UserError(f"input {root} is not a directory", where="input_dir",
                        fix="pass the directory that holds the page images")
    try:
        entries = sorted(root.rglob("*") if recursive else root.iterdir())
    except PermissionError as exc:
        raise UserError(f"cannot list {root}: {exc.strerror}", where="input_dir",
                        fix="check the directory's permissions") from None
    pages: list[PageInput] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, Path] = {}
    subdirs = 0
    for p in entries:
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_dir():
            subdirs += 1
            continue
        name = p.name.lower()
        if name.endswith(COMPANION_SUFFIXES):
            continue
        if not name.endswith(IMAGE_SUFFIXES):
            skipped.append((str(p), f"not an image (suffix '{p.suffix or 'none'}'; "
                                    f"reads {', '.join(IMAGE_SUFFIXES)})"))
            continue
        pid = page_id_for(p, root)
        if pid in seen:
            skipped.append((str(p), f"page id '{pid}' already used by {seen[pid]} (same name, "
                                    "another suffix): rename one"))
            continue
        seen[pid] = p
        pages.append(PageInput(pid, p))
    if not pages:
        hint = (f"; it has {subdirs} subdirectories: add recursive=true (--recursive true)"
                if subdirs and not recursive else "")
        what = "no page images" if skipped else "input directory is empty"
        raise UserError(f"{what} in {root}{hint}", where="input_dir",
                        fix=f"put page images ({', '.join(IMAGE_SUFFIXES)}) there"
                            + (f"; skipped: {skipped[0][1]}" if skipped else ""))
    return pages, skipped


def load_bgr(path: str | os.PathLike[str], *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
             min_side: int = 32) -> Any:
    """Decode a page as an HxWx3 uint8 BGR array (the OpenCV order the detectors expect).

    The size is checked from the header before decoding, so a huge page is refused without
    allocating it. Raises PageSkip with the reason for unreadable, corrupt, huge or tiny pages.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
            if w * h > max_megapixels * 1e6:
                raise PageSkip(f"page too large: {w}x{h} = {w * h / 1e6:.0f} MP exceeds "
                               f"max_megapixels={max_megapixels:g}")
            if min(w, h) < min_side:
                raise PageSkip(f"page too small: {w}x{h} (min side {min_side} px)")
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            arr = np.asarray(rgb, dtype=np.uint8)
    except PageSkip:
        raise
    except PermissionError:
        raise PageSkip("unreadable: permission denied") from None
    except UnidentifiedImageError:
        raise PageSkip("corrupt or not an image: the decoder does not recognise the file") from None
    except Image.DecompressionBombError as exc:
        raise PageSkip(f"page too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PageSkip(f"corrupt image: {' '.join(str(exc).split())[:200]}") from None
    return np.ascontiguousarray(arr[:, :, ::-1])
