"""fusion: one consensus layout per page from every source and variant, scored against truth and
against the other sources.

The work is split by job: ``geometry`` (boxes, sparse IoU pairs, text lines -> blocks),
``consensus`` (clusters, the keep rule, leave-one-out references, Weighted Boxes Fusion),
``scoring`` (F1 and coverage, tallies), ``report`` (leaderboards, ranking basis, tables);
this module fuses pages and runs the app.

- Line-level sources (OCR text lines) are grouped into blocks before anything else, so they can
  be compared box for box with layout models (see ``geometry.lines_to_blocks``).
- Voters are sources when the run has two or more, else the variants of its one source.
- Each variant is scored against the consensus of the OTHER voters (leave-one-out), so no
  variant grades itself; where a page has ground truth (``<stem>.gt.json`` next to the image or
  ``<gt_dir>/<page_id>.gt.json``) every variant, the consensus and a baseline (Weighted Boxes
  Fusion from ``ensemble-boxes``) are also scored against it, split by the page's condition
  (clean or degraded). The leaderboards rank by truth where it exists (``report``).
- A rerun is skipped only when ``fusion_complete.json`` carries the fingerprint of exactly these
  settings, input files (size + mtime), ground-truth files and code (``suite_core.markers``).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from entrypoints.newsbag import consensus as cons_mod
from entrypoints.newsbag.geometry import Boxes, concat, lines_to_blocks
from entrypoints.newsbag.schema import (
    CONSENSUS_SOURCE,
    gt_path_for,
    iter_source_pages,
    page_record,
    read_page,
)
from entrypoints.newsbag.scoring import compare_sets, f1
from suite_core.errors import UserError

METHODS = ("consensus", "wbf")
CONDITIONS = ("clean", "degraded")
CODE_MODULES = (
    "entrypoints.newsbag.fusion",
    "entrypoints.newsbag.geometry",
    "entrypoints.newsbag.consensus",
    "entrypoints.newsbag.scoring",
    "entrypoints.newsbag.report",
    "entrypoints.newsbag.schema",
)


@dataclass
class Settings:
    """Fusion settings (``fusion.*`` in the app config); the dataclass holds defaults and types."""

    method: str = "consensus"  # consensus (clusters + keep rule) or wbf (ensemble-boxes)
    cluster_iou: float = 0.5  # boxes of different variants at IoU >= this may cluster
    match_iou: float = 0.5  # a box matches a reference box at IoU >= this (and the same label)
    min_support: float = 0.5  # keep a cluster when MORE than this share of the source weight backs it
    min_confidence: float = 0.35  # ... or when its score-weighted support reaches this
    unscored_score: float = 0.5  # vote of a box whose source gives no score ("scored": false)
    wbf_score_thr: float = 0.3  # method=wbf and the baseline: keep fused boxes scored >= this
    baseline: bool = True  # score the other method too where ground truth exists
    grid: int = 48  # coverage raster (grid x grid cells per label)
    line_vgap: float = 0.3
    line_hgap: float = 1.0
    source_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class PageResult:
    page_id: str
    consensus: dict[str, Any]
    scores: dict[str, dict[str, float]]  # "source/variant" -> compare() vs leave-one-out
    gt_scores: dict[str, dict[str, float]] | None  # vs ground truth: variants, "consensus", baseline
    condition: str | None  # the ground truth's page condition
    disagreement: float | None
    skipped: list[tuple[str, str]]


def baseline_name(s: Settings) -> str:
    return "baseline:newsbag" if s.method == "wbf" else "baseline:wbf"


def prepare(
    records: dict[str, dict[str, Any]], s: Settings, width: float, height: float, page_id: str
) -> tuple[list[str], list[Boxes], list[tuple[str, str]]]:
    """Variant keys (sorted), their boxes on the first record's page size, and size warnings."""
    keys = sorted(records)
    recs = [records[k] for k in keys]
    skipped = []
    for k, r in zip(keys, recs, strict=True):
        if abs(r["width"] - width) > 1 or abs(r["height"] - height) > 1:
            skipped.append(
                (
                    f"{k}/{page_id}",
                    f"page size {r['width']}x{r['height']} differs from "
                    f"{int(width)}x{int(height)}; boxes rescaled, not dropped",
                )
            )
    per_variant = Boxes.from_records(
        recs, [(width / r["width"], height / r["height"]) for r in recs], unscored=s.unscored_score
    )
    for v, r in enumerate(recs):
        if r["granularity"] == "line":
            per_variant[v] = lines_to_blocks(per_variant[v], vgap=s.line_vgap, hgap=s.line_hgap)
    return keys, per_variant, skipped


class Fuser:
    """The consensus of one page and its leave-one-out references, for either method."""

    def __init__(
        self,
        keys: list[str],
        per_variant: list[Boxes],
        line: list[bool],
        s: Settings,
        width: float,
        height: float,
        method: str,
    ) -> None:
        self.s, self.width, self.height, self.method = s, width, height, method
        self.per_variant = per_variant
        sources = [k.split("/", 1)[0] for k in keys]
        names = sorted(set(sources))
        self.by_source = len(names) >= 2
        if self.by_source:
            n_var = Counter(sources)
            self.voters = names
            self.voter_of_variant = np.array([names.index(x) for x in sources])
            share = np.array([1.0 / n_var[x] for x in sources])
            self.voter_weight = np.array([float(s.source_weights.get(x, 1.0)) for x in names])
        else:
            self.voters = list(keys)
            self.voter_of_variant = np.arange(len(keys))
            share = np.ones(len(keys))
            self.voter_weight = np.ones(len(keys))
        self.variant_weight = self.voter_weight[self.voter_of_variant] * share
        self.cl = None
        if method == "consensus":
            self.cl = cons_mod.cluster(
                per_variant,
                self.voter_of_variant,
                share,
                len(self.voters),
                s.cluster_iou,
                np.array([0.0 if x else 1.0 for x in line]),
                line=np.array(line, bool),
            )

    def fuse(self, left_out: int | None = None) -> Boxes:
        """The consensus of all voters, or of all but ``left_out``."""
        return self.fuse_many([left_out])[0]

    def fuse_many(self, left_outs: list[int | None]) -> tuple[Boxes, np.ndarray]:
        """``fuse`` for each entry of ``left_outs`` at once: all boxes, entry by entry, and the entry
        each belongs to."""
        active = np.ones((len(left_outs), len(self.voters)), bool)
        for r, g in enumerate(left_outs):
            if g is not None:
                active[r, g] = False
        if self.method == "consensus":
            return cons_mod.consensus_many(
                self.cl, self.voter_weight, active, self.s.min_support, self.s.min_confidence
            )
        parts = [
            cons_mod.wbf(
                self.per_variant,
                self.variant_weight * act[self.voter_of_variant],
                self.width,
                self.height,
                iou_thr=self.s.cluster_iou,
                score_thr=self.s.wbf_score_thr,
            )
            for act in active
        ]
        return concat(parts), np.repeat(np.arange(len(parts)), [len(b) for b in parts])


def fuse_page(
    page_id: str, records: dict[str, dict[str, Any]], s: Settings, gt: dict[str, Any] | None = None
) -> PageResult:
    """Consensus, leave-one-out scores and (when ``gt`` is given) accuracy for one page.

    ``records`` maps "source/variant" to validated page records of the same page.
    """
    first = records[min(records)]
    width, height = float(first["width"]), float(first["height"])
    keys, per_variant, skipped = prepare(records, s, width, height, page_id)
    line = [records[k]["granularity"] == "line" for k in keys]
    fuser = Fuser(keys, per_variant, line, s, width, height, s.method)
    n_voters = len(fuser.voters)
    # the consensus and every voter's leave-one-out reference in one aggregation
    fused, fused_of = fuser.fuse_many([None, *range(n_voters)] if n_voters >= 2 else [None])
    # boxes come by entry (consensus first), so the consensus and the references are two slices
    n_cons = int(np.count_nonzero(fused_of == 0))
    cons = Boxes(fused.xyxy[:n_cons], fused.label[:n_cons], fused.score[:n_cons])
    consensus = page_record(
        page_id=page_id,
        image=first["image"],
        width=int(width),
        height=int(height),
        source=CONSENSUS_SOURCE,
        variant=s.method,
        granularity="block",
        boxes=cons.to_json(),
    )
    sizes = [len(b) for b in per_variant]
    variant_of_box = np.repeat(np.arange(len(keys)), sizes)
    every = concat(per_variant)
    scores: dict[str, dict[str, float]] = {}
    if n_voters >= 2:
        # each variant against the consensus of the other voters (leave-one-out), all in one pass
        res = compare_sets(
            every,
            variant_of_box,
            len(keys),
            Boxes(fused.xyxy[n_cons:], fused.label[n_cons:], fused.score[n_cons:]),
            fused_of[n_cons:] - 1,
            n_voters,
            fuser.voter_of_variant,
            width,
            height,
            s.match_iou,
            s.grid,
        )
        scores = dict(zip(keys, res, strict=True))
    else:
        skipped.append((f"{keys[0]}/{page_id}", "only one variant has this page: no leave-one-out score"))

    gt_scores, condition = None, None
    if gt is not None:
        condition = str(gt.get("condition") or "clean")
        g = Boxes.from_record(gt, (width / gt["width"], height / gt["height"]))
        names, parts = [*keys, CONSENSUS_SOURCE], [every, cons]
        if s.baseline:
            other = "consensus" if s.method == "wbf" else "wbf"
            if other == "consensus" or cons_mod.wbf_available()[0]:
                names.append(baseline_name(s))
                parts.append(Fuser(keys, per_variant, line, s, width, height, other).fuse())
        set_of = np.concatenate(
            [variant_of_box, *(np.full(len(b), len(keys) + i) for i, b in enumerate(parts[1:]))]
        )
        res = compare_sets(
            concat(parts),
            set_of,
            len(names),
            g,
            np.zeros(len(g), np.int64),
            1,
            np.zeros(len(names), np.int64),
            width,
            height,
            s.match_iou,
            s.grid,
        )
        gt_scores = dict(zip(names, res, strict=True))

    disagreement = None
    if scores:
        agree = [0.5 * f1(v["tp"], v["pred"], v["ref"]) + 0.5 * v["coverage"] for v in scores.values()]
        # np.mean's arithmetic (its pairwise sum, then / n) without its Python-level wrapper
        disagreement = round(1.0 - float(np.add.reduce(np.array(agree)) / len(agree)), 6)
    return PageResult(page_id, consensus, scores, gt_scores, condition, disagreement, skipped)


# --------------------------------------------------------------------------- the run


def settings_from(cfg: Any) -> Settings:
    """Settings from ``cfg.fusion``: unknown keys, wrong types and out-of-range values are one line."""
    f = cfg.get("fusion") or {}
    s = Settings()
    known = set(vars(s))
    for name in f:
        if name not in known:
            raise UserError(
                f"unknown fusion setting '{name}'",
                where="fusion config",
                fix=f"use one of: {', '.join(sorted(known))}",
            )
    try:
        s.source_weights = {str(k): float(v) for k, v in dict(f.get("source_weights") or {}).items()}
        for name, default in vars(Settings()).items():
            if name != "source_weights" and name in f:
                v = f[name]
                setattr(
                    s,
                    name,
                    (str(v).lower() in ("1", "true", "yes"))
                    if isinstance(default, bool)
                    else type(default)(v),
                )
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"bad fusion setting: {exc}",
            where="fusion config",
            fix="fusion.* values are numbers (grid an integer, method a name)",
        ) from None
    if s.method not in METHODS:
        raise UserError(
            f"fusion.method={s.method} is not one of {', '.join(METHODS)}",
            where="fusion config",
            fix="pass fusion.method=consensus or fusion.method=wbf",
        )
    for name in ("cluster_iou", "match_iou"):
        v = getattr(s, name)
        if not 0.0 < v <= 1.0:
            raise UserError(
                f"fusion.{name}={v} is outside (0, 1]", where="fusion config", fix=f"pass fusion.{name}=0.5"
            )
    for name in ("min_support", "min_confidence", "unscored_score", "wbf_score_thr"):
        v = getattr(s, name)
        if not 0.0 <= v <= 1.0:
            raise UserError(
                f"fusion.{name}={v} is outside [0, 1]",
                where="fusion config",
                fix=f"pass fusion.{name}={getattr(Settings(), name)}",
            )
    if any(w <= 0 for w in s.source_weights.values()):
        raise UserError(
            "fusion.source_weights must be positive",
            where="fusion config",
            fix="e.g. fusion.source_weights={dell: 2.0}",
        )
    if s.grid < 4:
        raise UserError(
            f"fusion.grid={s.grid} is too small", where="fusion config", fix="pass fusion.grid=48"
        )
    if s.method == "wbf" and not cons_mod.wbf_available()[0]:
        raise UserError(
            cons_mod.wbf_available()[1],
            where="fusion.method=wbf",
            fix="install ensemble-boxes, or use fusion.method=consensus",
        )
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


def _image_of(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    image = data.get("image") if isinstance(data, dict) else None
    return image if isinstance(image, str) else None


def find_truth(pages: dict[str, dict[str, Path]], gt_dir: Path | None) -> dict[str, Path]:
    """page_id -> its ground-truth file (``gt_dir`` first, then next to the page image)."""
    out = {}
    for pid, paths in pages.items():
        cands = [gt_dir / f"{pid}.gt.json"] if gt_dir is not None else []
        image = _image_of(paths[min(paths)])
        if image:
            cands.append(gt_path_for(image))
        for c in cands:
            if c.is_file():
                out[pid] = c
                break
    return out


def _work(args: tuple[str, dict[str, Path], Settings, str | None, str]) -> tuple[PageResult | None, list]:
    """One page end to end (read, fuse, write consensus); runs in a worker process too."""
    page_id, paths, s, gt_file, out_pages = args
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
    gt = None
    if gt_file:
        try:
            gt = read_page(gt_file)
        except ValueError as exc:
            skipped.append(
                (f"ground_truth/{page_id}", f"malformed ground truth, page not scored against truth: {exc}")
            )
    res = fuse_page(page_id, records, s, gt)
    skipped.extend(res.skipped)
    _write_consensus(Path(out_pages) / f"{page_id}.json", res.consensus)
    return res, skipped


def _write_consensus(path: Path, record: dict[str, Any]) -> None:
    """Atomic write of a consensus page, one box per line.

    Not ``schema.write_page``: its validation re-checks every box in Python; the record is valid
    by construction (weighted means of validated boxes, taxonomy labels, scores in [0, 1]);
    tests read consensus pages back through ``schema.read_page``.
    """
    from suite_core.atomic import write_text

    head = json.dumps({k: v for k, v in record.items() if k != "boxes"})[:-1]
    boxes = ",\n  ".join(json.dumps(b) for b in record["boxes"])
    write_text(path, f'{head}, "boxes": [\n  {boxes}\n]}}\n' if boxes else f'{head}, "boxes": []}}\n')


def _add_skips(run: Any, skipped: list[tuple[str, str]], limit: int = 50) -> None:
    """Record skips; past ``limit`` of one kind, summarise instead of flooding the report."""
    counts: dict[str, int] = defaultdict(int)
    for item, reason in skipped:
        kind = item.rsplit("/", 1)[0] + "|" + reason.split(":")[0]
        counts[kind] += 1
        if counts[kind] <= limit:
            run.skip(item, reason)
    for kind, n in counts.items():
        if n > limit:
            item, reason = kind.split("|", 1)
            run.skip(f"{item}/*", f"{n - limit} more pages: {reason}")


def run_fingerprint(
    pages: dict[str, dict[str, Path]], truth: dict[str, Path], s: Settings, gt_dir: Path | None
) -> str:
    """What made the fusion outputs: settings, every input and truth file (size + mtime), code."""
    from suite_core.markers import code_version, fingerprint

    names = [f"{pid}/{key}" for pid, paths in pages.items() for key in sorted(paths)]
    files = [paths[key] for pid, paths in pages.items() for key in sorted(paths)]
    gts = [truth[pid] for pid in sorted(truth)]
    settings = {
        "fusion": {k: v for k, v in vars(s).items()},
        "inputs": names,
        "truth": [str(p) for p in gts],
        "gt_dir": str(gt_dir) if gt_dir else None,
    }
    return fingerprint(settings, [*files, *gts], code_version(*CODE_MODULES))


def _previous(marker: Path, digest: str) -> dict[str, Any] | None:
    """The previous run's summary when its marker has exactly ``digest`` and its outputs are intact."""
    from suite_core.markers import is_done, read_marker

    if not is_done(marker, digest):
        return None
    data = read_marker(marker) or {}
    intact = all(
        Path(o["path"]).is_file() and Path(o["path"]).stat().st_size == o["bytes"]
        for o in data.get("outputs", [])
    )
    return data.get("summary") if intact else None


def fuse_run(
    run_dir: Path,
    s: Settings,
    *,
    run: Any,
    workers: int = 1,
    gt_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fuse every page under ``run_dir/outputs/sources`` and write the leaderboards."""
    from entrypoints.newsbag import report
    from suite_core.atomic import write_text
    from suite_core.markers import write_marker

    out = run_dir / "outputs" / "fusion"
    marker = out / "fusion_complete.json"
    with run.step("collect") as st:
        pages, variants = collect(run_dir)
        truth = find_truth(pages, gt_dir)
        st.update(pages=len(pages), variants=len(variants), with_ground_truth=len(truth))
    if not pages:
        raise UserError(
            f"no source outputs under {run_dir / 'outputs' / 'sources'}",
            where="fusion",
            fix="run the source stages first (e.g. newsbag_embedded) with the same run_dir=",
        )
    digest = run_fingerprint(pages, truth, s, gt_dir)
    previous = None if force else _previous(marker, digest)
    if previous is not None:
        print(
            f"fusion: {marker} has the fingerprint of these settings, inputs and code; nothing to do "
            "(force=true reruns)"
        )
        return previous
    if len(variants) < 2:
        run.skip("leave-one-out", f"only one variant ({variants[0]}): consensus equals it; no scores")
    if s.baseline and s.method == "consensus" and truth and not cons_mod.wbf_available()[0]:
        run.skip("baseline:wbf", f"no WBF baseline row: {cons_mod.wbf_available()[1]}")

    skipped: list[tuple[str, str]] = []
    coverage_of: dict[str, int] = Counter(k for paths in pages.values() for k in paths)
    missing = {k: len(pages) - coverage_of[k] for k in variants}
    for key in variants:
        if missing[key]:
            absent = [pid for pid, paths in pages.items() if key not in paths]
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            skipped.append(
                (
                    key,
                    f"covers {coverage_of[key]} of {len(pages)} pages; not scored on the other "
                    f"{missing[key]} ({', '.join(absent[:3])}{more}): its rows say partial",
                )
            )

    jobs = [
        (pid, paths, s, str(truth[pid]) if pid in truth else None, str(out / "pages"))
        for pid, paths in pages.items()
    ]
    agg = report.Aggregate(variants)
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
                if res is not None:
                    agg.add(res)
        finally:
            if pool is not None:
                pool.shutdown()
        st.update(fused=agg.fused, with_ground_truth=agg.gt_pages)
    for key, n in missing.items():
        agg.tallies[key].missing = n
    _add_skips(run, skipped)

    with run.step("write"):
        tables, summary = report.build(
            agg, s, n_pages=len(pages), n_sources=len({v.split("/")[0] for v in variants})
        )
        written = [write_text(out / name, text) for name, text in tables.items()]
        for p in written:
            run.output(p)
        summary.update(pages=len(pages), fused=agg.fused, variants=variants)
        run.report["fusion"] = summary
        write_marker(
            marker,
            digest,
            summary=summary,  # completion marker last
            outputs=[{"path": str(p), "bytes": p.stat().st_size} for p in written],
        )
    return summary


def run(cfg: Any, run: Any) -> int:
    """The ``fusion`` app."""
    s = settings_from(cfg)
    workers = int(cfg.get("workers") or 0) or min(8, os.cpu_count() or 1)
    gt_dir = cfg.get("gt_dir")
    summary = fuse_run(
        Path(str(cfg.run_dir)),
        s,
        run=run,
        workers=workers,
        gt_dir=Path(str(gt_dir)) if gt_dir else None,
        force=bool(cfg.get("force")),
        progress=bool(cfg.get("progress", True)),
    )
    out = Path(str(cfg.run_dir)) / "outputs" / "fusion"
    print(f"fusion: {summary['fused']}/{summary['pages']} pages; leaderboards in {out}")
    print(f"fusion: ranking basis: {summary['ranking_basis']}")
    ranked = [r for r in summary.get("ranking", []) if r.get("rank")]
    if ranked:
        top = ranked[0]
        print(
            f"fusion: best variant {top['variant']} ({summary['ranked_by']} {top[summary['ranked_by']]:.3f})"
        )
    return 0
