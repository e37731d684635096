"""Dell / AmericanStories newspaper layout model (YOLOv8, exported to ONNX) on ONNX Runtime.

Pre- and post-processing follow the model's training pipeline: letterbox to a square (no
"auto" minimal padding, grey 114 border), BGR->RGB, /255, NCHW; the output ``(1, 4+C, N)`` is
centre-xywh in letterboxed pixels plus C class scores (no objectness). Decoding keeps the best
class per anchor above ``conf``, then class-agnostic greedy NMS (IoU ``iou``, at most
``max_det``), and maps boxes back to page pixels by undoing the padding and the scale.

Variants that differ only in thresholds share one session and one forward pass per page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from entrypoints.newsbag.schema import DELL_CLASSES, DELL_RAW_NAMES, make_box
from entrypoints.newsbag.sources.base import missing_model, ort_probe, ort_providers, run_source_app

FLAGS = {"--input-dir": "input_dir", "--recursive": "recursive?"}
MAX_NMS = 30000  # candidates kept (by score) before NMS, as YOLOv8 does


def letterbox(bgr: Any, size: int) -> tuple[Any, float, tuple[int, int]]:
    """Resize keeping aspect ratio into ``size`` x ``size``, centred on grey; (img, gain, (left, top))."""
    import numpy as np

    h, w = bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    if (nw, nh) != (w, h):
        try:
            import cv2

            resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        except ImportError:  # images without OpenCV: Pillow's bilinear is close enough
            from PIL import Image

            resized = np.asarray(Image.fromarray(bgr).resize((nw, nh), Image.BILINEAR))
    else:
        resized = bgr
    top, left = round(dh - 0.1), round(dw - 0.1)
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = resized
    return out, r, (left, top)


def preprocess(bgr: Any, size: int) -> tuple[Any, float, tuple[int, int]]:
    import numpy as np

    img, gain, pad = letterbox(bgr, size)
    x = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    return x, gain, pad


def nms(boxes: Any, scores: Any, iou: float, max_det: int) -> Any:
    """Greedy NMS over xyxy boxes; indices kept, best score first."""
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = iw * ih
        ious = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[ious <= iou]
    return np.asarray(keep, dtype=np.int64)


N_CLASSES = len(DELL_CLASSES)


def check_output_shape(shape: Any, where: str = "Dell model") -> None:
    """The layout model's raw head is ``(1, 4 + 10, N)``; anything else is one line, not garbage.

    An end-to-end export (NMS inside, ``(1, 300, 6)``) or a model with another class count would
    otherwise decode as hundreds of classes or shifted boxes.
    """
    from suite_core.errors import UserError

    dims = list(shape)
    if len(dims) == 3 and dims[0] in (1, None, "batch") and dims[1] == 4 + N_CLASSES:
        return
    hint = ("; it looks like an end-to-end export with NMS inside (boxes, score, class): export "
            "the raw head (nms=False)" if len(dims) == 3 and dims[-1] in (6, 7) else "")
    raise UserError(f"unexpected Dell/YOLOv8 output shape {tuple(dims)}: expected (1, {4 + N_CLASSES}, N) "
                    f"= 4 box values + {N_CLASSES} class scores per anchor{hint}", where=where,
                    fix="use the AmericanStories layout model exported to ONNX without NMS")


def decode(pred: Any, *, conf: float, iou: float, max_det: int) -> tuple[Any, Any, Any]:
    """``(1, 4+C, N)`` raw output -> (xyxy, score, class) in letterboxed pixels after NMS."""
    import numpy as np

    p = np.asarray(pred, dtype=np.float32)
    check_output_shape(p.shape)
    p = p[0].T  # (N, 4+C)
    cls_scores = p[:, 4:]
    cls = cls_scores.argmax(1)
    score = cls_scores[np.arange(len(p)), cls]
    m = score > conf
    xywh, score, cls = p[m, :4], score[m], cls[m]
    if len(score) > MAX_NMS:
        top = np.argsort(-score, kind="stable")[:MAX_NMS]
        xywh, score, cls = xywh[top], score[top], cls[top]
    xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    keep = nms(xyxy, score, iou, max_det)
    return xyxy[keep], score[keep], cls[keep]


def rescale(xyxy: Any, gain: float, pad: tuple[int, int], width: int, height: int) -> Any:
    """Letterboxed pixels -> page pixels (undo padding, then scale), clipped to the page."""
    import numpy as np

    b = xyxy.astype(np.float64).copy()
    b[:, [0, 2]] = ((b[:, [0, 2]] - pad[0]) / gain).clip(0, width)
    b[:, [1, 3]] = ((b[:, [1, 3]] - pad[1]) / gain).clip(0, height)
    return b


class _Session:
    """One ORT session per (model, device), remembering the last page's raw output."""

    _cache: ClassVar[dict[tuple[str, str], _Session]] = {}

    def __init__(self, model: Path, device: str, threads: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.sess = ort.InferenceSession(str(model), sess_options=opts, providers=ort_providers(device))
        self.providers = list(self.sess.get_providers())
        inp = self.sess.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, list(inp.shape)
        out_shape = list(self.sess.get_outputs()[0].shape)
        if all(isinstance(d, int) for d in out_shape[1:2]):  # a static class axis is checked at load
            check_output_shape([out_shape[0] if isinstance(out_shape[0], int) else 1, *out_shape[1:]],
                               where=str(model))
        self._last: tuple[Any, Any] | None = None  # (image array kept alive, output)

    @classmethod
    def get(cls, model: Path, device: str, threads: int | None) -> _Session:
        key = (str(model.resolve()), device)
        if key not in cls._cache:
            cls._cache[key] = cls(model, device, threads)
        return cls._cache[key]

    def square_size(self, default: int) -> int:
        h, w = self.input_shape[2:4] if len(self.input_shape) == 4 else (None, None)
        if isinstance(h, int) and isinstance(w, int) and h == w and h > 0:
            return h
        return default

    def forward(self, bgr: Any, size: int) -> tuple[Any, float, tuple[int, int]]:
        if self._last is not None and self._last[0] is bgr and self._last[1][3] == size:
            return self._last[1][:3]
        x, gain, pad = preprocess(bgr, size)
        out = self.sess.run(None, {self.input_name: x})[0]
        self._last = (bgr, (out, gain, pad, size))
        return out, gain, pad


class DellDetector:
    granularity = "block"

    def __init__(self, source: str, variant: str, settings: dict[str, Any], device: str) -> None:
        self.source, self.variant = source, variant
        model = Path(str(settings.get("model_path") or ""))
        if not model.is_file():
            raise missing_model(model, "Dell layout ONNX model", settings.get("stage_src"))
        self.session = _Session.get(model, device, settings.get("threads"))
        self.size = self.session.square_size(int(settings.get("imgsz", 1280)))
        self.conf = float(settings.get("conf", 0.01))
        self.iou = float(settings.get("iou", 0.1))
        self.max_det = int(settings.get("max_det", 2000))
        self.model = str(model)

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        out, gain, pad = self.session.forward(bgr, self.size)
        xyxy, score, cls = decode(out, conf=self.conf, iou=self.iou, max_det=self.max_det)
        boxes = []
        for (x0, y0, x1, y1), s, c in zip(rescale(xyxy, gain, pad, width, height), score, cls, strict=True):
            c = int(c)
            b = make_box(x0, y0, x1, y1, label=DELL_CLASSES.get(c, "other"),
                         raw_label=DELL_RAW_NAMES.get(c, str(c)), score=float(s), width=width, height=height)
            if b:
                boxes.append(b)
        return boxes

    def facts(self) -> dict[str, Any]:
        return {"model": self.model, "imgsz": self.size, "providers_used": self.session.providers}

    def runtime(self) -> dict[str, Any]:
        return {"framework": "onnxruntime", "providers": self.session.providers}


def run(cfg: Any, run: Any) -> int:
    return run_source_app(cfg, run, sources={"dell": DellDetector}, probe=ort_probe)
