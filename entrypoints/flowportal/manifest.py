"""flowportal_manifest: the How2Sign-style batch manifest, from real frame counts (OpenCV).

The procedure matches the status quo so its selection is reproducible: sorted file names,
frames resampled 24 -> 8 fps (``int(n / 3)`` usable frames), ``k_frames`` the largest of
[49, 41, 21, 13, 9] that fits, ``random.seed(42)`` shuffle, the first 8,000 "selected" (prompt
ids drawn right after the shuffle) and the rest "unselected" (prompt ids drawn after a fresh
``seed(42)``), split into N chunks of ``ceil(len / N)``. CPU only: run it on a login or CPU node.
"""

from __future__ import annotations

import csv
import io
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from containers.atomic import write_json, write_text
from containers.errors import UserError

HEADER = ["video_name", "n_frames", "k_frames", "prompt_id"]
K_CHOICES = (49, 41, 21, 13, 9)


def frame_count(path: Path) -> int:
    """Frames in an MP4 per its container header (0 when OpenCV cannot open it)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if n <= 0 or not cap.read()[0]:
            return 0
        return n
    finally:
        cap.release()


def k_frames_for(n_frames: int, input_fps: float, target_fps: float) -> int | None:
    usable = int(n_frames / (input_fps / target_fps))
    return next((k for k in K_CHOICES if usable >= k), None)


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HEADER, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a manifest or chunk CSV; a wrong header is a clear error."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != HEADER:
                raise UserError(
                    f"{path.name} has header {reader.fieldnames}, expected {','.join(HEADER)}",
                    where=str(path),
                    fix="regenerate it with python -m entrypoints flowportal_manifest",
                )
            return list(reader)
    except FileNotFoundError:
        raise UserError(
            f"manifest {path} does not exist",
            where=str(path.parent),
            fix="generate it first: python -m entrypoints flowportal_manifest",
        ) from None


def read_prompts(path: Path) -> tuple[str, dict[str, str]]:
    """``SRC|...`` and ``i|...`` lines -> (source prompt, {id: target prompt})."""
    src, tar = None, {}
    for ln in path.read_text(encoding="utf-8").splitlines():
        if not ln.strip():
            continue
        key, sep, text = ln.partition("|")
        if not sep:
            raise UserError(f"malformed prompts line {ln[:40]!r}", where=str(path), fix="write ID|prompt")
        if key == "SRC":
            src = text
        else:
            tar[key] = text
    if src is None:
        raise UserError("prompts file has no SRC| line", where=str(path), fix="add SRC|<source prompt>")
    return src, tar


def build(videos: dict[str, int], *, cfg: Any) -> dict[str, Any]:
    """Pure part: frame counts -> selected/unselected rows and chunks (no file access)."""
    valid, short = [], []
    for fname in sorted(videos):
        n = videos[fname]
        k = k_frames_for(n, float(cfg.input_fps), float(cfg.target_fps))
        if k is None:
            short.append(fname)
            continue
        valid.append({"video_name": fname.rsplit(".", 1)[0], "n_frames": n, "k_frames": k})
    n_prompts = len(cfg.prompts_tar)
    rng = random.Random(int(cfg.seed))
    shuffled = valid[:]
    rng.shuffle(shuffled)
    n_sel = int(cfg.num_select)
    selected = [dict(e) for e in shuffled[:n_sel]]
    for e in selected:
        e["prompt_id"] = rng.randint(0, n_prompts - 1)
    rng2 = random.Random(int(cfg.seed))
    unselected = [dict(e) for e in shuffled[n_sel:]]
    for e in unselected:
        e["prompt_id"] = rng2.randint(0, n_prompts - 1)
    rows = selected if str(cfg.mode) == "selected" else unselected
    n_chunks = int(cfg.num_chunks)
    if n_chunks < 1:
        raise UserError(f"num_chunks={n_chunks}", fix="use num_chunks >= 1")
    size = max(1, math.ceil(len(rows) / n_chunks))
    chunks = [rows[i * size : (i + 1) * size] for i in range(n_chunks)]
    return {
        "valid": valid,
        "short": short,
        "selected": selected,
        "unselected": unselected,
        "rows": rows,
        "chunks": chunks,
    }


def run(cfg: Any, run: Any) -> int:
    src = Path(str(cfg.video_dir))
    if not src.is_dir():
        raise UserError(
            f"video directory {src} does not exist",
            where="video_dir",
            fix="pass video_dir=/path/to/raw_videos",
        )
    out = Path(str(cfg.batch_dir))
    with run.step("probe") as entry:
        files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".mp4")
        t0 = time.monotonic()
        with ThreadPoolExecutor(int(cfg.workers)) as pool:
            counts = dict(zip((p.name for p in files), pool.map(frame_count, files), strict=True))
        entry.update(videos=len(files), seconds_probe=round(time.monotonic() - t0, 3))
    unreadable = sorted(f for f, n in counts.items() if n == 0)
    for f in unreadable:
        run.skip(f, "unreadable video (OpenCV cannot decode it)")
    res = build({f: n for f, n in counts.items() if n > 0}, cfg=cfg)
    for f in res["short"]:
        run.skip(f, f"too short: fewer than 9 frames at {cfg.target_fps} fps (n_frames={counts[f]})")
    with run.step("write"):
        mdir = out / "manifest"
        name = str(cfg.mode)
        write_text(mdir / f"{name}.csv", csv_text(res["rows"]))
        prompts = [f"SRC|{cfg.prompt_src}", *(f"{i}|{p}" for i, p in enumerate(cfg.prompts_tar))]
        write_text(mdir / "prompts.txt", "\n".join(prompts) + "\n")
        write_text(mdir / f"{name}_videos.txt", "".join(f"{e['video_name']}.mp4\n" for e in res["rows"]))
        for i, chunk in enumerate(res["chunks"]):
            write_text(mdir / f"chunk{i}.csv", csv_text(chunk))
        for stale in mdir.glob("chunk*.csv"):
            idx = stale.stem.removeprefix("chunk")
            if idx.isdigit() and int(idx) >= len(res["chunks"]):
                stale.unlink()
        summary = {
            "mode": name,
            "videos": len(files),
            "unreadable": len(unreadable),
            "too_short": len(res["short"]),
            "valid": len(res["valid"]),
            "selected": len(res["selected"]),
            "unselected": len(res["unselected"]),
            "rows": len(res["rows"]),
            "chunks": [len(c) for c in res["chunks"]],
            "video_dir": str(src),
        }
        write_json(mdir / "manifest.json", summary)  # written last: the manifest is complete
    run.report["manifest"] = summary
    print(
        f"{len(files)} videos: {len(res['valid'])} long enough, {len(res['short'])} too short, "
        f"{len(unreadable)} unreadable; {name}: {len(res['rows'])} in {len(res['chunks'])} chunks "
        f"of <= {max((len(c) for c in res['chunks']), default=0)} -> {mdir}"
    )
    return 0
