"""Review: overlay sheets with a truth panel and fused blocks, scaled to the page; index and summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from entrypoints.newsbag import fusion, review
from entrypoints.newsbag.schema import page_record, source_pages_dir, write_page

REPO = Path(__file__).resolve().parents[3]
LAYOUT = [(20, 20, 380, 60, "masthead"), (20, 80, 180, 380, "text"), (200, 80, 380, 250, "figure")]


def make_run(tmp: Path, n_pages: int = 3, size: int = 400, truth: bool = True) -> Path:
    pages = tmp / "pages"
    pages.mkdir()
    rng = np.random.default_rng(0)
    k = size / 400
    for i in range(n_pages):
        pid = f"p{i}"
        img = pages / f"{pid}.png"
        Image.fromarray((rng.random((size, size)) * 40 + 200).astype(np.uint8)).save(img)
        for src, var, dx in (("a", "v", 0), ("b", "v", 3 * i), ("c", "x", 40 * i)):
            boxes = [
                {
                    "x0": float(a + dx) * k,
                    "y0": float(b) * k,
                    "x1": float(min(c + dx, 400)) * k,
                    "y1": float(d) * k,
                    "label": lab,
                    "raw_label": lab,
                    "score": 0.8,
                }
                for a, b, c, d, lab in LAYOUT
            ]
            write_page(
                source_pages_dir(tmp, src, var) / f"{pid}.json",
                page_record(
                    page_id=pid,
                    image=img,
                    width=size,
                    height=size,
                    source=src,
                    variant=var,
                    granularity="block",
                    boxes=boxes,
                ),
            )
        lines = [
            {
                "x0": 20.0 * k,
                "y0": float(y) * k,
                "x1": 180.0 * k,
                "y1": float(y + 16) * k,
                "label": "text",
                "raw_label": "text_line",
                "score": 0.9,
            }
            for y in range(80, 380, 20)
        ]
        write_page(
            source_pages_dir(tmp, "ocr", "det") / f"{pid}.json",
            page_record(
                page_id=pid,
                image=img,
                width=size,
                height=size,
                source="ocr",
                variant="det",
                granularity="line",
                boxes=lines,
            ),
        )
        if truth:
            gt = page_record(
                page_id=pid,
                image=img.name,
                width=size,
                height=size,
                source="ground_truth",
                variant="gt",
                granularity="block",
                boxes=[
                    {
                        "x0": a * k,
                        "y0": b * k,
                        "x1": c * k,
                        "y1": d * k,
                        "label": lab,
                        "raw_label": lab,
                        "score": 1.0,
                    }
                    for a, b, c, d, lab in LAYOUT
                ],
            )
            write_page(pages / f"{pid}.gt.json", {**gt, "condition": "clean"})
    return pages


def test_sheets_show_truth_fused_blocks_and_numbers_most_disputed_first(tmp_path):
    from tests.entrypoints.newsbag.test_fusion import FakeRun

    make_run(tmp_path)
    fusion.fuse_run(tmp_path, fusion.Settings(), run=FakeRun(), progress=False)
    res = review.review_run(tmp_path, run=FakeRun(), top_k=2, panel_width=300, cols=3)
    out = tmp_path / "review" / "top2_informative"
    pngs = sorted((out / "pages").glob("*.png"))
    assert [p.name for p in pngs] == ["01_p2.png", "02_p1.png"]  # p2 has the largest shift
    assert res["pages"] == {"p2": "01_p2.png", "p1": "02_p1.png"}
    sheet = Image.open(pngs[0]).convert("RGB")
    assert (
        sheet.width == 3 * (300 + 8) + 8 and sheet.height > 2 * 300
    )  # truth + 4 variants + consensus: 2 rows
    panels = review.page_panels(*_inputs(tmp_path, "p2"), fusion.Settings())
    titles = [t.split("\n")[0] for t, _, _ in panels]
    assert titles[0] == "GROUND TRUTH (3 blocks)" and titles[-1].startswith("CONSENSUS")
    ocr = next(p for p in panels if p[0].startswith("ocr/det"))
    assert ocr[0].startswith("ocr/det (15 lines -> 1 blocks)") and len(ocr[1]) == 1 and len(ocr[2]) == 15
    assert "F1 truth 1.00" in panels[1][0]  # a/v is exactly the truth
    coloured = np.asarray(sheet)
    assert (np.abs(coloured[..., 0].astype(int) - coloured[..., 2]) > 60).any()  # label colours present
    html = (out / "index.html").read_text()
    assert "01_p2.png" in html and "02_p1.png" in html and "p0" not in html.split("<table>")[1]
    assert "Ranking basis: ground truth on 3 of 3 pages" in html
    thumb = Image.open(out / "thumbs" / "01_p2.png")
    assert thumb.width >= 2 * min(400, review.THUMB_PANEL)  # truth | consensus, legible size
    summary = Image.open(tmp_path / "review" / "summary.png")
    assert summary.width > 1200 and np.asarray(summary.convert("L")).std() > 5


def _inputs(run_dir: Path, pid: str):
    from entrypoints.newsbag.schema import iter_source_pages, read_page

    recs = {f"{s}/{v}": read_page(p) for s, v, q, p in iter_source_pages(run_dir) if q == pid}
    cons = read_page(run_dir / "outputs/fusion/pages" / f"{pid}.json")
    gt = read_page(run_dir / "pages" / f"{pid}.gt.json")
    return recs, cons, gt


def test_panels_are_scaled_to_the_page_never_enlarged(tmp_path):
    from tests.entrypoints.newsbag.test_fusion import FakeRun

    make_run(tmp_path, n_pages=1, size=2000, truth=False)
    fusion.fuse_run(tmp_path, fusion.Settings(), run=FakeRun(), progress=False)
    review.review_run(tmp_path, run=FakeRun(), top_k=1, panel_width=720, cols=2)
    sheet = Image.open(tmp_path / "review/top1_informative/pages/01_p0.png")
    assert sheet.width == 2 * (720 + 8) + 8  # a 2,000 px page drawn at 720 px, not 360
    small = tmp_path / "small"
    small.mkdir()
    make_run(small, n_pages=1, size=400, truth=False)
    fusion.fuse_run(small, fusion.Settings(), run=FakeRun(), progress=False)
    review.review_run(small, run=FakeRun(), top_k=1, panel_width=720, cols=2)
    assert Image.open(small / "review/top1_informative/pages/01_p0.png").width == 2 * (400 + 8) + 8


def test_review_before_fusion_and_bad_values_are_one_line_errors(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "entrypoints", "review", f"run_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: no fusion results") and "fix:" in r.stderr
    assert "Traceback" not in r.stderr
    from tests.entrypoints.newsbag.test_fusion import FakeRun

    make_run(tmp_path, n_pages=1)
    fusion.fuse_run(tmp_path, fusion.Settings(), run=FakeRun(), progress=False)
    for bad, what in (
        ("panel_width=0", "panel_width=0 is out of range"),
        ("top_k=abc", "top_k='abc' is not valid"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "entrypoints", "review", f"run_dir={tmp_path}", bad],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert r.returncode == 2 and r.stderr.startswith(f"error: {what}"), r.stderr
        assert "Traceback" not in r.stderr


def test_missing_page_image_draws_on_blank_and_says_so(tmp_path):
    from tests.entrypoints.newsbag.test_fusion import FakeRun

    pages = make_run(tmp_path, n_pages=1)
    (pages / "p0.png").unlink()
    fusion.fuse_run(tmp_path, fusion.Settings(), run=FakeRun(), progress=False)
    run = FakeRun()
    review.review_run(tmp_path, run=run, top_k=20, panel_width=120)
    assert (tmp_path / "review" / "top20_informative" / "pages" / "01_p0.png").is_file()
    assert any("unreadable" in s["reason"] for s in run.report["skipped"])
