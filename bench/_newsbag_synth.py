"""Synthetic pages with truth and simulated detectors, for fusion's benchmarks and accuracy tests.

A page is a newspaper-like grid of blocks (columns of stacked articles) with labels. Each
simulated source sees it with its own recall, box jitter, label errors and spurious boxes, and
scores like a real detector: confident on what it finds right, less on label mistakes and
spurious boxes (scores overlap, so no threshold separates them). One source may be line-level
(each text block split into 40 px lines, labels all "text").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

LABELS = ("text", "title", "figure", "caption", "advertisement", "header")
W, H = 2200, 3000


@dataclass(frozen=True)
class SourceModel:
    recall: float = 0.85
    jitter: float = 8.0  # px, per coordinate
    label_acc: float = 0.9
    spurious: int = 3  # random extra boxes per page
    line: bool = False


SOURCES = (
    SourceModel(0.88, 6, 0.92, 3),
    SourceModel(0.8, 10, 0.85, 5),
    SourceModel(0.85, 14, 0.88, 4),
    SourceModel(0.78, 9, 0.8, 6),
    SourceModel(0.9, 12, 0.9, 5),
)


def truth(rng: np.random.Generator, n_blocks: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """About ``n_blocks`` non-overlapping blocks tiling 3-6 columns: (xyxy (n, 4), label index (n,))."""
    cols = int(rng.integers(3, 7))
    per_col = max(1, round(n_blocks / cols))
    gutter, margin = 20.0, 40.0
    colw = (W - 2 * margin - (cols - 1) * gutter) / cols
    out, labs = [], []
    for c in range(cols):
        x0 = margin + c * (colw + gutter)
        share = rng.uniform(0.5, 1.5, per_col)
        edges = margin + np.concatenate([[0.0], np.cumsum(share / share.sum())]) * (H - 2 * margin)
        for y0, y1 in itertools.pairwise(edges):
            pad = min(4.0, 0.15 * (y1 - y0))
            out.append((x0, y0 + pad, x0 + colw, y1 - pad))
            labs.append(int(rng.choice(len(LABELS), p=(0.55, 0.15, 0.1, 0.08, 0.07, 0.05))))
    return np.array(out, dtype=np.float64), np.array(labs, dtype=np.int64)


def observe(
    rng: np.random.Generator, gt: tuple[np.ndarray, np.ndarray], m: SourceModel
) -> list[tuple[float, float, float, float, str, float]]:
    """One source's boxes (x0, y0, x1, y1, label, score) for a page's truth."""
    xyxy, lab = gt
    keep = rng.random(len(lab)) < m.recall
    b = xyxy[keep] + rng.normal(0, m.jitter, (int(keep.sum()), 4))
    lab = lab[keep].copy()
    right = rng.random(len(lab)) < m.label_acc
    lab[~right] = rng.integers(0, len(LABELS), int((~right).sum()))
    score = np.where(right, rng.uniform(0.45, 1.0, len(lab)), rng.uniform(0.25, 0.75, len(lab)))
    rows = []
    for (x0, y0, x1, y1), lb, sc in zip(b.tolist(), lab.tolist(), score.tolist(), strict=True):
        if m.line and LABELS[lb] != "figure":  # a text-line detector finds every text, not photos
            step = min(50.0, max(8.0, (y1 - y0) / 2))
            for yy in np.arange(y0, y1 - 0.6 * step, step):
                rows.append((x0, yy, x1, yy + 0.8 * step, "text", sc))
        else:
            rows.append((x0, y0, x1, y1, LABELS[lb], sc))
    for _ in range(m.spurious):
        x, y = rng.uniform(0, W - 300), rng.uniform(0, H - 200)
        rows.append(
            (
                x,
                y,
                x + rng.uniform(80, 300),
                y + (40 if m.line else rng.uniform(40, 200)),
                "text" if m.line else LABELS[int(rng.integers(len(LABELS)))],
                float(rng.uniform(0.2, 0.7)),
            )
        )
    return [
        (max(0.0, a), max(0.0, b_), min(W, c), min(H, d), lb, sc)
        for a, b_, c, d, lb, sc in rows
        if min(W, c) > max(0.0, a) + 1 and min(H, d) > max(0.0, b_) + 1
    ]


def record(page_id: str, source: str, variant: str, rows: list, granularity: str = "block") -> dict:
    return {
        "page_id": page_id,
        "image": f"/none/{page_id}.png",
        "width": W,
        "height": H,
        "source": source,
        "variant": variant,
        "granularity": granularity,
        "boxes": [
            {
                "x0": float(a),
                "y0": float(b),
                "x1": float(c),
                "y1": float(d),
                "label": lb,
                "raw_label": lb,
                "score": round(float(sc), 4),
            }
            for a, b, c, d, lb, sc in rows
        ],
    }


def page(
    rng: np.random.Generator, page_id: str, models: tuple[SourceModel, ...], n_blocks: int = 30
) -> tuple[dict[str, dict], dict]:
    """Records per "source/v" and the truth record of one page."""
    gt = truth(rng, n_blocks)
    recs = {}
    for i, m in enumerate(models):
        src = f"s{i}"
        recs[f"{src}/v"] = record(page_id, src, "v", observe(rng, gt, m), "line" if m.line else "block")
    gt_rec = record(
        page_id,
        "ground_truth",
        "gt",
        [(*b, LABELS[lb], 1.0) for b, lb in zip(gt[0].tolist(), gt[1].tolist(), strict=True)],
    )
    return recs, gt_rec
