"""flowportal_manifest: the How2Sign-style batch manifest, from real frame counts (OpenCV).

The selection matches the status quo (``scripts/h2s/generate_h2s_manifest.py`` of the fork) so
its split is reproducible: sorted file names, frames resampled 24 -> 8 fps (``int(n / 3)``
usable frames), ``k_frames`` the largest of [49, 41, 21, 13, 9] that fits, ``random.seed(42)``
shuffle, the first 8,000 "selected" (prompt ids drawn right after the shuffle) and the rest
"unselected" (prompt ids drawn after a fresh ``seed(42)``), split into N chunks of
``ceil(len / N)``. Where we knowingly differ (docs/flowportal.md, "Manifest"): a row's
``k_frames`` is computed at the video's real frame rate (a 30 fps video gets the k stage 1 will
really find; the *selection* still uses the original 24 fps rule, so the split is unchanged),
upper-case ``.MP4`` files are included and found again by the batch, N is at most the number of
rows, and the file names below replace ``h2s_<mode>_chunk<i>.csv``.

A regeneration never mixes two sets: the new files go into a fresh ``gen-*`` folder and
``manifest.json`` (sizes + sha256 of every file) is switched to it by one atomic rename; readers
verify the files they use against it. CPU only: run it on a login or CPU node.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite_core.atomic import write_json, write_text
from suite_core.errors import UserError

HEADER = ["video_name", "n_frames", "k_frames", "prompt_id"]
K_CHOICES = (49, 41, 21, 13, 9)
MODES = ("selected", "unselected")
POINTER = "manifest.json"
# our file -> the original generator's (scripts/h2s/generate_h2s_manifest.py), said in manifest.json
ORIGINAL_NAMES = {
    "selected": {
        "rows": "h2s_manifest.csv",
        "chunk": "h2s_manifest_chunk{i}.csv",
        "videos": "h2s_selected_videos.txt",
        "prompts": "h2s_prompts.txt",
    },
    "unselected": {
        "rows": "h2s_unselected_manifest.csv",
        "chunk": "h2s_unselected_chunk{i}.csv",
        "videos": "h2s_unselected_videos.txt",
        "prompts": "h2s_prompts.txt",
    },
}


def probe(path: Path) -> tuple[int, float]:
    """(frames per the container header, frames per second); (0, 0.0) when OpenCV cannot decode it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0, 0.0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if n <= 0 or not cap.read()[0]:
            return 0, 0.0
        return n, fps
    finally:
        cap.release()


def frame_count(path: Path) -> int:
    """Frames in an MP4 per its container header (0 when OpenCV cannot open it)."""
    return probe(path)[0]


def k_frames_for(n_frames: int, input_fps: float, target_fps: float) -> int | None:
    usable = int(n_frames / (input_fps / target_fps))
    return next((k for k in K_CHOICES if usable >= k), None)


def is_mp4(name: str) -> bool:
    return name.lower().endswith(".mp4") and len(name) > 4


def check_video_name(name: str, where: str) -> str:
    """A video name becomes a folder name (outputs/<name>, datasets/<name>): no path parts."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise UserError(
            f"video name {name!r} is not a plain file name",
            where=where,
            fix="regenerate the manifest from a folder of <name>.mp4 files",
        )
    return name


def resolve_input(video_dir: Path, name: str) -> Path | None:
    """``<name>.mp4`` in ``video_dir``, or the same name with an upper/mixed-case suffix."""
    base = os.fspath(video_dir)  # one Path for the hit only: status resolves every finished video
    for suffix in (".mp4", ".MP4", ".Mp4", ".mP4"):
        p = os.path.join(base, f"{name}{suffix}")
        with contextlib.suppress(OSError, ValueError):
            if stat.S_ISREG(os.stat(p).st_mode):
                return Path(p)
    return None


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HEADER, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a manifest or chunk CSV; a wrong header or an unsafe video name is a clear error."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != HEADER:
                raise UserError(
                    f"{path.name} has header {reader.fieldnames}, expected {','.join(HEADER)}",
                    where=str(path),
                    fix="regenerate it with python -m entrypoints flowportal_manifest",
                )
            rows = list(reader)
    except FileNotFoundError:
        raise UserError(
            f"manifest {path} does not exist",
            where=str(path.parent),
            fix="generate it first: python -m entrypoints flowportal_manifest",
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(
            f"cannot read {path.name}: {exc}",
            where=str(path),
            fix="regenerate it with python -m entrypoints flowportal_manifest",
        ) from None
    for i, r in enumerate(rows, 2):
        check_video_name(str(r.get("video_name") or ""), f"{path}:{i}")
    return rows


def read_prompts(path: Path) -> tuple[str, dict[str, str]]:
    """``SRC|...`` and ``i|...`` lines -> (source prompt, {id: target prompt})."""
    src, tar = None, {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"cannot read the prompts file: {exc}",
            where=str(path),
            fix="regenerate the manifest (it writes prompts.txt)",
        ) from None
    for ln in text.splitlines():
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The current, verified manifest generation of a batch dir."""

    batch_dir: Path
    info: dict[str, Any]

    @property
    def gen_dir(self) -> Path:
        return self.batch_dir / "manifest" / str(self.info["generation"])

    @property
    def num_chunks(self) -> int:
        return len(self.info["chunks"])

    def path(self, name: str, *, verify: bool = True) -> Path:
        """``name`` inside the current generation, checked against the sizes and sha256 recorded."""
        facts = self.info["files"].get(name)
        p = self.gen_dir / name
        if facts is None:
            raise UserError(
                f"{name} is not part of the current manifest",
                where=str(self.gen_dir),
                fix="regenerate the manifest with python -m entrypoints flowportal_manifest",
            )
        if verify:
            try:
                ok = p.stat().st_size == facts["bytes"] and _sha256(p) == facts["sha256"]
            except OSError:
                ok = False
            if not ok:
                raise UserError(
                    f"{name} does not match manifest.json (changed, truncated or missing)",
                    where=str(p),
                    fix="regenerate the manifest; never edit its files by hand",
                )
        return p

    def chunk(self, i: int) -> Path:
        return self.path(f"chunk{i}.csv")

    def prompts(self) -> Path:
        return self.path("prompts.txt")


def load(batch_dir: Path) -> Manifest:
    """The manifest ``manifest.json`` points at; a missing, legacy or broken one is one line."""
    pointer = batch_dir / "manifest" / POINTER
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"no manifest under {batch_dir}",
            where="batch_dir",
            fix=f"generate it: python -m entrypoints flowportal_manifest video_dir=... batch_dir={batch_dir}",
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read {POINTER}: {exc}", where=str(pointer), fix="regenerate the manifest"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict) or "generation" not in info:
        raise UserError(
            f"{POINTER} is from an older version or damaged (no generation/files)",
            where=str(pointer),
            fix="regenerate the manifest (same videos give the same rows)",
        )
    gen = str(info["generation"])
    if not gen.startswith("gen-") or "/" in gen or ".." in gen:
        raise UserError(
            f"{POINTER} names an invalid generation {gen!r}",
            where=str(pointer),
            fix="regenerate the manifest",
        )
    return Manifest(batch_dir, info)


def check_cfg(cfg: Any) -> tuple[str, int]:
    """Enumerations and ranges of the manifest settings (named key, allowed values)."""
    mode = str(cfg.mode)
    if mode not in MODES:
        raise UserError(
            f"mode={mode!r} is not one of {', '.join(MODES)}",
            where="mode",
            fix="pass mode=selected or mode=unselected",
        )
    try:
        n_chunks = int(cfg.num_chunks)
    except (TypeError, ValueError):
        raise UserError(
            f"num_chunks={cfg.num_chunks!r} is not a whole number",
            where="num_chunks",
            fix="pass num_chunks=N with N >= 1",
        ) from None
    if n_chunks < 1:
        raise UserError(f"num_chunks={n_chunks}", where="num_chunks", fix="use num_chunks >= 1")
    for key, low in (("num_select", 0), ("seed", None)):
        try:
            value = int(getattr(cfg, key))
        except (TypeError, ValueError):
            raise UserError(
                f"{key}={getattr(cfg, key)!r} is not a whole number", where=key, fix=f"pass {key}=N"
            ) from None
        if low is not None and value < low:
            raise UserError(f"{key}={value} is out of range", where=key, fix=f"pass {key}>={low}")
    for key in ("input_fps", "target_fps"):
        try:
            ok = float(getattr(cfg, key)) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(
                f"{key}={getattr(cfg, key)!r} must be a positive number",
                where=key,
                fix=f"pass {key}=24 (input) / 8 (target)",
            )
    if not list(cfg.prompts_tar):
        raise UserError("prompts_tar is empty", where="prompts_tar", fix="give at least one target prompt")
    return mode, n_chunks


def build(videos: dict[str, int], *, cfg: Any, fps: dict[str, float] | None = None) -> dict[str, Any]:
    """Pure part: frame counts -> selected/unselected rows and chunks (no file access).

    The pool and the shuffle use the original's fixed ``input_fps`` rule; a row's ``k_frames``
    then uses the video's real rate from ``fps`` (when known), which is what stage 1 samples at.
    """
    mode, n_chunks = check_cfg(cfg)
    fps = fps or {}
    valid, short, slow = [], [], []
    for fname in sorted(videos):
        n = videos[fname]
        k = k_frames_for(n, float(cfg.input_fps), float(cfg.target_fps))
        if k is None:
            short.append(fname)
            continue
        real = fps.get(fname) or 0.0
        k_real = (
            k
            if real <= 0 or abs(real - float(cfg.input_fps)) < 0.01
            else (k_frames_for(n, real, float(cfg.target_fps)))
        )
        if k_real is None:
            slow.append(fname)  # kept (the split must not move) but it cannot run: the batch says FAILED
        elif k_real != k:
            k = k_real
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
    rows = selected if mode == "selected" else unselected
    used = max(1, min(n_chunks, len(rows)))  # never more chunks than rows (no empty chunk files)
    size = max(1, math.ceil(len(rows) / used))
    chunks = [rows[i * size : (i + 1) * size] for i in range(used)]
    return {
        "valid": valid,
        "short": short,
        "too_short_at_real_fps": slow,
        "selected": selected,
        "unselected": unselected,
        "rows": rows,
        "chunks": chunks,
        "num_chunks_requested": n_chunks,
    }


def _old_generations(mdir: Path, keep: set[str]) -> list[Path]:
    return [p for p in mdir.glob("gen-*") if p.is_dir() and p.name not in keep]


def write_generation(batch_dir: Path, files: dict[str, str], summary: dict[str, Any]) -> Path:
    """Write ``files`` into a new ``gen-*`` folder, then switch ``manifest.json`` to it atomically.

    Kept: the new and the previous generation (a task that read the old pointer a moment ago
    still finds its chunk); older and orphaned (killed) generations are removed.
    """
    from suite_core.rundir import unique_dir, writer_lock

    mdir = batch_dir / "manifest"
    with writer_lock(mdir):
        prev = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            prev = json.loads((mdir / POINTER).read_text(encoding="utf-8")).get("generation")
        gen = unique_dir(mdir, time.strftime("gen-%Y%m%dT%H%M%S") + f"-{os.getpid()}")
        facts = {}
        for name, text in files.items():
            write_text(gen / name, text)
            facts[name] = {"bytes": (gen / name).stat().st_size, "sha256": _sha256(gen / name)}
        write_json(
            mdir / POINTER, {**summary, "generation": gen.name, "previous_generation": prev, "files": facts}
        )
        for old in _old_generations(mdir, {gen.name, str(prev)}):
            shutil.rmtree(old, ignore_errors=True)
        for legacy in mdir.glob("chunk*.csv"):  # the flat layout of earlier versions: never read again
            legacy.unlink()
    return gen


def run(cfg: Any, run: Any) -> int:
    mode, n_req = check_cfg(cfg)
    try:
        workers = int(cfg.workers)
    except (TypeError, ValueError):
        workers = 0
    if workers < 1:
        raise UserError(
            f"workers={cfg.workers!r} must be a whole number >= 1", where="workers", fix="pass workers=8"
        )
    src = Path(str(cfg.video_dir))
    if not src.is_dir():
        raise UserError(
            f"video directory {src} does not exist",
            where="video_dir",
            fix="pass video_dir=/path/to/raw_videos",
        )
    out = Path(str(cfg.batch_dir))
    with run.step("probe") as entry:
        try:
            files = sorted(p for p in src.iterdir() if is_mp4(p.name) and p.is_file())
        except OSError as exc:
            raise UserError(
                f"cannot list {src}: {exc.strerror}",
                where="video_dir",
                fix="check the folder and its permissions",
            ) from None
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            probed = dict(zip((p.name for p in files), pool.map(probe, files), strict=True))
        entry.update(videos=len(files), seconds_probe=round(time.monotonic() - t0, 3))
    unreadable = sorted(f for f, (n, _) in probed.items() if n == 0)
    for f in unreadable:
        run.skip(f, "unreadable video (OpenCV cannot decode it)")
    seen: dict[str, str] = {}
    dupes = []
    for f in sorted(probed):
        stem = f.rsplit(".", 1)[0]
        if stem in seen and probed[f][0] > 0:
            dupes.append(f)
            run.skip(f, f"same video name as {seen[stem]} (only the suffix's case differs): rename one")
        seen.setdefault(stem, f)
    keep = {f: n for f, (n, _) in probed.items() if n > 0 and f not in dupes}
    res = build(keep, cfg=cfg, fps={f: r for f, (_, r) in probed.items()})
    for f in res["short"]:
        run.skip(f, f"too short: fewer than 9 frames at {cfg.target_fps} fps (n_frames={probed[f][0]})")
    for f in res["too_short_at_real_fps"]:
        run.skip(
            f,
            f"kept in the split, but at its real {probed[f][1]:g} fps it has fewer than 9 frames at "
            f"{cfg.target_fps} fps: the batch lists it FAILED",
        )
    other = {f: r for f, (n, r) in probed.items() if n and r > 0 and abs(r - float(cfg.input_fps)) >= 0.01}
    summary = {
        "mode": mode,
        "videos": len(files),
        "unreadable": len(unreadable),
        "duplicate_names": len(dupes),
        "too_short": len(res["short"]),
        "not_input_fps": len(other),
        "valid": len(res["valid"]),
        "selected": len(res["selected"]),
        "unselected": len(res["unselected"]),
        "rows": len(res["rows"]),
        "num_chunks_requested": n_req,
        "chunks": [len(c) for c in res["chunks"]],
        "video_dir": str(src),
        "original_names": {
            f"{mode}.csv": ORIGINAL_NAMES[mode]["rows"],
            "chunk<i>.csv": ORIGINAL_NAMES[mode]["chunk"].replace("{i}", "<i>"),
            f"{mode}_videos.txt": ORIGINAL_NAMES[mode]["videos"],
            "prompts.txt": ORIGINAL_NAMES[mode]["prompts"],
        },
    }
    with run.step("write"):
        prompts = [f"SRC|{cfg.prompt_src}", *(f"{i}|{p}" for i, p in enumerate(cfg.prompts_tar))]
        files_out = {
            f"{mode}.csv": csv_text(res["rows"]),
            "prompts.txt": "\n".join(prompts) + "\n",
            f"{mode}_videos.txt": "".join(f"{e['video_name']}.mp4\n" for e in res["rows"]),
            **{f"chunk{i}.csv": csv_text(c) for i, c in enumerate(res["chunks"])},
        }
        gen = write_generation(out, files_out, summary)
    run.report["manifest"] = {**summary, "generation": gen.name}
    note = ""
    if len(res["chunks"]) < n_req:
        note = f" (num_chunks={n_req} bounded by the {len(res['rows'])} rows)"
    print(
        f"{len(files)} videos: {len(res['valid'])} long enough, {len(res['short'])} too short, "
        f"{len(unreadable)} unreadable; {mode}: {len(res['rows'])} in {len(res['chunks'])} chunks{note} "
        f"of <= {max((len(c) for c in res['chunks']), default=0)} -> {gen}"
    )
    if other:
        print(f"note: {len(other)} videos are not {cfg.input_fps:g} fps; their k_frames use the real rate")
    return 0
