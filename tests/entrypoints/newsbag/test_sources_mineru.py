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
    assert boxes[4]["y1"] == 1500 and all(b["scored"] is False for b in boxes)  # MinerU gives no scores


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
    from suite_core.errors import UserError

    with pytest.raises(UserError, match="mode=fast"):
        mineru.MinerUDetector("mineru", "v", {"mode": "fast", "model_path": str(tmp_path)}, "cpu")


# ----------------------------------------------------------------------------- real loading, tiny model

def _tiny_checkpoint(path, layout: str):
    """A tiny Qwen2-VL (MinerU 2.5's architecture) saved with tied embeddings: no lm_head in the file."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config={"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
                     "bos_token_id": 0, "eos_token_id": 1,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}},
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        tie_word_embeddings=True, image_token_id=5, video_token_id=6, vision_start_token_id=7,
        vision_end_token_id=8)
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    if layout == "text_config":      # the tie flag only inside text_config
        raw.pop("tie_word_embeddings", None)
        raw["text_config"]["tie_word_embeddings"] = True
    elif layout == "both_disagree":  # top level says tied, text_config says not
        raw["text_config"]["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(raw))
    return path


def _mismatches(model, path) -> list[str]:
    """Parameters that differ from the checkpoint (lm_head against the tied embedding it was saved as)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path / "model.safetensors"))
    state = model.state_dict()

    def loaded(key: str):  # transformers 5 renames the saved keys (model.X -> model.language_model.X)
        rest = key.split(".", 1)[1] if key.startswith("model.") else key
        for cand in (key, f"model.language_model.{rest}", f"model.{key}"):
            if cand in state:
                return state[cand]
        return None

    bad = [k for k, v in saved.items() if loaded(k) is None or not torch.equal(loaded(k).float(), v.float())]
    embed = next(v for k, v in saved.items() if k.endswith("embed_tokens.weight"))
    if not torch.equal(state["lm_head.weight"].float(), embed.float()):
        bad.append("lm_head.weight (randomly initialised: not the tied embedding)")
    return bad


@pytest.mark.parametrize("layout", ["top_level", "text_config", "both_disagree"])
def test_mineru_loads_through_the_library_loader_with_every_checkpoint_weight(tmp_path, monkeypatch, layout):
    pytest.importorskip("torch", reason="torch not installed: the MinerU loader test needs torch (CPU)")
    pytest.importorskip("transformers", reason="transformers not installed: the MinerU loader test needs it")
    loading = pytest.importorskip("mineru_vl_utils.transformers_loading",
                                  reason="mineru-vl-utils >= 2.0.7 not installed")
    ckpt = _tiny_checkpoint(tmp_path / "MinerU-tiny", layout)
    calls = []
    real = loading.load_transformers_model
    monkeypatch.setattr(loading, "load_transformers_model",
                        lambda p, **kw: calls.append((str(p), kw)) or real(p, **kw))
    model = mineru.load_model_only(str(ckpt), "cpu")
    assert calls == [(str(ckpt), {"device_map": "cpu"})]            # the library's loader, on our device
    assert _mismatches(model, ckpt) == []
    assert str(next(model.parameters()).device) == "cpu"


def test_the_weight_check_catches_a_randomly_initialised_output_layer(tmp_path):
    """Negative control: a load that does not tie leaves lm_head random, and the check says so."""
    pytest.importorskip("torch", reason="torch not installed")
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    ckpt = _tiny_checkpoint(tmp_path / "MinerU-tiny", "top_level")
    cfg = transformers.AutoConfig.from_pretrained(ckpt)
    cfg.tie_word_embeddings = False
    cfg.get_text_config(decoder=True).tie_word_embeddings = False
    untied = transformers.Qwen2VLForConditionalGeneration.from_pretrained(ckpt, config=cfg)
    assert any("lm_head" in m for m in _mismatches(untied, ckpt))
