"""Review: overlay PNGs exist, differ from the input page, index and summary are written."""

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


def make_run(tmp: Path, n_pages: int = 3) -> Path:
    pages = tmp / "pages"
    pages.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_pages):
        pid = f"p{i}"
        img = pages / f"{pid}.png"
        Image.fromarray((rng.random((400, 400)) * 40 + 200).astype(np.uint8)).save(img)
        for src, var, dx in (("a", "v", 0), ("b", "v", 3 * i), ("c", "x", 40 * i)):
            boxes = [{"x0": float(a + dx), "y0": float(b), "x1": float(min(c + dx, 400)), "y1": float(d),
                      "label": lab, "raw_label": lab, "score": 0.8} for a, b, c, d, lab in LAYOUT]
            write_page(source_pages_dir(tmp, src, var) / f"{pid}.json",
                       page_record(page_id=pid, image=img, width=400, height=400, source=src, variant=var,
                                   granularity="block", boxes=boxes))
    return pages


def test_overlays_exist_differ_from_the_page_and_most_disputed_come_first(tmp_path):
    from tests.entrypoints.newsbag.test_fusion import FakeRun

    pages = make_run(tmp_path)
    fusion.fuse_run(tmp_path, fusion.Settings(), run=FakeRun(), progress=False)
    res = review.review_run(tmp_path, run=FakeRun(), top_k=2, panel_width=200)
    out = tmp_path / "review" / "top2_informative"
    pngs = sorted((out / "pages").glob("*.png"))
    assert [p.name for p in pngs] == ["01_p2.png", "02_p1.png"]  # p2 has the largest shift
    assert res["pages"] == {"p2": "01_p2.png", "p1": "02_p1.png"}
    src = np.asarray(Image.open(pages / "p2.png").convert("RGB").resize((200, 200)), dtype=np.int16)
    sheet = Image.open(pngs[0]).convert("RGB")
    assert sheet.width >= 4 * 200  # three variants + consensus side by side
    panel = np.asarray(sheet.crop((6, 30 + 26, 206, 30 + 26 + 200)), dtype=np.int16)
    assert np.abs(panel - src).mean() > 1.0  # boxes were drawn over the page
    coloured = np.asarray(sheet)
    assert (np.abs(coloured[..., 0].astype(int) - coloured[..., 2]) > 60).any()  # label colours present
    html = (out / "index.html").read_text()
    assert "01_p2.png" in html and "02_p1.png" in html and "p0" not in html.split("<table>")[1]
    summary = Image.open(tmp_path / "review" / "summary.png")
    assert summary.width > 300 and np.asarray(summary.convert("L")).std() > 5


def test_review_before_fusion_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "entrypoints", "review", f"run_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.startswith("error: no fusion results") and "fix:" in r.stderr
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
