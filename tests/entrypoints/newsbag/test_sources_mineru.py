"""MinerU adapter on ContentBlocks shaped as mineru-vl-utils returns them, and its errors.

``ContentBlock`` is a dict subclass with keys type, bbox ([x0, y0, x1, y1] normalised 0-1),
angle, content, uid (and matching properties).
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from entrypoints.newsbag.sources import mineru


class ContentBlock(dict):
    def __init__(self, type, bbox, angle=None, content=None, uid=None):
        super().__init__(type=type, bbox=bbox, angle=angle, content=content, uid=uid)

    type = property(lambda self: self["type"])
    bbox = property(lambda self: self["bbox"])


BLOCKS = [
    ContentBlock("title", [0.1, 0.02, 0.9, 0.08], angle=0),
    ContentBlock("text", [0.1, 0.1, 0.45, 0.6], angle=0, content="Lorem"),
    ContentBlock("image", [0.5, 0.1, 0.9, 0.4], angle=None),
    ContentBlock("image_caption", [0.5, 0.41, 0.9, 0.45], angle=0),
    ContentBlock("page_number", [0.48, 0.97, 0.52, 1.0], angle=0),
    ContentBlock("unknown", [0.0, 0.0, 0.01, 0.01]),
]


def test_blocks_scale_to_page_pixels():
    boxes = mineru.blocks_to_boxes(BLOCKS, 1000, 1500)
    assert [b["label"] for b in boxes] == ["title", "text", "figure", "caption", "page_number", "other"]
    t = boxes[0]
    assert (t["x0"], t["y0"], t["x1"], t["y1"]) == pytest.approx((100, 30, 900, 120))
    assert boxes[4]["y1"] == 1500 and all(b["score"] == 1.0 for b in boxes)


def test_missing_model_is_one_clear_error(tmp_path, capsys):
    from entrypoints.main import main

    rc = main(["mineru", f"run_dir={tmp_path}/run", f"mineru_model.path={tmp_path}/MinerU2.5-2509-1.2B",
               f"mineru_model.stage_src={tmp_path}/shared/MinerU2.5-2509-1.2B"])
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert rc == 2 and "Traceback" not in err
    assert f"python -m containers stage {tmp_path}/shared/MinerU2.5-2509-1.2B {tmp_path} " in line


def test_app_with_a_client_writes_pages_and_run_meta(tmp_path, monkeypatch):
    """The app around a MinerUClient (http-client backend path, no torch model load)."""
    calls = []

    class MinerUClient:
        def __init__(self, backend, model_path=None, **kw):
            calls.append((backend, model_path))

        def layout_detect(self, image):
            assert image.mode == "RGB"
            return BLOCKS

    monkeypatch.setitem(sys.modules, "mineru_vl_utils", types.SimpleNamespace(MinerUClient=MinerUClient))
    model = tmp_path / "MinerU2.5-2509-1.2B"
    model.mkdir()
    (model / "config.json").write_text("{}")
    from entrypoints.main import main

    run_dir = tmp_path / "run"
    rc = main(["mineru", f"run_dir={run_dir}", f"mineru_model.path={model}", "limit=1", "device=cpu",
               "variants.mineru.layout.backend=vllm-engine"])
    assert rc == 0 and calls == [("vllm-engine", str(model))]
    meta = json.loads((run_dir / "outputs/sources/mineru/layout/run_meta.json").read_text())
    assert isinstance(meta["cuda_available"], bool) and meta["device"] == "cpu"
    assert meta["backend"] == "vllm-engine" and meta["variant"] == "layout"
    assert "mineru-vl-utils" in meta and "transformers" in meta
    assert meta["pages"]["written"] == 1
    from entrypoints.newsbag.schema import read_page

    rec = read_page(run_dir / "outputs/sources/mineru/layout/pages/chronicle_p01.json")
    assert rec["boxes"][0]["x1"] == pytest.approx(990)  # 0.9 * 1100 px page width


def test_bad_mode_is_refused(tmp_path):
    from containers.errors import UserError

    with pytest.raises(UserError, match="mode=fast"):
        mineru.MinerUDetector("mineru", "v", {"mode": "fast", "model_path": str(tmp_path)}, "cpu")
