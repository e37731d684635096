"""PaddleOCR 3.x sources: ``LayoutDetection`` (paddle_layout) and ``PaddleOCRVL`` v1.5 (paddle_vl15).

Both read models only from staged directories (``*_model_dir``), with PaddleX's hoster probe
disabled, so a job never reaches for the network. Results are normalised from the structures
PaddleOCR returns: a layout result is a dict with ``boxes`` = [{cls_id, label, score,
coordinate: [x0, y0, x1, y1]}]; a PaddleOCR-VL result is a dict whose ``parsing_res_list`` holds
block objects (``.label``, ``.bbox``) - or, in its JSON form, dicts with ``block_label`` and
``block_bbox`` - and whose ``layout_det_res`` holds the layout boxes with their scores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from entrypoints.newsbag.schema import make_box, map_label
from entrypoints.newsbag.sources.base import missing_model, run_source_app

# Files that make a directory a usable Paddle inference model (any one of them).
MODEL_FILES = ("inference.yml", "inference.json", "inference.pdmodel", "config.json")


def check_model_dir(path: Any, what: str, stage_src: str | None) -> str:
    p = Path(str(path or ""))
    if not p.is_dir() or not any((p / f).is_file() for f in MODEL_FILES):
        raise missing_model(p, what, stage_src)
    return str(p)


def paddle_probe() -> tuple[bool, str]:
    try:
        import paddle
    except ImportError as exc:
        return False, f"paddle not importable: {exc}"
    if not paddle.device.is_compiled_with_cuda():
        return False, "paddle built without CUDA"
    if paddle.device.cuda.device_count() < 1:
        return False, "paddle sees no CUDA device"
    return True, ""


def paddle_runtime() -> dict[str, Any]:
    """Where Paddle computes now (``gpu:0`` or ``cpu``), for the GPU guard."""
    try:
        import paddle

        return {"framework": "paddle", "device": str(paddle.device.get_device())}
    except ImportError:
        return {}


def paddle_device(device: str) -> str:
    return "gpu:" + (device.split(":")[1] if ":" in device else "0") if device.startswith("cuda") else "cpu"


def _offline_env() -> None:
    os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
    os.environ.setdefault("PADDLEOCR_DISABLE_AUTO_LOGGING_CONFIG", "1")


def _get(obj: Any, *names: str) -> Any:
    """First present field, from a mapping key or an attribute."""
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if not isinstance(obj, Mapping) and hasattr(obj, n):
            return getattr(obj, n)
    return None


def _xyxy(coord: Any) -> tuple[float, float, float, float] | None:
    """[x0, y0, x1, y1], a flat polygon [x, y, x, y, ...] or [[x, y], ...] -> bounding xyxy."""
    if coord is None:
        return None
    import numpy as np

    try:
        vals = np.asarray(coord, dtype=np.float64).reshape(-1).tolist()
    except (TypeError, ValueError):
        return None
    if len(vals) == 4:
        return vals[0], vals[1], vals[2], vals[3]
    if len(vals) >= 6 and len(vals) % 2 == 0:
        xs, ys = vals[0::2], vals[1::2]
        return min(xs), min(ys), max(xs), max(ys)
    return None


def _unwrap(res: Any) -> Any:
    """A result object, its ``.json`` ({"res": {...}}) form, or a plain dict -> the dict of fields."""
    if isinstance(res, Mapping) and "res" in res and isinstance(res["res"], Mapping):
        return res["res"]
    if isinstance(res, Mapping):
        return res
    js = getattr(res, "json", None)
    if isinstance(js, Mapping):
        return js.get("res", js)
    return res


def layout_boxes(results: Iterable[Any], source: str, width: int, height: int) -> list[dict[str, Any]]:
    """Normalise LayoutDetection results (one page) to contract boxes."""
    out = []
    for res in results:
        for b in _get(_unwrap(res), "boxes") or []:
            xyxy = _xyxy(_get(b, "coordinate", "bbox"))
            label = _get(b, "label")
            if xyxy is None or label is None:
                continue
            box = make_box(*xyxy, label=map_label(source, label), raw_label=label,
                           score=float(_get(b, "score") or 0.0), width=width, height=height)
            if box:
                out.append(box)
    return out


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def vl_boxes(results: Iterable[Any], source: str, width: int, height: int) -> list[dict[str, Any]]:
    """Normalise PaddleOCR-VL results: parsing blocks, scored from the matching layout box.

    A merged block that matches no layout box (IoU < 0.5) has no score from the model: it is
    marked unscored (``"scored": false``) rather than given a confident 1.0.
    """
    out = []
    for res in results:
        data = _unwrap(res)
        det = _get(data, "layout_det_res")
        scored = [(_xyxy(_get(b, "coordinate")), float(_get(b, "score") or 0.0))
                  for b in (_get(_unwrap(det), "boxes") or [] if det is not None else [])]
        scored = [(c, s) for c, s in scored if c is not None]
        for blk in _get(data, "parsing_res_list") or []:
            label = _get(blk, "label", "block_label")
            xyxy = _xyxy(_get(blk, "bbox", "block_bbox"))
            if xyxy is None or label is None:
                continue
            best = max(((_iou(xyxy, c), s) for c, s in scored), default=(0.0, 0.0))
            has_score = best[0] >= 0.5
            box = make_box(*xyxy, label=map_label(source, label), raw_label=label,
                           score=best[1] if has_score else 0.0, width=width, height=height,
                           scored=has_score)
            if box:
                out.append(box)
    return out


class LayoutDetector:
    granularity = "block"

    def __init__(self, source: str, variant: str, settings: dict[str, Any], device: str) -> None:
        self.source, self.variant = source, variant
        self.model_name = str(settings.get("model_name", "PP-DocLayout_plus-L"))
        what = f"PaddleOCR layout model {self.model_name}"
        self.model_dir = check_model_dir(settings.get("model_dir"), what, settings.get("stage_src"))
        keys = ("threshold", "layout_nms", "layout_unclip_ratio", "layout_merge_bboxes_mode")
        self.predict_kwargs = {k: settings[k] for k in keys if settings.get(k) is not None}
        _offline_env()
        from paddleocr import LayoutDetection

        self.device = paddle_device(device)
        self.model = LayoutDetection(model_name=self.model_name, model_dir=self.model_dir, device=self.device)

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        return layout_boxes(self.model.predict(bgr, batch_size=1, **self.predict_kwargs), self.source,
                            width, height)

    def facts(self) -> dict[str, Any]:
        return {"model": self.model_name, "model_dir": self.model_dir, "paddle_device": self.device}

    def runtime(self) -> dict[str, Any]:
        return paddle_runtime()


class VLDetector:
    granularity = "block"

    def __init__(self, source: str, variant: str, settings: dict[str, Any], device: str) -> None:
        self.source, self.variant = source, variant
        self.version = str(settings.get("pipeline_version", "v1.5"))
        stage = settings.get("stage_src")
        self.layout_dir = check_model_dir(settings.get("layout_detection_model_dir"),
                                          "PaddleOCR-VL layout model", stage)
        self.vl_dir = check_model_dir(settings.get("vl_rec_model_dir"),
                                      "PaddleOCR-VL recognition model", stage)
        keys = ("layout_threshold", "layout_nms", "use_layout_detection")
        self.predict_kwargs = {k: settings[k] for k in keys if settings.get(k) is not None}
        _offline_env()
        from paddleocr import PaddleOCRVL

        self.device = paddle_device(device)
        kwargs = {"pipeline_version": self.version, "layout_detection_model_dir": self.layout_dir,
                  "vl_rec_model_dir": self.vl_dir, "device": self.device,
                  "use_doc_orientation_classify": False, "use_doc_unwarping": False}
        if settings.get("vl_rec_backend"):
            kwargs["vl_rec_backend"] = settings["vl_rec_backend"]
        self.pipeline = PaddleOCRVL(**kwargs)

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        return vl_boxes(self.pipeline.predict(bgr, **self.predict_kwargs), self.source, width, height)

    def facts(self) -> dict[str, Any]:
        return {"model": f"PaddleOCR-VL {self.version}", "layout_model_dir": self.layout_dir,
                "vl_rec_model_dir": self.vl_dir, "paddle_device": self.device}

    def runtime(self) -> dict[str, Any]:
        return paddle_runtime()


def run_layout(cfg: Any, run: Any) -> int:
    return run_source_app(cfg, run, sources={"paddle_layout": LayoutDetector}, probe=paddle_probe)


def run_vl(cfg: Any, run: Any) -> int:
    return run_source_app(cfg, run, sources={"paddle_vl15": VLDetector}, probe=paddle_probe)
