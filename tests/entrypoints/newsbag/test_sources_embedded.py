"""Embedded sources (models from the wheels) on a bundled page, end to end through the app."""

from __future__ import annotations

import json

import pytest

from entrypoints.newsbag import samples
from entrypoints.newsbag.inputs import load_bgr
from entrypoints.newsbag.schema import iter_source_pages, read_page

pytest.importorskip("rapid_layout")
pytest.importorskip("rapidocr_onnxruntime")


def _inside(b, w, h):
    return 0 <= b["x0"] < b["x1"] <= w and 0 <= b["y0"] < b["y1"] <= h


def test_detectors_on_a_bundled_page():
    from entrypoints.newsbag.sources.embedded import CdlaDetector, PPOCRDetDetector

    page = samples.SAMPLES_DIR / "chronicle_p02.png"
    bgr = load_bgr(page)
    h, w = bgr.shape[:2]
    gt = read_page(page.with_name("chronicle_p02.gt.json"))
    n_text_lines_gt = len(gt["boxes"])
    cdla = CdlaDetector("cdla", "t", {"conf": 0.5, "iou": 0.5}, "cpu")
    boxes = cdla.detect(bgr, w, h)
    assert 5 <= len(boxes) <= 80
    assert all(_inside(b, w, h) for b in boxes)
    assert {b["label"] for b in boxes} <= {"text", "title", "figure", "caption", "table", "header", "footer",
                                           "equation"}
    assert sum(b["label"] == "text" for b in boxes) >= 3
    assert cdla.facts()["providers_used"] == ["CPUExecutionProvider"]
    low = CdlaDetector("cdla", "t", {"conf": 0.2, "iou": 0.5}, "cpu").detect(bgr, w, h)
    assert len(low) >= len(boxes)
    det = PPOCRDetDetector("ppocr_det", "t", {"box_thresh": 0.5}, "cpu")
    lines = det.detect(bgr, w, h)
    # text lines: far more than GT blocks, each a thin horizontal strip
    assert len(lines) > 3 * n_text_lines_gt
    assert all(_inside(b, w, h) and b["label"] == "text" for b in lines)
    heights = sorted(b["y1"] - b["y0"] for b in lines)
    assert 8 <= heights[len(heights) // 2] <= 40


def test_embedded_app_on_the_bundled_pages(tmp_path, capsys):
    from entrypoints.main import main

    run_dir = tmp_path / "run"
    assert main(["newsbag_embedded", f"run_dir={run_dir}", "variants.cdla.low=null", "limit=2"]) == 0
    err = capsys.readouterr().err
    assert "[2/2] chronicle_p02" in err
    found = sorted((s, v, p) for s, v, p, _ in iter_source_pages(run_dir))
    assert found == [("cdla", "default", "chronicle_p01"), ("cdla", "default", "chronicle_p02"),
                     ("ppocr_det", "default", "chronicle_p01"), ("ppocr_det", "default", "chronicle_p02")]
    rec = read_page(run_dir / "outputs/sources/ppocr_det/default/pages/chronicle_p01.json")
    assert rec["granularity"] == "line" and rec["width"] == samples.PAGE_W
    rep = json.loads((run_dir / "outputs/sources/cdla/default/run_report.json").read_text())
    assert rep["pages"]["written"] == 2 and rep["device"]["used"] == "cpu"
    # rerun: reused, nothing recomputed
    assert main(["newsbag_embedded", f"run_dir={run_dir}", "variants.cdla.low=null", "limit=2"]) == 0
    assert "complete, reused" in capsys.readouterr().err
