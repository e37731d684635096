"""Dell YOLOv8 runner against a tiny ONNX graph with the real output signature.

The graph ignores its input (0 * mean(images)) and emits fixed predictions, so decoding, the
confidence cut, class-agnostic NMS and the rescale to the page can be checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from entrypoints.newsbag.schema import iter_source_pages, read_page
from entrypoints.newsbag.sources import dell

onnx = pytest.importorskip("onnx")


def yolo_graph(path: Path, preds: np.ndarray, size: int | str = 1280) -> Path:
    """ONNX model: input images[1,3,size,size] -> output0 = preds (shape (1, 14, N))."""
    from onnx import TensorProto, helper, numpy_helper

    const = numpy_helper.from_array(preds.astype(np.float32), "preds")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["preds", "z"], ["output0"]),
    ]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    graph = helper.make_graph(
        nodes, "yolo_const",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(preds.shape))],
        initializer=[const, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def pred_columns(rows: list[tuple[float, float, float, float, int, float]]) -> np.ndarray:
    """(cx, cy, w, h, class, score) rows -> (1, 14, N) with that class's score set."""
    p = np.zeros((1, 14, len(rows)), np.float32)
    for j, (cx, cy, w, h, c, s) in enumerate(rows):
        p[0, :4, j] = (cx, cy, w, h)
        p[0, 4 + c, j] = s
        p[0, 4 + (c + 1) % 10, j] = s / 2  # a weaker second class that argmax must ignore
    return p


ROWS = [
    (420, 100, 100, 50, 3, 0.90),   # headline, kept
    (425, 102, 100, 50, 0, 0.80),   # overlaps the first (IoU > 0.1), other class: agnostic NMS drops it
    (800, 600, 200, 400, 8, 0.50),  # photograph, kept: x (700-320)/0.64 .. (900-320)/0.64
    (700, 900, 40, 40, 7, 0.005),   # below conf 0.01: dropped
    (330, 1270, 40, 40, 2, 0.30),   # partly below the letterbox area: clipped to the page
]


def test_letterbox_geometry():
    img = np.zeros((2000, 1000, 3), np.uint8)
    out, gain, pad = dell.letterbox(img, 1280)
    assert out.shape == (1280, 1280, 3)
    assert gain == pytest.approx(0.64)
    assert pad == (320, 0)
    assert out[0, 0].tolist() == [114, 114, 114] and out[640, 640].tolist() == [0, 0, 0]
    x, _, _ = dell.preprocess(np.full((10, 20, 3), (255, 0, 0), np.uint8), 32)  # BGR blue
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert x[0, 2, 16, 16] == 1.0 and x[0, 0, 16, 16] == 0.0  # blue lands in channel 2 (RGB)


def test_decode_nms_rescale_exact(tmp_path):
    model = yolo_graph(tmp_path / "m.onnx", pred_columns(ROWS))
    det = dell.DellDetector("dell", "v", {"model_path": str(model), "conf": 0.01, "iou": 0.1}, "cpu")
    boxes = det.detect(np.zeros((2000, 1000, 3), np.uint8), 1000, 2000)
    assert [b["raw_label"] for b in boxes] == ["headline", "photograph", "cartoon_or_advertisement"]
    assert [b["label"] for b in boxes] == ["title", "figure", "advertisement"]
    head = boxes[0]
    # letterbox xyxy (370, 75, 470, 125) - pad (320, 0), / 0.64
    assert (head["x0"], head["y0"], head["x1"], head["y1"]) == pytest.approx((78.12, 117.19, 234.38, 195.31),
                                                                             abs=0.01)
    assert head["score"] == pytest.approx(0.9)
    photo = boxes[1]
    assert (photo["x0"], photo["y0"], photo["x1"], photo["y1"]) == pytest.approx((593.75, 625, 906.25, 1250),
                                                                                  abs=0.01)
    ad = boxes[2]  # x 310..350 -> (-10..30)/0.64 clipped at 0; y 1250..1290 -> clipped at 2000
    assert ad["x0"] == 0 and ad["y1"] == 2000
    assert det.facts()["providers_used"] == ["CPUExecutionProvider"]


def test_conf_threshold_and_max_det():
    _, _, cls = dell.decode(pred_columns(ROWS), conf=0.4, iou=0.1, max_det=2000)
    assert cls.tolist() == [3, 8]
    _, _, cls = dell.decode(pred_columns(ROWS), conf=0.01, iou=0.99, max_det=2)
    assert cls.tolist() == [3, 0]  # IoU 0.99 keeps the overlap; max_det cuts to the best two
    from suite_core.errors import UserError

    with pytest.raises(UserError, match="unexpected Dell/YOLOv8 output shape"):
        dell.decode(np.zeros((14, 5)), conf=0.1, iou=0.1, max_det=10)
    with pytest.raises(UserError, match=r"\(1, 300, 6\).*end-to-end export"):
        dell.decode(np.zeros((1, 300, 6)), conf=0.1, iou=0.1, max_det=10)  # NMS inside: not 296 classes
    with pytest.raises(UserError, match="expected \\(1, 14, N\\)"):
        dell.decode(np.zeros((1, 6, 100)), conf=0.1, iou=0.1, max_det=10)  # a 2-class model


def test_nms_is_class_agnostic_and_greedy():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    keep = dell.nms(boxes, np.array([0.5, 0.9, 0.8, 0.4]), 0.1, 100)
    assert keep.tolist() == [1, 2]


def test_dell_app_writes_pages_and_providers(tmp_path, monkeypatch):
    from entrypoints.main import main

    model = yolo_graph(tmp_path / "layout_model_new.onnx", pred_columns(ROWS))
    pages = tmp_path / "pages"
    pages.mkdir()
    from PIL import Image

    Image.new("RGB", (1000, 2000), "white").save(pages / "a.png")
    Image.new("RGB", (500, 400), "white").save(pages / "b.jpg")
    (pages / "notes.txt").write_text("not a page")
    run_dir = tmp_path / "run"
    rc = main(["dell", f"input_dir={pages}", f"run_dir={run_dir}", f"dell_model.path={model}", "device=cpu"])
    assert rc == 0
    found = sorted((s, v, p) for s, v, p, _ in iter_source_pages(run_dir))
    assert found == [("dell", "conf001", "a"), ("dell", "conf001", "b"),
                     ("dell", "conf025", "a"), ("dell", "conf025", "b")]
    rec = read_page(run_dir / "outputs/sources/dell/conf025/pages/a.json")
    assert [b["raw_label"] for b in rec["boxes"]] == ["headline", "photograph", "cartoon_or_advertisement"]
    rep = json.loads((run_dir / "outputs/sources/dell/conf001/run_report.json").read_text())
    assert rep["providers_used"] == ["CPUExecutionProvider"] and rep["pages"]["written"] == 2
    app = json.loads((run_dir / "jobs/dell/run_report.json").read_text())
    assert any("notes.txt" in s["item"] and "not an image" in s["reason"] for s in app["skipped"])
    # rerun: everything reused; a changed threshold redoes only that variant
    assert main(["dell", f"input_dir={pages}", f"run_dir={run_dir}", f"dell_model.path={model}",
                 "device=cpu", "variants.dell.conf025.conf=0.4"]) == 0
    app = json.loads((run_dir / "jobs/dell/run_report.json").read_text())
    assert app["variants"]["dell/conf001"]["pages"]["reused"] == 2
    assert app["variants"]["dell/conf025"]["pages"]["written"] == 2
    assert len(read_page(run_dir / "outputs/sources/dell/conf025/pages/a.json")["boxes"]) == 2


def test_missing_model_is_one_clear_error(tmp_path, capsys):
    from entrypoints.main import main

    rc = main(["dell", f"run_dir={tmp_path}/run", f"dell_model.path={tmp_path}/nope/layout_model_new.onnx"])
    err = capsys.readouterr().err
    assert rc == 2
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "nope/layout_model_new.onnx" in line[0]
    assert "python -m containers stage" in line[0] and "Traceback" not in err


def test_an_end_to_end_export_is_refused_at_load_with_one_line(tmp_path, capsys):
    from entrypoints.main import main

    model = yolo_graph(tmp_path / "layout_model_new.onnx", np.zeros((1, 300, 6), np.float32))
    rc = main(["dell", f"run_dir={tmp_path}/run", f"dell_model.path={model}", "device=cpu", "limit=1"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert "(1, 300, 6)" in lines[0] and "end-to-end export" in lines[0] and str(model) in lines[0]


def test_a_gpu_job_whose_onnx_runtime_fell_back_to_cpu_stops_at_the_first_page(tmp_path, capsys, monkeypatch):
    from entrypoints.main import main

    model = yolo_graph(tmp_path / "layout_model_new.onnx", pred_columns(ROWS))
    monkeypatch.setenv("CONTAINERS_GPU_STAGE", "1")
    monkeypatch.delenv("CONTAINERS_GPU_GUARD", raising=False)
    monkeypatch.setattr("entrypoints.gpu_guard.nvidia_visible", lambda: (True, "NVIDIA driver present"))
    monkeypatch.setattr("entrypoints.newsbag.sources.dell.ort_probe", lambda: (True, ""))
    # onnxruntime here has no CUDA provider: asked for CUDA, the session silently runs on the CPU
    rc = main(["dell", f"run_dir={tmp_path}/run", f"dell_model.path={model}", "device=cuda"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert "dell/conf001: ONNX Runtime runs on CPUExecutionProvider" in lines[0]
    assert "CUDA provider did not load" in lines[0] and "CONTAINERS_GPU_GUARD=warn" in lines[0]
    pages = tmp_path / "run/outputs/sources/dell/conf001/pages"
    assert not list(pages.glob("*.json")) if pages.is_dir() else True  # stopped at the first page
    report = json.loads((tmp_path / "run/jobs/dell/run_report.json").read_text())
    assert report["gpu_guard"][0]["mode"] == "error" and report["exit_status"] == 2
    monkeypatch.setenv("CONTAINERS_GPU_GUARD", "warn")                # the user allows it: runs on
    rc = main(["dell", f"run_dir={tmp_path}/run2", f"dell_model.path={model}", "device=cuda"])
    assert rc == 0 and "warning: GPU stage without a usable GPU" in capsys.readouterr().err
