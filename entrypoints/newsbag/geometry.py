"""Box geometry for fusion: boxes as arrays, sparse IoU pairs, and text lines grouped into blocks.

Why sparse: a page holds hundreds of boxes per source, and every dense n x n matrix made the
per-page cost grow with the square of the box count (243 pages/s at ~200 boxes, 6 at ~930).
Two boxes can only reach IoU >= t when each centre lies within k(t) x the other's size of its
own (``_iou_window``: half the size for t >= 0.5). ``window_candidates`` sorts the boxes once by
(horizontal band, x) and reads, per window and band, one contiguous run with ``searchsorted``;
the exact IoU is then computed for those candidates only. The same search finds neighbouring
text lines. Cost: O(n log n) for the sort plus the candidates, which for a layout (boxes that
tile columns) grow linearly with n; no per-box Python loop, and no step whose result depends
on the order in which pairs are found (ties go to the lowest index).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import itemgetter, methodcaller
from typing import Any

import numpy as np

from entrypoints.newsbag.schema import TAXONOMY

LABEL_INDEX = {name: i for i, name in enumerate(TAXONOMY)}
N_LABELS = len(TAXONOMY)
OTHER = LABEL_INDEX["other"]


class _LabelIndex(dict):
    """Taxonomy name -> index; any other name -> "other" (a dict subclass, so lookups stay in C)."""

    def __missing__(self, key: str) -> int:
        return OTHER


_LABEL_OF = _LabelIndex(LABEL_INDEX)
_XYXYS = itemgetter("x0", "y0", "x1", "y1", "score")
_LABEL = itemgetter("label")
_SCORED = methodcaller("get", "scored", True)
_INT64_MAX = int(np.iinfo(np.int64).max)


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
        return cls.from_records([record], [scale], unscored)[0]

    @classmethod
    def from_records(
        cls,
        records: list[dict[str, Any]],
        scales: list[tuple[float, float]],
        unscored: float | None = None,
    ) -> list[Boxes]:
        """``from_record`` of each record (with its scale), in one pass over all their boxes: the
        boxes are dicts, and this is fusion's per-box input cost, so it runs once per page, not
        once per record. Each record's arrays are a slice of the page's."""
        lists = [r["boxes"] for r in records]
        sizes = [len(b) for b in lists]
        n = sum(sizes)
        if not n:
            return [cls.empty() for _ in records]
        every = list(chain.from_iterable(lists)) if len(lists) > 1 else lists[0]
        # one C-level pass per column group
        flat = chain.from_iterable(map(_XYXYS, every))
        cols = np.fromiter(flat, dtype=np.float64, count=5 * n).reshape(n, 5)
        xyxy = cols[:, :4].copy()
        label = np.fromiter(map(_LABEL_OF.__getitem__, map(_LABEL, every)), dtype=np.int64, count=n)
        score = cols[:, 4].copy()
        if unscored is not None and False in map(_SCORED, every):
            score[[k for k, b in enumerate(every) if b.get("scored", True) is False]] = unscored
        out, start = [], 0
        for size, scale in zip(sizes, scales, strict=True):
            if not size:
                out.append(cls.empty())
                continue
            end = start + size
            xy = xyxy[start:end]
            if scale != (1.0, 1.0):
                xy *= np.array([scale[0], scale[1], scale[0], scale[1]])
            out.append(cls(xy, label[start:end], score[start:end]))
            start = end
        return out

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: np.ndarray) -> Boxes:
        """The boxes at integer positions ``idx``."""
        return Boxes(self.xyxy.take(idx, axis=0), self.label.take(idx), self.score.take(idx))

    def to_json(self, score: np.ndarray | None = None) -> list[dict[str, Any]]:
        s = np.clip(self.score if score is None else score, 0.0, 1.0).round(5).tolist()
        x0, y0, x1, y1 = self.xyxy.round(2).T.tolist()
        names = [TAXONOMY[i] for i in self.label.tolist()]
        return [
            {"x0": a, "y0": b, "x1": c, "y1": d, "label": n, "raw_label": n, "score": v}
            for a, b, c, d, n, v in zip(x0, y0, x1, y1, names, s, strict=True)
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
    # np.maximum(x, 0) is what np.clip(x, 0, None) computes, without its Python-level dispatch
    return np.maximum(xyxy[:, 2] - xyxy[:, 0], 0.0) * np.maximum(xyxy[:, 3] - xyxy[:, 1], 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense pairwise IoU (len(a), len(b)); for small sets and tests, never per page in fusion."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pair_iou(xyxy: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """IoU of the listed pairs (i[k], j[k])."""
    a, b = xyxy.take(i, axis=0), xyxy.take(j, axis=0)
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    ar = areas(xyxy)
    union = ar.take(i) + ar.take(j) - inter
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


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts c_k: (owner k, offset 0..c_k-1) of every one of the sum(c) items."""
    if not len(counts):
        z = np.zeros(0, dtype=np.int64)
        return z, z
    ends = np.cumsum(counts)
    owner = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(int(ends[-1])) - (ends - counts).take(owner)
    return owner, offset


def best_of_each(key: np.ndarray, n_keys: int, value: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Mask of the entry with the highest ``value`` for each ``key`` (< ``n_keys``), the lowest ``tie``
    among equals, so the choice never depends on the order the entries come in. Two scatter
    passes, no sort."""
    top = np.empty(n_keys)  # empty + fill: np.full's Python-level wrapper costs more at this size
    top.fill(-np.inf)
    np.maximum.at(top, key, value)
    cand = value == top[key]
    low = np.empty(n_keys, dtype=np.int64)
    low.fill(_INT64_MAX)
    np.minimum.at(low, key[cand], tie[cand])
    return cand & (tie == low[key])


def _candidates(
    qx: np.ndarray,
    qy: np.ndarray,
    rx: np.ndarray,
    ry: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    qgroup: np.ndarray | None = None,
    pgroup: np.ndarray | None = None,
    *,
    mutual: bool = False,
    n_groups: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A superset of every (q, p) with point p inside q's window ``|px - qx| <= rx_q, |py - qy| <= ry_q``
    (and, when groups are given, ``qgroup[q] == pgroup[p]``), in no particular order.

    The points are cut into horizontal bands (band height = the median window height) and sorted
    by (group, band, x) in one key; each window reads, per band it touches, the contiguous run of
    points whose x lies in the window (two ``searchsorted``). So the work is one sort plus the
    candidates, whatever the layout, and x is exact: only a band's extra height adds candidates.
    Groups let one call serve many independent (query set, point set) pairs, e.g. every variant
    against its own reference. Bounds carry a small slack; callers filter exactly.

    ``mutual=True`` (the points are the queries, and only pairs whose centres lie in EACH
    other's window are wanted): a query reads only its own band and those below it, and the
    third result marks each pair's one find (from the box in the lower band, or the lower index
    in one band); else the third result is None. ``n_groups`` (when known) saves two scans.
    """
    if not len(qx) or not len(px):
        z = np.zeros(0, dtype=np.int64)
        return z, z, (z > 0 if mutual else None)
    lo_y, hi_y = qy - ry, qy + ry
    lo_x, hi_x = qx - rx, qx + rx
    # the page's extent (ufunc reductions: the ndarray methods add a Python-level call each)
    lo, hi = np.minimum.reduce, np.maximum.reduce
    y0 = min(float(lo(py)), float(lo(lo_y)))
    y_span = max(float(hi(py)), float(hi(hi_y))) - y0
    x0 = min(float(lo(px)), float(lo(lo_x)))
    x_span = max(float(hi(px)), float(hi(hi_x))) - x0
    # the band: the median window height, but never so thin that windows span many bands (mean / 4
    # caps the band visits at ~6 per window) or that band numbers lose precision; the column
    # width likewise from the window widths (both medians in one partition)
    mid = len(ry) // 2
    two_r = np.stack([ry, rx]) * 2.0
    med = np.partition(two_r, mid, axis=1)[:, mid]
    mean = np.add.reduce(two_r, axis=1) / len(ry)
    gy = max(float(med[0]), 0.25 * float(mean[0]), 1e-6 * y_span, 1e-9)
    gx = max(float(med[1]), 0.25 * float(mean[1]), 1e-6 * x_span, 1e-9)
    inv = 1.0 / gy
    n_bands = int(y_span * inv) + 2
    pband = ((py - y0) * inv).astype(np.int64)  # >= 0: truncation is floor
    n_rows = n_bands
    if pgroup is not None:
        pband += pgroup * n_bands
        if n_groups is None:
            n_groups = int(max(pgroup.max(), qgroup.max() if qgroup is not None else 0)) + 1
        n_rows *= n_groups
    b0 = pband if mutual else ((lo_y - y0) * inv - 1e-6).astype(np.int64)
    b1 = ((hi_y - y0) * inv + 1e-6).astype(np.int64)
    if qgroup is not None:
        b0 = b0 + qgroup * n_bands if not mutual else b0
        b1 += qgroup * n_bands
    q, dband = _expand(np.maximum(b1 - b0 + 1, 0))
    row = b0[q] + dband
    # cells of (band, x column), column width = the median window width: when the cells fit in a
    # small table, each (window, band) reads its run of points by two table look-ups; else by
    # binary search on (band, x) keys
    n_cols = int(x_span / gx) + 2
    if n_rows * n_cols <= 8 * (len(px) + len(qx)) + 4096:
        invx = 1.0 / gx
        cell = pband * n_cols + ((px - x0) * invx).astype(np.int64)
        order = np.argsort(cell, kind="stable")
        first = np.zeros(n_rows * n_cols + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell, minlength=n_rows * n_cols), out=first[1:])
        row *= n_cols
        start = first[row + ((lo_x - x0) * invx - 1e-6).astype(np.int64)[q]]
        stop = first[row + ((hi_x - x0) * invx + 1e-6).astype(np.int64)[q] + 1]
    else:
        stride = 2.0 * x_span + 1.0  # rows never overlap in the key
        pkey = pband * stride + (px - x0)
        order = np.argsort(pkey)
        skey = pkey[order]
        band = row * stride
        slack = 1e-9 * stride * (1.0 + float(skey[-1]) / stride)
        start = np.searchsorted(skey, band + (lo_x[q] - x0 - slack), side="left")
        stop = np.searchsorted(skey, band + (hi_x[q] - x0 + slack), side="right")
    owner, off = _expand(stop - start)
    iq, ip = q[owner], order[start[owner] + off]
    if not mutual:
        return iq, ip, None
    return iq, ip, (pband[ip] != pband[iq]) | (iq < ip)  # a pair within one band is found from both ends


def window_candidates(
    qx: np.ndarray,
    qy: np.ndarray,
    rx: np.ndarray,
    ry: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    qgroup: np.ndarray | None = None,
    pgroup: np.ndarray | None = None,
    *,
    mutual: bool = False,
    n_groups: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``_candidates``, with ``mutual`` pairs kept once each as (i < j)."""
    iq, ip, once = _candidates(qx, qy, rx, ry, px, py, qgroup, pgroup, mutual=mutual, n_groups=n_groups)
    if once is None:
        return iq, ip
    iq, ip = iq[once], ip[once]
    return np.minimum(iq, ip), np.maximum(iq, ip)


def grid_query(
    qx: np.ndarray, qy: np.ndarray, rx: np.ndarray, ry: np.ndarray, px: np.ndarray, py: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (q, p) with point p inside q's window ``|px - qx| <= rx_q, |py - qy| <= ry_q`` (exact)."""
    iq, ip = window_candidates(qx, qy, rx, ry, px, py)
    ok = (np.abs(px[ip] - qx[iq]) <= rx[iq]) & (np.abs(py[ip] - qy[iq]) <= ry[iq])
    return iq[ok], ip[ok]


def window_pairs(
    cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs (i < j) where j's centre lies in i's window or i's centre in j's."""
    i, j = grid_query(cx, cy, rx, ry, cx, cy)
    dx, dy = np.abs(cx[j] - cx[i]), np.abs(cy[j] - cy[i])
    # found from both windows when each centre is in the other's: keep it once, from the lower index
    mutual = (dx <= rx[j]) & (dy <= ry[j])
    ok = (i != j) & (~mutual | (i < j))
    i, j = i[ok], j[ok]
    swap = i > j
    return np.where(swap, j, i), np.where(swap, i, j)


def _iou_window(xyxy: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres and the half-window that holds every partner at IoU >= t: k(t) x the box's own size.

    IoU >= t needs the overlap along x to be >= t x the larger width M (the intersection is at most
    the overlap times either height, and at least t x either area), and the overlap is at most
    (M + m) / 2 - |dcx|. So |dcx| <= (M + m) / 2 - t M, which is <= w / 2 for t >= 1/2 and
    <= w / (2 t) below, for EITHER box's width w (m >= t M); the same holds along y.
    """
    k = (0.5 if thr >= 0.5 else 0.5 / thr) * (1.0 + 1e-9)
    return (
        (xyxy[:, 0] + xyxy[:, 2]) * 0.5,
        (xyxy[:, 1] + xyxy[:, 3]) * 0.5,
        k * (xyxy[:, 2] - xyxy[:, 0]),
        k * (xyxy[:, 3] - xyxy[:, 1]),
    )


def iou_pairs(
    xyxy: np.ndarray, thr: float, group: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) with IoU >= ``thr`` (> 0), skipping pairs of one ``group``; with the IoU.

    Every such pair has each centre in the other's IoU window (``_iou_window``), so a search from
    the box in the lower band finds it; the exact IoU is computed for the candidates only. Pairs
    come in no particular order.
    """
    if len(xyxy) < 2:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    cx, cy, rx, ry = _iou_window(xyxy, thr)
    i, j = window_candidates(cx, cy, rx, ry, cx, cy, mutual=True)
    if group is not None:
        keep = group[i] != group[j]
        i, j = i[keep], j[keep]
    iou = pair_iou(xyxy, i, j)
    ok = iou >= thr
    return i[ok], j[ok], iou[ok]


def cross_iou_pairs(
    a: np.ndarray,
    b: np.ndarray,
    thr: float,
    agroup: np.ndarray | None = None,
    bgroup: np.ndarray | None = None,
    n_groups: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i in a, j in b) with IoU >= ``thr`` (and ``agroup[i] == bgroup[j]`` when given), with the
    IoU; windows from a, points from b, in no particular order."""
    if not len(a) or not len(b):
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    ax, ay, rx, ry = _iou_window(a, thr)
    bx, by = (b[:, 0] + b[:, 2]) * 0.5, (b[:, 1] + b[:, 3]) * 0.5  # the centres (as _iou_window)
    i, j, _ = _candidates(ax, ay, rx, ry, bx, by, agroup, bgroup, n_groups=n_groups)
    ai, bj = a.take(i, axis=0), b.take(j, axis=0)
    w = np.minimum(ai[:, 2], bj[:, 2]) - np.maximum(ai[:, 0], bj[:, 0])
    h = np.minimum(ai[:, 3], bj[:, 3]) - np.maximum(ai[:, 1], bj[:, 1])
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    union = areas(a).take(i) + areas(b).take(j) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    ok = iou >= thr
    return i[ok], j[ok], iou[ok]


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
            if not (new != lab).any():
                break
            lab = new
    # every node now holds its component's lowest node, which holds itself: number those roots
    # in order (what np.unique's inverse gives, without its sort)
    root = lab == np.arange(n)
    return (np.cumsum(root) - 1)[lab]


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
    # stacked: |dcy| <= h_i/2 + (1 + vgap) h_min + h_j/2 with x-overlap; beside: |dcy| <= h of the taller:
    # every such pair lies in the window of its taller and wider line; both orders are scored below
    cx = (b[:, 0] + b[:, 2]) * 0.5
    w = b[:, 2] - b[:, 0]
    i, j = window_pairs(cx, cy, w + hgap * h, (1.5 + vgap + 0.5 * max_height_ratio) * h)
    i, j = np.concatenate([i, j]), np.concatenate([j, i])
    hmin = np.minimum(h[i], h[j])
    hmax = np.maximum(h[i], h[j])
    bi, bj = b.take(i, axis=0), b.take(j, axis=0)  # take: a row gather ~10x cheaper than b[i]
    wmin = np.minimum(bi[:, 2] - bi[:, 0], bj[:, 2] - bj[:, 0])
    xov = np.minimum(bi[:, 2], bj[:, 2]) - np.maximum(bi[:, 0], bj[:, 0])
    yov = np.minimum(bi[:, 3], bj[:, 3]) - np.maximum(bi[:, 1], bj[:, 1])
    gap = -yov / hmin  # vertical gap in line heights
    below = (xov >= 0.3 * wmin) & (bj[:, 1] > bi[:, 1] + 0.3 * h[i])  # j under i
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
