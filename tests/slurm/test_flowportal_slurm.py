"""FlowPortal on the private local Slurm with the host runtime and the checkout fixture.

The cat job is submitted exactly as a user would (``sbatch slurm/flowportal_cat.sbatch``, with
only memory/CPU lowered for the test nodes); the batch runs as a real ``--array`` over the
manifest chunks, then a resubmission of the same array skips every marked video.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.entrypoints.flowportal.conftest import CHECKOUT, entry, make_manifest, make_mp4, stage_models
from tests.plugins.slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SMALL = ["--mem=2G", "--cpus-per-task=1"]


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
    first = next(ln.split(",")[0] for ln in (batch / "manifest" / "chunk0.csv").read_text().splitlines()[1:])
    second = (batch / "manifest" / "chunk0.csv").read_text().splitlines()[2].split(",")[0]
    env = {
        **job_env(slurm_cluster, models),
        "FLOWPORTAL_BATCH_DIR": str(batch),
        "FLOWPORTAL_VIDEO_DIR": str(videos),
        "CONTAINERS_TEST_FLOWPORTAL_HANG": second,
        "CONTAINERS_TEST_FLOWPORTAL_HANG_ONCE": str(tmp_path / "hung.flag"),
        "FLOWPORTAL_MAX_CONTINUATIONS": "2",
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
    while time.time() < deadline:  # USR1 comes <= 50 s before the limit; then end it as the limit would
        if first_log.exists() and "continues in job" in first_log.read_text():
            subprocess.run(["scancel", f"{jid}_0"], env=slurm_cluster.env, check=True, timeout=30)
            break
        time.sleep(0.5)
    while time.time() < deadline:
        if all((batch / "outputs" / f"w{i}" / ".complete.json").exists() for i in range(3)):
            break
        time.sleep(0.5)
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.out")}
    assert all((batch / "outputs" / f"w{i}" / ".complete.json").exists() for i in range(3)), logs
    assert any("continues in job" in t for t in logs.values()), logs
    cont = [t for t in logs.values() if "(preset dgx_fast, continuation 1)" in t]
    assert cont and f"] {first} " not in cont[0] and f"] {second} " in cont[0], logs
    assert slurm_cluster.states(jid) != ["COMPLETED"]
    log = (batch / "progress" / "chunk0.log").read_text().splitlines()
    assert len(log) == 3 and all(" OK " in ln for ln in log), log
