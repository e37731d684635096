"""The bundled synthetic pages: committed files match the generator, ground truth is sane."""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from entrypoints.newsbag import samples
from entrypoints.newsbag.schema import GT_SOURCE, TAXONOMY, read_page


def test_bundled_pages_and_ground_truth():
    pngs = sorted(samples.SAMPLES_DIR.glob("*.png"))
    assert len(pngs) == samples.N_PAGES
    labels = Counter()
    for png in pngs:
        assert png.stat().st_size < 300_000
        gt = read_page(png.with_name(png.stem + ".gt.json"))
        assert gt["source"] == GT_SOURCE and gt["image"] == png.name and gt["page_id"] == png.stem
        with Image.open(png) as im:
            assert im.size == (gt["width"], gt["height"]) == (samples.PAGE_W, samples.PAGE_H)
        assert all(b["score"] == 1.0 and b["label"] in TAXONOMY for b in gt["boxes"])
        labels.update(b["label"] for b in gt["boxes"])
    for needed in ("masthead", "title", "text", "figure", "caption", "advertisement", "page_number",
                   "header", "author"):
        assert labels[needed] >= 1, needed


def test_generator_is_deterministic_and_matches_the_committed_files(tmp_path):
    samples.generate(tmp_path)
    for png in sorted(samples.SAMPLES_DIR.glob("*.png")):
        new = tmp_path / png.name
        a = np.asarray(Image.open(png), dtype=np.int16)
        b = np.asarray(Image.open(new), dtype=np.int16)
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < 2.0  # identical with the same Pillow; a font change moves a little
        old_gt = read_page(png.with_name(png.stem + ".gt.json"))["boxes"]
        new_gt = read_page(tmp_path / f"{png.stem}.gt.json")["boxes"]
        assert [x["label"] for x in old_gt] == [x["label"] for x in new_gt]
        for x, y in zip(old_gt, new_gt, strict=True):
            assert max(abs(x[k] - y[k]) for k in ("x0", "y0", "x1", "y1")) <= 3


def test_ground_truth_boxes_cover_ink():
    """Every dark pixel of the body lies in some GT box (rules and column lines excepted)."""
    png = samples.SAMPLES_DIR / "chronicle_p01.png"
    gt = read_page(png.with_name("chronicle_p01.gt.json"))
    ink = np.asarray(Image.open(png)) < 100
    covered = np.zeros_like(ink)
    for b in gt["boxes"]:
        covered[int(b["y0"]):int(np.ceil(b["y1"])) + 1, int(b["x0"]):int(np.ceil(b["x1"])) + 1] = True
    outside = ink & ~covered
    assert outside.sum() / ink.sum() < 0.05  # only the drawn rules are not layout elements
