"""The loop every source app shares: pages x variants -> one contract JSON per page and variant.

A source module only says how to build a detector for one variant (``build(source, variant,
settings, device) -> Detector``) and how to probe its GPU; this module does the rest: input
discovery, per-page skip reasons, rerun reuse, atomic page records, progress lines, and a
``run_report.json`` per variant under ``outputs/sources/<source>/<variant>/``.

Reuse on rerun is exact: every page record carries the fingerprint (``made_by``) of the settings,
the input image (size + mtime) and the code that made it (``suite_core.markers``), written in the
same atomic write as the boxes, so a page is reused only when it was made by exactly this run's
settings, image and code; a run killed half way with other settings leaves pages that no later
run mistakes for its own. Each variant's ``complete.json`` marker (written last) fingerprints the
whole variant, so a rerun of a complete variant skips it without reading its pages.

A GPU job whose framework silently ran on the CPU (ONNX Runtime without its CUDA provider, torch
or Paddle on the CPU) stops at the first page with one line (``entrypoints.gpu_guard``), unless
``gpu_guard=warn``/``off`` allows it. Labels a library emits that the label map lacks are kept as
"other" and listed once per variant in the run report.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from entrypoints.newsbag.schema import is_known_label, page_record, read_page, source_pages_dir, write_page
from suite_core.errors import UserError

COMMON_CODE = ("entrypoints.newsbag.sources.base", "entrypoints.newsbag.schema", "entrypoints.newsbag.inputs")


class Detector(Protocol):
    source: str
    variant: str
    granularity: str

    def detect(self, bgr: Any, width: int, height: int) -> list[dict[str, Any]]: ...

    def facts(self) -> dict[str, Any]: ...

    def runtime(self) -> dict[str, Any]:
        """Where the framework really runs: {"framework": ..., "providers": [...]} or {"device": ...}."""
        ...


Builder = Callable[[str, str, dict[str, Any], str], Detector]


def plain(obj: Any) -> Any:
    """OmegaConf nodes -> plain Python (the rest unchanged)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def missing_model(path: str | Path, what: str, stage_src: str | None) -> UserError:
    """The one error for an absent model: names the path and the command that stages it.

    ``containers stage SRC DST`` puts SRC at ``DST/<basename of SRC>``, hence the parent here.
    """
    dst = Path(str(path))
    model_file = dst.suffix.lower() in (".onnx", ".pt", ".pth", ".bin", ".safetensors", ".pdiparams")
    dst_dir = dst.parent if model_file else dst
    src = str(stage_src or "<shared models dir>")
    if Path(src).name != dst_dir.name:  # a models root: the model sits under it by its own name
        src = f"{src.rstrip('/')}/{dst_dir.name}"
    return UserError(f"{what} not found at {path}", where="model path",
                     fix=f"stage it first: python -m containers stage {src} {dst_dir.parent} "
                         "(models are never downloaded at job time), or point the variant's model "
                         "setting elsewhere")


def variants_for(cfg: Any, source: str) -> dict[str, dict[str, Any]]:
    """The enabled variants of one source from ``cfg.variants.<source>`` (null entries are off)."""
    all_variants = plain(cfg.get("variants")) or {}
    raw = all_variants.get(source) or {}
    if not isinstance(raw, dict):
        raise UserError(f"variants.{source} must be a mapping of variant name -> settings",
                        where="variants", fix=f"e.g. variants.{source}.default={{}}")
    out = {}
    for name, settings in raw.items():
        if settings is None or (isinstance(settings, dict) and settings.get("enabled") is False):
            continue
        if not isinstance(settings, dict):
            raise UserError(f"variants.{source}.{name} must be a mapping of settings",
                            where="variants", fix=f"variants.{source}.{name}={{conf: 0.25}}")
        out[str(name)] = {k: v for k, v in settings.items() if k != "enabled"}
    return out


def input_pages(cfg: Any, run: Any) -> list[Any]:
    """Discover the pages (bundled samples when ``input_dir`` is null), honouring shards/limit."""
    from entrypoints.newsbag import inputs, samples

    input_dir = cfg.get("input_dir")
    if input_dir in (None, "", "None"):
        input_dir = samples.SAMPLES_DIR
        print(f"input_dir not set: using the bundled sample pages in {input_dir}", file=sys.stderr)
    pages, skipped = inputs.discover(input_dir, recursive=bool(cfg.get("recursive", False)))
    for item, reason in skipped:
        run.skip(item, reason)
        print(f"skip {item}: {reason}", file=sys.stderr)
    count, index = int(cfg.get("shard_count") or 1), int(cfg.get("shard_index") or 0)
    if count < 1 or not 0 <= index < count:
        raise UserError(f"shard_index={index} is not in [0, shard_count={count})", where="shard settings",
                        fix="use 0 <= shard_index < shard_count")
    pages = pages[index::count]
    if cfg.get("limit"):
        pages = pages[: int(cfg.limit)]
    run.report["input"] = {"dir": str(input_dir), "pages": len(pages), "skipped": len(skipped),
                           "shard": f"{index}/{count}"}
    return pages


class _VariantState:
    def __init__(self, det: Detector, settings: dict[str, Any], run_dir: Path, code: str) -> None:
        from suite_core.markers import fingerprint as fp_of

        self.det, self.settings, self.code = det, settings, code
        self.pages_dir = source_pages_dir(run_dir, det.source, det.variant)
        self.dir = self.pages_dir.parent
        self.marker = self.dir / "complete.json"
        model = {k: v for k, v in det.facts().items() if k != "providers_used"}
        self.made_with = {"source": det.source, "variant": det.variant, "settings": settings, "model": model}
        self.fp = fp_of(self.made_with, (), code)
        self.stats = {"written": 0, "reused": 0, "failed": 0, "boxes": 0, "seconds": 0.0}
        self.unknown: Counter[str] = Counter()
        self.checked = False

    def page_fingerprint(self, image: Path) -> str:
        from suite_core.markers import fingerprint as fp_of

        return fp_of(self.made_with, [image], self.code)

    def variant_fingerprint(self, pages: list[Any]) -> str:
        from suite_core.markers import fingerprint as fp_of

        return fp_of({**self.made_with, "pages": [p.page_id for p in pages]}, [p.path for p in pages],
                     self.code)

    def done(self, page_id: str, page_fp: str) -> bool:
        """Reuse only a valid record of this source/variant made with exactly ``page_fp``."""
        try:
            rec = read_page(self.pages_dir / f"{page_id}.json")
        except ValueError:
            return False
        return (rec["source"] == self.det.source and rec["variant"] == self.det.variant
                and (rec.get("made_by") or {}).get("fingerprint") == page_fp)

    def report(self, device: Any, status: str) -> dict[str, Any]:
        return {"source": self.det.source, "variant": self.det.variant,
                "granularity": self.det.granularity, "settings": self.settings,
                "settings_fingerprint": self.fp, "status": status, "device": device,
                **self.det.facts(), "unknown_labels": dict(self.unknown),
                "pages": dict(self.stats, seconds=round(self.stats["seconds"], 3))}


def code_version_for(det_modules: list[str]) -> str:
    from suite_core.markers import code_version

    return code_version(*COMMON_CODE, *det_modules)


def check_runtime(state: _VariantState, device: Any, cfg: Any, run: Any) -> None:
    """After a variant's first page: a GPU job must not have run it on the CPU."""
    from entrypoints import gpu_guard

    state.checked = True
    rt = getattr(state.det, "runtime", None)
    facts = rt() if callable(rt) else None
    if facts:
        gpu_guard.check_runtime(f"{state.det.source}/{state.det.variant}", facts,
                                wanted_gpu=str(device.used).startswith("cuda"), cfg=cfg, run=run)


def run_source_app(cfg: Any, run: Any, *, sources: dict[str, Builder], probe: Callable[[], tuple[bool, str]],
                   extra_files: Callable[[list[_VariantState]], None] | None = None) -> int:
    """Run every enabled variant of ``sources`` over the input pages; 0 when all pages made it."""
    from dataclasses import asdict

    from entrypoints.framework import select_device
    from entrypoints.newsbag.inputs import DEFAULT_MAX_MEGAPIXELS, PageSkip, load_bgr

    run_dir = Path(str(cfg.run_dir))
    with run.step("discover"):
        pages = input_pages(cfg, run)
    device = select_device(str(cfg.get("device", "auto")), str(cfg.get("device_fallback", "cpu")), probe)
    run.set_device(device)
    states: list[_VariantState] = []
    with run.step("load_models") as entry:
        for source, build in sources.items():
            code = code_version_for([getattr(build, "__module__", "")])
            for variant, settings in variants_for(cfg, source).items():
                det = build(source, variant, settings, device.used)
                states.append(_VariantState(det, settings, run_dir, code))
        entry["variants"] = [f"{s.det.source}/{s.det.variant}" for s in states]
    if not states:
        raise UserError("no variants enabled", where=f"variants.{{{','.join(sources)}}}",
                        fix="enable at least one variant, e.g. variants.<source>.default={}")
    max_mp = float(cfg.get("max_megapixels") or DEFAULT_MAX_MEGAPIXELS)
    from suite_core.markers import is_done, write_marker

    complete = {id(s): is_done(s.marker, s.variant_fingerprint(pages)) for s in states}
    for s in states:  # a variant about to change is not complete until this run says so
        if not complete[id(s)] and s.marker.exists():
            s.marker.unlink()
    bad_pages = 0
    with run.step("detect", pages=len(pages)) as entry:
        for i, page in enumerate(pages, 1):
            fps = {id(s): s.page_fingerprint(page.path) for s in states}
            todo = [s for s in states
                    if not complete[id(s)] and not s.done(page.page_id, fps[id(s)])]
            for s in states:
                if s not in todo:
                    s.stats["reused"] += 1
            if not todo:
                print(f"[{i}/{len(pages)}] {page.page_id}: complete, reused", file=sys.stderr)
                continue
            try:
                bgr = load_bgr(page.path, max_megapixels=max_mp)
            except PageSkip as exc:
                bad_pages += 1
                run.skip(str(page.path), str(exc))
                print(f"[{i}/{len(pages)}] skip {page.path}: {exc}", file=sys.stderr)
                continue
            h, w = bgr.shape[:2]
            counts = []
            for s in todo:
                t0 = time.monotonic()
                try:
                    boxes = s.det.detect(bgr, w, h)
                except UserError:
                    raise
                except Exception as exc:  # one bad page must not end the run: record, go on
                    s.stats["failed"] += 1
                    reason = f"{s.det.source}/{s.det.variant} failed: {type(exc).__name__}: {exc}"
                    run.skip(f"{page.page_id}", " ".join(reason.split())[:400])
                    counts.append(f"{s.det.source}/{s.det.variant}=FAILED")
                    continue
                if not s.checked:  # the first page shows where the framework really runs
                    check_runtime(s, device, cfg, run)
                for b in boxes:
                    if b["label"] == "other" and not is_known_label(s.det.source, b["raw_label"]):
                        s.unknown[b["raw_label"]] += 1
                rec = page_record(page_id=page.page_id, image=str(page.path), width=w, height=h,
                                  source=s.det.source, variant=s.det.variant,
                                  granularity=s.det.granularity, boxes=boxes)
                rec["made_by"] = {"fingerprint": fps[id(s)], "code": s.code}
                write_page(s.pages_dir / f"{page.page_id}.json", rec)  # boxes and fingerprint: one write
                s.stats["seconds"] += time.monotonic() - t0
                s.stats["written"] += 1
                s.stats["boxes"] += len(boxes)
                counts.append(f"{s.det.source}/{s.det.variant}={len(boxes)}")
            print(f"[{i}/{len(pages)}] {page.page_id}: {' '.join(counts)}", file=sys.stderr)
            run.save()
        entry["bad_pages"] = bad_pages
    from suite_core.atomic import write_json

    if extra_files:  # side files first; each variant's run_report.json is its completion marker
        extra_files(states)
    variants_summary = {}
    for s in states:
        for raw, n in sorted(s.unknown.items()):
            run.skip(f"{s.det.source}/{s.det.variant}", f"label {raw!r} from the library is not in the "
                     f"{s.det.source} label map: {n} boxes kept as 'other' (add it to schema.py)")
        failed = s.stats["failed"]
        status = "ok" if not failed and bad_pages == 0 else "partial"
        rep = s.report(asdict(device), status)
        path = write_json(s.dir / "run_report.json", rep)
        run.output(path)
        variants_summary[f"{s.det.source}/{s.det.variant}"] = rep
        if status == "ok":  # the completion marker, last: every page of this variant made and fingerprinted
            write_marker(s.marker, s.variant_fingerprint(pages), pages=len(pages))
        elif s.marker.exists():
            s.marker.unlink()
    run.report["variants"] = variants_summary
    produced = sum(s.stats["written"] + s.stats["reused"] for s in states)
    written = sum(s.stats["written"] for s in states)
    reused = sum(s.stats["reused"] for s in states)
    print(f"wrote {written} page records, reused {reused}, under {run_dir / 'outputs' / 'sources'}",
          file=sys.stderr)
    if produced == 0:
        print("error: no page produced any output; see skipped in the run report", file=sys.stderr)
        return 1
    return 1 if any(s.stats["failed"] for s in states) else 0


def ort_probe() -> tuple[bool, str]:
    """Whether ONNX Runtime can run CUDA here (provider listed and a GPU visible)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return False, f"onnxruntime not importable: {exc}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, f"CUDAExecutionProvider not in {ort.get_available_providers()}"
    from suite_core.env import nvidia_gpu_present

    if not nvidia_gpu_present():
        return False, "CUDAExecutionProvider installed but no NVIDIA GPU visible"
    return True, ""


def ort_providers(device: str) -> list[Any]:
    if device.startswith("cuda"):
        idx = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
