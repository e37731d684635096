"""fuse_page's outputs on 315 random pages, pinned bit for bit.

Fusion's speed work (batched passes, merged bincounts, take instead of fancy indexing, ...)
must not change a single output bit. The digests below were recorded with the straightforward
implementation (before those changes), so any later rewrite is checked against it: every page
mixes block and line sources, several variants of one source, rescaled records, unscored boxes,
source weights, empty records, other IoU thresholds and ground truth. The WBF baseline is off
(its output belongs to ensemble-boxes' version, not to this code).
"""

from __future__ import annotations

import hashlib

import numpy as np

from entrypoints.newsbag import fusion, geometry

N_PAGES = 315
# sha256 of the repr of every PageResult, 45 pages per digest
GOLDEN = [
    "d44778ae8911007eccb92e4c",
    "8760ca9ed8c30b4a4af02328",
    "bf3c688822fefcb3f1400d2e",
    "6f3fa6e2fcbe061a2dce9bb7",
    "6e20b25bae2ff8bc851c1d3a",
    "dd8db3e27b86f4deda8cde99",
    "7c7242a230216a1c3620d95b",
]


def _pages():
    from bench import _newsbag_synth as synth

    rng = np.random.default_rng(123)
    for i in range(N_PAGES):
        n_src = int(rng.integers(1, 6))
        models = list(synth.SOURCES[:n_src])
        if rng.random() < 0.4:
            models.append(synth.SourceModel(0.85, 8, 0.9, 3, line=True))
        recs, gt = synth.page(rng, f"p{i}", tuple(models), n_blocks=int(rng.integers(0, 150)))
        if rng.random() < 0.3:
            recs["s0/w"] = {**recs["s0/v"], "variant": "w", "boxes": recs["s0/v"]["boxes"][::2]}
        if rng.random() < 0.2:  # a record at twice the page size: rescaled
            k = max(recs)
            r = recs[k]
            recs[k] = {
                **r,
                "width": r["width"] * 2,
                "height": r["height"] * 2,
                "boxes": [
                    {**b, "x0": b["x0"] * 2, "x1": b["x1"] * 2, "y0": b["y0"] * 2, "y1": b["y1"] * 2}
                    for b in r["boxes"]
                ],
            }
        if rng.random() < 0.2:
            k = min(recs)
            boxes = [{**b, "scored": bool(j % 3)} for j, b in enumerate(recs[k]["boxes"])]
            recs[k] = {**recs[k], "boxes": boxes}
        if rng.random() < 0.1:
            k = min(recs)
            recs[k] = {**recs[k], "boxes": []}
        s = fusion.Settings(baseline=False)
        if rng.random() < 0.3:
            s.source_weights = {"s0": 2.0}
        if rng.random() < 0.2:
            s.cluster_iou = float(rng.choice([0.3, 0.7]))
            s.match_iou = float(rng.choice([0.3, 0.5, 0.8]))
        yield f"p{i}", recs, s, gt if rng.random() < 0.7 else None


def digests() -> list[str]:
    out, h = [], hashlib.sha256()
    for n, (pid, recs, s, gt) in enumerate(_pages(), 1):
        h.update(repr(fusion.fuse_page(pid, recs, s, gt)).encode())
        if n % 45 == 0:
            out.append(h.hexdigest()[:24])
            h = hashlib.sha256()
    return out


def test_fuse_page_outputs_are_bit_identical_to_the_recorded_ones():
    got = digests()
    bad = [k for k, (a, b) in enumerate(zip(got, GOLDEN, strict=True)) if a != b]
    assert not bad, f"pages {[f'{45 * k}-{45 * k + 44}' for k in bad]} differ from the recorded outputs"


def _root(parent: list[int], x: int) -> int:
    while parent[x] != x:
        x = parent[x]
    return x


def test_components_equal_a_union_find_numbered_by_first_node():
    rng = np.random.default_rng(8)
    for n, m in ((1, 0), (50, 0), (50, 30), (300, 280), (300, 900)):
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        parent = list(range(n))
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            parent[_root(parent, a)] = _root(parent, b)
        ids: dict[int, int] = {}
        want = [ids.setdefault(_root(parent, x), len(ids)) for x in range(n)]
        assert geometry.components(n, i, j).tolist() == want


def test_batch_record_conversion_equals_a_plain_loop_over_each_record():
    recs = [rec for _, page, _, _ in list(_pages())[:40] for rec in page.values()]
    scales = [(2200 / r["width"], 3000 / r["height"]) for r in recs]
    batch = geometry.Boxes.from_records(recs, scales, unscored=0.25)
    assert len(batch) == len(recs) and any(not r["boxes"] for r in recs)
    for r, (sx, sy), b in zip(recs, scales, batch, strict=True):
        bs = r["boxes"]
        want = np.array([[x["x0"] * sx, x["y0"] * sy, x["x1"] * sx, x["y1"] * sy] for x in bs]).reshape(-1, 4)
        np.testing.assert_array_equal(b.xyxy, want)
        assert b.label.tolist() == [geometry.LABEL_INDEX.get(x["label"], geometry.OTHER) for x in bs]
        assert b.score.tolist() == [x["score"] if x.get("scored", True) else 0.25 for x in bs]
