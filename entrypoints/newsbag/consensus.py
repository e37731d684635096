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

    ``n_voters`` voters (sources, or a single source's variants); the voter is the FIRST axis,
    so a sum over any set of voters reads whole contiguous slices (``consensus_many``), and
    everything one such sum needs sits in one array, so a page costs two sums, not one per
    quantity (numpy's per-call cost, not arithmetic, dominates at a few hundred boxes).
    ``tally`` (G, 3, k) holds each voter's say on a cluster (0 where it abstains), its presence
    and its confidence (both in [0, 1], times the say): the keep rule's weights. ``feat``
    (G, k, 5 + L) holds the coordinate weight, the four weighted coordinates and the informed
    label votes; ``votes_all`` (G, k, L) every label vote (used where no informed source voted).
    Votes are over the page's ``labels`` only (taxonomy indices, ascending: a label no box has
    never wins a vote).
    """

    k: int
    n_voters: int
    tally: np.ndarray  # (G, 3, k): say, presence x say, confidence x say
    feat: np.ndarray  # (G, k, 5 + L): cw, cx0, cy0, cx1, cy1 (weighted sums), informed votes
    votes_all: np.ndarray  # (G, k, L)
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
    a, b = boxes.take(i, axis=0), cover.take(j, axis=0)
    w = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0)
    h = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0)
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
        z = np.zeros((g_count, 0, 0))
        return Clusters(0, g_count, np.zeros((g_count, 3, 0)), np.zeros((g_count, 0, 5)), z)
    if nv == 1:
        xyxy, label, score = per_variant[0].xyxy, per_variant[0].label, per_variant[0].score
    else:
        xyxy = np.concatenate([b.xyxy for b in per_variant])
        label = np.concatenate([b.label for b in per_variant])
        score = np.concatenate([b.score for b in per_variant])
    vid = np.repeat(np.arange(nv), sizes)
    i, j, iou = iou_pairs(xyxy, iou_thr, group=vid)
    # mutual best: j is i's best in j's variant and i is j's best in i's variant. Keys are
    # (box, the partner's variant); variants are concatenated in order, so a box's partners in one
    # variant all sit on the same side of it (i < j): one pass over both directions at once
    m = len(i)
    best = best_of_each(
        np.concatenate([i * nv + vid[j], j * nv + vid[i]]),
        n * nv,
        np.concatenate([iou, iou]),
        np.concatenate([j, i]),
    )
    mutual = best[:m] & best[m:]
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
    labels, lab = _present_labels(label)
    n_lab = len(labels)
    # one weighted count per (voter, cluster, feature): weight, weighted x0 y0 x1 y1, informed
    # votes; each bin adds its boxes in box order, as one bincount per feature would
    n_feat = 5 + n_lab
    base = (g * k + cid) * n_feat  # voter-major
    feat = np.bincount(
        np.concatenate([base, base + 1, base + 2, base + 3, base + 4, base + 5 + lab]),
        weights=np.concatenate([wbox, (wbox[:, None] * xyxy).T.reshape(-1), wbox * label_weight[vid]]),
        minlength=kg * n_feat,
    ).reshape(g_count, k, n_feat)
    votes_all = np.bincount(
        (g * k + cid) * n_lab + lab, weights=wbox, minlength=kg * n_lab
    ).reshape(g_count, k, n_lab)
    say = np.ones((k, g_count))
    if line is not None and line.any():
        # Text-line sources group lines into blocks that rarely split a page as a layout model
        # does; they back a cluster whose area their blocks cover (>= cover_min), and abstain on
        # clusters labelled as something without text lines (photos).
        cw = np.ascontiguousarray(feat[:, :, 0].T)  # (k, G)
        box = np.ascontiguousarray(feat[:, :, 1:5]).sum(axis=0) / np.maximum(cw.sum(axis=1), 1e-12)[:, None]
        informed = np.ascontiguousarray(feat[:, :, 5:]).sum(axis=0)
        label = labels[
            np.where(informed.sum(axis=1) > 0, informed.argmax(axis=1), votes_all.sum(axis=0).argmax(axis=1))
        ]
        from entrypoints.newsbag.geometry import LABEL_INDEX

        no_text = np.isin(label, [LABEL_INDEX[x] for x in LINE_ABSTAINS])
        abstain = np.zeros((k, g_count), bool)
        for v in np.flatnonzero(line):
            g_i = int(voter_of_variant[v])
            b = per_variant[v]
            cov = _covered(box, b.xyxy)
            backed = cov >= cover_min
            mean_score = float(b.score.mean()) if len(b) else 0.0
            presence[:, g_i] = np.maximum(presence[:, g_i], backed)
            confidence[:, g_i] = np.maximum(confidence[:, g_i], backed * mean_score)
            abstain[:, g_i] |= no_text & (presence[:, g_i] == 0)
        say = (~abstain).astype(np.float64)
    tally = np.stack([say, presence * say, confidence * say], axis=1).T  # (G, 3, k)
    return Clusters(k, g_count, tally, feat, votes_all, labels)


def _present_labels(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels present (ascending) and each box's column among them: ``np.unique(label,
    return_inverse=True)`` for small non-negative ints, by one bincount instead of a sort."""
    present = np.bincount(label) > 0
    return np.flatnonzero(present), (np.cumsum(present) - 1)[label]


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
    sums = _over_voters(cl.tally, w)  # (R, 3, k)
    total = np.maximum(sums[:, 0], 1e-12)
    support = sums[:, 1] / total
    conf = sums[:, 2] / total
    feat = _over_voters(cl.feat, a)  # (R, k, 5 + L)
    cw = feat[:, :, 0]  # an active voter has a box in the cluster when > 0
    keep = (cw > 0) & ((support > min_support + EPS) | (conf >= min_confidence - EPS))
    keep &= (w.sum(axis=1) > 0)[:, None]
    rows, ks = np.nonzero(keep)  # by row, then cluster
    if not len(rows):
        return Boxes.empty(), rows
    at = rows * cl.k + ks  # flat (row, cluster); take, not feat[rows, ks]: a row gather ~10x cheaper
    kept = feat.reshape(-1, feat.shape[2]).take(at, axis=0)
    xyxy = kept[:, 1:5] / kept[:, :1]
    votes = kept[:, 5:]
    fallback = votes.sum(axis=1) <= 0
    if fallback.any():
        votes = votes.copy()
        votes[fallback] = _over_voters(cl.votes_all, a)[rows[fallback], ks[fallback]]
    label = votes.argmax(axis=1) if cl.labels is None else cl.labels[votes.argmax(axis=1)]
    return Boxes(xyxy, label, np.clip(conf.reshape(-1).take(at), 0.0, 1.0)), rows


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
