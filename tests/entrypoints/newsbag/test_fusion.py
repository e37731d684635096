"""Fusion on hand-made pages: agreement, disjoint, nested, line granularity, ranking, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from entrypoints.newsbag import fusion, geometry
from entrypoints.newsbag.schema import page_record, read_page, source_pages_dir, write_page

REPO = Path(__file__).resolve().parents[3]
W = H = 1000
LAYOUT = [
    (20, 20, 980, 120, "masthead"),
    (20, 150, 480, 260, "title"),
    (20, 280, 480, 950, "text"),
    (520, 150, 980, 600, "figure"),
    (520, 620, 980, 680, "caption"),
    (520, 700, 980, 950, "text"),
]


def rec(source: str, variant: str, boxes, page_id: str = "p1", gran: str = "block", score: float = 0.9):
    return page_record(
        page_id=page_id,
        image=f"/nowhere/{page_id}.png",
        width=W,
        height=H,
        source=source,
        variant=variant,
        granularity=gran,
        boxes=[
            {
                "x0": float(a),
                "y0": float(b),
                "x1": float(c),
                "y1": float(d),
                "label": lab,
                "raw_label": lab,
                "score": score,
            }
            for a, b, c, d, lab in boxes
        ],
    )


def jitter(boxes, dx: float):
    return [(a + dx, b + dx, c + dx, d + dx, lab) for a, b, c, d, lab in boxes]


def test_iou_matrix_exact():
    a = np.array([[0, 0, 10, 10], [0, 0, 5, 10]], float)
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20]], float)
    np.testing.assert_allclose(geometry.iou_matrix(a, b), [[1.0, 0.0], [0.5, 0.0]])


def test_agreement_gives_the_shared_layout_and_perfect_scores():
    recs = {f"{s}/v": rec(s, "v", jitter(LAYOUT, d)) for s, d in (("a", 0), ("b", 2), ("c", -2))}
    res = fusion.fuse_page("p1", recs, fusion.Settings())
    got = sorted((round(b["x0"]), round(b["y0"]), b["label"]) for b in res.consensus["boxes"])
    assert got == sorted((a, b, lab) for a, b, _, _, lab in LAYOUT)
    # every source backs every box at score 0.9: the score-weighted support is 0.9
    assert all(b["score"] == pytest.approx(0.9) for b in res.consensus["boxes"])
    for counts in res.scores.values():
        assert counts["tp"] == counts["pred"] == counts["ref"] == len(LAYOUT)
        assert counts["coverage"] > 0.95
    assert res.disagreement is not None and res.disagreement < 0.03


def test_disjoint_sources_keep_only_majority_boxes():
    recs = {
        "a/v": rec("a", "v", LAYOUT),
        "b/v": rec("b", "v", LAYOUT),
        "e/v": rec("e", "v", LAYOUT),
        "c/v": rec("c", "v", [(600, 960, 700, 990, "page_number")]),
    }
    res = fusion.fuse_page("p1", recs, fusion.Settings())
    labels = sorted(b["label"] for b in res.consensus["boxes"])
    assert labels == sorted(lab for *_, lab in LAYOUT)  # c's lone box lacks support
    assert res.scores["c/v"]["tp"] == 0 and res.scores["c/v"]["coverage"] == 0.0
    assert res.scores["a/v"]["tp"] == len(LAYOUT)


def test_label_vote_and_label_aware_matching():
    boxes = [(100, 100, 400, 400, "text")]
    recs = {
        "a/v": rec("a", "v", boxes),
        "b/v": rec("b", "v", boxes),
        "c/v": rec("c", "v", [(100, 100, 400, 400, "table")]),
    }
    res = fusion.fuse_page("p1", recs, fusion.Settings())
    assert [b["label"] for b in res.consensus["boxes"]] == ["text"]
    c = res.scores["c/v"]
    assert (c["tp"], c["loc_tp"], c["coverage"]) == (0, 1, 0.0)  # right place, wrong label


def test_nested_blocks_score_low_on_boxes_but_high_on_coverage():
    big = [(100, 100, 900, 900, "text")]
    split = [(100, 100, 900, 360, "text"), (100, 370, 900, 630, "text"), (100, 640, 900, 900, "text")]
    recs = {"a/v": rec("a", "v", big), "b/v": rec("b", "v", split)}
    res = fusion.fuse_page("p1", recs, fusion.Settings())
    assert res.scores["a/v"]["tp"] == 0
    assert res.scores["a/v"]["coverage"] > 0.9 and res.scores["b/v"]["coverage"] > 0.9


def test_text_lines_are_grouped_into_blocks_before_comparison():
    # two columns of 10 lines each: the OCR source sees lines, the layout source blocks
    lines = [(x, y, x + 400, y + 20, "text") for x in (60, 540) for y in range(300, 600, 30)]
    blocks = [(60, 300, 460, 590, "text"), (540, 300, 940, 590, "text")]
    recs = {"ocr/det": rec("ocr", "det", lines, gran="line"), "lay/v": rec("lay", "v", blocks)}
    res = fusion.fuse_page("p1", recs, fusion.Settings())
    assert res.scores["ocr/det"]["pred"] == 2  # 20 lines -> 2 column blocks, the gutter keeps them apart
    assert res.scores["ocr/det"]["tp"] == 2 and res.scores["lay/v"]["tp"] == 2
    grouped = geometry.lines_to_blocks(geometry.Boxes.from_record(recs["ocr/det"]))
    np.testing.assert_allclose(sorted(grouped.xyxy.tolist()), [[60, 300, 460, 590], [540, 300, 940, 590]])


def test_words_on_one_line_join_but_far_columns_do_not():
    words = geometry.Boxes(
        np.array([[0, 0, 50, 20], [60, 0, 120, 20], [400, 0, 450, 20]], float),
        np.zeros(3, np.int64),
        np.ones(3),
    )
    assert len(geometry.lines_to_blocks(words)) == 2


def test_line_grouping_splits_at_type_size_changes_and_paragraph_breaks():
    head = [(100, 100, 400, 130, "text")]  # 30 px headline
    byline = [(100, 136, 180, 152, "text")]  # 16 px, smaller type
    para1 = [(100, y, 400, y + 16, "text") for y in range(164, 260, 20)]  # leading 4 px
    para2 = [(100, y, 400, y + 16, "text") for y in range(282, 380, 20)]  # 18 px paragraph break
    lines = geometry.Boxes.from_record(rec("ocr", "det", head + byline + para1 + para2, gran="line"))
    got = sorted(geometry.lines_to_blocks(lines).xyxy.tolist())
    np.testing.assert_allclose(
        got, [[100, 100, 400, 130], [100, 136, 180, 152], [100, 164, 400, 260], [100, 282, 400, 378]]
    )


def test_text_line_sources_abstain_from_the_label_vote():
    # one layout model labels a masthead and a title; the OCR lines behind them all say "text"
    lay = [(20, 20, 980, 120, "masthead"), (20, 150, 480, 180, "title")]
    ocr = [(20, 20, 980, 120, "text"), (20, 150, 480, 180, "text")]
    recs = {"lay/v": rec("lay", "v", lay), "ocr/det": rec("ocr", "det", ocr, gran="line")}
    res = fusion.fuse_page("p1", recs, fusion.Settings())
    assert sorted(b["label"] for b in res.consensus["boxes"]) == ["masthead", "title"]
    only_ocr = fusion.fuse_page(
        "p1",
        {"ocr/det": recs["ocr/det"], "ocr2/det": rec("ocr2", "det", ocr, gran="line")},
        fusion.Settings(),
    )
    assert {b["label"] for b in only_ocr.consensus["boxes"]} == {"text"}  # nobody labelled: stays text


def test_consensus_is_not_worse_than_the_median_variant():
    """Four sources with different, independent mistakes; the fused layout beats the typical one."""
    gt = rec("ground_truth", "gt", LAYOUT)
    a = [(20, 20, 980, 120, "title"), *LAYOUT[1:], (600, 960, 700, 990, "page_number")]  # bad label, extra
    b = jitter(LAYOUT[:4] + LAYOUT[5:], 3)  # misses the caption
    c = [*LAYOUT[:3], (520, 150, 980, 600, "table"), *LAYOUT[4:]]  # figure called a table
    lines = [(20, 150, 480, 172, "text")] + [(20, y, 480, y + 18, "text") for y in range(282, 950, 22)]
    recs = {
        "a/v": rec("a", "v", a),
        "b/v": rec("b", "v", b),
        "c/v": rec("c", "v", c),
        "ocr/det": rec("ocr", "det", lines, gran="line"),
    }
    res = fusion.fuse_page("p1", recs, fusion.Settings(), gt)
    f1 = {k: 2 * v["tp"] / (v["pred"] + v["ref"]) for k, v in res.gt_scores.items()}
    variants = sorted(v for k, v in f1.items() if k != "consensus")
    assert f1["consensus"] >= float(np.median(variants)), f1
    assert f1["consensus"] >= max(variants), f1  # here every mistake is outvoted
    assert sorted(b["label"] for b in res.consensus["boxes"]) == sorted(lab for *_, lab in LAYOUT)


def write_sources(run_dir: Path, sources: dict[str, list], pages=("p1", "p2", "p3")):
    for key, boxes in sources.items():
        src, var = key.split("/")
        for pid in pages:
            write_page(source_pages_dir(run_dir, src, var) / f"{pid}.json", rec(src, var, boxes, page_id=pid))


class FakeRun:
    def __init__(self):
        self.report = {"skipped": [], "outputs": [], "steps": []}

    def skip(self, item, reason):
        self.report["skipped"].append({"item": item, "reason": reason})

    def output(self, p):
        self.report["outputs"].append(str(p))

    def step(self, name, **kw):
        import contextlib

        @contextlib.contextmanager
        def cm():
            yield {}

        return cm()


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    cols = lines[0].split("\t")
    return [dict(zip(cols, ln.split("\t"), strict=True)) for ln in lines[1:]]


def write_gt(run_dir: Path, page_ids, boxes=LAYOUT, condition: str = "clean") -> Path:
    """Truth next to the page images the source records name (``/nowhere`` is replaced)."""
    pages = run_dir / "pages"
    pages.mkdir(exist_ok=True)
    for pid in page_ids:
        gt = rec("ground_truth", "gt", boxes, page_id=pid)
        gt["image"] = str(pages / f"{pid}.png")
        gt["condition"] = condition
        write_page(pages / f"{pid}.gt.json", gt)
    for path in (run_dir / "outputs" / "sources").rglob("*.json"):
        r = read_page(path)
        r["image"] = str(pages / f"{r['page_id']}.png")
        write_page(path, r)
    return pages


BAD = [(700, 20, 760, 60, "other"), (30, 700, 90, 760, "other"), (300, 400, 360, 460, "other")]


def test_leaderboard_ranks_by_truth_and_a_bad_variant_last(tmp_path):
    write_sources(
        tmp_path,
        {
            "a/base": LAYOUT,
            "a/shift": jitter(LAYOUT, 4),
            "b/base": jitter(LAYOUT, -3),
            "c/base": LAYOUT[:-1],
            "d/bad": BAD,
        },
    )
    write_gt(tmp_path, ("p1", "p2", "p3"))
    summary = fusion.fuse_run(tmp_path, fusion.Settings(), run=FakeRun(), workers=1, progress=False)
    out = tmp_path / "outputs" / "fusion"
    text = (out / "variant_leaderboard.tsv").read_text()
    assert text.startswith("# newsbag variant leaderboard. Ranking basis: ground truth on 3 of 3 pages")
    rows = read_tsv(out / "variant_leaderboard.tsv")
    # a/base, a/shift (4 px) and b/base (3 px) all match the truth at IoU 0.5: equal F1, so coverage
    # (the exact one covers the truth best) orders them, never their names
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [float(r["gt_f1"]) for r in rows[:3]] == [1.0, 1.0, 1.0] and rows[0]["variant"] == "base"
    assert float(rows[0]["gt_coverage"]) > float(rows[1]["gt_coverage"]) > float(rows[2]["gt_coverage"])
    assert rows[-1]["source"] == "d" and rows[-1]["variant"] == "bad" and float(rows[-1]["gt_f1"]) == 0.0
    assert rows[3]["variant"] == "base" and rows[3]["source"] == "c"  # misses one of six blocks
    assert float(rows[3]["gt_f1"]) == pytest.approx(2 * 5 / 11, abs=1e-4)
    assert all(r["agree_f1"] != "-" for r in rows)  # agreement shown beside it
    srows = read_tsv(out / "source_leaderboard.tsv")
    assert srows[-1]["source"] == "d" and [r["rank"] for r in srows] == ["1", "2", "3", "4"]
    assert summary["ranked_by"] == "gt_f1" and summary["ranking"][-1]["variant"] == "d/bad"
    cons = read_page(out / "pages" / "p1.json")
    assert cons["source"] == "consensus" and len(cons["boxes"]) == len(LAYOUT)
    assert (out / "fusion_complete.json").is_file()
    assert len(read_tsv(out / "page_scores.tsv")) == 3


def test_without_truth_agreement_ranks_only_with_three_sources(tmp_path):
    three = tmp_path / "three"
    write_sources(three, {"a/v": LAYOUT, "b/v": jitter(LAYOUT, 3), "d/bad": BAD})
    s3 = fusion.fuse_run(three, fusion.Settings(), run=FakeRun(), workers=1, progress=False)
    assert s3["ranked_by"] == "agree_f1" and "leave-one-out agreement among 3 sources" in s3["ranking_basis"]
    rows = read_tsv(three / "outputs" / "fusion" / "variant_leaderboard.tsv")
    assert [r["rank"] for r in rows] == ["1", "1", "3"] and rows[-1]["source"] == "d"
    two = tmp_path / "two"
    write_sources(two, {"a/v": LAYOUT, "d/bad": BAD})
    s2 = fusion.fuse_run(two, fusion.Settings(), run=FakeRun(), workers=1, progress=False)
    assert s2["ranked_by"] is None and "agreement cannot rank" in s2["ranking_basis"]
    text = (two / "outputs" / "fusion" / "variant_leaderboard.tsv").read_text()
    assert "agreement cannot rank" in text.splitlines()[0]
    rows = read_tsv(two / "outputs" / "fusion" / "variant_leaderboard.tsv")
    assert [r["rank"] for r in rows] == ["-", "-"] and {r["source"] for r in rows} == {"a", "d"}
    assert all(r["agree_f1"] != "-" for r in rows)  # both shown, neither ranked


def test_equal_scores_share_a_rank_and_never_fall_back_to_names():
    from entrypoints.newsbag.report import competition_ranks

    assert competition_ranks([(0.5, 0.2), (0.5, 0.2), (0.7, 0.1), None, (0.5, 0.1)]) == [2, 2, 1, None, 4]


def test_bad_inputs_are_skipped_with_reasons_and_partial_rows_say_so(tmp_path):
    write_sources(tmp_path, {"a/v": LAYOUT, "b/v": LAYOUT}, pages=("p1", "p2"))
    write_sources(tmp_path, {"c/v": LAYOUT}, pages=("p1",))  # covers another page set
    write_gt(tmp_path, ("p1", "p2"))
    (tmp_path / "pages" / "p2.gt.json").write_text('{"page_id": "p2", "boxes": 3}')  # malformed truth
    (source_pages_dir(tmp_path, "b", "v") / "p2.json").write_text("{not json")  # corrupt record
    run = FakeRun()
    summary = fusion.fuse_run(tmp_path, fusion.Settings(), run=run, workers=1, progress=False)
    reasons = {s["item"]: s["reason"] for s in run.report["skipped"]}
    assert reasons["c/v"].startswith("covers 1 of 2 pages; not scored on the other 1 (p2)")
    assert "not valid JSON" in reasons["b/v/p2"]
    assert "only one variant" in reasons["a/v/p2"]
    assert reasons["ground_truth/p2"].startswith("malformed ground truth, page not scored against truth")
    assert all("\n" not in r for r in reasons.values())
    assert summary["fused"] == 2 and summary["gt_pages"] == 1
    rows = {r["source"]: r for r in read_tsv(tmp_path / "outputs" / "fusion" / "variant_leaderboard.tsv")}
    assert rows["c"]["missing"] == "1" and rows["c"]["pages"] == "1"
    assert rows["c"]["note"].startswith("partial: 1 of 2 pages")
    assert "ground truth on 1 of 2 pages" in summary["ranking_basis"]


def test_accuracy_against_ground_truth_by_condition(tmp_path):
    write_sources(tmp_path, {"a/v": LAYOUT, "b/v": jitter(LAYOUT, 3), "c/v": LAYOUT[:2]}, pages=("p1", "p2"))
    pages = write_gt(tmp_path, ("p1",))
    gt2 = read_page(pages / "p1.gt.json")
    write_page(pages / "p2.gt.json", {**gt2, "page_id": "p2", "condition": "degraded: blur, jpeg"})
    summary = fusion.fuse_run(tmp_path, fusion.Settings(), run=FakeRun(), progress=False)
    rows = read_tsv(tmp_path / "outputs" / "fusion" / "accuracy.tsv")
    by = {(r["group"], r["system"]): r for r in rows}
    assert {g for g, _ in by} == {"all", "clean", "degraded"}
    assert float(by["all", "consensus"]["f1"]) == 1.0 and float(by["clean", "a/v"]["f1"]) == 1.0
    assert by["degraded", "consensus"]["pages"] == "1" and by["all", "consensus"]["pages"] == "2"
    assert float(by["all", "c/v"]["recall"]) == pytest.approx(2 / 6, abs=1e-4)
    assert summary["accuracy"]["all"]["consensus"]["f1"] == 1.0
    if fusion.cons_mod.wbf_available()[0]:
        assert float(by["all", "baseline:wbf"]["f1"]) == 1.0  # three agreeing sources: WBF agrees too


def test_app_end_to_end_rerun_skips_only_on_an_exact_fingerprint(tmp_path):
    write_sources(tmp_path, {"a/v": LAYOUT, "b/v": jitter(LAYOUT, 2)})
    cmd = [sys.executable, "-m", "entrypoints", "fusion", f"run_dir={tmp_path}", "workers=1"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    assert "ranking basis: none: no ground truth" in first.stdout
    report = json.loads((tmp_path / "jobs" / "fusion" / "run_report.json").read_text())
    assert report["exit_status"] == 0 and report["fusion"]["fused"] == 3
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert "nothing to do" in second.stdout
    third = subprocess.run([*cmd, "fusion.min_support=0.6"], capture_output=True, text=True, cwd=REPO)
    assert third.returncode == 0 and "nothing to do" not in third.stdout  # other settings: recomputed
    path = source_pages_dir(tmp_path, "b", "v") / "p2.json"
    write_page(path, rec("b", "v", LAYOUT[:3], page_id="p2"))  # an input changed
    fourth = subprocess.run([*cmd, "fusion.min_support=0.6"], capture_output=True, text=True, cwd=REPO)
    assert "nothing to do" not in fourth.stdout
    empty = tmp_path / "empty"
    bad = subprocess.run([*cmd[:4], f"run_dir={empty}"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: no source outputs") and "fix:" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_settings_from_config_overrides_defaults_and_refuses_bad_values():
    from omegaconf import OmegaConf

    from suite_core.errors import UserError

    s = fusion.settings_from(
        OmegaConf.create({"fusion": {"grid": 32, "cluster_iou": 0.4, "source_weights": {"dell": 2}}})
    )
    assert (s.grid, s.cluster_iou, s.match_iou, s.source_weights) == (32, 0.4, 0.5, {"dell": 2.0})
    assert isinstance(s.grid, int) and fusion.settings_from(OmegaConf.create({})) == fusion.Settings()
    for bad, match in (
        ({"min_support": 1.5}, "min_support"),
        ({"method": "union"}, "method=union"),
        ({"grid": "many"}, "bad fusion setting"),
        ({"colour": 1}, "unknown fusion setting"),
        ({"source_weights": {"a": 0}}, "positive"),
    ):
        with pytest.raises(UserError, match=match):
            fusion.settings_from(OmegaConf.create({"fusion": bad}))


def _gt_f1(pages, s):
    from entrypoints.newsbag.scoring import Tally

    tallies: dict[str, Tally] = {}
    for recs, gt in pages:
        for k, v in fusion.fuse_page("p", recs, s, gt).gt_scores.items():
            tallies.setdefault(k, Tally()).add(v)
    return {k: t.metrics()["f1"] for k, t in tallies.items()}


@pytest.mark.parametrize("n_sources", [2, 3])
def test_consensus_beats_every_single_source_on_synthetic_pages_with_truth(n_sources):
    from bench import _newsbag_synth as synth

    rng = np.random.default_rng(11)
    pages = [synth.page(rng, f"p{i}", synth.SOURCES[:n_sources]) for i in range(12)]
    f1 = _gt_f1(pages, fusion.Settings())
    singles = {k: v for k, v in f1.items() if "/" in k}
    assert len(singles) == n_sources
    assert f1["consensus"] > max(singles.values()) + 0.02, f1
    if fusion.cons_mod.wbf_available()[0]:
        assert "baseline:wbf" in f1 and f1["baseline:wbf"] > max(singles.values()), f1


def test_two_sources_never_make_a_union_and_a_source_votes_once():
    a = [(20, 20, 300, 300, "text")]
    b = [(600, 600, 900, 900, "text")]
    weak = fusion.fuse_page(
        "p1", {"a/v": rec("a", "v", a, score=0.6), "b/v": rec("b", "v", b, score=0.6)}, fusion.Settings()
    )
    assert weak.consensus["boxes"] == []  # each box has one of two sources behind it, unsure
    sure = fusion.fuse_page(
        "p1", {"a/v": rec("a", "v", a, score=0.95), "b/v": rec("b", "v", b, score=0.6)}, fusion.Settings()
    )
    assert [(bx["x0"], bx["score"]) for bx in sure.consensus["boxes"]] == [(20, 0.475)]  # only the sure one
    # five thresholds of one model agree on a box the two other sources do not see: still one vote of three
    recs = {f"a/t{i}": rec("a", f"t{i}", a, score=0.9) for i in range(5)}
    recs |= {"b/v": rec("b", "v", b, score=0.9), "c/v": rec("c", "v", b, score=0.9)}
    res = fusion.fuse_page("p1", recs, fusion.Settings())
    assert [bx["x0"] for bx in res.consensus["boxes"]] == [600]


def test_wbf_is_a_selectable_method_that_runs_ensemble_boxes():
    ensemble_boxes = pytest.importorskip("ensemble_boxes")
    recs = {
        "a/v": rec("a", "v", LAYOUT, score=0.9),
        "b/v": rec("b", "v", jitter(LAYOUT, 6), score=0.7),
        "c/v": rec("c", "v", LAYOUT[:3], score=0.8),
    }
    res = fusion.fuse_page("p1", recs, fusion.Settings(method="wbf", wbf_score_thr=0.3))
    assert res.consensus["variant"] == "wbf"
    keys = sorted(recs)
    norm = np.array([W, H, W, H], float)
    boxes, scores, _ = ensemble_boxes.weighted_boxes_fusion(
        [(geometry.Boxes.from_record(recs[k]).xyxy / norm).tolist() for k in keys],
        [geometry.Boxes.from_record(recs[k]).score.tolist() for k in keys],
        [geometry.Boxes.from_record(recs[k]).label.tolist() for k in keys],
        weights=[1, 1, 1],
        iou_thr=0.5,
    )
    want = sorted((float(x0) * W, float(sc)) for (x0, *_), sc in zip(boxes, scores, strict=True) if sc >= 0.3)
    got = sorted((bx["x0"], bx["score"]) for bx in res.consensus["boxes"])
    assert len(got) == len(want) == len(LAYOUT)
    np.testing.assert_allclose(np.array(got), np.array(want), atol=0.02)
    assert set(res.scores) == set(recs)  # leave-one-out works for WBF too


def test_sparse_pairs_equal_the_dense_iou_matrix():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1000, (300, 2))
    wh = rng.uniform(5, 300, (300, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    group = rng.integers(0, 4, 300)
    for thr in (0.1, 0.5, 0.9):
        i, j, iou = geometry.iou_pairs(boxes, thr, group=group)
        dense = geometry.iou_matrix(boxes, boxes)
        want = {
            (a, b) for a, b in zip(*np.nonzero(np.triu(dense >= thr, 1)), strict=True) if group[a] != group[b]
        }
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == want
        np.testing.assert_allclose(iou, dense[i, j])


def _near_threshold_boxes(rng, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Random boxes plus jittered and resized copies, so many pairs sit close to any IoU threshold."""
    xy = rng.uniform(0, 2000, (n, 2))
    wh = rng.uniform(2, 400, (n, 2))
    base = np.concatenate([xy, xy + wh], axis=1)
    scale = rng.uniform(0.6, 1.4, (n, 1))
    shift = rng.normal(0, 1, (n, 2)) * wh * rng.uniform(0, 0.6, (n, 1))
    cxy = (base[:, :2] + base[:, 2:]) / 2 + shift
    half = wh * scale / 2
    copies = np.concatenate([cxy - half, cxy + half], axis=1)
    return np.concatenate([base, copies]), rng.integers(0, 4, 2 * n)


@pytest.mark.parametrize("thr", [0.05, 0.3, 0.5, 0.51, 0.7, 0.95, 1.0])
def test_iou_windows_never_miss_a_pair_near_the_threshold(thr):
    rng = np.random.default_rng(int(thr * 100))
    boxes, group = _near_threshold_boxes(rng)
    dense = geometry.iou_matrix(boxes, boxes)
    i, j, iou = geometry.iou_pairs(boxes, thr, group=group)
    above = zip(*np.nonzero(np.triu(dense >= thr, 1)), strict=True)
    want = {(a, b) for a, b in above if group[a] != group[b]}
    got = list(zip(i.tolist(), j.tolist(), strict=True))
    assert len(got) == len(set(got)) and set(got) == want  # each pair exactly once
    np.testing.assert_array_equal(iou, dense[i, j])
    a, b = boxes[: len(boxes) // 2], boxes[len(boxes) // 2 :]
    ga, gb = group[: len(a)], group[len(a) :]
    cross = geometry.iou_matrix(a, b)
    i, j, iou = geometry.cross_iou_pairs(a, b, thr, ga, gb)
    want = {(p, q) for p, q in zip(*np.nonzero(cross >= thr), strict=True) if ga[p] == gb[q]}
    got = list(zip(i.tolist(), j.tolist(), strict=True))
    assert len(got) == len(set(got)) and set(got) == want
    np.testing.assert_array_equal(iou, cross[i, j])


def test_window_search_equals_brute_force_in_any_layout():
    rng = np.random.default_rng(5)
    for n_q, n_p, spread in ((50, 400, 1.0), (300, 300, 0.01), (1, 50, 1.0), (200, 1, 1.0)):
        qx, qy = rng.uniform(0, 1000, n_q), rng.uniform(0, 3000, n_q)
        rx, ry = rng.uniform(0, 300, n_q), rng.uniform(0, 100, n_q) * spread
        px, py = rng.uniform(-100, 1100, n_p), rng.uniform(-100, 3100, n_p)
        px[: n_p // 4] = np.round(px[: n_p // 4], -2)  # points on window edges
        qi, pi = geometry.grid_query(qx, qy, rx, ry, px, py)
        inside = (np.abs(px[None, :] - qx[:, None]) <= rx[:, None]) & (
            np.abs(py[None, :] - qy[:, None]) <= ry[:, None]
        )
        want = sorted(zip(*(x.tolist() for x in np.nonzero(inside)), strict=True))
        assert sorted(zip(qi.tolist(), pi.tolist(), strict=True)) == want


def _synth_fusers(n_pages: int = 6, seed: int = 21):
    from bench import _newsbag_synth as synth

    rng = np.random.default_rng(seed)
    models = (*synth.SOURCES[:3], synth.SourceModel(0.85, 8, 0.9, 3, line=True))
    s = fusion.Settings(source_weights={"s0": 2.0})
    for i in range(n_pages):
        recs, gt = synth.page(rng, f"p{i}", models, n_blocks=int(rng.integers(5, 150)))
        recs["s1/w"] = {**recs["s1/v"], "variant": "w", "boxes": recs["s1/v"]["boxes"][::2]}
        keys, per_variant, _ = fusion.prepare(recs, s, synth.W, synth.H, f"p{i}")
        line = [recs[k]["granularity"] == "line" for k in keys]
        yield fusion.Fuser(keys, per_variant, line, s, synth.W, synth.H, "consensus"), gt, s


def test_batched_leave_one_out_equals_one_consensus_at_a_time():
    for fuser, _, _ in _synth_fusers():
        lefts = [None, *range(len(fuser.voters))]
        boxes, row = fuser.fuse_many(lefts)
        for r, g in enumerate(lefts):
            active = np.ones(len(fuser.voters), bool)
            if g is not None:
                active[g] = False
            one = fusion.cons_mod.consensus_many(
                fuser.cl, fuser.voter_weight, active[None], fuser.s.min_support, fuser.s.min_confidence
            )[0]
            part = boxes.take(np.flatnonzero(row == r))
            assert len(part) > 0
            np.testing.assert_array_equal(part.xyxy, one.xyxy)
            np.testing.assert_array_equal(part.label, one.label)
            np.testing.assert_array_equal(part.score, one.score)


def test_batched_scoring_equals_scoring_each_variant_alone():
    from entrypoints.newsbag.scoring import compare, compare_sets, label_rasters

    for fuser, gt, s in _synth_fusers():
        w, h = fuser.width, fuser.height
        boxes, row = fuser.fuse_many([None, *range(len(fuser.voters))])
        refs = [boxes.take(np.flatnonzero(row == r + 1)) for r in range(len(fuser.voters))]
        refs.append(geometry.Boxes.from_record(gt))  # and every variant against the truth
        preds = [*fuser.per_variant, *fuser.per_variant]
        ref_of = np.concatenate([fuser.voter_of_variant, np.full(len(fuser.per_variant), len(refs) - 1)])
        got = compare_sets(
            geometry.concat(preds),
            np.repeat(np.arange(len(preds)), [len(p) for p in preds]),
            len(preds),
            geometry.concat(refs),
            np.repeat(np.arange(len(refs)), [len(r) for r in refs]),
            len(refs),
            ref_of,
            w,
            h,
            s.match_iou,
            s.grid,
        )
        for k, p in enumerate(preds):
            ref = refs[ref_of[k]]
            want = compare(p, ref, label_rasters(ref, w, h, s.grid), w, h, s.match_iou, s.grid)
            assert got[k] == want
            assert all(type(got[k][f]) is type(want[f]) for f in want)
