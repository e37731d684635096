"""Scoring one layout against another: box F1 with and without labels, and label-map coverage.

- F1 at IoU >= ``match_iou`` with label agreement; ``loc_f1`` the same with labels ignored.
  Each prediction takes its best reference (the lowest-numbered among equal IoUs); a reference
  counts once. At IoU >= 0.5 against (nearly) disjoint references this equals the optimal
  one-to-one matching. Pairs come from ``geometry.cross_iou_pairs`` (sparse), never a dense matrix.
- ``coverage``: per-label area IoU on a coarse grid, summed over labels (cells of label L in
  both / cells of label L in either). It is kind to nested or differently split blocks, which
  box matching punishes. ``label_rasters`` builds them from 2-D difference arrays (four corner
  increments per box, then two cumulative sums), so no Python loop over boxes.
- ``compare_sets`` is ``compare`` for many (prediction set, reference set) pairs at once, the
  way a page is scored (every variant against its leave-one-out reference, or everything
  against the truth): one pair search keyed by set, and the rasters as one bit per cell
  (a 48-cell row is one uint64 word; a box ORs its mask into the rows it covers), which cost a
  few hundred words per page instead of a (labels x grid x grid) cumulative sum per set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from entrypoints.newsbag.geometry import N_LABELS, Boxes, _expand, best_of_each, concat, cross_iou_pairs


def match_counts(pred: Boxes, ref: Boxes, iou_thr: float) -> tuple[int, int]:
    """(true positives with label agreement, true positives ignoring labels)."""
    n_p, n_r = len(pred), len(ref)
    if not n_p or not n_r:
        return 0, 0
    p, r, iou = cross_iou_pairs(pred.xyxy, ref.xyxy, iou_thr)
    out = []
    for ok in (pred.label[p] == ref.label[r], np.ones(len(p), bool)):
        pp, rr, vv = p[ok], r[ok], iou[ok]
        if not len(pp):
            out.append(0)
            continue
        order = np.lexsort((rr, -vv, pp))  # the best reference; the lowest among equals
        first = np.ones(len(order), bool)
        first[1:] = pp[order][1:] != pp[order][:-1]
        out.append(len(np.unique(rr[order][first])))
    return out[0], out[1]


@dataclass
class Rasters:
    """Per-label coverage rasters of one layout: ``labels`` (m,) present and ``cells`` (m, grid, grid)."""

    labels: np.ndarray
    cells: np.ndarray

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.cells))


def label_rasters(boxes: Boxes, width: float, height: float, grid: int) -> Rasters:
    """Cells covered by a box of each present label (cell centre inside the box)."""
    if not len(boxes):
        return Rasters(np.zeros(0, np.int64), np.zeros((0, grid, grid), bool))
    g1 = grid + 1
    labels, lab = np.unique(boxes.label, return_inverse=True)
    b = boxes.xyxy
    # first cell whose centre (c + 0.5) * step is >= the edge: ceil(edge / step - 0.5)
    ix = np.clip(np.ceil(b[:, 0::2] * (grid / width) - 0.5), 0, grid).astype(np.int64)
    iy = np.clip(np.ceil(b[:, 1::2] * (grid / height) - 0.5), 0, grid).astype(np.int64)
    base = lab.reshape(-1) * (g1 * g1)
    idx = np.concatenate(
        [
            base + iy[:, 0] * g1 + ix[:, 0],
            base + iy[:, 0] * g1 + ix[:, 1],
            base + iy[:, 1] * g1 + ix[:, 0],
            base + iy[:, 1] * g1 + ix[:, 1],
        ]
    )
    n = len(boxes)
    wts = np.repeat(np.array([1.0, -1.0, -1.0, 1.0]), n)
    d = np.bincount(idx, weights=wts, minlength=len(labels) * g1 * g1).astype(np.int32)
    d = d.reshape(len(labels), g1, g1)
    np.cumsum(d, axis=2, out=d)
    np.cumsum(d, axis=1, out=d)
    return Rasters(labels, d[:, :grid, :grid] > 0)


def coverage(pred: Rasters, ref: Rasters) -> float:
    """Label-wise area IoU of two raster sets; 1.0 when both are empty."""
    common, ip, ir = np.intersect1d(pred.labels, ref.labels, assume_unique=True, return_indices=True)
    inter = int(np.count_nonzero(pred.cells[ip] & ref.cells[ir])) if len(common) else 0
    union = pred.count + ref.count - inter
    return 1.0 if union == 0 else inter / union


def compare(
    pred: Boxes, ref: Boxes, ref_rasters: Rasters, width: float, height: float, iou_thr: float, grid: int
) -> dict[str, float]:
    tp, loc_tp = match_counts(pred, ref, iou_thr)
    cov = coverage(label_rasters(pred, width, height, grid), ref_rasters)
    return {"pred": len(pred), "ref": len(ref), "tp": tp, "loc_tp": loc_tp, "coverage": cov}


def _distinct_best(
    p: np.ndarray,
    r: np.ndarray,
    iou: np.ndarray,
    same: np.ndarray,
    pred_set: np.ndarray,
    n_pred: int,
    n_ref: int,
    n_sets: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction set: how many distinct references are some prediction's best match (the
    highest IoU, the lowest reference among equals), among the pairs whose labels agree (``same``)
    and among all pairs: (tp, loc_tp). Both in one pass: the label-aware keys follow the others."""
    if not len(p):
        z = np.zeros(n_sets, dtype=np.int64)
        return z, z
    ps = p[same]
    keys = np.concatenate([ps + n_pred, p])
    refs = np.concatenate([r[same], r])
    best = best_of_each(keys, 2 * n_pred, np.concatenate([iou[same], iou]), refs)
    kb = keys[best]
    kind = kb < n_pred  # False: labels agree, True: any label
    hit = np.zeros(2 * n_sets * n_ref, bool)
    hit[(kind * n_sets + pred_set[kb % n_pred]) * n_ref + refs[best]] = True
    counts = np.count_nonzero(hit.reshape(2 * n_sets, n_ref), axis=1)
    return counts[:n_sets], counts[n_sets:]


_PREFIX = np.array([(1 << k) - 1 for k in range(65)], dtype=np.uint64)  # bits 0..k-1 set
_POP8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


def _popcount(a: np.ndarray, axis: int) -> np.ndarray:
    """Set bits of a uint64 array summed over its last axes from ``axis`` on."""
    bits = np.bitwise_count(a) if hasattr(np, "bitwise_count") else _POP8[a.view(np.uint8)]  # numpy < 2
    return bits.reshape(*a.shape[:axis], -1).sum(axis=-1, dtype=np.int64)


def _row_masks(
    boxes: Boxes,
    set_id: np.ndarray,
    n_sets: int,
    col_of_label: np.ndarray,
    n_labels: int,
    width: float,
    height: float,
    grid: int,
) -> np.ndarray:
    """``label_rasters`` of many box sets at once, one bit per cell: (n_sets, n_labels, grid, words)
    uint64, label L in raster ``col_of_label[L]``.

    Bit c of word w in row r is set when a box of that set and label covers cell (r, 64 w + c)
    (same cells as ``label_rasters``: cell centre inside the box). One OR per box and covered row,
    instead of a (labels, grid, grid) cumulative sum per set.
    """
    words = (grid + 63) // 64
    out = np.zeros((n_sets * n_labels * grid, words), dtype=np.uint64)
    if len(boxes):
        # first cell whose centre (c + 0.5) * step is >= the edge, for x0 y0 x1 y1 at once
        step = np.array([grid / width, grid / height, grid / width, grid / height])
        ixy = np.ceil(boxes.xyxy * step - 0.5)
        ixy = np.minimum(np.maximum(ixy, 0.0, out=ixy), grid, out=ixy).astype(np.int64)
        first_row = (set_id * n_labels + col_of_label[boxes.label]) * grid + ixy[:, 1]
        owner, off = _expand(np.maximum(ixy[:, 3] - ixy[:, 1], 0))
        rows = first_row[owner] + off
        for w in range(words):
            lo, hi = ixy[:, 0], ixy[:, 2]
            if w or grid > 64:
                lo = np.minimum(np.maximum(lo - 64 * w, 0), 64)
                hi = np.minimum(np.maximum(hi - 64 * w, 0), 64)
            np.bitwise_or.at(out[:, w], rows, (_PREFIX[hi] & ~_PREFIX[lo])[owner])
    return out.reshape(n_sets, n_labels, grid, words)


def compare_sets(
    pred: Boxes,
    pred_set: np.ndarray,
    n_sets: int,
    ref: Boxes,
    ref_set: np.ndarray,
    n_refs: int,
    ref_of: np.ndarray,
    width: float,
    height: float,
    iou_thr: float,
    grid: int,
) -> list[dict[str, float]]:
    """``compare`` of many prediction sets, each against its own reference set, in one pass.

    ``pred_set``/``ref_set`` give each box's set; prediction set s is scored against reference set
    ``ref_of[s]`` (e.g. every variant against the leave-one-out consensus of its source). Equal to
    calling ``compare`` per set: one sparse pair search keyed by set, one raster build for all.
    """
    n_pred = np.bincount(pred_set, minlength=n_sets)
    n_ref = np.bincount(ref_set, minlength=n_refs)
    p, r, iou = cross_iou_pairs(pred.xyxy, ref.xyxy, iou_thr, ref_of[pred_set], ref_set, n_refs)
    same = pred.label[p] == ref.label[r]
    tp, loc_tp = _distinct_best(p, r, iou, same, pred_set, len(pred), len(ref), n_sets)
    # labels present on either side, and each label's raster among them (np.unique without a sort)
    present = np.bincount(pred.label, minlength=N_LABELS) + np.bincount(ref.label, minlength=N_LABELS) > 0
    col_of_label = np.cumsum(present) - 1
    masks = _row_masks(
        concat([pred, ref]),
        np.concatenate([pred_set, ref_set + n_sets]),
        n_sets + n_refs,
        col_of_label,
        int(col_of_label[-1]) + 1,
        width,
        height,
        grid,
    )
    mine, theirs = masks[:n_sets], masks[n_sets:].take(ref_of, axis=0)
    # set bits of (mine & theirs, mine, theirs) per prediction set, in one count
    bits = _popcount(np.concatenate([mine & theirs, mine, theirs]), 1)
    inter, n_mine, n_theirs = bits[:n_sets], bits[n_sets : 2 * n_sets], bits[2 * n_sets :]
    union = n_mine + n_theirs - inter
    cov = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return [
        {"pred": a, "ref": b, "tp": c, "loc_tp": d, "coverage": e}
        for a, b, c, d, e in zip(
            n_pred.tolist(), n_ref[ref_of].tolist(), tp.tolist(), loc_tp.tolist(), cov.tolist(), strict=True
        )
    ]


def f1(tp: float, pred: float, ref: float) -> float:
    return 2.0 * tp / (pred + ref) if pred + ref else 1.0


@dataclass
class Tally:
    """Summed counts for one system (a variant, a source, or the consensus) over pages."""

    pages: int = 0
    missing: int = 0
    pred: int = 0
    ref: int = 0
    tp: int = 0
    loc_tp: int = 0
    cov_sum: float = 0.0

    def add(self, other: dict[str, float]) -> None:
        self.pages += 1
        self.pred += int(other["pred"])
        self.ref += int(other["ref"])
        self.tp += int(other["tp"])
        self.loc_tp += int(other["loc_tp"])
        self.cov_sum += float(other["coverage"])

    def merge(self, other: Tally) -> None:
        for k in ("pages", "missing", "pred", "ref", "tp", "loc_tp", "cov_sum"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def metrics(self) -> dict[str, float]:
        return {
            "f1": f1(self.tp, self.pred, self.ref),
            "precision": self.tp / self.pred if self.pred else (1.0 if not self.ref else 0.0),
            "recall": self.tp / self.ref if self.ref else (1.0 if not self.pred else 0.0),
            "loc_f1": f1(self.loc_tp, self.pred, self.ref),
            "coverage": self.cov_sum / self.pages if self.pages else 0.0,
        }
