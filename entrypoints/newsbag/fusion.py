"""fusion: one consensus layout per page from every source and variant, and leave-one-out scores.

Why this shape:
- Line-level sources (OCR text lines) cannot be compared box-for-box with block-level layout
  models, so their lines are first grouped into blocks: connected components of lines stacked
  with the page's typical leading and a similar type size, or side by side on one baseline.
  Extra vertical space (paragraph and article breaks) and a change of type size (headline ->
  byline -> body) end a block, because layout models and annotators draw those as separate
  boxes; a fixed gap threshold merged a headline, its byline and two paragraphs into one box.
- A text-line detector tells where text is, not which kind: its boxes vote on geometry and
  support but abstain from the label vote (a cluster it alone backs stays "text"). Letting its
  all-"text" votes count relabelled every headline, masthead and header of the layout model.
- The consensus is weighted box clustering: boxes of different variants that overlap at
  IoU >= ``cluster_iou`` form one cluster (at most one box per variant); a cluster is kept when
  the sources behind it carry at least ``min_support`` of the page's total source weight. Each
  source has one vote split over its variants, so bagging five thresholds of one model does not
  outvote two independent models. Coordinates are the weighted mean, the label a weighted vote.
- Leave-one-out: a variant is scored against the consensus of the OTHER sources (the same
  clusters with that source's members removed), so no variant grades itself. With a single
  source, variants are scored against the other variants of it.
- Metrics: F1 at IoU >= ``match_iou`` with label agreement, the same without labels
  (``loc_f1``), and ``coverage``: the area IoU of the two label maps rasterised on a coarse grid,
  which is kind to nested or differently split blocks that box matching punishes.

Everything per page is a handful of numpy matrix operations; only the greedy seed loop (one
iteration per consensus box, candidates sorted once for all seeds) and the slice painting of the
coverage rasters (one 2-D slice per box) run in Python. Line grouping builds its pair matrices
once and propagates component labels over the edge list, not over an n x n matrix per round.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from containers.errors import UserError
from entrypoints.newsbag.schema import (
    CONSENSUS_SOURCE,
    TAXONOMY,
    gt_path_for,
    iter_source_pages,
    page_record,
    read_page,
)

LABEL_INDEX = {name: i for i, name in enumerate(TAXONOMY)}
N_LABELS = len(TAXONOMY)
MAX_SKIPS_LISTED = 50  # per variant and reason; the rest are summarised in one entry


# --------------------------------------------------------------------------- geometry


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
    def from_record(cls, record: dict[str, Any], scale: tuple[float, float] = (1.0, 1.0)) -> Boxes:
        bs = record["boxes"]
        if not bs:
            return cls.empty()
        xyxy = np.array([[b["x0"], b["y0"], b["x1"], b["y1"]] for b in bs], dtype=np.float64)
        xyxy *= np.array([scale[0], scale[1], scale[0], scale[1]])
        label = np.array([LABEL_INDEX.get(b["label"], LABEL_INDEX["other"]) for b in bs], dtype=np.int64)
        score = np.array([b["score"] for b in bs], dtype=np.float64)
        return cls(xyxy, label, score)

    def __len__(self) -> int:
        return len(self.label)

    def to_json(self, support: np.ndarray | None = None) -> list[dict[str, Any]]:
        out = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (round(float(v), 2) for v in self.xyxy[i])
            name = TAXONOMY[int(self.label[i])]
            s = float(self.score[i] if support is None else support[i])
            out.append({"x0": x0, "y0": y0, "x1": x1, "y1": y1, "label": name, "raw_label": name,
                        "score": round(min(max(s, 0.0), 1.0), 5)})
        return out


def areas(xyxy: np.ndarray) -> np.ndarray:
    return np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)


def intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas, (len(a), len(b))."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = intersections(a, b)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component ids of ``n`` nodes joined by the edges (i, j): min-label propagation
    over the edge list with pointer jumping, O(edges) per round and O(log diameter) rounds."""
    lab = np.arange(n)
    if not len(i):
        return lab
    while True:
        new = lab.copy()
        np.minimum.at(new, i, lab[j])
        np.minimum.at(new, j, lab[i])
        new = new[new]
        if np.array_equal(new, lab):
            return lab
        lab = new


def lines_to_blocks(boxes: Boxes, *, vgap: float = 0.3, hgap: float = 1.0,
                    max_height_ratio: float = 1.45) -> Boxes:
    """Group text lines into blocks (paragraphs, headlines, bylines).

    Two lines join when one sits under the other with horizontal overlap >= 30% of the narrower
    line, a similar height (ratio <= ``max_height_ratio``: a change of type size is a block
    boundary, e.g. headline -> byline -> body) and a vertical gap no larger than the page's
    typical leading plus ``vgap`` x the smaller line height. The typical leading is the median
    gap between each line and the nearest line under it, so the extra space that separates
    paragraphs and articles splits blocks whatever the page's line spacing. Lines also join
    side by side on one baseline (vertical overlap >= 50%, gap <= ``hgap`` x height). Column
    gutters keep neighbouring columns apart. A block takes the majority label and mean score.
    """
    n = len(boxes)
    if n <= 1:
        return boxes
    b = boxes.xyxy
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    hmin = np.minimum(h[:, None], h[None, :])
    hmax = np.maximum(h[:, None], h[None, :])
    wmin = np.minimum(w[:, None], w[None, :])
    xov = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    yov = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    gap = -yov / hmin                                                 # vertical gap in line heights
    below = (xov >= 0.3 * wmin) & (b[None, :, 1] > b[:, None, 1] + 0.3 * h[:, None])  # j under i
    nearest = np.where(below, gap, np.inf).min(axis=1)
    finite = nearest[np.isfinite(nearest)]
    leading = float(np.clip(np.median(finite), -0.5, 1.0)) if len(finite) else 0.0
    stacked = below & (gap <= leading + vgap) & (hmax <= max_height_ratio * hmin)
    beside = (yov >= 0.5 * hmin) & (-xov <= hgap * hmin)
    i, j = np.nonzero(np.triu(stacked | stacked.T | beside, 1))
    comp = _components(n, i, j)
    uniq, inv = np.unique(comp, return_inverse=True)
    k = len(uniq)
    xyxy = np.empty((k, 4))
    xyxy[:, :2] = np.inf
    xyxy[:, 2:] = -np.inf
    np.minimum.at(xyxy[:, 0], inv, b[:, 0])
    np.minimum.at(xyxy[:, 1], inv, b[:, 1])
    np.maximum.at(xyxy[:, 2], inv, b[:, 2])
    np.maximum.at(xyxy[:, 3], inv, b[:, 3])
    votes = np.zeros((k, N_LABELS))
    np.add.at(votes, (inv, boxes.label), 1.0)
    score = np.bincount(inv, weights=boxes.score, minlength=k) / np.bincount(inv, minlength=k)
    return Boxes(xyxy, votes.argmax(axis=1), score)


# --------------------------------------------------------------------------- consensus


@dataclass
class Clusters:
    """Greedy IoU clusters over all variants' boxes of one page.

    ``member`` (k, n) marks which box belongs to which cluster; every box is in exactly one.
    """

    member: np.ndarray
    xyxy: np.ndarray    # (n, 4) all boxes
    label: np.ndarray   # (n,)
    score: np.ndarray   # (n,)
    vid: np.ndarray     # (n,) variant index of each box
    weight: np.ndarray  # (n,) vote weight of each box (its variant's share of its source's vote)
    label_w: np.ndarray | None = None  # (n,) weight of each box's label vote (0 = abstains)


def cluster_boxes(per_variant: Sequence[Boxes], variant_weight: np.ndarray, iou_thr: float,
                  label_weight: np.ndarray | None = None) -> Clusters:
    """Seed clusters from the strongest unassigned box; add the best-overlapping box of each other variant."""
    sizes = [len(b) for b in per_variant]
    n = sum(sizes)
    if n == 0:
        z = np.zeros(0)
        return Clusters(np.zeros((0, 0), bool), np.zeros((0, 4)), z.astype(np.int64), z,
                        z.astype(np.int64), z)
    xyxy = np.concatenate([b.xyxy for b in per_variant])
    label = np.concatenate([b.label for b in per_variant])
    score = np.concatenate([b.score for b in per_variant])
    vid = np.repeat(np.arange(len(per_variant)), sizes)
    weight = variant_weight[vid]
    iou = iou_matrix(xyxy, xyxy)
    iou[vid[:, None] == vid[None, :]] = 0.0  # at most one box per variant in a cluster
    iou[iou < iou_thr] = 0.0
    # candidates of each seed, best overlap first, computed once for all seeds
    nbr_order = np.argsort(-iou, axis=1, kind="stable")
    n_nbr = (iou > 0).sum(axis=1)
    assigned = np.zeros(n, bool)
    cid = np.full(n, -1, dtype=np.int64)
    k = 0
    for i in np.argsort(-(score * weight), kind="stable").tolist():
        if assigned[i]:
            continue
        assigned[i] = True
        cid[i] = k
        if n_nbr[i]:
            seen: set[int] = set()
            for j in nbr_order[i, :n_nbr[i]].tolist():
                if not assigned[j] and vid[j] not in seen:
                    seen.add(int(vid[j]))
                    assigned[j] = True
                    cid[j] = k
        k += 1
    member = np.zeros((k, n), bool)
    member[cid, np.arange(n)] = True
    lw = None if label_weight is None else label_weight[vid]
    return Clusters(member, xyxy, label, score, vid, weight, lw)


def consensus_from(cl: Clusters, keep_box: np.ndarray, total_weight: float,
                   min_support: float) -> tuple[Boxes, np.ndarray]:
    """Consensus boxes of the clusters restricted to ``keep_box`` (leave-one-out = drop a source)."""
    if cl.member.size == 0 or total_weight <= 0:
        return Boxes.empty(), np.zeros(0)
    m = cl.member & keep_box[None, :]
    w = cl.weight * keep_box
    support = m.astype(np.float64) @ w / total_weight
    keep = support >= min_support - 1e-9
    if not keep.any():
        return Boxes.empty(), np.zeros(0)
    m = m[keep]
    cw = m * (w * np.maximum(cl.score, 1e-3))[None, :]  # (k, n) coordinate weights
    xyxy = (cw @ cl.xyxy) / cw.sum(axis=1, keepdims=True)
    onehot = np.zeros((len(cl.label), N_LABELS))
    onehot[np.arange(len(cl.label)), cl.label] = 1.0
    votes = cw @ onehot
    if cl.label_w is not None:
        informed = (cw * cl.label_w[None, :]) @ onehot
        has = informed.sum(axis=1) > 0
        votes[has] = informed[has]
    label = votes.argmax(axis=1)
    return Boxes(xyxy, label, support[keep]), support[keep]


# --------------------------------------------------------------------------- scoring


def match_counts(pred: Boxes, ref: Boxes, iou_thr: float) -> tuple[int, int]:
    """(true positives with label agreement, true positives ignoring labels).

    Each prediction takes its best reference; a reference counts once. At IoU >= 0.5 against
    (nearly) disjoint references this equals the optimal one-to-one matching.
    """
    if not len(pred) or not len(ref):
        return 0, 0
    iou = iou_matrix(pred.xyxy, ref.xyxy)
    same = pred.label[:, None] == ref.label[None, :]
    out = []
    for m in (np.where(same, iou, 0.0), iou):
        best = m.argmax(axis=1)
        ok = m[np.arange(len(pred)), best] >= iou_thr
        out.append(len(np.unique(best[ok])))
    return out[0], out[1]


def label_map(boxes: Boxes, width: float, height: float, grid: int) -> np.ndarray:
    """Label index per cell of a ``grid`` x ``grid`` raster (-1 = nothing); smaller boxes win.

    A cell belongs to a box when the cell centre lies inside it. The cell ranges come from one
    vectorised rounding; boxes are then painted largest first as 2-D slices (a few microseconds
    each), instead of materialising an (n, grid, grid) cover tensor.
    """
    out = np.full((grid, grid), -1, dtype=np.int64)
    if not len(boxes):
        return out
    order = np.argsort(-areas(boxes.xyxy), kind="stable")
    b = boxes.xyxy[order]
    # first cell whose centre (c + 0.5) * step is >= the edge: ceil(edge / step - 0.5)
    ix = np.clip(np.ceil(b[:, 0::2] * (grid / width) - 0.5), 0, grid).astype(np.int64)
    iy = np.clip(np.ceil(b[:, 1::2] * (grid / height) - 0.5), 0, grid).astype(np.int64)
    lab = boxes.label[order]
    for k in range(len(b)):
        out[iy[k, 0]:iy[k, 1], ix[k, 0]:ix[k, 1]] = lab[k]
    return out


def coverage(pred_map: np.ndarray, ref_map: np.ndarray) -> float:
    """Area IoU of two label maps: cells labelled alike over cells labelled by either."""
    either = (pred_map >= 0) | (ref_map >= 0)
    n = int(either.sum())
    if n == 0:
        return 1.0
    return float(((pred_map == ref_map) & (pred_map >= 0)).sum()) / n


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

    @staticmethod
    def _f1(tp: int, pred: int, ref: int) -> float:
        return 2.0 * tp / (pred + ref) if pred + ref else 1.0

    def metrics(self) -> dict[str, float]:
        return {"f1": self._f1(self.tp, self.pred, self.ref),
                "precision": self.tp / self.pred if self.pred else (1.0 if not self.ref else 0.0),
                "recall": self.tp / self.ref if self.ref else (1.0 if not self.pred else 0.0),
                "loc_f1": self._f1(self.loc_tp, self.pred, self.ref),
                "coverage": self.cov_sum / self.pages if self.pages else 0.0}


def compare(pred: Boxes, ref: Boxes, ref_map: np.ndarray, width: float, height: float,
            iou_thr: float, grid: int) -> dict[str, float]:
    tp, loc_tp = match_counts(pred, ref, iou_thr)
    cov = coverage(label_map(pred, width, height, grid), ref_map)
    return {"pred": len(pred), "ref": len(ref), "tp": tp, "loc_tp": loc_tp, "coverage": cov}


# --------------------------------------------------------------------------- one page


@dataclass
class Settings:
    cluster_iou: float = 0.5
    match_iou: float = 0.5
    min_support: float = 0.5
    grid: int = 48
    line_vgap: float = 0.3
    line_hgap: float = 1.0
    source_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class PageResult:
    page_id: str
    consensus: dict[str, Any]
    scores: dict[str, dict[str, float]]            # "source/variant" -> compare() counts
    gt_scores: dict[str, dict[str, float]] | None  # vs ground truth, incl. "consensus"
    disagreement: float | None
    skipped: list[tuple[str, str]]


def fuse_page(page_id: str, records: dict[str, dict[str, Any]], s: Settings,
              gt: dict[str, Any] | None = None) -> PageResult:
    """Consensus, leave-one-out scores and (when ``gt`` is given) accuracy for one page.

    ``records`` maps "source/variant" to validated page records of the same page.
    """
    keys = sorted(records)
    first = records[keys[0]]
    width, height = float(first["width"]), float(first["height"])
    skipped: list[tuple[str, str]] = []
    per_variant: list[Boxes] = []
    for k in keys:
        r = records[k]
        scale = (width / r["width"], height / r["height"])
        if abs(r["width"] - width) > 1 or abs(r["height"] - height) > 1:
            skipped.append((f"{k}/{page_id}", f"page size {r['width']}x{r['height']} differs from "
                            f"{int(width)}x{int(height)}; boxes rescaled, not dropped"))
        b = Boxes.from_record(r, scale)
        if r["granularity"] == "line":
            b = lines_to_blocks(b, vgap=s.line_vgap, hgap=s.line_hgap)
        per_variant.append(b)
    sources = [k.split("/", 1)[0] for k in keys]
    n_var = Counter(sources)
    sweight = {src: float(s.source_weights.get(src, 1.0)) for src in n_var}
    vweight = np.array([sweight[src] / n_var[src] for src in sources])
    # text-line detectors say "there is text here", not which kind: their label votes abstain
    lweight = np.array([0.0 if records[k]["granularity"] == "line" else 1.0 for k in keys])
    cl = cluster_boxes(per_variant, vweight, s.cluster_iou, lweight)
    all_boxes = np.ones(len(cl.vid), bool)
    total = sum(sweight.values())
    cons, support = consensus_from(cl, all_boxes, total, s.min_support)
    consensus = page_record(page_id=page_id, image=first["image"], width=int(width), height=int(height),
                            source=CONSENSUS_SOURCE, variant="all", granularity="block",
                            boxes=cons.to_json(support))

    scores: dict[str, dict[str, float]] = {}
    if len(keys) >= 2:
        by_source = len(n_var) >= 2
        cache: dict[str, tuple[Boxes, np.ndarray]] = {}
        for i, k in enumerate(keys):
            left_out = sources[i] if by_source else k
            if left_out not in cache:
                keep = np.array([src != left_out for src in sources])[cl.vid] if by_source \
                    else cl.vid != i
                w = total - (sweight[left_out] if by_source else float(vweight[i]))
                ref, _ = consensus_from(cl, keep, w, s.min_support)
                cache[left_out] = (ref, label_map(ref, width, height, s.grid))
            ref, ref_map = cache[left_out]
            scores[k] = compare(per_variant[i], ref, ref_map, width, height, s.match_iou, s.grid)
    else:
        skipped.append((f"{keys[0]}/{page_id}", "only one variant has this page: no leave-one-out score"))

    gt_scores = None
    if gt is not None:
        g = Boxes.from_record(gt, (width / gt["width"], height / gt["height"]))
        g_map = label_map(g, width, height, s.grid)
        gt_scores = {k: compare(per_variant[i], g, g_map, width, height, s.match_iou, s.grid)
                     for i, k in enumerate(keys)}
        gt_scores[CONSENSUS_SOURCE] = compare(cons, g, g_map, width, height, s.match_iou, s.grid)

    disagreement = None
    if scores:
        agree = [0.5 * Tally._f1(v["tp"], v["pred"], v["ref"]) + 0.5 * v["coverage"] for v in scores.values()]
        disagreement = round(1.0 - float(np.mean(agree)), 6)
    return PageResult(page_id, consensus, scores, gt_scores, disagreement, skipped)


# --------------------------------------------------------------------------- the run


def settings_from(cfg: Any) -> Settings:
    f = cfg.get("fusion") or {}
    s = Settings(source_weights={str(k): float(v) for k, v in dict(f.get("source_weights") or {}).items()})
    for name, default in vars(Settings()).items():  # the dataclass holds the defaults and the types
        if name != "source_weights" and name in f:
            setattr(s, name, type(default)(f[name]))
    for name in ("cluster_iou", "match_iou", "min_support"):
        v = getattr(s, name)
        if not 0.0 < v <= 1.0:
            raise UserError(f"fusion.{name}={v} is outside (0, 1]", where="fusion config",
                            fix=f"pass fusion.{name}=0.5")
    if s.grid < 4:
        raise UserError(f"fusion.grid={s.grid} is too small", fix="pass fusion.grid=48")
    return s


def collect(run_dir: Path) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """page_id -> {"source/variant": path}, and the sorted list of all variants."""
    pages: dict[str, dict[str, Path]] = defaultdict(dict)
    variants: set[str] = set()
    for source, variant, page_id, path in iter_source_pages(run_dir):
        if source == CONSENSUS_SOURCE:
            continue
        key = f"{source}/{variant}"
        variants.add(key)
        pages[page_id][key] = path
    return dict(sorted(pages.items())), sorted(variants)


def _load_gt(record: dict[str, Any], gt_dir: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    cands = [gt_path_for(record["image"])]
    if gt_dir is not None:
        cands.insert(0, gt_dir / f"{record['page_id']}.gt.json")
    for p in cands:
        if p.is_file():
            try:
                return read_page(p), None
            except ValueError as exc:
                return None, str(exc)
    return None, None


def _work(args: tuple[str, dict[str, Path], Settings, str | None, str]) -> tuple[PageResult | None, list]:
    """One page end to end (read, fuse, write consensus); runs in a worker process too."""
    page_id, paths, s, gt_dir, out_pages = args
    records: dict[str, dict[str, Any]] = {}
    skipped: list[tuple[str, str]] = []
    for key, path in sorted(paths.items()):
        try:
            rec = read_page(path)
        except ValueError as exc:
            skipped.append((f"{key}/{page_id}", f"unreadable page record: {exc}"))
            continue
        if rec["page_id"] != page_id:
            skipped.append((f"{key}/{page_id}", f"file {path.name} holds page_id {rec['page_id']!r}"))
            continue
        records[key] = rec
    if not records:
        skipped.append((page_id, "no readable source output for this page"))
        return None, skipped
    gt, gt_err = _load_gt(next(iter(records.values())), Path(gt_dir) if gt_dir else None)
    if gt_err:
        skipped.append((f"ground_truth/{page_id}", f"unreadable ground truth: {gt_err}"))
    res = fuse_page(page_id, records, s, gt)
    skipped.extend(res.skipped)
    _write_consensus(Path(out_pages) / f"{page_id}.json", res.consensus)
    return res, skipped


def _write_consensus(path: Path, record: dict[str, Any]) -> None:
    """Atomic write of a consensus page, one box per line.

    Not ``schema.write_page``: its validation re-checks every box in Python and its indented
    JSON takes the pure-Python encoder; together they were a fifth of the run time. The record
    is valid by construction (weighted means of validated boxes, taxonomy labels, support in
    [0, 1]); tests read consensus pages back through ``schema.read_page``.
    """
    import json

    from containers.atomic import write_text

    head = json.dumps({k: v for k, v in record.items() if k != "boxes"})[:-1]
    boxes = ",\n  ".join(json.dumps(b) for b in record["boxes"])
    write_text(path, f'{head}, "boxes": [\n  {boxes}\n]}}\n' if boxes else f'{head}, "boxes": []}}\n')


def _fmt(v: float) -> str:
    return f"{v:.4f}"


VARIANT_HEADER = """\
# newsbag variant leaderboard: each variant scored against the consensus of the OTHER sources
# (leave-one-out), summed over the pages it covers; sorted by f1, then coverage.
# pages: pages scored; missing: pages other sources have but this variant lacks (not scored);
# boxes: its boxes (line sources: after grouping lines into blocks); ref_boxes: consensus boxes;
# f1/precision/recall: box matches at IoU >= {iou} with the same label; loc_f1: same, labels ignored;
# coverage: mean per-page area IoU of the two label maps (kind to nested or split blocks).
"""
SOURCE_HEADER = """\
# newsbag source leaderboard: one row per source, from its variants' leave-one-out scores.
# variants: how many variants it ran; pages: pages scored (summed over variants);
# best_variant/best_f1: its top variant; f1/coverage: pooled over all its variants; sorted by best_f1.
"""
ACCURACY_HEADER = """\
# newsbag accuracy against ground truth ({n} pages with <page>.gt.json); consensus = the fused layout.
# f1/precision/recall at IoU >= {iou} with the same label; loc_f1 ignores labels; coverage: label-map
# area IoU. Sorted by f1.
"""
PAGE_HEADER = """\
# per-page disagreement among variants: 1 - mean over variants of (f1 + coverage)/2 against the
# leave-one-out consensus; review renders the highest first.
"""


def _table(header: str, cols: list[str], rows: Iterable[list[str]]) -> str:
    return header + "\t".join(cols) + "\n" + "".join("\t".join(r) + "\n" for r in rows)


def leaderboards(tallies: dict[str, Tally], iou: float) -> tuple[str, str, list[dict[str, Any]]]:
    """Render the variant and source leaderboards (TSV text) and return the variant ranking."""
    ranked = sorted(tallies.items(), key=lambda kv: (-kv[1].metrics()["f1"], -kv[1].metrics()["coverage"],
                                                     kv[0]))
    vrows, ranking = [], []
    for rank, (key, t) in enumerate(ranked, 1):
        m = t.metrics()
        src, var = key.split("/", 1)
        vrows.append([str(rank), src, var, str(t.pages), str(t.missing), str(t.pred), str(t.ref),
                      *(_fmt(m[c]) for c in ("f1", "precision", "recall", "loc_f1", "coverage"))])
        ranking.append({"rank": rank, "variant": key, **{c: round(v, 4) for c, v in m.items()}})
    vtext = _table(VARIANT_HEADER.format(iou=iou),
                   ["rank", "source", "variant", "pages", "missing", "boxes", "ref_boxes", "f1",
                    "precision", "recall", "loc_f1", "coverage"], vrows)
    per_source: dict[str, list[tuple[str, Tally]]] = defaultdict(list)
    for key, t in tallies.items():
        per_source[key.split("/", 1)[0]].append((key.split("/", 1)[1], t))
    srows = []
    for src, items in per_source.items():
        pooled = Tally()
        for _, t in items:
            pooled.merge(t)
        best_var, best_t = max(items, key=lambda it: (it[1].metrics()["f1"], it[1].metrics()["coverage"]))
        pm = pooled.metrics()
        srows.append((best_t.metrics()["f1"], pm["coverage"], src,
                      [src, str(len(items)), str(pooled.pages), best_var, _fmt(best_t.metrics()["f1"]),
                       _fmt(pm["f1"]), _fmt(pm["coverage"])]))
    srows.sort(key=lambda r: (-r[0], -r[1], r[2]))
    stext = _table(SOURCE_HEADER, ["rank", "source", "variants", "pages", "best_variant", "best_f1", "f1",
                                   "coverage"], ([str(i), *r[3]] for i, r in enumerate(srows, 1)))
    return vtext, stext, ranking


def inputs_digest(pages: dict[str, dict[str, Path]], s: Settings) -> str:
    """Fingerprint of every input file (name, size, mtime) and the settings: a rerun skips on a match."""
    h = hashlib.sha256(repr(sorted(vars(s).items())).encode())
    for page_id, paths in pages.items():
        for key, p in sorted(paths.items()):
            st = p.stat()
            h.update(f"{page_id}\0{key}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _complete(marker: Path, digest: str) -> dict[str, Any] | None:
    """The previous run's summary when it matches ``digest`` and its outputs are intact, else None."""
    import json

    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if data.get("inputs_digest") != digest:
        return None
    intact = all(Path(o["path"]).is_file() and Path(o["path"]).stat().st_size == o["bytes"]
                 for o in data.get("outputs", []))
    return data if intact else None


def _add_skips(run: Any, skipped: list[tuple[str, str]]) -> None:
    """Record skips; past MAX_SKIPS_LISTED of one kind, summarise instead of flooding the report."""
    counts: dict[str, int] = defaultdict(int)
    for item, reason in skipped:
        kind = item.rsplit("/", 1)[0] + "|" + reason.split(":")[0]
        counts[kind] += 1
        if counts[kind] <= MAX_SKIPS_LISTED:
            run.skip(item, reason)
    for kind, n in counts.items():
        if n > MAX_SKIPS_LISTED:
            item, reason = kind.split("|", 1)
            run.skip(f"{item}/*", f"{n - MAX_SKIPS_LISTED} more pages: {reason}")


def fuse_run(run_dir: Path, s: Settings, *, run: Any, workers: int = 1, gt_dir: Path | None = None,
             force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fuse every page under ``run_dir/outputs/sources`` and write the leaderboards."""
    out = run_dir / "outputs" / "fusion"
    marker = out / "fusion_complete.json"
    with run.step("collect") as st:
        pages, variants = collect(run_dir)
        st.update(pages=len(pages), variants=len(variants))
    if not pages:
        raise UserError(f"no source outputs under {run_dir / 'outputs' / 'sources'}",
                        where="fusion", fix="run the source stages first (e.g. newsbag_embedded) with the "
                        "same run_dir=")
    digest = inputs_digest(pages, s)
    previous = None if force else _complete(marker, digest)
    if previous is not None:
        print(f"fusion: {marker} matches the inputs; nothing to do (force=true reruns)")
        return previous
    if len(variants) < 2:
        run.skip("leave-one-out", f"only one variant ({variants[0]}): consensus equals it; no scores")

    missing: dict[str, int] = defaultdict(int)
    skipped: list[tuple[str, str]] = []
    for page_id, paths in pages.items():
        for key in variants:
            if key not in paths:
                missing[key] += 1
                skipped.append((f"{key}/{page_id}", "no output for this page from this variant (other "
                                "sources have it); the variant is not scored on it"))

    jobs = [(pid, paths, s, str(gt_dir) if gt_dir else None, str(out / "pages"))
            for pid, paths in pages.items()]
    tallies: dict[str, Tally] = {k: Tally() for k in variants}
    gt_tallies: dict[str, Tally] = defaultdict(Tally)
    page_rows: list[tuple[float, str, int, int, float, float]] = []
    n_done, n_gt = 0, 0
    with run.step("fuse", pages=len(jobs), workers=workers) as st:
        if workers > 1 and len(jobs) >= 64:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(max_workers=workers)
            results: Iterable = pool.map(_work, jobs, chunksize=max(8, len(jobs) // (workers * 8)))
        else:
            pool = None
            results = map(_work, jobs)
        try:
            every = max(1, len(jobs) // 10)
            for i, (res, sk) in enumerate(results, 1):
                skipped.extend(sk)
                if progress and (i % every == 0 or i == len(jobs)):
                    print(f"fusion: {i}/{len(jobs)} pages", file=sys.stderr, flush=True)
                if res is None:
                    continue
                n_done += 1
                for key, counts in res.scores.items():
                    tallies[key].add(counts)
                if res.gt_scores is not None:
                    n_gt += 1
                    for key, counts in res.gt_scores.items():
                        gt_tallies[key].add(counts)
                if res.disagreement is not None:
                    sc = list(res.scores.values())
                    page_rows.append((res.disagreement, res.page_id, len(res.scores),
                                      len(res.consensus["boxes"]),
                                      float(np.mean([2 * v["tp"] / max(1, v["pred"] + v["ref"])
                                                     for v in sc])),
                                      float(np.mean([v["coverage"] for v in sc]))))
        finally:
            if pool is not None:
                pool.shutdown()
        st.update(fused=n_done, with_ground_truth=n_gt)
    for key, n in missing.items():
        tallies[key].missing = n
    _add_skips(run, skipped)

    from containers.atomic import write_text

    with run.step("write"):
        vtext, stext, ranking = leaderboards({k: t for k, t in tallies.items() if t.pages}, s.match_iou)
        written = [write_text(out / "variant_leaderboard.tsv", vtext),
                   write_text(out / "source_leaderboard.tsv", stext)]
        page_rows.sort(key=lambda r: (-r[0], r[1]))
        written.append(write_text(out / "page_scores.tsv", _table(
            PAGE_HEADER,
            ["page_id", "variants", "consensus_boxes", "disagreement", "mean_f1", "mean_coverage"],
            ([pid, str(nv), str(nb), _fmt(d), _fmt(f), _fmt(c)] for d, pid, nv, nb, f, c in page_rows))))
        accuracy = None
        if n_gt:
            acc = sorted(gt_tallies.items(), key=lambda kv: (-kv[1].metrics()["f1"], kv[0]))
            rows = []
            for rank, (key, t) in enumerate(acc, 1):
                m = t.metrics()
                rows.append([str(rank), key, str(t.pages), str(t.pred), str(t.ref),
                             *(_fmt(m[c]) for c in ("f1", "precision", "recall", "loc_f1", "coverage"))])
            written.append(write_text(out / "accuracy.tsv", _table(
                ACCURACY_HEADER.format(n=n_gt, iou=s.match_iou),
                ["rank", "system", "pages", "boxes", "gt_boxes", "f1", "precision", "recall", "loc_f1",
                 "coverage"], rows)))
            accuracy = {k: {c: round(v, 4) for c, v in t.metrics().items()} for k, t in acc}
        for p in written:
            run.output(p)
        summary = {"inputs_digest": digest, "pages": len(pages), "fused": n_done, "variants": variants,
                   "ranking": ranking, "accuracy": accuracy,
                   "outputs": [{"path": str(p), "bytes": p.stat().st_size} for p in written]}
        run.report["fusion"] = {k: v for k, v in summary.items() if k != "outputs"}
        from containers.atomic import write_json

        write_json(marker, summary)  # completion marker last
    return summary


def run(cfg: Any, run: Any) -> int:
    """The ``fusion`` app."""
    s = settings_from(cfg)
    workers = int(cfg.get("workers") or 0) or min(8, os.cpu_count() or 1)
    gt_dir = cfg.get("gt_dir")
    summary = fuse_run(Path(str(cfg.run_dir)), s, run=run, workers=workers,
                       gt_dir=Path(str(gt_dir)) if gt_dir else None, force=bool(cfg.get("force")),
                       progress=bool(cfg.get("progress", True)))
    out = Path(str(cfg.run_dir)) / "outputs" / "fusion"
    print(f"fusion: {summary['fused']}/{summary['pages']} pages; leaderboards in {out}")
    if summary.get("ranking"):
        top = summary["ranking"][0]
        print(f"fusion: best variant {top['variant']} (f1 {top['f1']:.3f}, coverage {top['coverage']:.3f})")
    return 0
