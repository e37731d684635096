"""MinerU 2.5 VLM source through mineru-vl-utils' ``MinerUClient``.

The client returns ``ContentBlock`` dicts: ``type`` (a MinerU block type), ``bbox``
``[x0, y0, x1, y1]`` normalised to 0-1, ``angle``, ``content``; here they are scaled to page
pixels. The model gives no per-block score, so blocks are marked unscored.

The model is loaded by mineru-vl-utils' own loader (``transformers_loading``), never by
``from_pretrained`` here: with transformers >= 5.10 a plain load leaves the output layer
(``lm_head``, tied to the embeddings in the checkpoint) randomly initialised, and the model
then writes garbage; the library's loader syncs the tie setting first. ``mode: layout`` runs the
layout step only (what fusion needs, and far faster); ``mode: two_step`` also extracts content.
Each variant directory gets ``run_meta.json`` recording ``cuda_available`` and what ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from entrypoints.newsbag.schema import make_box, map_label
from entrypoints.newsbag.sources.base import missing_model, run_source_app

FLAGS = {"--input-dir": "input_dir", "--recursive": "recursive?"}
MODES = ("layout", "two_step")


def torch_probe() -> tuple[bool, str]:
    try:
        import torch
    except ImportError as exc:
        return False, f"torch not importable: {exc}"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device"
    return True, ""


def blocks_to_boxes(blocks: Iterable[Any], width: int, height: int) -> list[dict[str, Any]]:
    """ContentBlocks (normalised bbox) -> contract boxes in page pixels."""
    out = []
    for blk in blocks:
        typ = blk["type"] if isinstance(blk, Mapping) else getattr(blk, "type", None)
        bbox = blk["bbox"] if isinstance(blk, Mapping) else getattr(blk, "bbox", None)
        if typ is None or bbox is None or len(bbox) != 4:
            continue
        x0, y0, x1, y1 = (float(v) for v in bbox)
        box = make_box(x0 * width, y0 * height, x1 * width, y1 * height, label=map_label("mineru", typ),
                       raw_label=typ, score=0.0, width=width, height=height, scored=False)
        if box:
            out.append(box)
    return out


def _loading() -> Any:
    try:
        from mineru_vl_utils import transformers_loading
    except ImportError as exc:
        from suite_core.errors import UserError

        raise UserError(f"mineru-vl-utils has no transformers loader ({exc})", where="mineru image",
                        fix="use mineru-vl-utils >= 2.0.7 (its loader keeps the output layer of "
                            "transformers >= 5.10 from being randomly initialised)") from None
    return transformers_loading


def load_model_only(model_path: str, device: str) -> Any:
    """The model through mineru-vl-utils' loader (the tied-``lm_head`` fix), placed on ``device``."""
    return _loading().load_transformers_model(model_path, device_map=device)


def load_model(model_path: str, device: str) -> tuple[Any, Any]:
    """Model and processor, both through mineru-vl-utils' own loaders."""
    return load_model_only(model_path, device), _loading().load_transformers_processor(model_path)


class MinerUDetector:
    granularity = "block"

    def __init__(self, source: str, variant: str, settings: dict[str, Any], device: str) -> None:
        self.source, self.variant = source, variant
        self.mode = str(settings.get("mode", "layout"))
        if self.mode not in MODES:
            from suite_core.errors import UserError

            raise UserError(f"variants.mineru.{variant}.mode={self.mode} is not one of {MODES}",
                            where="variants", fix="use mode=layout or mode=two_step")
        model = Path(str(settings.get("model_path") or ""))
        if not (model.is_dir() and (model / "config.json").is_file()):
            raise missing_model(model, "MinerU VLM (MinerU2.5-2509-1.2B)", settings.get("stage_src"))
        self.model_path, self.device = str(model), device
        self.backend = str(settings.get("backend", "transformers"))
        self.client = self._client(settings)

    def _client(self, settings: dict[str, Any]) -> Any:
        from mineru_vl_utils import MinerUClient

        self.model = None
        if self.backend != "transformers":
            return MinerUClient(backend=self.backend, model_path=self.model_path)
        self.model, processor = load_model(self.model_path, self.device)
        return MinerUClient(backend="transformers", model=self.model, processor=processor,
                            batch_size=int(settings.get("batch_size", 0)), use_tqdm=False)

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]:
        from PIL import Image

        image = Image.fromarray(bgr[:, :, ::-1].copy())
        if self.mode == "layout":
            blocks = self.client.layout_detect(image)
        else:
            blocks = self.client.two_step_extract(image)
        return blocks_to_boxes(blocks, width, height)

    def facts(self) -> dict[str, Any]:
        return {"model": self.model_path, "backend": self.backend, "mode": self.mode}

    def runtime(self) -> dict[str, Any]:
        if self.model is None:  # vLLM and other engines place the model themselves
            return {}
        return {"framework": "torch", "device": str(next(self.model.parameters()).device)}


def run_meta(device: str) -> dict[str, Any]:
    """What the MinerU stage ran on; ``cuda_available`` is the fact the status quo records."""
    from entrypoints.framework import package_versions

    meta: dict[str, Any] = {"cuda_available": False, "device": device}
    try:
        import torch

        meta.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    cuda_available=bool(torch.cuda.is_available()))
        if meta["cuda_available"]:
            meta["gpu"] = torch.cuda.get_device_name(0)
    except ImportError as exc:
        meta["torch"] = f"not importable: {exc}"
    dists = ("mineru-vl-utils", "transformers")
    versions = package_versions(dists)
    meta.update({d: versions.get(d) for d in dists})
    return meta


def write_run_meta(states: list[Any]) -> None:
    from suite_core.atomic import write_json

    for s in states:
        write_json(s.dir / "run_meta.json", {**run_meta(s.det.device), **s.det.facts(),
                                             "variant": s.det.variant, "pages": s.stats})


def run(cfg: Any, run: Any) -> int:
    return run_source_app(cfg, run, sources={"mineru": MinerUDetector}, probe=torch_probe,
                          extra_files=write_run_meta)
