"""The demo end to end (embedded sources, fusion, review) on the bundled pages, as `make demo` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_demo_end_to_end_on_bundled_pages(tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints",
            "newsbag_demo",
            f"run_dir={run_dir}",
            "runtime=host",
            "workers=1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[3/3] review" in r.stdout and "variant leaderboard" in r.stdout
    assert "ranking basis: ground truth on 5 of 5 pages" in r.stdout
    assert "  clean    (3 pages): consensus " in r.stdout and "  degraded (2 pages): consensus " in r.stdout
    fusion = run_dir / "outputs" / "fusion"
    rows = [
        ln.split("\t")
        for ln in (fusion / "variant_leaderboard.tsv").read_text().splitlines()
        if not ln.startswith("#")
    ]
    assert rows[0][:3] == ["rank", "source", "variant"]
    assert {row[1] for row in rows[1:]} == {"cdla", "ppocr_det", "ppocrv6_det"}
    assert all(row[0] != "-" for row in rows[1:])  # truth ranks every variant
    acc = [
        ln.split("\t") for ln in (fusion / "accuracy.tsv").read_text().splitlines() if not ln.startswith("#")
    ]
    f1 = {(row[0], row[2]): float(row[6]) for row in acc[1:]}
    for group in ("clean", "degraded", "all"):
        singles = [v for (g, k), v in f1.items() if g == group and "/" in k]
        assert f1[group, "consensus"] > max(singles), (group, f1)  # the fused layout beats every source
    pages = sorted((run_dir / "review" / "top20_informative" / "pages").glob("*.png"))
    assert len(pages) == 5 and (run_dir / "review" / "summary.png").stat().st_size > 10_000
    for stage in ("newsbag_embedded", "fusion", "review", "newsbag_demo"):
        report = json.loads((run_dir / "jobs" / stage / "run_report.json").read_text())
        assert report["exit_status"] == 0, stage


def test_demo_rejects_an_unknown_stage(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints",
            "newsbag_demo",
            f"run_dir={tmp_path}",
            "stages=[embedded,fusion]",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: unknown stage 'embedded'") and "fix:" in r.stderr
