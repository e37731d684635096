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

from entrypoints.newsbag.schema import page_id_for
from suite_core.errors import UserError

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


def to_rgb8(im: Any) -> Any:
    """Any Pillow mode -> HxWx3 uint8 RGB with the tones kept.

    Pillow's ``convert("RGB")`` clips 16-bit and 32-bit greyscale to 255 (a 16-bit scan became a
    blank white page), and drops transparency onto black. Here 16-bit values are scaled by
    255/65535 (integer images beyond 16 bits by their own maximum, float images from [0, 1]),
    and palette or alpha images are composited onto white first.
    """
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a.astype(np.float64)
            finite = a[np.isfinite(a)]
            top = 1.0 if finite.size == 0 or finite.max() <= 1.0 else float(finite.max())
            g = np.nan_to_num(a / top).clip(0.0, 1.0) * 255.0
        else:
            a = a.astype(np.int64)
            top = 65535 if mode != "I" or a.max(initial=0) <= 65535 else int(a.max())
            g = a.clip(0, None) * (255.0 / top)
        g = np.round(g).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = im.convert("RGB") if im.mode != "RGB" else im
    return np.asarray(rgb, dtype=np.uint8)


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
            arr = to_rgb8(im)
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
