"""newsbag fusion throughput (pages/s) at 1,000 and 10,000 pages x 4 sources, and the demo's wall time.

Synthetic page records: a random newspaper-like layout of ~30 blocks per page; each of 4 sources
sees it with its own jitter, dropped and spurious boxes and label noise (one source line-level).
Two numbers per size: in-memory fusion (``fuse_page``, one core) and the whole app path
(``fuse_run``: read JSON, fuse, write consensus pages and leaderboards) with 1 and N workers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
W, H = 2200, 3000
LABELS = ("text", "title", "figure", "caption", "advertisement", "header")


class _Run:
    def __init__(self) -> None:
        self.report: dict = {"skipped": []}

    def skip(self, item: str, reason: str) -> None:
        self.report["skipped"].append(item)

    def output(self, p) -> None:
        pass

    def step(self, name: str, **kw):
        import contextlib

        return contextlib.nullcontext({})


def synth_page(rng: np.random.Generator, page_id: str) -> dict[str, dict]:
    n = int(rng.integers(20, 40))
    x0 = rng.uniform(0, W - 400, n)
    y0 = rng.uniform(0, H - 300, n)
    base = np.stack([x0, y0, x0 + rng.uniform(150, 400, n), y0 + rng.uniform(60, 300, n)], 1)
    labels = rng.choice(LABELS, n)
    out = {}
    for s, (jit, drop, extra, gran) in {"a": (4, .05, 2, "block"), "b": (8, .1, 4, "block"),
                                        "c": (15, .2, 6, "block"), "d": (3, .05, 0, "line")}.items():
        keep = rng.random(n) > drop
        b = base[keep] + rng.normal(0, jit, (int(keep.sum()), 4))
        lab = labels[keep].copy()
        flip = rng.random(len(lab)) < 0.1
        lab[flip] = rng.choice(LABELS, int(flip.sum()))
        if gran == "line":  # split each block into text lines of 40 px
            rows = []
            for (a, y, c, e), _ in zip(b, lab, strict=True):
                for yy in np.arange(y, e - 30, 50):
                    rows.append((a, yy, c, yy + 40, "text"))
        else:
            ex = np.stack([rng.uniform(0, W - 200, extra), rng.uniform(0, H - 200, extra)], 1)
            rows = [(*r, lb) for r, lb in zip(b.tolist(), lab.tolist(), strict=True)]
            rows += [(x, y, x + 150, y + 100, "other") for x, y in ex.tolist()]
        boxes = [{"x0": float(max(0, r[0])), "y0": float(max(0, r[1])), "x1": float(min(W, r[2])),
                  "y1": float(min(H, r[3])), "label": r[4], "raw_label": r[4], "score": 0.9}
                 for r in rows if min(W, r[2]) > max(0, r[0]) + 1 and min(H, r[3]) > max(0, r[1]) + 1]
        out[f"{s}/v"] = {"page_id": page_id, "image": f"/none/{page_id}.png", "width": W, "height": H,
                         "source": s, "variant": "v", "granularity": gran, "boxes": boxes}
    return out


def bench_size(n_pages: int, lines: list[str]) -> None:
    from entrypoints.newsbag import fusion

    rng = np.random.default_rng(n_pages)
    pages = {f"p{i:05d}": synth_page(rng, f"p{i:05d}") for i in range(n_pages)}
    s = fusion.Settings()
    t0 = time.perf_counter()
    for pid, recs in pages.items():
        fusion.fuse_page(pid, recs, s)
    mem = time.perf_counter() - t0
    lines.append(f"{n_pages:>6} pages x 4 sources  in-memory fuse_page, 1 core : {n_pages / mem:8.1f} pages/s"
                 f" ({mem:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        for pid, recs in pages.items():
            for key, rec in recs.items():
                d = run_dir / "outputs" / "sources" / key / "pages"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{pid}.json").write_text(json.dumps(rec))
        for workers in sorted({1, os.cpu_count() or 1}):
            t0 = time.perf_counter()
            fusion.fuse_run(run_dir, s, run=_Run(), workers=workers, force=True, progress=False)
            dt = time.perf_counter() - t0
            lines.append(f"{n_pages:>6} pages x 4 sources  fuse_run (read+fuse+write), {workers} worker(s): "
                         f"{n_pages / dt:8.1f} pages/s ({dt:.1f} s)")


def main(out_dir: Path) -> None:
    from containers.atomic import write_text
    from containers.runner import run

    lines = [f"command: {Path(sys.executable).name} -m bench newsbag   (cwd {REPO.name}/)",
             f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}", ""]
    for n in (1000, 10000):
        bench_size(n, lines)
        print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = run([sys.executable, "-m", "entrypoints", "newsbag_demo", f"run_dir={tmp}/demo", "runtime=host"],
                cwd=REPO, check=False)
        dt = time.perf_counter() - t0
        acc = Path(tmp) / "demo" / "outputs" / "fusion" / "accuracy.tsv"
        acc_rows = [ln.split("\t") for ln in acc.read_text().splitlines()
                    if ln and not ln.startswith("#")] if acc.is_file() else []
    lines.append(f"demo (make demo: 3 bundled pages, embedded sources + fusion + review, host runtime): "
                 f"{dt:.1f} s wall, exit {r.returncode}")
    if acc_rows:
        cols = acc_rows[0]
        lines.append("demo accuracy vs ground truth (F1 at IoU 0.5 with labels; loc_f1 ignores labels):")
        lines += [f"  {row[cols.index('system')]:<20} f1 {row[cols.index('f1')]}  loc_f1 "
                  f"{row[cols.index('loc_f1')]}  coverage {row[cols.index('coverage')]}"
                  for row in acc_rows[1:]]
    text = "\n".join(lines) + "\n"
    write_text(out_dir / "newsbag.txt", text)
    print(text)
