"""newsbag_demo: the whole newsbag pipeline locally — embedded sources, fusion, review — in one run dir.

Each stage runs as its own ``python -m entrypoints <app>`` process (its own run report, exactly
as on the cluster), in its image when a container runtime and the image's SIF exist, else in this
Python (host runtime). Progress is one line per stage plus the stages' own per-page lines; the
end says where the leaderboards, accuracy table and review pages are.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

from suite_core.errors import UserError

STAGES = ("newsbag_embedded", "fusion", "review")


@functools.cache
def _image_available(image: str) -> tuple[bool, str]:
    """Whether ``image``'s SIF for this arch is on disk (published or staged); composed once per image."""
    from containers.images import resolve_sif
    from suite_core.arch import host_arch
    from suite_core.config import compose

    try:
        icfg = compose([f"image={image}"])
        found = resolve_sif(icfg.image, host_arch(), [Path(str(icfg.paths.staged_images)),
                                                      Path(str(icfg.paths.images))], required=False)
    except UserError as exc:
        return False, exc.line()
    return found.sif is not None, "" if found.sif else f"no SIF for {image} yet"


def stage_argv(cfg: Any, app: str, runtime: str, extra: list[str]) -> tuple[list[str], str]:
    """The command for one stage, and where it runs (host, or the image's name)."""
    inner = ["python", "-m", "entrypoints", app, f"run_dir={cfg.run_dir}", *extra]
    image = str((cfg.get("images") or {}).get(app) or "")
    if runtime != "host" and image:
        ok, why = _image_available(image)
        if ok:
            return [sys.executable, "-m", "containers", "exec", image, "--cpu", "--", *inner], image
        print(f"newsbag_demo: {app}: {why}; running in this Python", file=sys.stderr)
    return [sys.executable, *inner[1:]], "host"


def _fusion_summary(fusion_dir: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads((fusion_dir / "fusion_complete.json").read_text())
    except (OSError, ValueError):
        return {}
    return data.get("summary") or {}


def accuracy_lines(accuracy: dict[str, Any] | None) -> list[str]:
    """Accuracy against truth, clean and degraded pages apart (F1, then the best single variant)."""
    if not accuracy:
        return ["\naccuracy: no ground truth for these pages"]
    out = ["\naccuracy against ground truth (F1 at IoU 0.5 with the same label):"]
    for group in ("clean", "degraded", "all"):
        systems = accuracy.get(group)
        if not systems:
            continue
        pages = max(int(v.get("pages", 0)) for v in systems.values())
        singles = {k: v["f1"] for k, v in systems.items() if "/" in k}
        best = max(singles, key=lambda k: singles[k]) if singles else None
        parts = [f"consensus {systems['consensus']['f1']:.3f}" if "consensus" in systems else "",
                 f"best single {best} {singles[best]:.3f}" if best else "",
                 *(f"{k} {v['f1']:.3f}" for k, v in systems.items() if k.startswith("baseline:"))]
        out.append(f"  {group:<8} ({pages} pages): " + ", ".join(p for p in parts if p))
    return out


def run(cfg: Any, run: Any) -> int:
    """Run the stages in order; a failing stage stops the demo with its own error line."""
    from suite_core.env import detect_runtime
    from suite_core.runner import run as run_cmd

    stages = [str(s) for s in (cfg.get("stages") or STAGES)]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage '{unknown[0]}'", where="newsbag_demo stages",
                        fix=f"choose from: {', '.join(STAGES)}")
    runtime, warnings = detect_runtime(str(cfg.get("runtime") or "auto"))
    run_dir = Path(str(cfg.run_dir))
    input_dir = cfg.get("input_dir")
    if input_dir in (None, "", "None"):
        from entrypoints.newsbag.samples import SAMPLES_DIR

        input_dir = str(SAMPLES_DIR)
    top_k = int(cfg.get("top_k") or 20)
    common = {"newsbag_embedded": [f"input_dir={input_dir}", f"recursive={str(bool(cfg.recursive)).lower()}"],
              "fusion": [f"workers={int(cfg.get('workers') or 0)}"],
              "review": [f"top_k={top_k}"]}
    extra_cfg = cfg.get("stage_overrides") or {}
    print(f"newsbag demo: {len(stages)} stages on {input_dir} -> {run_dir} (runtime {runtime})", flush=True)
    t_all = time.monotonic()
    for i, app in enumerate(stages, 1):
        extra = [*common[app], *[str(o) for o in (extra_cfg.get(app) or [])]]
        argv, where = stage_argv(cfg, app, runtime if not warnings else "host", extra)
        print(f"[{i}/{len(stages)}] {app} ({where}) ...", flush=True)
        with run.step(app, where=where) as st:
            res = run_cmd(argv, capture=False, check=False, what=f"stage {app}")
            st["exit_status"] = res.returncode
            if res.returncode != 0:
                raise UserError(f"stage {app} failed with exit code {res.returncode}",
                                where=str(run_dir / "jobs" / app / "run_report.json"),
                                fix="read the error line above; rerun the demo after fixing it")
        print(f"[{i}/{len(stages)}] {app} done in {res.seconds:.1f} s", flush=True)
    fusion = run_dir / "outputs" / "fusion"
    review = run_dir / "review"
    lines = [f"newsbag demo finished in {time.monotonic() - t_all:.1f} s. Results:",
             f"  variant leaderboard : {fusion / 'variant_leaderboard.tsv'}",
             f"  source leaderboard  : {fusion / 'source_leaderboard.tsv'}",
             (f"  accuracy vs truth   : {fusion / 'accuracy.tsv'}"
              if (fusion / "accuracy.tsv").is_file() else ""),
             f"  consensus pages     : {fusion / 'pages'}/",
             f"  review pages        : {review / f'top{top_k}_informative' / 'index.html'}",
             f"  summary plot        : {review / 'summary.png'}",
             f"  run reports         : {run_dir / 'jobs'}/<stage>/run_report.json"]
    print("\n".join(ln for ln in lines if ln))
    board = fusion / "variant_leaderboard.tsv"
    summary = _fusion_summary(fusion)
    if summary.get("ranking_basis"):
        print(f"\nranking basis: {summary['ranking_basis']}")
    if board.is_file():
        print("\n".join(ln for ln in board.read_text().splitlines() if not ln.startswith("#")))
    for line in accuracy_lines(summary.get("accuracy")):
        print(line)
    for p in (board, fusion / "source_leaderboard.tsv", review / "summary.png"):
        if p.is_file():
            run.output(p)
    return 0
