"""The shared data contract: label maps, page ids, record validation, discovery of records."""

from __future__ import annotations

import json

import pytest

from entrypoints.newsbag import schema
from entrypoints.newsbag.schema import (
    TAXONOMY,
    iter_source_pages,
    map_label,
    page_id_for,
    page_record,
    read_page,
    write_page,
)


def rec(**over):
    base = page_record(page_id="p1", image="/x/p1.png", width=100, height=200, source="cdla",
                       variant="default", granularity="block",
                       boxes=[{"x0": 1, "y0": 2, "x1": 50, "y1": 60, "label": "text", "raw_label": "text",
                               "score": 0.5}])
    base.update(over)
    return base


def test_label_maps_cover_the_contract():
    assert [map_label("dell", i) for i in range(10)] == [
        "text", "author", "advertisement", "title", "caption", "masthead", "header", "page_number",
        "figure", "table"]
    assert map_label("dell", "headline") == "title" and map_label("dell", "7") == "page_number"
    assert {k: map_label("cdla", k) for k in schema.CDLA_MAP} == schema.CDLA_MAP
    assert map_label("cdla", "figure_caption") == "caption" and map_label("cdla", "reference") == "text"
    assert map_label("paddle_layout", "doc_title") == "title"
    assert map_label("paddle", "number") == "page_number"
    assert map_label("paddle_vl15", "display_formula") == "equation"
    assert map_label("mineru", "image_caption") == "caption"
    assert map_label("mineru", "page_number") == "page_number"
    assert map_label("mineru", "no_such_type") == "other" and map_label("unknown_source", "text") == "text"
    for table in (schema.CDLA_MAP, schema.PADDLE_MAP, schema.MINERU_MAP, schema.DELL_CLASSES):
        assert set(table.values()) <= set(TAXONOMY)


def test_page_id_is_stable_and_safe(tmp_path):
    assert page_id_for(tmp_path / "a/b/p1.png", tmp_path) == "a__b__p1"
    odd = page_id_for(tmp_path / "x y/ü.tif", tmp_path)
    assert odd == page_id_for(tmp_path / "x y/ü.tif", tmp_path)
    assert "/" not in odd and " " not in odd and odd.startswith("x_y")
    assert page_id_for(tmp_path / "x y/ü.tif", tmp_path) != page_id_for(tmp_path / "x_y/ü.tif", tmp_path)


def test_write_read_roundtrip_and_iteration(tmp_path):
    d = schema.source_pages_dir(tmp_path, "cdla", "default")
    write_page(d / "p1.json", rec())
    write_page(schema.source_pages_dir(tmp_path, "dell", "conf001") / "p1.json",
               rec(source="dell", variant="conf001"))
    (d / ".p2.json.x.part").write_text("{")  # an in-flight atomic write is never listed
    got = read_page(d / "p1.json")
    assert got["boxes"][0]["x0"] == 1.0 and isinstance(got["boxes"][0]["x0"], float)
    assert [(s, v, p) for s, v, p, _ in iter_source_pages(tmp_path)] == [
        ("cdla", "default", "p1"), ("dell", "conf001", "p1")]
    assert list(iter_source_pages(tmp_path / "nothing")) == []


def bx(**kw):
    box = {"x0": 0, "y0": 0, "x1": 5, "y1": 9, "label": "text", "raw_label": "t", "score": 1}
    return {"boxes": [{**box, **kw}]}


@pytest.mark.parametrize(("change", "message"), [
    ({"granularity": "word"}, "granularity"),
    ({"width": 0}, "positive"),
    ({"page_id": "a/b"}, "safe file name"),
    (bx(x0=5, x1=5), "inverted"),
    (bx(x1=500), "outside"),
    (bx(label="prose"), "taxonomy"),
    (bx(score=2), "outside \\[0, 1\\]"),
    ({"boxes": [{"x0": 0, "y0": 0, "x1": 5, "label": "text", "raw_label": "t", "score": 1}]}, "misses y1"),
])
def test_bad_records_are_refused_on_write_and_read(tmp_path, change, message):
    bad = rec(**change)
    with pytest.raises(ValueError, match=message):
        write_page(tmp_path / "p.json", bad)
    assert not (tmp_path / "p.json").exists()
    (tmp_path / "q.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=message):
        read_page(tmp_path / "q.json")


def test_read_page_file_errors(tmp_path):
    with pytest.raises(ValueError, match="no such page file"):
        read_page(tmp_path / "missing.json")
    (tmp_path / "t.json").write_text('{"page_id": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_page(tmp_path / "t.json")
    (tmp_path / "l.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_page(tmp_path / "l.json")


def test_make_box_clips_and_drops():
    b = schema.make_box(-5, 10, 50, 300, label="figure", raw_label="image", score=1.2, width=40, height=200)
    assert (b["x0"], b["y0"], b["x1"], b["y1"], b["score"]) == (0, 10, 40, 200, 1.0)
    assert schema.make_box(50, 10, 60, 20, label="text", raw_label="t", score=1, width=40, height=200) is None
    odd = schema.make_box(0, 0, 5, 5, label="nonsense", raw_label="t", score=1, width=40, height=200)
    assert odd["label"] == "other"
