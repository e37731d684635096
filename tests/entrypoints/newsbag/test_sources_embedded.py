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
    from entrypoints.newsbag.sources.embedded import CdlaDetector, PPOCRDetDetector, PPOCRv6DetDetector

    page = samples.SAMPLES_DIR / "chronicle_p02.png"
    bgr = load_bgr(page)
    h, w = bgr.shape[:2]
    gt = read_page(page.with_name("chronicle_p02.gt.json"))
    n_text_lines_gt = len(gt["boxes"])
    cdla = CdlaDetector("cdla", "t", {"conf": 0.5, "iou": 0.5}, "cpu")
    boxes = cdla.detect(bgr, w, h)
    assert 5 <= len(boxes) <= 80
    assert all(_inside(b, w, h) for b in boxes)
    assert {b["label"] for b in boxes} <= {
        "text",
        "title",
        "figure",
        "caption",
        "table",
        "header",
        "footer",
        "equation",
    }
    assert sum(b["label"] == "text" for b in boxes) >= 3
    assert cdla.facts()["providers_used"] == ["CPUExecutionProvider"]
    low = CdlaDetector("cdla", "t", {"conf": 0.2, "iou": 0.5}, "cpu").detect(bgr, w, h)
    assert len(low) >= len(boxes)
    det = PPOCRDetDetector("ppocr_det", "t", {"box_thresh": 0.5, "max_side": 0}, "cpu")
    lines = det.detect(bgr, w, h)
    assert all(b["scored"] is False for b in lines)  # the v4 detector gives no per-box score
    # text lines: far more than GT blocks, each a thin horizontal strip
    assert len(lines) > 3 * n_text_lines_gt
    assert all(_inside(b, w, h) and b["label"] == "text" for b in lines)
    heights = sorted(b["y1"] - b["y0"] for b in lines)
    assert 8 <= heights[len(heights) // 2] <= 40
    v6 = PPOCRv6DetDetector("ppocrv6_det", "t", {"max_side": 0}, "cpu")
    lines6 = v6.detect(bgr, w, h)
    assert len(lines6) > 3 * n_text_lines_gt and all(_inside(b, w, h) for b in lines6)
    assert all("scored" not in b and 0.3 <= b["score"] < 1.0 for b in lines6)  # its own DB box scores
    assert v6.runtime() == {"framework": "onnxruntime", "providers": ["CPUExecutionProvider"]}


def test_shrink_maps_boxes_back_exactly():
    import numpy as np

    from entrypoints.newsbag.sources.embedded import quads_to_boxes, shrink

    page = np.zeros((3001, 2003, 3), np.uint8)
    small, fx, fy = shrink(page, 1000)
    assert max(small.shape[:2]) == 1000 and (fx, fy) == (2003 / small.shape[1], 3001 / small.shape[0])
    quad = np.array([[[10.0, 20.0], [110.0, 20.0], [110.0, 40.0], [10.0, 40.0]]])
    (b,) = quads_to_boxes(
        quad, [0.7], fx=fx, fy=fy, width=2003, height=3001, min_height=4, source="ppocr_det", scored=True
    )
    assert (b["x0"], b["y0"], b["x1"], b["y1"]) == pytest.approx(
        (10 * fx, 20 * fy, 110 * fx, 40 * fy), abs=0.005
    )
    assert shrink(page, 0)[1:] == (1.0, 1.0) and shrink(page, 5000)[0] is page


@pytest.mark.slow
def test_a_big_scan_shrunk_to_max_side_gives_the_small_page_boxes_scaled_back():
    """The same page at 2x, detected at max_side = the 1x size, yields the 1x boxes times two."""
    import cv2
    import numpy as np

    from entrypoints.newsbag.sources.embedded import PPOCRDetDetector

    bgr = load_bgr(samples.SAMPLES_DIR / "chronicle_p01.png")
    h, w = bgr.shape[:2]
    big = cv2.resize(bgr, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)
    det = PPOCRDetDetector("ppocr_det", "t", {"max_side": 0}, "cpu")
    ref = det.detect(bgr, w, h)
    det.max_side = max(h, w)
    got = det.detect(big, 2 * w, 2 * h)
    assert abs(len(got) - len(ref)) <= 0.05 * len(ref)
    a = np.array(sorted((b["y0"], b["x0"], b["y1"], b["x1"]) for b in ref)) * 2
    b = np.array(sorted((b["y0"], b["x0"], b["y1"], b["x1"]) for b in got))
    n = min(len(a), len(b))
    assert np.median(np.abs(a[:n] - b[:n])) <= 3.0  # page pixels of the 2x page


def test_embedded_app_on_the_bundled_pages(tmp_path, capsys):
    from entrypoints.main import main

    run_dir = tmp_path / "run"
    assert main(["newsbag_embedded", f"run_dir={run_dir}", "variants.cdla.low=null", "limit=2"]) == 0
    err = capsys.readouterr().err
    assert "[2/2] chronicle_p02" in err
    found = sorted((s, v, p) for s, v, p, _ in iter_source_pages(run_dir))
    assert found == [
        (s, "default", f"chronicle_p0{i}") for s in ("cdla", "ppocr_det", "ppocrv6_det") for i in (1, 2)
    ]
    rec = read_page(run_dir / "outputs/sources/ppocr_det/default/pages/chronicle_p01.json")
    assert rec["granularity"] == "line" and rec["width"] == samples.PAGE_W
    rep = json.loads((run_dir / "outputs/sources/cdla/default/run_report.json").read_text())
    assert rep["pages"]["written"] == 2 and rep["device"]["used"] == "cpu" and rep["unknown_labels"] == {}
    assert (run_dir / "outputs/sources/cdla/default/complete.json").is_file()
    assert read_page(run_dir / "outputs/sources/cdla/default/pages/chronicle_p01.json")["made_by"][
        "fingerprint"
    ]
    # rerun: reused, nothing recomputed
    assert main(["newsbag_embedded", f"run_dir={run_dir}", "variants.cdla.low=null", "limit=2"]) == 0
    assert "complete, reused" in capsys.readouterr().err
