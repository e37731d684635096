"""Fusion's tables: leaderboards that rank only on a basis that can rank, and accuracy by condition.

Ranking basis, in order:
1. ground truth, where any page has it: variants rank by F1 against truth (then coverage);
   leave-one-out agreement is shown beside it;
2. leave-one-out agreement, only with three or more sources: with two, each is scored against
   the other, the comparison is symmetric and cannot say which is better, so rows stay unranked
   and the header says why;
3. otherwise nothing is ranked.
Equal scores share a rank (1, 1, 3); a name never decides a rank. Rows scored on fewer pages than
the run has say ``partial`` in their note.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from entrypoints.newsbag.schema import CONSENSUS_SOURCE
from entrypoints.newsbag.scoring import Tally

METRICS = ("f1", "precision", "recall", "loc_f1", "coverage")


class Aggregate:
    """Per-run sums of the page results."""

    def __init__(self, variants: list[str]) -> None:
        self.tallies: dict[str, Tally] = {k: Tally() for k in variants}
        self.gt: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))
        self.gt_pages = 0
        self.gt_by_group: dict[str, int] = defaultdict(int)
        self.fused = 0
        self.page_rows: list[tuple[float, str, int, int, float, float, str, float | None]] = []

    def add(self, res: Any) -> None:
        from entrypoints.newsbag.scoring import f1

        self.fused += 1
        for key, counts in res.scores.items():
            self.tallies[key].add(counts)
        if res.gt_scores is not None:
            self.gt_pages += 1
            group = "clean" if str(res.condition).startswith("clean") else "degraded"
            for g in ("all", group):
                self.gt_by_group[g] += 1
                for key, counts in res.gt_scores.items():
                    self.gt[g][key].add(counts)
        if res.disagreement is not None:
            sc = list(res.scores.values())
            cons = (res.gt_scores or {}).get(CONSENSUS_SOURCE)
            self.page_rows.append(
                (
                    res.disagreement,
                    res.page_id,
                    len(res.scores),
                    len(res.consensus["boxes"]),
                    sum(f1(v["tp"], v["pred"], v["ref"]) for v in sc) / len(sc),
                    sum(v["coverage"] for v in sc) / len(sc),
                    res.condition or "-",
                    None if cons is None else f1(cons["tp"], cons["pred"], cons["ref"]),
                )
            )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _table(header: str, cols: list[str], rows: Iterable[list[str]]) -> str:
    return header + "\t".join(cols) + "\n" + "".join("\t".join(r) + "\n" for r in rows)


def competition_ranks(keys: list[tuple[float, ...] | None]) -> list[int | None]:
    """Rank 1 for the best key; equal keys share a rank (1, 1, 3); None stays unranked."""
    rounded = [None if k is None else tuple(round(v, 6) for v in k) for k in keys]
    return [None if k is None else 1 + sum(1 for o in rounded if o is not None and o > k) for k in rounded]



def _rank(rows: list[dict[str, Any]], name: str) -> None:
    """Give each row its competition rank by ``rank_key``; order by rank (unranked last), then ``name``."""
    for r, rank in zip(rows, competition_ranks([r["rank_key"] for r in rows]), strict=True):
        r["rank"] = rank
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r[name]))

def basis(agg: Aggregate, n_pages: int, n_sources: int) -> tuple[str | None, str]:
    if agg.gt_pages:
        return "gt_f1", (
            f"ground truth on {agg.gt_pages} of {n_pages} pages (F1 vs truth, then coverage); "
            "leave-one-out agreement shown beside it"
        )
    if n_sources >= 3:
        return "agree_f1", (
            f"leave-one-out agreement among {n_sources} sources (no ground truth): each "
            "variant vs the consensus of the other sources"
        )
    return None, (
        f"none: no ground truth, and with {n_sources} source(s) agreement cannot rank (each is "
        "scored against the other, a symmetric comparison); rows shown unranked"
    )


def build(agg: Aggregate, s: Any, *, n_pages: int, n_sources: int) -> tuple[dict[str, str], dict[str, Any]]:
    """The TSV tables (name -> text) and the run summary."""
    ranked_by, why = basis(agg, n_pages, n_sources)
    gt_all = agg.gt.get("all", {})
    rows = []
    for key, t in agg.tallies.items():
        g = gt_all.get(key)
        am = t.metrics() if t.pages else None
        gm = g.metrics() if g is not None and g.pages else None
        notes = []
        if t.missing:
            notes.append(f"partial: {n_pages - t.missing} of {n_pages} pages")
        if agg.gt_pages and (g is None or g.pages < agg.gt_pages):
            notes.append(f"partial truth: {g.pages if g else 0} of {agg.gt_pages} truth pages")
        if ranked_by == "gt_f1":
            rk = None if gm is None else (gm["f1"], gm["coverage"])
        elif ranked_by == "agree_f1":
            rk = None if am is None else (am["f1"], am["coverage"])
        else:
            rk = None
        rows.append(
            {"key": key, "t": t, "g": g, "am": am, "gm": gm, "rank_key": rk, "note": "; ".join(notes) or "-"}
        )
    _rank(rows, "key")
    header = (
        f"# newsbag variant leaderboard. Ranking basis: {why}.\n"
        "# gt_*: against ground truth on the pages that have it; agree_*: against the consensus of the\n"
        "# OTHER sources (leave-one-out). f1/precision/recall at IoU >= "
        f"{s.match_iou} with the same label; loc_f1 ignores labels;\n"
        "# coverage: label-wise area IoU on a grid. Equal scores share a rank; '-' = not ranked.\n"
        f"# consensus method: {s.method}; boxes: its boxes (line sources: lines grouped into blocks).\n"
    )
    cols = [
        "rank",
        "source",
        "variant",
        "pages",
        "missing",
        "boxes",
        "gt_pages",
        "gt_f1",
        "gt_precision",
        "gt_recall",
        "gt_loc_f1",
        "gt_coverage",
        "agree_f1",
        "agree_loc_f1",
        "agree_coverage",
        "note",
    ]
    vrows = []
    ranking = []
    for r in rows:
        src, var = r["key"].split("/", 1)
        am, gm, t, g = r["am"], r["gm"], r["t"], r["g"]
        boxes = t.pred if t.pages else (g.pred if g else 0)
        vrows.append(
            [
                str(r["rank"] or "-"),
                src,
                var,
                str(t.pages),
                str(t.missing),
                str(boxes),
                str(g.pages if g else 0),
                *(_fmt(gm[c] if gm else None) for c in METRICS),
                *(_fmt(am[c] if am else None) for c in ("f1", "loc_f1", "coverage")),
                r["note"],
            ]
        )
        ranking.append(
            {
                "rank": r["rank"],
                "variant": r["key"],
                "note": r["note"],
                **{f"gt_{c}": round(gm[c], 4) for c in METRICS if gm},
                **{f"agree_{c}": round(am[c], 4) for c in METRICS if am},
            }
        )
    tables = {"variant_leaderboard.tsv": _table(header, cols, vrows)}

    # sources: their best variant on the same basis
    per_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        per_source[r["key"].split("/", 1)[0]].append(r)
    srows = []
    for src, items in per_source.items():
        best = min(items, key=lambda r: (r["rank"] is None, r["rank"] or 0))
        pooled_a, pooled_g = Tally(), Tally()
        for r in items:
            pooled_a.merge(r["t"])
            if r["g"] is not None:
                pooled_g.merge(r["g"])
        srows.append(
            {
                "src": src,
                "n": len(items),
                "best": best,
                "rank_key": best["rank_key"],
                "pa": pooled_a.metrics() if pooled_a.pages else None,
                "pg": pooled_g.metrics() if pooled_g.pages else None,
                "partial": any(r["note"] != "-" for r in items),
            }
        )
    _rank(srows, "src")
    sheader = (
        f"# newsbag source leaderboard. Ranking basis: {why}.\n"
        "# best_variant: its best variant on that basis; gt_f1/agree_f1: pooled over all its variants.\n"
    )
    tables["source_leaderboard.tsv"] = _table(
        sheader,
        [
            "rank",
            "source",
            "variants",
            "best_variant",
            "best_gt_f1",
            "best_agree_f1",
            "gt_f1",
            "agree_f1",
            "note",
        ],
        (
            [
                str(r["rank"] or "-"),
                r["src"],
                str(r["n"]),
                r["best"]["key"].split("/", 1)[1],
                _fmt(r["best"]["gm"]["f1"] if r["best"]["gm"] else None),
                _fmt(r["best"]["am"]["f1"] if r["best"]["am"] else None),
                _fmt(r["pg"]["f1"] if r["pg"] else None),
                _fmt(r["pa"]["f1"] if r["pa"] else None),
                "partial" if r["partial"] else "-",
            ]
            for r in srows
        ),
    )

    agg.page_rows.sort(key=lambda r: (-r[0], r[1]))
    tables["page_scores.tsv"] = _table(
        "# per-page disagreement among variants: 1 - mean over variants of (f1 + coverage)/2 against the\n"
        "# leave-one-out consensus; review renders the highest first. consensus_gt_f1: the fused page vs\n"
        "# its ground truth ('-' = no truth); condition: the truth's page condition.\n",
        [
            "page_id",
            "variants",
            "consensus_boxes",
            "disagreement",
            "mean_f1",
            "mean_coverage",
            "condition",
            "consensus_gt_f1",
        ],
        (
            [pid, str(nv), str(nb), _fmt(d), _fmt(f), _fmt(c), cond, _fmt(g)]
            for d, pid, nv, nb, f, c, cond, g in agg.page_rows
        ),
    )

    accuracy: dict[str, dict[str, dict[str, float]]] | None = None
    if agg.gt_pages:
        accuracy = {}
        arows = []
        for group in ("all", "clean", "degraded"):
            systems = agg.gt.get(group)
            if not systems:
                continue
            items = sorted(systems.items(), key=lambda kv: kv[0])
            ranks = competition_ranks([(t.metrics()["f1"], t.metrics()["coverage"]) for _, t in items])
            order = sorted(zip(ranks, items, strict=True), key=lambda x: (x[0], x[1][0]))
            accuracy[group] = {}
            for rank, (key, t) in order:
                m = t.metrics()
                arows.append(
                    [
                        group,
                        str(rank),
                        key,
                        str(t.pages),
                        str(t.pred),
                        str(t.ref),
                        *(_fmt(m[c]) for c in METRICS),
                    ]
                )
                accuracy[group][key] = {c: round(m[c], 4) for c in METRICS} | {"pages": t.pages}
        tables["accuracy.tsv"] = _table(
            f"# newsbag accuracy against ground truth ({agg.gt_pages} of {n_pages} pages; clean "
            f"{agg.gt_by_group.get('clean', 0)}, degraded {agg.gt_by_group.get('degraded', 0)}).\n"
            f"# {CONSENSUS_SOURCE} = the fused layout ({s.method}); baseline:* = the other method on the "
            "same inputs.\n# f1/precision/recall at IoU >= "
            f"{s.match_iou} with the same label; loc_f1 ignores labels; coverage: label-wise area IoU.\n"
            "# Ranked by f1 then coverage within each group; equal scores share a rank.\n",
            ["group", "rank", "system", "pages", "boxes", "gt_boxes", *METRICS],
            arows,
        )
    summary = {
        "ranking_basis": why,
        "ranked_by": ranked_by,
        "ranking": ranking,
        "accuracy": accuracy,
        "gt_pages": agg.gt_pages,
        "sources": n_sources,
        "method": s.method,
        "settings": dict(vars(s)),
    }
    return tables, summary
