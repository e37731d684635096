"""Manifest on real MP4s, chunking, the batch driver (skip, resume, kill, failures), status."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from entrypoints.flowportal import manifest as mf
from entrypoints.flowportal.status import _ranges, array_groups
from tests.entrypoints.flowportal.conftest import (
    REPO,
    batch_overrides,
    edit_chunk,
    entry,
    make_manifest,
    make_mp4,
    mpath,
)

# n_frames at 24 fps -> k_frames after 24->8 fps (int(n/3) usable)
LENGTHS = {"a": 160, "b": 130, "c": 70, "d": 40, "e": 27, "f": 26, "g": 100, "h": 64}
EXPECT_K = {"a": 49, "b": 41, "c": 21, "d": 13, "e": 9, "f": None, "g": 21, "h": 21}


@pytest.fixture
def videos(tmp_path) -> Path:
    d = tmp_path / "videos"
    for name, n in LENGTHS.items():
        make_mp4(d / f"{name}.mp4", n)
    (d / "broken.mp4").write_bytes(b"not a video at all")
    return d


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cfg(**kw):
    base = dict(
        input_fps=24,
        target_fps=8,
        seed=42,
        num_select=3,
        num_chunks=2,
        mode="unselected",
        prompts_tar=[f"p{i}" for i in range(10)],
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_k_frames_rule():
    assert [mf.k_frames_for(n, 24, 8) for n in (147, 146, 123, 63, 39, 27, 26)] == [
        49,
        41,
        41,
        21,
        13,
        9,
        None,
    ]


def test_frame_count_reads_real_mp4s(videos):
    assert {p.stem: mf.frame_count(p) for p in videos.glob("[a-h].mp4")} == LENGTHS
    assert mf.frame_count(videos / "broken.mp4") == 0


def test_selection_is_seeded_and_partitioned():
    counts = {f"v{i:03d}.mp4": 30 + i for i in range(50)}
    sel = mf.build(counts, cfg=cfg(num_select=8, mode="selected", num_chunks=3))
    uns = mf.build(counts, cfg=cfg(num_select=8, mode="unselected", num_chunks=3))
    again = mf.build(counts, cfg=cfg(num_select=8, mode="unselected", num_chunks=3))
    names = lambda rows: [r["video_name"] for r in rows]  # noqa: E731
    assert len(sel["rows"]) == 8 and len(uns["rows"]) == 42
    assert not set(names(sel["rows"])) & set(names(uns["rows"]))
    assert uns["rows"] == again["rows"]
    assert [len(c) for c in uns["chunks"]] == [14, 14, 14]
    assert [r for c in uns["chunks"] for r in c] == uns["rows"]
    assert all(0 <= r["prompt_id"] <= 9 for r in uns["rows"])


def test_manifest_app_on_real_videos(videos, tmp_path):
    batch = make_manifest(videos, tmp_path / "batch", num_select=2, num_chunks=3)
    summary = json.loads((batch / "manifest" / "manifest.json").read_text())
    assert summary["videos"] == 9 and summary["unreadable"] == 1 and summary["too_short"] == 1
    assert summary["valid"] == 7 and summary["rows"] == 5 and summary["chunks"] == [2, 2, 1]
    rows = rows_of(mpath(batch, "unselected.csv"))
    assert list(rows[0]) == ["video_name", "n_frames", "k_frames", "prompt_id"]
    for r in rows:
        assert (
            int(r["n_frames"]) == LENGTHS[r["video_name"]] and int(r["k_frames"]) == EXPECT_K[r["video_name"]]
        )
    lines = mpath(batch, "prompts.txt").read_text().splitlines()
    assert lines[0].startswith("SRC|a person is signing") and lines[1].startswith("0|") and len(lines) == 11
    report = json.loads(next(batch.glob("**/run_report.json")).read_text())
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert "too short" in reasons["f.mp4"] and "unreadable" in reasons["broken.mp4"]


def test_array_groups_respect_max_array_size():
    assert array_groups([0, 1, 2, 9], 1001) == [(0, [0, 1, 2, 9])]
    assert array_groups([5, 1000, 1003, 2500], 1001) == [(0, [5, 1000]), (1001, [2]), (2002, [498])]
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def _batch_setup(tmp_path, videos, staged) -> tuple[Path, list[str]]:
    batch = make_manifest(videos, tmp_path / "batch", num_select=2, num_chunks=2)
    return batch, batch_overrides(batch, videos)


def _log(batch: Path, i: int) -> list[str]:
    return (batch / "progress" / f"chunk{i}.log").read_text().splitlines()


def test_batch_skip_resume_failures_and_status(tmp_path, videos, staged):
    batch, args = _batch_setup(tmp_path, videos, staged)
    rows = rows_of(mpath(batch, "chunk0.csv"))
    victim = rows[1]["video_name"]
    # a row whose prompt id is missing and one whose input vanished
    edit_chunk(batch, "chunk1.csv", "ghost,160,49,3\nnoprompt,160,49,77\nf,26,9,1\n")
    make_mp4(videos / "noprompt.mp4", 160)
    res = entry(
        "flowportal_batch",
        *args,
        "chunk=0",
        env_extra={"CONTAINERS_TEST_FLOWPORTAL_FAIL": f"matanyone:{victim}"},
    )
    assert res.returncode == 1, res.stderr
    log = _log(batch, 0)
    assert len(log) == 3 and f"2/3 FAILED {victim} matanyone reason=exit 1" in log[1]
    assert "chunk 0: 3 videos: 2 OK, 0 skipped (done before), 1 failed, 0 pending" in res.stdout
    # rerun: the two OK videos are skipped, only the failed one runs; no duplicate lines
    res = entry("flowportal_batch", *args, "chunk=0")
    assert res.returncode == 0, res.stderr
    assert "3 videos: 1 OK, 2 skipped (done before), 0 failed, 0 pending" in res.stdout
    log = _log(batch, 0)
    assert len(log) == 3 and log[1].startswith(f"2/3 OK {victim}")
    res = entry("flowportal_batch", *args, "chunk=1")
    assert res.returncode == 1
    log = "\n".join(_log(batch, 1))
    assert "FAILED ghost input reason=input video" in log
    assert "FAILED noprompt input reason=prompt id 77 is not in the prompts file" in log
    assert "FAILED f input reason=too short: 26 frames at 24 fps give fewer than 9 frames at 8 fps" in log
    st = entry("flowportal_status", f"batch_dir={batch}")
    assert st.returncode == 0, st.stderr
    lines = st.stdout.splitlines()
    assert lines[1].split() == ["0", "3", "3", "0", "0", "OK"]
    assert lines[2].split() == ["1", "5", "2", "3", "0", "FAILED"]
    assert "ETA: 0h00m" in st.stdout and "videos/h" in st.stdout
    rs = entry(
        "flowportal_status", f"batch_dir={batch}", "action=resubmit", f"video_dir={videos}", "dry_run=true"
    )
    assert rs.returncode == 0, rs.stderr
    assert "--array=1 " in rs.stdout and "--array=0" not in rs.stdout


def test_chunk_index_out_of_range(tmp_path, videos, staged):
    _, args = _batch_setup(tmp_path, videos, staged)
    res = entry("flowportal_batch", *args, "chunk=7")
    assert res.returncode == 2
    assert "chunk 7 is out of range: the manifest has 2 chunks (0-1)" in res.stderr


def test_killed_mid_stage_rerun_redoes_only_that_video(tmp_path, videos, staged):
    batch, args = _batch_setup(tmp_path, videos, staged)
    rows = rows_of(mpath(batch, "chunk0.csv"))
    victim = rows[1]["video_name"]
    env = dict(os.environ, CONTAINERS_TEST_FLOWPORTAL_HANG=victim)
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints", "flowportal_batch", *args, "chunk=0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    partial = None
    deadline = time.time() + 60
    while time.time() < deadline and partial is None:
        partial = next(
            iter(
                (Path(os.environ["CONTAINERS_NODE_LOCAL"]) / "flowportal").glob(
                    f"work/*/results/flow-edit-{victim}/output_video.mp4"
                )
            ),
            None,
        )
        time.sleep(0.1)
    assert partial is not None, "the fixture never started writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (batch / "outputs" / victim / ".complete.json").exists()
    res = entry("flowportal_batch", *args, "chunk=0")
    assert res.returncode == 0, res.stderr
    assert "3 videos: 2 OK, 1 skipped (done before), 0 failed, 0 pending" in res.stdout
    assert f"] {victim} " in res.stdout and f"] {rows[0]['video_name']} " not in res.stdout
    assert len(_log(batch, 0)) == 3


def test_deadline_stops_cleanly_with_continue_code(tmp_path, videos, staged):
    _, args = _batch_setup(tmp_path, videos, staged)
    res = entry("flowportal_batch", *args, "chunk=0", f"deadline={time.time() + 60}", "deadline_margin_s=120")
    assert res.returncode == 75, res.stderr
    assert "0 OK, 0 skipped (done before), 0 failed, 3 pending; stopped:" in res.stdout
