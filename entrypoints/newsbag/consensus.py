"""Consensus boxes from several detectors: clusters, a score-aware keep rule, leave-one-out.

Why this shape:
- Clusters are mutual best matches: box a (variant A) and box b (variant B) join when IoU >=
  ``cluster_iou`` and each is the other's best match in the other's variant; clusters are the
  connected components of those edges (a best match is the lowest-numbered among equal IoUs).
  Edges come from ``geometry.iou_pairs`` (sparse), and every later step is a bincount over
  (cluster, voter) cells, so nothing is quadratic.
- Voters are sources, not variants: a source backs a cluster when any of its variants does, at
  its most confident variant's score, so bagging five thresholds of one model still gives one
  vote and never outvotes two independent models. Coordinates and labels weigh each variant by
  its share of its source.
- Keep rule: ``support`` is the share of the total source weight present in the cluster;
  ``confidence`` is the score-weighted share (each source contributes weight x its best score
  there; an absent source contributes 0: the mean that Weighted Boxes Fusion reports). A
  cluster is kept when ``support > min_support`` (a strict majority by default, so with two
  sources one alone never carries a box and the consensus cannot be their union) or when
  ``confidence >= min_confidence`` (a box one source alone reports survives only when it is
  that confident). Consensus boxes carry ``confidence`` as their score.
- Leave-one-out: the reference for a voter is computed from the same clusters with that voter's
  cells left out; ``consensus_many`` computes the consensus and every voter's reference in one
  pass (sums over the active voters, voter by voter in a fixed order, so each subset's result
  is bit for bit the one ``consensus`` gives for it alone).
- A text-line detector tells where text is, not which kind: its votes count for geometry and
  support but abstain from the label vote (a cluster only it backs stays "text").
- ``method=wbf`` uses ``ensemble_boxes.weighted_boxes_fusion`` instead (label-wise clusters,
  score-weighted coordinates, mean score over models, then ``wbf_score_thr``); it is also the
  baseline row of the accuracy table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from entrypoints.newsbag.geometry import Boxes, best_of_each, components, iou_pairs

EPS = 1e-9


@dataclass
class Clusters:
    """Mutual-best clusters of all variants' boxes on one page, aggregated per (cluster, voter).

    ``n_voters`` voters (sources, or a single source's variants); the voter is the last axis
    of the (k, G) arrays and the FIRST of the others, so a sum over any set of voters reads
    whole contiguous slices (``consensus_many``).
    ``presence``/``confidence`` are in [0, 1] per voter; ``cw``/``cxy`` are the coordinate
    weights and weighted coordinates; ``votes`` the informed label votes and ``votes_all``
    every label vote (used where no informed source voted), over the page's ``labels`` only
    (taxonomy indices, ascending: a label no box has never wins a vote).
    """

    k: int
    n_voters: int
    presence: np.ndarray  # (k, G)
    confidence: np.ndarray  # (k, G)
    cw: np.ndarray  # (k, G)
    cxy: np.ndarray  # (G, k, 4)
    votes: np.ndarray  # (G, k, L)
    votes_all: np.ndarray  # (G, k, L)
    abstain: np.ndarray | None = None  # (k, G) bool: voter has no say on this cluster
    labels: np.ndarray | None = None  # (L,) taxonomy index of each label column; None: all


def _covered(boxes: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Share of each box's area covered by the ``cover`` boxes (which do not overlap much)."""
    if not len(boxes) or not len(cover):
        return np.zeros(len(boxes))
    from entrypoints.newsbag.geometry import _window_pairs, areas

    half = float((cover[:, 3] - cover[:, 1]).max()) * 0.5
    key = np.concatenate([(cover[:, 1] + cover[:, 3]) * 0.5, np.full(len(boxes), np.inf)])
    lo = np.concatenate([np.full(len(cover), np.inf), boxes[:, 1] - half])
    hi = np.concatenate([np.full(len(cover), -np.inf), boxes[:, 3] + half])
    i, j = _window_pairs(key, lo, hi)
    i, j = i - len(cover), j
    ok = (i >= 0) & (j < len(cover))
    i, j = i[ok], j[ok]
    a, b = boxes[i], cover[j]
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = np.bincount(i, weights=w * h, minlength=len(boxes))
    return np.clip(inter / np.maximum(areas(boxes), 1e-9), 0.0, 1.0)


# labels on which text-line detectors have no say (a photo has no text lines to find)
LINE_ABSTAINS = ("figure",)


def cluster(
    per_variant: list[Boxes],
    voter_of_variant: np.ndarray,
    share: np.ndarray,
    n_voters: int,
    iou_thr: float,
    label_weight: np.ndarray,
    line: np.ndarray | None = None,
    cover_min: float = 0.5,
) -> Clusters:
    """Cluster the boxes of every variant and aggregate them per (cluster, voter).

    ``voter_of_variant`` (V,) maps each variant to its voter; ``share`` (V,) is the variant's
    share of its voter (1 / variants of that voter); ``label_weight`` (V,) is 0 for variants
    that abstain from the label vote.
    """
    sizes = np.array([len(b) for b in per_variant], dtype=np.int64)
    n, nv = int(sizes.sum()), len(per_variant)
    g_count = n_voters
    if n == 0:
        z = np.zeros((0, g_count))
        return Clusters(
            0,
            g_count,
            z,
            z,
            z,
            np.zeros((g_count, 0, 4)),
            np.zeros((g_count, 0, 0)),
            np.zeros((g_count, 0, 0)),
        )
    xyxy = np.concatenate([b.xyxy for b in per_variant])
    label = np.concatenate([b.label for b in per_variant])
    score = np.concatenate([b.score for b in per_variant])
    vid = np.repeat(np.arange(nv), sizes)
    i, j, iou = iou_pairs(xyxy, iou_thr, group=vid)
    # mutual best: j is i's best in j's variant and i is j's best in i's variant
    best_i = best_of_each(i * nv + vid[j], n * nv, iou, j)
    best_j = best_of_each(j * nv + vid[i], n * nv, iou, i)
    mutual = best_i & best_j
    cid = components(n, i[mutual], j[mutual])
    k = int(cid.max()) + 1
    g = voter_of_variant[vid]
    cell = cid * g_count + g
    kg = k * g_count
    # a voter backs a cluster when any of its variants does, at its most confident variant's score
    presence = (np.bincount(cell, minlength=kg) > 0).astype(np.float64).reshape(k, g_count)
    confidence = np.zeros(kg)
    np.maximum.at(confidence, cell, score)
    confidence = confidence.reshape(k, g_count)
    wbox = share[vid] * np.maximum(score, 1e-3)
    cw = np.bincount(cell, weights=wbox, minlength=kg).reshape(k, g_count)
    voter_cell = g * k + cid  # voter-major
    cxy = np.stack(
        [np.bincount(voter_cell, weights=wbox * xyxy[:, c], minlength=kg) for c in range(4)], axis=1
    ).reshape(g_count, k, 4)
    labels, lab = np.unique(label, return_inverse=True)
    n_lab = len(labels)
    lab_cell = voter_cell * n_lab + lab.reshape(-1)
    votes_all = np.bincount(lab_cell, weights=wbox, minlength=kg * n_lab).reshape(g_count, k, n_lab)
    votes = np.bincount(lab_cell, weights=wbox * label_weight[vid], minlength=kg * n_lab)
    votes = votes.reshape(g_count, k, n_lab)
    abstain = np.zeros((k, g_count), bool)
    if line is not None and line.any():
        # Text-line sources group lines into blocks that rarely split a page as a layout model
        # does; they back a cluster whose area their blocks cover (>= cover_min), and abstain on
        # clusters labelled as something without text lines (photos).
        box = cxy.sum(axis=0) / np.maximum(cw.sum(axis=1), 1e-12)[:, None]
        informed = votes.sum(axis=0)
        label = labels[
            np.where(informed.sum(axis=1) > 0, informed.argmax(axis=1), votes_all.sum(axis=0).argmax(axis=1))
        ]
        from entrypoints.newsbag.geometry import LABEL_INDEX

        no_text = np.isin(label, [LABEL_INDEX[x] for x in LINE_ABSTAINS])
        for v in np.flatnonzero(line):
            g_i = int(voter_of_variant[v])
            b = per_variant[v]
            cov = _covered(box, b.xyxy)
            backed = cov >= cover_min
            mean_score = float(b.score.mean()) if len(b) else 0.0
            presence[:, g_i] = np.maximum(presence[:, g_i], backed)
            confidence[:, g_i] = np.maximum(confidence[:, g_i], backed * mean_score)
            abstain[:, g_i] |= no_text & (presence[:, g_i] == 0)
    return Clusters(k, g_count, presence, confidence, cw, cxy, votes, votes_all, abstain, labels)


def consensus(
    cl: Clusters, voter_weight: np.ndarray, active: np.ndarray, min_support: float, min_confidence: float
) -> Boxes:
    """The consensus of the ``active`` voters (bool (G,)): kept clusters as boxes scored by confidence."""
    return consensus_many(cl, voter_weight, active[None, :], min_support, min_confidence)[0]


def consensus_many(
    cl: Clusters, voter_weight: np.ndarray, actives: np.ndarray, min_support: float, min_confidence: float
) -> tuple[Boxes, np.ndarray]:
    """The consensus of each row of ``actives`` (bool (R, G)) in one pass over the clusters.

    Returns every kept box of every row and the row it belongs to (boxes of a row in cluster
    order), so the consensus and all its leave-one-out references cost one aggregation.
    """
    if cl.k == 0:
        return Boxes.empty(), np.zeros(0, dtype=np.int64)
    a = actives.astype(np.float64)  # (R, G)
    w = voter_weight[None, :] * a
    # voters with no say on a cluster weigh 0 there
    say = np.ones(cl.presence.shape) if cl.abstain is None else (~cl.abstain).astype(np.float64)
    sums = _over_voters(np.stack([say, cl.presence * say, cl.confidence * say], axis=1).T, w)  # (R, 3, k)
    total = np.maximum(sums[:, 0], 1e-12)
    support = sums[:, 1] / total
    conf = sums[:, 2] / total
    cw = _over_voters(cl.cw.T, a)  # an active voter has a box in the cluster when > 0
    keep = (cw > 0) & ((support > min_support + EPS) | (conf >= min_confidence - EPS))
    keep &= (w.sum(axis=1) > 0)[:, None]
    rows, ks = np.nonzero(keep)  # by row, then cluster
    if not len(rows):
        return Boxes.empty(), rows
    xyxy = _over_voters(cl.cxy, a)[rows, ks] / cw[rows, ks][:, None]
    votes = _over_voters(cl.votes, a)[rows, ks]
    fallback = votes.sum(axis=1) <= 0
    if fallback.any():
        votes[fallback] = _over_voters(cl.votes_all, a)[rows[fallback], ks[fallback]]
    label = votes.argmax(axis=1) if cl.labels is None else cl.labels[votes.argmax(axis=1)]
    return Boxes(xyxy, label, np.clip(conf[rows, ks], 0.0, 1.0)), rows


def _over_voters(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """out[r] = sum_g a[r, g] x[g] (R, ...): a sum over the voter axis (x's first), voter by voter
    in a fixed order. Voters are few, so G vector operations cost less than a matrix
    product, and the order of the additions, hence every bit of the result, does not depend on
    how many subsets are computed together."""
    shape = (len(a),) + (1,) * (x.ndim - 1)
    out = a[:, 0].reshape(shape) * x[0]
    for g in range(1, len(x)):
        out += a[:, g].reshape(shape) * x[g]
    return out


def wbf(
    per_variant: list[Boxes],
    variant_weight: np.ndarray,
    width: float,
    height: float,
    *,
    iou_thr: float,
    score_thr: float,
    skip_box_thr: float = 0.0,
) -> Boxes:
    """Weighted Boxes Fusion (``ensemble-boxes``) of the variants, boxes scored >= ``score_thr`` kept.

    Each variant is one model with its share of its source's weight; coordinates are passed
    normalised to the page, as the library expects.
    """
    from ensemble_boxes import weighted_boxes_fusion

    models = [(b, w) for b, w in zip(per_variant, variant_weight.tolist(), strict=True) if w > 0]
    if not any(len(b) for b, _ in models):
        return Boxes.empty()
    norm = np.array([width, height, width, height], dtype=np.float64)
    boxes, scores, labels = weighted_boxes_fusion(
        [np.clip(b.xyxy / norm, 0.0, 1.0).tolist() for b, _ in models],
        [b.score.tolist() for b, _ in models],
        [b.label.tolist() for b, _ in models],
        weights=[w for _, w in models],
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
    )
    scores = np.asarray(scores, dtype=np.float64)
    keep = scores >= score_thr
    if not keep.any():
        return Boxes.empty()
    return Boxes(
        np.asarray(boxes, dtype=np.float64)[keep] * norm,
        np.asarray(labels)[keep].astype(np.int64),
        np.clip(scores[keep], 0.0, 1.0),
    )


def wbf_available() -> tuple[bool, str]:
    try:
        import ensemble_boxes  # noqa: F401
    except ImportError as exc:
        return False, f"ensemble-boxes is not installed ({exc}): pip install ensemble-boxes"
    return True, ""
