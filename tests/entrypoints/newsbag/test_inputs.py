"""Input discovery and page loading: every bad page gets a reason, only 'nothing at all' fails."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from entrypoints.newsbag.inputs import PageSkip, discover, load_bgr
from suite_core.errors import UserError


def make_dir(tmp_path):
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 80), (10, 20, 30)).save(d / "p1.png")
    Image.new("L", (64, 80), 200).save(d / "p2.jpg")
    Image.new("RGB", (64, 80)).save(d / "sub" / "p3.tif")
    Image.new("RGB", (64, 80)).save(d / "p1.jpeg")  # same id as p1.png
    (d / "README.txt").write_text("notes")
    (d / "p2.gt.json").write_text("{}")  # ground truth companion: silently not a page
    (d / ".hidden.png").write_bytes(b"x")
    return d


def test_discover_flat_and_recursive(tmp_path):
    d = make_dir(tmp_path)
    pages, skipped = discover(d)
    assert [p.page_id for p in pages] == ["p1", "p2"]
    reasons = dict(skipped)
    assert "not an image" in reasons[str(d / "README.txt")]
    assert "already used" in reasons[str(d / "p1.png")] or "already used" in reasons[str(d / "p1.jpeg")]
    pages, _ = discover(d, recursive=True)
    assert [p.page_id for p in pages] == ["p1", "p2", "sub__p3"]


@pytest.mark.parametrize("setup", ["missing", "file", "empty", "junk_only", "only_subdirs", "none"])
def test_nothing_to_do_is_one_clear_error(tmp_path, setup):
    d = tmp_path / "in"
    if setup != "missing":
        d.mkdir()
    if setup == "file":
        d.rmdir()
        d.write_text("x")
    if setup == "junk_only":
        (d / "a.pdfx").write_text("x")
    if setup == "only_subdirs":
        (d / "s").mkdir()
        Image.new("RGB", (64, 64)).save(d / "s" / "a.png")
    with pytest.raises(UserError) as err:
        discover(None if setup == "none" else d)
    line = err.value.line()
    assert "\n" not in line and "fix:" in line
    if setup == "only_subdirs":
        assert "recursive=true" in line


def test_load_bgr_orders_channels_and_converts_modes(tmp_path):
    Image.new("RGB", (40, 50), (10, 20, 30)).save(tmp_path / "a.png")
    arr = load_bgr(tmp_path / "a.png")
    assert arr.shape == (50, 40, 3) and arr.dtype == np.uint8 and arr[0, 0].tolist() == [30, 20, 10]
    Image.new("I;16", (40, 50), 1000).save(tmp_path / "b.png")
    Image.new("RGBA", (40, 50), (1, 2, 3, 0)).save(tmp_path / "c.png")
    Image.new("CMYK", (40, 50)).save(tmp_path / "d.jpg")
    for name in ("b.png", "c.png", "d.jpg"):
        assert load_bgr(tmp_path / name).shape == (50, 40, 3)


def test_load_bgr_skip_reasons(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "text.jpg").write_text("hello, not a jpeg")
    Image.new("RGB", (400, 400)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (3000, 2000)).save(tmp_path / "huge.png")
    Image.new("RGB", (10, 500)).save(tmp_path / "thin.png")
    cases = {"corrupt.png": "corrupt", "text.jpg": "corrupt or not an image",
             "truncated.png": "corrupt", "huge.png": "too large", "thin.png": "too small"}
    for name, reason in cases.items():
        with pytest.raises(PageSkip, match=reason):
            load_bgr(tmp_path / name, max_megapixels=5)
    if os.geteuid() != 0:  # root reads everything
        (tmp_path / "locked.png").write_bytes(data)
        (tmp_path / "locked.png").chmod(0)
        with pytest.raises(PageSkip, match="permission"):
            load_bgr(tmp_path / "locked.png")


def test_app_continues_past_bad_pages_and_reports_them(tmp_path):
    """A run over a directory with junk: the good page is written, each bad one is listed."""
    import json

    from entrypoints.main import main
    from tests.entrypoints.newsbag.test_sources_dell import ROWS, pred_columns, yolo_graph

    d = tmp_path / "in"
    d.mkdir()
    Image.new("RGB", (300, 400), "white").save(d / "good.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    Image.new("RGB", (3000, 3000)).save(d / "big.png")
    (d / "list.csv").write_text("a,b")
    model = yolo_graph(tmp_path / "m.onnx", pred_columns(ROWS))
    run_dir = tmp_path / "run"
    rc = main(["dell", f"input_dir={d}", f"run_dir={run_dir}", f"dell_model.path={model}", "max_megapixels=5",
               "variants.dell.conf025=null"])
    assert rc == 0
    rep = json.loads((run_dir / "jobs/dell/run_report.json").read_text())
    reasons = {os.path.basename(s["item"]): s["reason"] for s in rep["skipped"]}
    assert set(reasons) == {"bad.png", "big.png", "list.csv"}
    assert "corrupt" in reasons["bad.png"] and "too large" in reasons["big.png"]
    assert (run_dir / "outputs/sources/dell/conf001/pages/good.json").is_file()
    assert not (run_dir / "outputs/sources/dell/conf025").exists()
