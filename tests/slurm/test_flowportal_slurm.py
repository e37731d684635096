"""FlowPortal on the private local Slurm with the host runtime and the checkout fixture.

The cat job is submitted exactly as a user would (``sbatch slurm/flowportal_cat.sbatch``, with
only memory/CPU lowered for the test nodes); the batch runs as a real ``--array`` over the
manifest chunks, then a resubmission of the same array skips every marked video.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.entrypoints.flowportal.conftest import (
    CHECKOUT,
    entry,
    make_manifest,
    make_mp4,
    mpath,
    stage_models,
)
from tests.plugins.slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
# Host-runtime jobs (this checkout's Python) go to the torch cluster's x86 L40S nodes: in a session
# that collects arm64 tests, spark1 is the aarch64 node, where an x86 Python cannot run (the same
# scripts on the aarch64 node inside real Apptainer: tests/slurm/test_runpath_dgx.py).
SMALL = ["--mem=2G", "--cpus-per-task=1", "--partition=l40s_public", "--gres=gpu:l40s:1"]


def job_env(cluster, models: Path) -> dict[str, str]:
    return {
        **os.environ,
        **cluster.env,
        "CONTAINERS_RUNTIME": "host",
        "CONTAINERS_GPU_GUARD": "warn",  # fake GPUs: the guard of GPU jobs would stop them
        "FLOWPORTAL_CHECKOUT": str(CHECKOUT),
        "FLOWPORTAL_MODELS": str(models),
        "CONTAINERS_REPO": str(REPO),
        "PY": sys.executable,
    }


def test_cat_job(slurm_cluster, tmp_path, isolated_roots):  # noqa: F811
    models = stage_models(isolated_roots / "shared" / "models")
    video = make_mp4(tmp_path / "cat.mp4", 160)
    env = job_env(slurm_cluster, models)
    jid = slurm_cluster.sbatch(
        [
            *SMALL,
            f"--output={tmp_path}/cat-%j.out",
            str(REPO / "slurm/flowportal_cat.sbatch"),
            f"video.input={video}",
            "video.height=24",
            "video.width=32",
            "video.k_frames=9",
        ],
        env=env,
        cwd=REPO,
    )
    states = slurm_cluster.wait(jid, timeout=120)
    log = (tmp_path / f"cat-{jid}.out").read_text()
    assert states[jid] == ["COMPLETED"], log
    runs = isolated_roots / "scratch" / "runs" / "flowportal"
    run_dir = next(runs.iterdir())
    marker = json.loads((run_dir / "outputs" / "cat_ic" / ".complete.json").read_text())
    assert marker["preset"] == "dgx_fast" and marker["teacache_active"] is True
    assert (isolated_roots / "nvme" / "models" / "flowportal" / "Wan2.1-Fun-V1.1-1.3B-Control").is_dir()
    assert "flowportal        ok" in log


def test_batch_array_and_resubmission(slurm_cluster, tmp_path, isolated_roots):  # noqa: F811
    models = stage_models(isolated_roots / "shared" / "models")
    videos = tmp_path / "videos"
    for i, n in enumerate((40, 64, 27, 30)):
        make_mp4(videos / f"v{i}.mp4", n)
    batch = make_manifest(videos, tmp_path / "batch", num_select=1, num_chunks=2)
    env = {
        **job_env(slurm_cluster, models),
        "FLOWPORTAL_BATCH_DIR": str(batch),
        "FLOWPORTAL_VIDEO_DIR": str(videos),
    }
    args = [
        *SMALL,
        "--array=0-1",
        f"--output={tmp_path}/b-%A_%a.out",
        str(REPO / "slurm/flowportal_batch.sbatch"),
        "video.height=24",
        "video.width=32",
    ]
    jid = slurm_cluster.sbatch(args, env=env, cwd=REPO)
    slurm_cluster.wait(jid, timeout=180)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("b-*.out"))
    st = entry("flowportal_status", f"batch_dir={batch}", timeout=60)
    lines = st.stdout.splitlines()
    assert lines[1].split()[-1] == "OK" and lines[2].split()[-1] == "OK", st.stdout + logs
    done = sorted(p.name for p in (batch / "outputs").iterdir() if (p / ".complete.json").exists())
    assert len(done) == 3
    before = {n: (batch / "outputs" / n / ".complete.json").stat().st_mtime_ns for n in done}
    jid2 = slurm_cluster.sbatch(args, env=env, cwd=REPO)
    slurm_cluster.wait(jid2, timeout=180)
    after = {n: (batch / "outputs" / n / ".complete.json").stat().st_mtime_ns for n in done}
    assert before == after
    for i in (0, 1):
        log = (batch / "progress" / f"chunk{i}.log").read_text().splitlines()
        assert len(log) == len(set(log)) and all(" OK " in ln for ln in log)


def test_time_limit_chains_a_continuation_that_finishes_the_chunk(slurm_cluster, tmp_path, isolated_roots):  # noqa: F811
    """A task hangs in video 2; USR1 before its limit chains a continuation (afterany) that redoes it.

    The test cancels the task once the continuation is submitted, as the time limit would a bit later.
    """
    models = stage_models(isolated_roots / "shared" / "models")
    videos = tmp_path / "videos"
    for i in range(3):
        make_mp4(videos / f"w{i}.mp4", 40)
    batch = make_manifest(videos, tmp_path / "batch", num_select=0, num_chunks=1)
    first = next(ln.split(",")[0] for ln in mpath(batch, "chunk0.csv").read_text().splitlines()[1:])
    second = mpath(batch, "chunk0.csv").read_text().splitlines()[2].split(",")[0]
    env = {
        **job_env(slurm_cluster, models),
        "FLOWPORTAL_BATCH_DIR": str(batch),
        "FLOWPORTAL_VIDEO_DIR": str(videos),
        "CONTAINERS_TEST_FLOWPORTAL_HANG": second,
        "CONTAINERS_TEST_FLOWPORTAL_HANG_ONCE": str(tmp_path / "hung.flag"),
        "FLOWPORTAL_MAX_CONTINUATIONS": "2",
        "FLOWPORTAL_SIGNAL": "B:USR1@50",  # Slurm does not show a job its --signal: the continuation needs it
    }
    jid = slurm_cluster.sbatch(
        [
            *SMALL,
            "--array=0",
            "--time=1",
            "--signal=B:USR1@50",
            f"--output={tmp_path}/c-%A_%a.out",
            str(REPO / "slurm/flowportal_batch.sbatch"),
            "video.height=24",
            "video.width=32",
            "deadline_margin_s=5",
        ],
        env=env,
        cwd=REPO,
    )
    first_log = tmp_path / f"c-{jid}_0.out"
    deadline = time.time() + 150
    cont = ""
    # USR1 comes <= 50 s before the limit; then end the task as the limit would
    while time.time() < deadline and not cont:
        found = re.search(r"continues in job (\d+)", first_log.read_text() if first_log.exists() else "")
        if found:
            cont = found.group(1)
            subprocess.run(["scancel", f"{jid}_0"], env=slurm_cluster.env, check=True, timeout=30)
        time.sleep(0.5)
    assert cont, first_log.read_text() if first_log.exists() else "no log"
    # the continuation writes its progress line after the outputs' markers: wait for it (and any
    # continuation it chained) to end
    slurm_cluster.wait([jid, cont], timeout=max(60.0, deadline - time.time()))
    slurm_cluster.wait_drained(deadline)
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.out")}
    assert all((batch / "outputs" / f"w{i}" / ".complete.json").exists() for i in range(3)), logs
    assert any("continues in job" in t for t in logs.values()), logs
    cont = [t for t in logs.values() if "(preset dgx_fast, continuation 1," in t]
    assert cont and f"] {first} " not in cont[0] and f"] {second} " in cont[0], logs
    assert slurm_cluster.states(jid) != ["COMPLETED"]
    log = (batch / "progress" / "chunk0.log").read_text().splitlines()
    assert len(log) == 3 and all(" OK " in ln for ln in log), log


def test_deadline_stops_before_a_video_it_cannot_finish_and_the_continuation_keeps_the_options(
    slurm_cluster,  # noqa: F811
    tmp_path,
    isolated_roots,
):
    """to_seconds gives the driver the job's end: a 2-minute task runs ~21 s videos while it can finish
    one (two fit), stops (exit 75) before the third, and chains a continuation with the submitted resources.
    Without the deadline the task would start the third and be cut by the limit mid-video.

    The driver starts a video while 1.2 x the mean video time + the margin (62 s) is left: before the
    second ~120-21-s >= 87 holds for a start-up s <= 12 s; before the third 120-42-s < 87 always."""
    models = stage_models(isolated_roots / "shared" / "models")
    videos = tmp_path / "videos"
    for i in range(3):
        make_mp4(videos / f"t{i}.mp4", 40)
    batch = make_manifest(videos, tmp_path / "batch", num_select=0, num_chunks=1)
    env = {
        **job_env(slurm_cluster, models),
        "FLOWPORTAL_BATCH_DIR": str(batch),
        "FLOWPORTAL_VIDEO_DIR": str(videos),
        "CONTAINERS_TEST_FLOWPORTAL_SLEEP": "flowportal:20",
        "FLOWPORTAL_MAX_CONTINUATIONS": "4",
        "FLOWPORTAL_SIGNAL": "B:USR1@5",
        "FLOWPORTAL_DEADLINE": "1",  # a stale value exported into the submitting shell: must not be used
    }
    jid = slurm_cluster.sbatch(
        [
            *SMALL,
            "--array=0",
            "--time=2",
            "--signal=B:USR1@5",
            f"--output={tmp_path}/d-%A_%a.out",
            str(REPO / "slurm/flowportal_batch.sbatch"),
            "video.height=24",
            "video.width=32",
            "deadline_margin_s=62",
        ],
        env=env,
        cwd=REPO,
    )
    deadline = time.time() + 400
    while time.time() < deadline:
        if all((batch / "outputs" / f"t{i}" / ".complete.json").exists() for i in range(3)):
            break
        time.sleep(1)
    time.sleep(2)
    logs = {p.name: p.read_text() for p in sorted(tmp_path.glob("d-*.out"), key=lambda p: p.stat().st_mtime)}
    assert all((batch / "outputs" / f"t{i}" / ".complete.json").exists() for i in range(3)), logs
    first = logs[f"d-{jid}_0.out"]
    assert "a video needs" in first and "continues in job" in first, first
    assert "--mem=2G" in first and "--cpus-per-task=1" in first and "--time=00:02:00" in first, first
    assert "--signal=B:USR1@5" in first and f"--output={tmp_path}/d-%A_%a.out" in first, first
    assert slurm_cluster.states(jid) == ["COMPLETED"]  # it stopped itself; the time limit never hit
    conts = [t for t in logs.values() if "continuation 1," in t]
    assert conts, logs
    cont_id = next(
        ln.split("continues in job ")[1].split()[0] for ln in first.splitlines() if "continues in job" in ln
    )
    show = slurm_cluster.show_job(cont_id)
    assert show["MinMemoryNode"] == "2G" and show["TimeLimit"] == "00:02:00"
    assert show["Partition"] == "l40s_public"
    deadlines = [
        float(ln.split("deadline ")[1].rstrip(")"))
        for t in logs.values()
        for ln in t.splitlines()
        if "(preset dgx_fast, continuation" in ln
    ]
    assert len(deadlines) >= 2 and all(d > 1000 for d in deadlines) and deadlines == sorted(deadlines)
    state = json.loads((batch / "progress" / "chunk0.json").read_text())
    assert all(s["status"] == "OK" for s in state.values()) and len({s["job"] for s in state.values()}) >= 2
    tasks = json.loads((batch / "progress" / "chunk0.tasks.json").read_text())
    assert len(tasks) >= 2 and all(t["staging_s"] is not None for t in tasks)
    reports = list((batch / "jobs" / "chunk0").glob("*/run_report.json"))
    assert len(reports) == len(tasks)  # a continuation does not overwrite the report of the task before


def test_resubmit_skips_chunks_running_or_queued_and_a_second_driver_is_refused(
    slurm_cluster,  # noqa: F811
    tmp_path,
    isolated_roots,
):
    models = stage_models(isolated_roots / "shared" / "models")
    videos = tmp_path / "videos"
    for i in range(2):
        make_mp4(videos / f"r{i}.mp4", 40)
    batch = make_manifest(videos, tmp_path / "batch", num_select=0, num_chunks=2)
    hang = mpath(batch, "chunk0.csv").read_text().splitlines()[1].split(",")[0]
    env = {**job_env(slurm_cluster, models), "CONTAINERS_TEST_FLOWPORTAL_HANG": hang}
    sub = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints",
            "flowportal_status",
            "action=submit",
            f"batch_dir={batch}",
            f"video_dir={videos}",
            "preset=dgx_fast",
            "max_parallel=1",
            f"sbatch_args=['--mem=2G','--cpus-per-task=1','--partition=l40s_public','--gres=gpu:l40s:1',"
            f"'--output={tmp_path}/s-%A_%a.out']",
            "app_args=['video.height=24','video.width=32']",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sub.returncode == 0, sub.stderr
    jid = sub.stdout.strip().splitlines()[-1].split()[-1]
    claim = batch / "claims" / "chunk" / "chunk0.json"
    deadline = time.time() + 90
    while time.time() < deadline and not (
        claim.exists()
        and list(
            (Path(os.environ["CONTAINERS_NODE_LOCAL"])).glob(
                f"flowportal/work/chunk0-*/results/flow-edit-{hang}/output_video.mp4"
            )
        )
    ):
        time.sleep(0.5)
    try:
        assert claim.exists(), list(tmp_path.glob("s-*.out"))
        holder = json.loads(claim.read_text())
        assert holder["job"] and holder["pid"]
        # a second driver on the same chunk: one line naming the holder, exit 2, nothing run
        dup = entry(
            "flowportal_batch",
            f"batch_dir={batch}",
            f"video_dir={videos}",
            "chunk=0",
            f"flowportal.checkout={CHECKOUT}",
            f"flowportal.models={models}",
            "preset=dgx_fast",
            "video.height=24",
            "video.width=32",
            env_extra={"SLURM_CONF": slurm_cluster.env["SLURM_CONF"]},
        )
        assert dup.returncode == 2, dup.stdout + dup.stderr
        assert f"chunk 0 of {batch} is already being processed by host" in dup.stderr
        assert f"Slurm job {holder['job']}" in dup.stderr and len(dup.stderr.strip().splitlines()) == 1
        rs = entry(
            "flowportal_status",
            "action=resubmit",
            f"batch_dir={batch}",
            f"video_dir={videos}",
            "dry_run=true",
            env_extra={"SLURM_CONF": slurm_cluster.env["SLURM_CONF"]},
        )
        assert rs.returncode == 0, rs.stderr
        assert "chunk 0: not resubmitted, running" in rs.stdout, rs.stdout
        assert "chunk 1: not resubmitted, pending in Slurm job" in rs.stdout, rs.stdout
        assert "nothing to resubmit" in rs.stdout and "sbatch --parsable" not in rs.stdout
    finally:
        subprocess.run(["scancel", jid.split(";")[0]], env=slurm_cluster.env, check=False, timeout=30)
