"""Box geometry for fusion: boxes as arrays, sparse IoU pairs, and text lines grouped into blocks.

Why sparse: a page holds hundreds of boxes per source, and every dense n x n matrix made the
per-page cost grow with the square of the box count (243 pages/s at ~200 boxes, 6 at ~930).
Two boxes can only reach IoU >= t when their centres are close relative to the TALLER box
(``|dcy| <= (1 - t) * max(h)``), so one sort by centre height and a window search per box
(``searchsorted``) lists every candidate pair; the exact IoU is then computed for those pairs
only. The same windowing finds neighbouring text lines. Cost: O(n log n) for the sort plus the
number of candidate pairs, which for a layout (boxes that tile columns) grows linearly with n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from entrypoints.newsbag.schema import TAXONOMY

LABEL_INDEX = {name: i for i, name in enumerate(TAXONOMY)}
N_LABELS = len(TAXONOMY)
OTHER = LABEL_INDEX["other"]


@dataclass
class Boxes:
    """Boxes of one page as arrays: xyxy (n, 4) float64, label index (n,), score (n,)."""

    xyxy: np.ndarray
    label: np.ndarray
    score: np.ndarray

    @classmethod
    def empty(cls) -> Boxes:
        return cls(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0))

    @classmethod
    def from_record(
        cls, record: dict[str, Any], scale: tuple[float, float] = (1.0, 1.0), unscored: float | None = None
    ) -> Boxes:
        """Boxes of a page record; boxes flagged ``"scored": false`` take ``unscored`` as score."""
        bs = record["boxes"]
        if not bs:
            return cls.empty()
        xyxy = np.array([(b["x0"], b["y0"], b["x1"], b["y1"]) for b in bs], dtype=np.float64)
        if scale != (1.0, 1.0):
            xyxy *= np.array([scale[0], scale[1], scale[0], scale[1]])
        label = np.fromiter((LABEL_INDEX.get(b["label"], OTHER) for b in bs), dtype=np.int64, count=len(bs))
        if unscored is None:
            score = np.fromiter((b["score"] for b in bs), dtype=np.float64, count=len(bs))
        else:
            score = np.fromiter(
                (b["score"] if b.get("scored", True) else unscored for b in bs),
                dtype=np.float64,
                count=len(bs),
            )
        return cls(xyxy, label, score)

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: np.ndarray) -> Boxes:
        return Boxes(self.xyxy[idx], self.label[idx], self.score[idx])

    def to_json(self, score: np.ndarray | None = None) -> list[dict[str, Any]]:
        s = np.clip(self.score if score is None else score, 0.0, 1.0).round(5).tolist()
        xy = self.xyxy.round(2).tolist()
        names = [TAXONOMY[i] for i in self.label.tolist()]
        return [
            {"x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "label": n, "raw_label": n, "score": v}
            for b, n, v in zip(xy, names, s, strict=True)
        ]


def concat(parts: list[Boxes]) -> Boxes:
    if not parts:
        return Boxes.empty()
    return Boxes(
        np.concatenate([p.xyxy for p in parts]),
        np.concatenate([p.label for p in parts]),
        np.concatenate([p.score for p in parts]),
    )


def areas(xyxy: np.ndarray) -> np.ndarray:
    return np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense pairwise IoU (len(a), len(b)); for small sets and tests, never per page in fusion."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pair_iou(xyxy: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """IoU of the listed pairs (i[k], j[k])."""
    a, b = xyxy[i], xyxy[j]
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = areas(a) + areas(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _window_pairs(key: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i != j, with lo[i] <= key[j] <= hi[i]: one sort, one searchsorted per bound."""
    order = np.argsort(key, kind="stable")
    sk = key[order]
    start = np.searchsorted(sk, lo, side="left")
    stop = np.searchsorted(sk, hi, side="right")
    counts = np.maximum(stop - start, 0)
    total = int(counts.sum())
    if total == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    i = np.repeat(np.arange(len(key)), counts)
    offs = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    j = order[np.repeat(start, counts) + offs]
    keep = i != j
    return i[keep], j[keep]


def iou_pairs(
    xyxy: np.ndarray, thr: float, group: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) with IoU >= ``thr`` (> 0), skipping pairs of one ``group``; with the IoU.

    IoU >= t needs ``ih >= t * max(h)`` and so ``|cy_i - cy_j| <= (1 - t) * max(h_i, h_j)``:
    each pair is found from its taller box's window (ties from both, then deduplicated).
    """
    n = len(xyxy)
    if n < 2:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    h = xyxy[:, 3] - xyxy[:, 1]
    w = xyxy[:, 2] - xyxy[:, 0]
    cy = (xyxy[:, 1] + xyxy[:, 3]) * 0.5
    reach = (1.0 - thr) * h + 1e-9
    i, j = _window_pairs(cy, cy - reach, cy + reach)
    # found from i's window: keep when i is the taller (or equally tall with the lower index)
    ok = (h[i] > h[j]) | ((h[i] == h[j]) & (i < j))
    # the width bound, the size ratio bound and the group rule, before any exact IoU
    ok &= (
        np.abs((xyxy[i, 0] + xyxy[i, 2]) - (xyxy[j, 0] + xyxy[j, 2])) * 0.5
        <= (1.0 - thr) * np.maximum(w[i], w[j]) + 1e-9
    )
    ok &= h[j] >= thr * h[i] - 1e-9
    if group is not None:
        ok &= group[i] != group[j]
    i, j = i[ok], j[ok]
    iou = pair_iou(xyxy, i, j)
    ok = iou >= thr
    i, j, iou = i[ok], j[ok], iou[ok]
    swap = i > j
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    return i, j, iou


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component ids (0..k-1, in order of first node) of ``n`` nodes joined by (i, j).

    Min-label propagation over the edge list with pointer jumping: O(edges) per round and
    O(log diameter) rounds, never an n x n matrix.
    """
    lab = np.arange(n)
    if len(i):
        while True:
            new = lab.copy()
            np.minimum.at(new, i, lab[j])
            np.minimum.at(new, j, lab[i])
            new = new[new]
            if np.array_equal(new, lab):
                break
            lab = new
    _, inv = np.unique(lab, return_inverse=True)
    return inv.reshape(-1)


def lines_to_blocks(
    boxes: Boxes, *, vgap: float = 0.3, hgap: float = 1.0, max_height_ratio: float = 1.45
) -> Boxes:
    """Group text lines into blocks (paragraphs, headlines, bylines).

    Two lines join when one sits under the other with horizontal overlap >= 30% of the narrower
    line, a similar height (ratio <= ``max_height_ratio``: a change of type size is a block
    boundary, e.g. headline -> byline -> body) and a vertical gap no larger than the page's
    typical leading plus ``vgap`` x the smaller line height. The typical leading is the median
    gap between each line and the nearest line under it, so the extra space that separates
    paragraphs and articles splits blocks whatever the page's line spacing. Lines also join
    side by side on one baseline (vertical overlap >= 50%, gap <= ``hgap`` x height). Column
    gutters keep neighbouring columns apart. A block takes the majority label and mean score.
    Neighbours come from a window around each line's centre (a few line heights), so the cost
    grows with the number of lines, not its square.
    """
    n = len(boxes)
    if n <= 1:
        return boxes
    b = boxes.xyxy
    h = b[:, 3] - b[:, 1]
    cy = (b[:, 1] + b[:, 3]) * 0.5
    # below: cy_j - cy_i <= h_i/2 + (1 + vgap) h_i + ratio * h_i / 2; beside: |dcy| <= h of the taller
    i, j = _window_pairs(cy, cy - h, cy + (1.5 + vgap + 0.5 * max_height_ratio) * h)
    hmin = np.minimum(h[i], h[j])
    hmax = np.maximum(h[i], h[j])
    wmin = np.minimum(b[i, 2] - b[i, 0], b[j, 2] - b[j, 0])
    xov = np.minimum(b[i, 2], b[j, 2]) - np.maximum(b[i, 0], b[j, 0])
    yov = np.minimum(b[i, 3], b[j, 3]) - np.maximum(b[i, 1], b[j, 1])
    gap = -yov / hmin  # vertical gap in line heights
    below = (xov >= 0.3 * wmin) & (b[j, 1] > b[i, 1] + 0.3 * h[i])  # j under i
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, i[below], gap[below])
    finite = nearest[np.isfinite(nearest)]
    leading = float(np.clip(np.median(finite), -0.5, 1.0)) if len(finite) else 0.0
    stacked = below & (gap <= leading + vgap) & (hmax <= max_height_ratio * hmin)
    beside = (yov >= 0.5 * hmin) & (-xov <= hgap * hmin)
    e = stacked | beside
    comp = components(n, i[e], j[e])
    k = int(comp.max()) + 1
    xyxy = np.empty((k, 4))
    xyxy[:, :2] = np.inf
    xyxy[:, 2:] = -np.inf
    np.minimum.at(xyxy[:, 0], comp, b[:, 0])
    np.minimum.at(xyxy[:, 1], comp, b[:, 1])
    np.maximum.at(xyxy[:, 2], comp, b[:, 2])
    np.maximum.at(xyxy[:, 3], comp, b[:, 3])
    votes = np.bincount(comp * N_LABELS + boxes.label, minlength=k * N_LABELS).reshape(k, N_LABELS)
    score = np.bincount(comp, weights=boxes.score, minlength=k) / np.bincount(comp, minlength=k)
    return Boxes(xyxy, votes.argmax(axis=1), score)
