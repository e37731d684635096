"""PaddleOCR adapters on result structures shaped as paddleocr 3.x returns them, and their errors.

``LayoutDetection.predict`` yields dict-like results with ``boxes`` of {cls_id, label, score,
coordinate}; ``PaddleOCRVL.predict`` yields dict-like results whose ``parsing_res_list`` holds
block objects (label, bbox, content, ...) and whose ``layout_det_res`` is a layout result; their
``.json`` property wraps the fields in {"res": ...} with block_label/block_bbox.
"""

from __future__ import annotations

import numpy as np
import pytest

from entrypoints.newsbag.sources import paddle
from suite_core.errors import UserError


class DetResult(dict):
    """Shaped like PaddleX's detection result: a dict of fields with a ``.json`` view."""

    @property
    def json(self):
        return {"res": {k: v for k, v in self.items() if k != "input_img"}}


class VLBlock:
    def __init__(self, label, bbox, content="", polygon_points=None):
        self.label, self.bbox, self.content = label, bbox, content
        self.polygon_points, self.group_id = polygon_points, None


LAYOUT = DetResult(input_path=None, page_index=None, input_img=np.zeros((4, 4, 3)), boxes=[
    {"cls_id": 2, "label": "text", "score": 0.93, "coordinate": [10.5, 20.0, 300.2, 400.0]},
    {"cls_id": 0, "label": "paragraph_title", "score": 0.88, "coordinate": np.array([10, 5, 300, 18.0])},
    {"cls_id": 1, "label": "image", "score": 0.61, "coordinate": [350, 20, 900, 700]},
    {"cls_id": 3, "label": "number", "score": 0.7, "coordinate": [480, 1480, 520, 1510]},  # clipped
    {"cls_id": 99, "label": "mystery", "score": 0.4, "coordinate": [1, 1, 2, 2]},
])


def test_layout_boxes_from_result_objects_and_json():
    boxes = paddle.layout_boxes([LAYOUT], "paddle_layout", 1000, 1500)
    assert [b["label"] for b in boxes] == ["text", "title", "figure", "page_number", "other"]
    assert [b["raw_label"] for b in boxes] == ["text", "paragraph_title", "image", "number", "mystery"]
    assert boxes[0]["x0"] == 10.5 and boxes[0]["score"] == pytest.approx(0.93)
    assert boxes[3]["y1"] == 1500
    assert paddle.layout_boxes([LAYOUT.json], "paddle_layout", 1000, 1500) == boxes


def test_vl_boxes_take_parsing_blocks_and_layout_scores():
    res = DetResult(parsing_res_list=[
        VLBlock("doc_title", [100, 10, 900, 80], "THE CHRONICLE"),
        VLBlock("text", [100, 100, 480, 900], "Lorem"),
        VLBlock("vision_footnote", [500, 700, 900, 760]),
        VLBlock("seal", [0, 0, 0, 0]),  # degenerate: dropped
    ], layout_det_res=DetResult(boxes=[
        {"cls_id": 1, "label": "doc_title", "score": 0.77, "coordinate": [100, 10, 900, 82]},
        {"cls_id": 2, "label": "text", "score": 0.91, "coordinate": [100, 100, 480, 900]},
    ]))
    boxes = paddle.vl_boxes([res], "paddle_vl15", 1000, 1500)
    assert [(b["label"], b["raw_label"]) for b in boxes] == [
        ("title", "doc_title"), ("text", "text"), ("caption", "vision_footnote")]
    assert [b["score"] for b in boxes] == [pytest.approx(0.77), pytest.approx(0.91), 0.0]
    # the merged block no layout box backs has no score from the model: marked unscored, not 1.0
    assert [b.get("scored", True) for b in boxes] == [True, True, False]
    as_json = {"res": {"parsing_res_list": [
        {"block_label": b.label, "block_bbox": b.bbox, "block_content": b.content, "block_id": i}
        for i, b in enumerate(res["parsing_res_list"])], "layout_det_res": res["layout_det_res"].json["res"]}}
    assert paddle.vl_boxes([as_json], "paddle_vl15", 1000, 1500) == boxes


def test_polygons_become_bounding_boxes():
    assert paddle._xyxy([[1, 2], [9, 3], [8, 7], [0, 6]]) == (0, 2, 9, 7)
    assert paddle._xyxy([1, 2, 3]) is None and paddle._xyxy(None) is None


@pytest.mark.parametrize(("app", "missing"), [("paddle_layout", "PP-DocLayout_plus-L"),
                                              ("paddle_vl15", "PP-DocLayoutV3")])
def test_missing_models_are_one_clear_error(tmp_path, capsys, app, missing):
    from entrypoints.main import main

    rc = main([app, f"run_dir={tmp_path}/run", f"paddle_models.root={tmp_path}/staged",
               f"paddle_models.stage_src={tmp_path}/shared"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert f"{tmp_path}/staged/{missing}" in line
    assert f"python -m containers stage {tmp_path}/shared/{missing} {tmp_path}/staged" in line


def test_model_dir_needs_model_files(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="not found"):
        paddle.check_model_dir(tmp_path / "m", "x", None)
    (tmp_path / "m" / "inference.yml").write_text("x")
    assert paddle.check_model_dir(tmp_path / "m", "x", None) == str(tmp_path / "m")
    assert paddle.paddle_device("cuda:1") == "gpu:1" and paddle.paddle_device("cpu") == "cpu"
