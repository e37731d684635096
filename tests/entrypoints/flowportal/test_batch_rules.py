"""The batch driver's promises on the fixture checkout: one driver per chunk, settings kept per batch,
exact model set, capped retries, sweeps, logs, per-task reports, migration, timings, resident models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entrypoints.flowportal import manifest as mf
from tests.entrypoints.flowportal.conftest import (
    CHECKOUT,
    REPO,
    batch_overrides,
    entry,
    make_manifest,
    make_mp4,
    mpath,
    stage_models,
)


@pytest.fixture
def videos(tmp_path) -> Path:
    d = tmp_path / "videos"
    for i, n in enumerate((40, 64)):
        make_mp4(d / f"v{i}.mp4", n)
    return d


def one_chunk(tmp_path: Path, videos: Path) -> tuple[Path, list[str]]:
    batch = make_manifest(videos, tmp_path / "batch", num_select=0, num_chunks=1)
    return batch, [*batch_overrides(batch, videos), "chunk=0"]


def marker(batch: Path, name: str) -> dict:
    return json.loads((batch / "outputs" / name / ".complete.json").read_text())


# ------------------------------------------------------------------ item 2: one driver per chunk


def test_second_driver_on_a_chunk_stops_with_the_holder_and_a_dead_holder_is_taken_over(
    tmp_path, videos, staged
):
    batch, args = one_chunk(tmp_path, videos)
    first = mf.read_manifest(mpath(batch, "chunk0.csv"))[0]["video_name"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints", "flowportal_batch", *args],
        cwd=REPO,
        env=dict(os.environ, CONTAINERS_TEST_FLOWPORTAL_HANG=first),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    claim = batch / "claims" / "chunk" / "chunk0.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (batch / "claims" / "video" / f"{first}.json").exists():
        time.sleep(0.1)
    try:
        assert json.loads(claim.read_text())["pid"] == str(proc.pid)
        res = entry("flowportal_batch", *args)
        assert res.returncode == 2, res.stdout
        # the chunk claim names the holder; a driver started in the same second as the holder meets
        # its local run-report folder's writer lock first, which names the same holder
        assert (f"chunk 0 of {batch} is already being processed by host" in res.stderr
                or "run directory is being written by host" in res.stderr), res.stderr
        assert f"pid {proc.pid}" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (batch / "outputs").exists()  # the second driver did nothing
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    res = entry("flowportal_batch", *args)  # the holder is gone: its claims are taken over
    assert res.returncode == 0, res.stderr
    assert "2 videos: 2 OK" in res.stdout and not claim.exists()


# ------------------------------------------------------------------ item 4: settings recorded once per batch


def test_preset_is_recorded_once_and_reused_and_other_settings_are_not_done(tmp_path, videos, staged):
    batch, args = one_chunk(tmp_path, videos)
    assert entry("flowportal_batch", *args).returncode == 0
    rec = json.loads((batch / "batch.json").read_text())
    assert rec["settings"]["preset"]["name"] == "dgx_fast" and rec["settings"]["video"]["width"] == 32
    before = {n: (batch / "outputs" / n / ".complete.json").stat().st_mtime_ns for n in ("v0", "v1")}
    quality = [a if a != "preset=dgx_fast" else "preset=quality" for a in args]
    res = entry("flowportal_batch", *quality)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (
        "this batch dir was started with other settings: preset: recorded dgx_fast, this run quality"
        in res.stderr
    )
    assert "settings=recorded" in res.stderr
    res = entry("flowportal_batch", *quality, "settings=recorded")  # as status action=resubmit passes it
    assert res.returncode == 0 and "2 skipped (done before)" in res.stdout, res.stderr
    rs = entry(
        "flowportal_status", f"batch_dir={batch}", "action=submit", f"video_dir={videos}", "dry_run=true"
    )
    assert rs.returncode == 0, rs.stderr
    assert "FLOWPORTAL_PRESET=dgx_fast" in rs.stdout and " settings=recorded" in rs.stdout
    bad = entry(
        "flowportal_status",
        f"batch_dir={batch}",
        "action=resubmit",
        f"video_dir={videos}",
        "preset=quality",
        "dry_run=true",
    )
    assert (
        bad.returncode == 2 and "preset=quality but this batch was started with preset dgx_fast" in bad.stderr
    )
    # a marker made with other settings is not "done": replacing the settings redoes every video
    res = entry("flowportal_batch", *args, "preset.flowportal.num_inference_steps=25", "settings=replace")
    assert res.returncode == 0 and "2 OK, 0 skipped" in res.stdout, res.stdout + res.stderr
    after = {n: (batch / "outputs" / n / ".complete.json").stat().st_mtime_ns for n in ("v0", "v1")}
    assert all(after[n] > before[n] for n in before)
    st = entry("flowportal_status", f"batch_dir={batch}")
    assert st.stdout.splitlines()[1].split()[:3] == ["0", "2", "2"], st.stdout
    (batch / "batch.json").write_text(json.dumps({**rec, "digest": "0" * 64}))  # a batch recorded otherwise
    st = entry("flowportal_status", f"batch_dir={batch}")
    assert st.stdout.splitlines()[1].split()[:3] == ["0", "2", "0"], st.stdout  # those markers are not OK


# ------------------------------------------------------------------ item 5: the model set, file by file


@pytest.mark.parametrize(
    ("skip", "extra", "says"),
    [
        (
            ("torch/hub/checkpoints/resnet50-19c8e357.pth",),
            ("torch/hub/checkpoints/resnet50-0676ba61.pth",),
            "stage matanyone: torch hub resnet50-19c8e357.pth (MatAnyone encoders)",
        ),
        (
            ("torch/hub/checkpoints/resnet18-5c106cde.pth",),
            (),
            "stage matanyone: torch hub resnet18-5c106cde.pth",
        ),
        (
            ("Wan2.1-Fun-V1.1-1.3B-Control/google/umt5-xxl/tokenizer_config.json",),
            (),
            "stage flowportal: umt5 tokenizer google/umt5-xxl/tokenizer_config.json",
        ),
        (
            (
                "hf/hub/models--zhengpeng7--BiRefNet/snapshots/0123456789abcdef0123456789abcdef01234567/birefnet.py",
            ),
            (),
            "stage preprocess: zhengpeng7/BiRefNet remote code birefnet.py",
        ),
    ],
)
def test_each_file_a_stage_opens_is_checked_by_name(tmp_path, isolated_roots, small, skip, extra, says):
    stage_models(isolated_roots / "nvme" / "models", skip=skip, extra=extra)
    res = entry("flowportal", "preset=dgx_fast", *small)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"missing model file for {says}" in res.stderr and "python -m containers stage" in res.stderr


def test_annotators_are_needed_only_for_the_edge_modes_that_open_them(tmp_path, isolated_roots, small):
    stage_models(isolated_roots / "nvme" / "models", skip=("Annotators/ControlNetHED.pth",))
    ok = entry("flowportal", "preset=dgx_fast", "dry_run=true", *small)  # canny: no Annotators
    assert ok.returncode == 0 and "not staged yet" not in ok.stderr, ok.stderr
    hed = entry("flowportal", "preset=dgx_fast", "preset.edge_mode=hed", *small)
    assert hed.returncode == 2 and "Annotators ControlNetHED.pth (edge_mode=hed)" in hed.stderr


# ------------------------------------------------------------------ item 6: retries, sweeps, logs, reports


def test_failures_are_capped_logs_kept_leftovers_swept_and_reports_per_task(
    tmp_path, videos, staged, isolated_roots
):
    batch, args = one_chunk(tmp_path, videos)
    rows = mf.read_manifest(mpath(batch, "chunk0.csv"))
    victim, good = rows[0]["video_name"], rows[1]["video_name"]
    work = isolated_roots / "nvme" / "flowportal" / "work"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (work / f"chunk7-p{dead.pid}" / "datasets" / "x").mkdir(parents=True)  # a killed task's leftovers
    (work / f"chunk7-p{os.getpid()}").mkdir(parents=True)  # a live one's
    part = batch / "outputs" / good / ".output_video.mp4.abc123.part.mp4"  # a publish killed mid-copy
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half")
    fail = {"CONTAINERS_TEST_FLOWPORTAL_FAIL": f"iclight:{victim}", "SLURM_JOB_ID": "1001"}
    res = entry("flowportal_batch", *args, env_extra=fail)
    assert res.returncode == 1 and "(attempt 1/2)" in res.stdout, res.stdout
    assert (
        not part.exists()
        and not (work / f"chunk7-p{dead.pid}").exists()
        and (work / f"chunk7-p{os.getpid()}").exists()
    )
    kept = batch / "logs" / victim / "iclight.log"
    assert kept.is_file() and "injected failure in iclight" in kept.read_text()
    res = entry("flowportal_batch", *args, env_extra={**fail, "SLURM_JOB_ID": "1002"})
    assert res.returncode == 1 and "(attempt 2/2)" in res.stdout
    res = entry("flowportal_batch", *args, env_extra={**fail, "SLURM_JOB_ID": "1003"})
    assert res.returncode == 1 and f"] {victim} " not in res.stdout  # not tried a third time
    assert "1 gave up after 2 attempts" in res.stdout and f"gave up ({victim})" in res.stderr
    assert "attempts=2 gave-up" in (batch / "progress" / "chunk0.log").read_text()
    reports = sorted(p.parent.name for p in (batch / "jobs" / "chunk0").glob("*/run_report.json"))
    assert reports == ["1001", "1002", "1003"]
    st = entry(
        "flowportal_status", f"batch_dir={batch}", "action=resubmit", f"video_dir={videos}", "dry_run=true"
    )
    assert (
        "1 gave up" in st.stdout
        and "nothing to resubmit" in st.stdout
        and "(attempts 2, gave up)" in st.stdout
    )
    st = entry(
        "flowportal_status",
        f"batch_dir={batch}",
        "action=resubmit",
        f"video_dir={videos}",
        "dry_run=true",
        "max_attempts=3",
    )
    assert "--array=0 " in st.stdout and "max_attempts=3" in st.stdout
    res = entry("flowportal_batch", *args, "max_attempts=3")
    assert res.returncode == 0 and "1 OK, 1 skipped" in res.stdout


# --------------------------------------------------------- item 7: the status quo's layout and outputs


def test_status_quo_model_layout_and_finished_outputs_are_adopted(tmp_path, videos, isolated_roots):
    pm = stage_models(isolated_roots / "nvme" / "models", layout="status_quo", name="pretrained_models")
    batch, args = one_chunk(tmp_path, videos)
    args = [*args, "flowportal.layout=status_quo", f"flowportal.models={pm}"]
    rows = {r["video_name"]: r for r in mf.read_manifest(mpath(batch, "chunk0.csv"))}
    results, datasets = tmp_path / "FlowPortal" / "results", tmp_path / "FlowPortal" / "datasets"
    make_mp4(results / "flow-edit-v0" / "output_video.mp4", int(rows["v0"]["k_frames"]), fps=8)
    make_mp4(
        results / "flow-edit-v0" / "compare_output_video.mp4",
        int(rows["v0"]["k_frames"]),
        fps=8,
        size=(64, 24),
    )
    (datasets / "v0").mkdir(parents=True)
    (datasets / "v0" / "v0_reference.png").write_bytes(b"png")
    out1 = results / "flow-edit-v1" / "output_video.mp4"  # killed mid-write in the status quo
    make_mp4(out1, int(rows["v1"]["k_frames"]), fps=8)
    out1.write_bytes(out1.read_bytes()[: out1.stat().st_size // 2])
    adopt = [a for a in args if a != "chunk=0"]
    res = entry("flowportal_adopt", *adopt, f"results_dir={results}", f"datasets_dir={datasets}")
    assert res.returncode == 0, res.stderr
    assert "1 adopted" in res.stdout and "1 refused" in res.stdout and "not adopted v1" in res.stdout
    m = marker(batch, "v0")
    assert m["adopted_from"] == str(results / "flow-edit-v0") and "v0_reference.png" in m["files"]
    loads = tmp_path / "loads.txt"
    res = entry("flowportal_batch", *args, env_extra={"CONTAINERS_TEST_FLOWPORTAL_LOADS": str(loads)})
    assert res.returncode == 0, res.stderr
    assert "1 OK, 1 skipped (done before)" in res.stdout  # adopted: nothing redone
    assert "] v0 " not in res.stdout and loads.read_text().count("Wan") == 1
    assert (out1.parent / "output_video.mp4").stat().st_size > 0  # the status quo's files only read


# --------------------------------------------------------- throughput: timings, prefetch, resident models


def test_timings_prefetch_and_resident_models_load_once_per_chunk(tmp_path, staged):
    videos = tmp_path / "videos"
    for i in range(3):
        make_mp4(videos / f"r{i}.mp4", 40)
    batch, args = one_chunk(tmp_path, videos)
    loads = tmp_path / "loads.txt"
    cache = (
        "{"
        + ",".join(
            f"{k}:['fixture_io:load_model']" for k in ("preprocess", "matanyone", "iclight", "flowportal")
        )
        + "}"
    )
    res = entry(
        "flowportal_batch",
        *args,
        "flowportal.resident.enabled=true",
        f"flowportal.resident.cache={cache}",
        env_extra={"CONTAINERS_TEST_FLOWPORTAL_LOADS": str(loads), "SLURM_JOB_ID": "77"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    got = [ln.split(" ", 1)[1] for ln in loads.read_text().splitlines()]
    assert sorted(got) == ["BiRefNet", "IC-Light", "MatAnyone", "Wan"]  # each model loaded once for 3 videos
    report = json.loads((batch / "jobs" / "chunk0" / "77" / "run_report.json").read_text())
    summary = report["flowportal"]["summary"]
    assert summary["resident"]["cache_hits"] == 8 and summary["resident"]["cache_misses"] == 4
    t = summary["timings"]
    assert t["stage flowportal"]["n"] == 3 and t["stage flowportal"]["p90"] >= t["stage flowportal"]["median"]
    assert t["gap between stages"]["n"] == 12 and t["gap between videos"]["n"] == 2
    state = json.loads((batch / "progress" / "chunk0.json").read_text())
    pf = sorted((s["prefetch"]["where"], s["prefetch"]["ahead"]) for s in state.values())
    assert pf == [("nvme", False), ("nvme", True), ("nvme", True)]  # the 2nd and 3rd were copied ahead
    assert not list((Path(report["flowportal"]["workdir"]) / "inputs").iterdir())
    st = entry("flowportal_status", f"batch_dir={batch}")
    assert "stage flowportal" in st.stdout and "gap between stages" in st.stdout and "median s" in st.stdout
    # the same chunk without resident workers loads every model once per video
    loads.unlink()
    fresh, fargs = one_chunk(tmp_path / "again", videos)
    res = entry("flowportal_batch", *fargs, env_extra={"CONTAINERS_TEST_FLOWPORTAL_LOADS": str(loads)})
    assert res.returncode == 0, res.stderr
    got = [ln.split(" ", 1)[1] for ln in loads.read_text().splitlines()]
    assert {w: got.count(w) for w in set(got)} == {"BiRefNet": 3, "IC-Light": 3, "MatAnyone": 3, "Wan": 3}
    a = {n: json.loads((batch / "outputs" / n / ".complete.json").read_text())["files"] for n in state}
    b = {n: json.loads((fresh / "outputs" / n / ".complete.json").read_text())["files"] for n in state}
    assert {n: {f: v["bytes"] for f, v in x.items()} for n, x in a.items()} == {
        n: {f: v["bytes"] for f, v in x.items()} for n, x in b.items()
    }
    assert CHECKOUT.is_dir()
