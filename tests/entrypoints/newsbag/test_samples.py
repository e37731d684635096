"""The bundled synthetic pages: committed files match the generator, ground truth is sane."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from entrypoints.newsbag import samples
from entrypoints.newsbag.schema import GT_SOURCE, TAXONOMY, read_page


def bundled() -> list:
    return sorted(p for p in samples.SAMPLES_DIR.iterdir() if p.suffix in (".png", ".jpg"))


def test_bundled_pages_and_ground_truth():
    pages = bundled()
    assert len(pages) == samples.N_PAGES + len(samples.DEGRADED)
    labels = Counter()
    conditions = Counter()
    for png in pages:
        assert png.stat().st_size < 700_000
        gt = read_page(png.with_name(png.stem + ".gt.json"))
        assert gt["source"] == GT_SOURCE and gt["image"] == png.name and gt["page_id"] == png.stem
        conditions[gt["condition"].split(":")[0]] += 1
        with Image.open(png) as im:
            assert im.size == (gt["width"], gt["height"])
            if gt["condition"] == "clean":
                assert im.size == (samples.PAGE_W, samples.PAGE_H)
            else:
                assert min(im.size) > 1.5 * samples.PAGE_W  # scan-like resolution
        assert all(b["score"] == 1.0 and b["label"] in TAXONOMY for b in gt["boxes"])
        labels.update(b["label"] for b in gt["boxes"])
    assert conditions == {"clean": samples.N_PAGES, "degraded": len(samples.DEGRADED)}
    for needed in (
        "masthead",
        "title",
        "text",
        "figure",
        "caption",
        "advertisement",
        "page_number",
        "header",
        "author",
    ):
        assert labels[needed] >= 1, needed


def test_generator_is_deterministic_and_matches_the_committed_files(tmp_path):
    samples.generate(tmp_path)
    for png in bundled():
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
        covered[int(b["y0"]) : int(np.ceil(b["y1"])) + 1, int(b["x0"]) : int(np.ceil(b["x1"])) + 1] = True
    outside = ink & ~covered
    assert outside.sum() / ink.sum() < 0.05  # only the drawn rules are not layout elements


def test_degraded_truth_follows_the_page_through_scale_and_skew():
    """The truth of a degraded page is the clean truth of the same layout, scaled and rotated exactly."""
    import math

    d = samples.DEGRADED[0]
    img, boxes = samples.degrade(samples.N_PAGES, d)
    _, clean = samples.render_page(samples.N_PAGES, ncols=d.columns, halftone_photos=d.halftone)
    assert len(boxes) == len(clean) and [b["label"] for b in boxes] == [b["label"] for b in clean]
    mast = next(b for b in clean if b["label"] == "masthead")
    w, h = img.size
    s = w / samples.PAGE_W
    t = math.radians(d.skew_deg)
    xs, ys = [], []
    for x, y in (
        (mast["x0"], mast["y0"]),
        (mast["x1"], mast["y0"]),
        (mast["x0"], mast["y1"]),
        (mast["x1"], mast["y1"]),
    ):
        dx, dy = x * s - w / 2, y * s - h / 2
        xs.append(w / 2 + dx * math.cos(t) + dy * math.sin(t))
        ys.append(h / 2 - dx * math.sin(t) + dy * math.cos(t))
    got = next(b for b in boxes if b["label"] == "masthead")
    assert [got[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(
        [min(xs), min(ys), max(xs), max(ys)], abs=0.02
    )
    # the dark ink of the degraded page lies inside its truth boxes (rules and column lines excepted)
    ink = np.asarray(img) < 60
    covered = np.zeros_like(ink)
    for b in boxes:
        covered[int(b["y0"]) : int(np.ceil(b["y1"])) + 1, int(b["x0"]) : int(np.ceil(b["x1"])) + 1] = True
    assert (ink & ~covered).sum() / ink.sum() < 0.08


def test_16bit_palette_and_alpha_pages_keep_their_tones(tmp_path):
    from entrypoints.newsbag.inputs import load_bgr

    ramp = np.linspace(0, 65535, 300 * 200).reshape(200, 300).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    with Image.open(tmp_path / "g16.tif") as im:
        assert im.mode.startswith("I;16")
        assert (np.asarray(im.convert("RGB")) == 255).mean() > 0.9  # what Pillow's convert makes of it
    bgr = load_bgr(tmp_path / "g16.tif")
    assert bgr.dtype == np.uint8 and bgr.shape == (200, 300, 3)
    assert abs(float(bgr.mean()) - 127.5) < 1 and bgr[0, 0, 0] == 0 and bgr[-1, -1, 0] == 255
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.paste(0, (0, 0, 32, 64))
    pal.save(tmp_path / "pal.png")
    bgr = load_bgr(tmp_path / "pal.png")
    assert bgr[0, 0].tolist() == [30, 20, 10] and bgr[0, 63].tolist() == [50, 100, 200]
    pal.info["transparency"] = 0  # index 0 transparent -> white
    pal.save(tmp_path / "palt.png", transparency=0)
    assert load_bgr(tmp_path / "palt.png")[0, 0].tolist() == [255, 255, 255]
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.save(tmp_path / "a.png")
    assert load_bgr(tmp_path / "a.png").min() == 255  # transparent is paper, not ink
