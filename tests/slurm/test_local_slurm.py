"""The Slurm layer on a real (private, local) Slurm: chains, failures, partitions, arrays, staging.

Jobs run with CONTAINERS_RUNTIME=host, so every step is ``python -m entrypoints doctor`` in the
repository's Python; the fake GPUs are /dev/null symlinks, so GPU jobs run with the GPU guard set
to ``warn`` except where the guard itself is under test.
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

from containers.launch import nvidia_gpu_present

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm
N_FILES = 1500  # enough per-file work that the second task finds the lock held


@pytest.fixture
def env(slurm_cluster, isolated_roots):
    e = {
        **os.environ,
        **slurm_cluster.env,
        "CONTAINERS_RUNTIME": "host",
        "CONTAINERS_GPU_GUARD": "warn",
        "CONTAINERS_ACCOUNT": "suite_test",
        "PY": sys.executable,  # runtime=host runs the steps in this Python; nodes never assume a .venv
    }
    e.pop("CI", None)
    return e


def submit(env, *args, check=True):
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "containers", "submit", "selftest", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out, time.monotonic() - t0


def job_ids(out) -> dict[str, str]:
    ids = {}
    for ln in out.stdout.splitlines():
        parts = ln.split()
        if len(parts) >= 3 and ln.startswith("  ") and parts[1].isdigit():
            ids[parts[0]] = parts[1]
    return ids


def run_dir(out) -> Path:
    return Path(next(ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("run dir: ")))


def test_three_job_chain_succeeds_without_blocking(slurm_cluster, env):
    out, seconds = submit(env, "cluster=torch", "mode=chain")
    ids = job_ids(out)
    assert list(ids) == ["first", "middle", "last"]
    assert seconds < 15 and "squeue -j" in out.stdout
    assert slurm_cluster.states(ids["last"]) == ["PENDING"]  # submit returned before the chain ran
    assert f"afterok:{ids['middle']}" in slurm_cluster.show_job(ids["last"])["Dependency"]
    states = slurm_cluster.wait(list(ids.values()), timeout=90)
    assert all(s == ["COMPLETED"] for s in states.values()), states
    rd = run_dir(out)
    for job in ids:
        report = json.loads((rd / "jobs" / job / "steps" / "01-doctor" / "run_report.json").read_text())
        assert report["exit_status"] == 0 and report["slurm"]["job_id"] == ids[job]
        assert (rd / "jobs" / job / f"slurm-{ids[job]}.out").is_file()
        assert "sbatch --parsable" in (rd / "jobs" / job / "cmd.log").read_text()
    mid = json.loads((rd / "jobs" / "middle" / "steps" / "01-doctor" / "run_report.json").read_text())
    assert "gpu_util_mean" in mid and mid["gpu_guard"][0]["mode"] == "warn"


def test_gpu_guard_fails_the_middle_job_and_cancels_its_dependents(slurm_cluster, env):
    out, _ = submit({**env, "CONTAINERS_GPU_GUARD": "error"}, "cluster=torch", "mode=chain")
    ids = job_ids(out)
    states = slurm_cluster.wait(list(ids.values()), timeout=90)
    assert states[ids["first"]] == ["COMPLETED"]
    if nvidia_gpu_present():  # a real driver makes the fake GPU usable: the guard has no reason to stop
        assert states[ids["middle"]] == ["COMPLETED"] and states[ids["last"]] == ["COMPLETED"], states
        return
    assert states[ids["middle"]] == ["FAILED"]
    assert states[ids["last"]] == ["CANCELLED"]  # --kill-on-invalid-dep, not pending forever
    log = (run_dir(out) / "jobs" / "middle" / f"slurm-{ids['middle']}.out").read_text()
    assert "error: GPU stage without a usable GPU: Slurm granted GPU(s)" in log


def test_split_mode_places_jobs_on_their_partitions(slurm_cluster, env):
    out, _ = submit(env, "cluster=torch", "gpu=split")
    ids = job_ids(out)
    shown = {name: slurm_cluster.show_job(i) for name, i in ids.items()}
    assert shown["layout"]["Partition"] == "l40s_public"
    assert "gpu:l40s:1" in shown["layout"]["TresPerNode"]
    assert shown["vlm"]["Partition"] == "h200_public" and "gpu:h200:1" in shown["vlm"]["TresPerNode"]
    assert shown["post"]["Partition"] == "cpu_short" and "gpu" not in shown["post"].get("TresPerNode", "")
    states = slurm_cluster.wait(list(ids.values()), timeout=90)
    assert all(s == ["COMPLETED"] for s in states.values()), states
    node = slurm_cluster.show_job(ids["post"])["NodeList"]
    assert node in ("cpu1", "cpu2")  # CPU post-processing ran on a CPU node


def test_single_mode_on_spark_and_preflight(slurm_cluster, env):
    pre = subprocess.run(
        [sys.executable, "-m", "containers", "preflight", "selftest", "cluster=dgx_spark"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pre.returncode == 0, pre.stderr + pre.stdout
    assert pre.stdout.count("ok  ") == 2 and "partition spark" in pre.stdout


def test_rejected_partition_shows_slurms_message_and_cancels_submitted(slurm_cluster, env):
    bad = {**env, "CONTAINERS_CPU_PARTITION": "no_such_partition"}
    pre = subprocess.run(
        [sys.executable, "-m", "containers", "preflight", "selftest", "cluster=torch"],
        cwd=REPO,
        env=bad,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pre.returncode == 1 and "FAIL  post" in pre.stdout and "ok    infer" in pre.stdout
    out, _ = submit(bad, "cluster=torch", check=False)
    assert out.returncode == 2
    assert (
        "Invalid partition name specified" in out.stderr
        and "cancelled the jobs already submitted" in out.stderr
    )
    first = out.stderr.split("submitted (")[1].split(")")[0]
    assert slurm_cluster.wait(first, timeout=30)[first] == ["CANCELLED"]


def test_array_over_a_manifest(slurm_cluster, env, tmp_path):
    manifest = tmp_path / "items.txt"
    manifest.write_text("video_a.mp4\nvideo_b.mp4\n\nvideo_c.mp4\n")
    out, _ = submit({**env, "SELFTEST_MANIFEST": str(manifest)}, "cluster=torch", "mode=array")
    ids = job_ids(out)
    assert "array 0-2" in out.stdout
    states = slurm_cluster.wait(ids["items"], timeout=90)
    assert states[ids["items"]] == ["COMPLETED"] * 3
    job = run_dir(out) / "jobs" / "items"
    logs = {p.name: p.read_text() for p in job.glob("slurm-*_*.out")}
    assert len(logs) == 3
    for task, item in enumerate(("video_a.mp4", "video_b.mp4", "video_c.mp4")):
        assert f"item: {item}" in logs[f"slurm-{ids['items']}_{task}.out"]
        report = json.loads((job / "steps" / "01-doctor" / f"run_report.{task}.json").read_text())
        assert report["slurm"]["array_task_id"] == str(task) and report["exit_status"] == 0


def test_two_tasks_staging_to_one_node(slurm_cluster, env, tmp_path):
    src = tmp_path / "shared" / "models" / "official_models"
    (src / "PP-DocLayoutV3").mkdir(parents=True)
    blob = os.urandom(64 << 10)
    for i in range(N_FILES):
        (src / "PP-DocLayoutV3" / f"part{i:04d}.bin").write_bytes(blob)
    dst = tmp_path / "nvme" / "models"
    script = tmp_path / "stage.sbatch"
    script.write_text(f"""#!/usr/bin/env bash
set -euo pipefail
source "$CONTAINERS_REPO/slurm/lib/common.sh"
suite_init
# a barrier, so both tasks really stage at the same moment
touch {tmp_path}/ready-$SLURM_ARRAY_TASK_ID
for _ in $(seq 300); do [[ -e {tmp_path}/ready-0 && -e {tmp_path}/ready-1 ]] && break; sleep 0.1; done
suite_stage {src} {dst}
""")
    jid = slurm_cluster.sbatch(
        [
            "--array=0-1",
            "-w",
            "cpu1",
            "-p",
            "cpu_short",
            "-c",
            "1",
            f"--output={tmp_path}/stage-%a.out",
            f"--export=ALL,CONTAINERS_REPO={REPO}",
            str(script),
        ],
        env=env,
    )
    states = slurm_cluster.wait(jid, timeout=90)
    assert states[jid] == ["COMPLETED", "COMPLETED"]
    logs = [(tmp_path / f"stage-{i}.out").read_text() for i in (0, 1)]
    copied = sorted(
        int(ln.split("copied ")[1].split()[0])
        for log in logs
        for ln in log.splitlines()
        if ln.startswith("staged ")
    )
    assert copied == [0, N_FILES]  # one task copied, the other found it complete
    # the other one waited on the lock, unless (a loaded machine) it reached it after the copy ended
    assert sum("waiting for" in log for log in logs) <= 1
    from containers.stage import manifest_path, read_manifest

    assert len(read_manifest(manifest_path(dst, "official_models")) or {}) == N_FILES
    assert not list(dst.rglob("*.part"))


def test_flowportal_batch_continues_past_the_time_limit_on_the_submit_path(slurm_cluster, env, tmp_path,
                                                                           isolated_roots):
    """submit's flowportal batch: 2 chunks; chunk 0 hangs in a video; USR1 before the 1-minute limit
    chains a continuation of that array task (afterany), which redoes the video and finishes the chunk."""
    from tests.entrypoints.flowportal.conftest import CHECKOUT, make_mp4, stage_models

    models = stage_models(isolated_roots / "shared" / "models")
    videos = tmp_path / "videos"
    for i in range(4):
        make_mp4(videos / f"w{i}.mp4", 40)
    batch = tmp_path / "batch"
    hang_flag = tmp_path / "hung.flag"
    fp_env = {**env, "FLOWPORTAL_CHUNKS": "2", "FLOWPORTAL_ARRAY": "0-1", "FLOWPORTAL_MEM": "1G",
              "FLOWPORTAL_MODELS": str(models), "CONTAINERS_TEST_FLOWPORTAL_HANG_ONCE": str(hang_flag)}
    # torch's x86 nodes: in a session with arm64 tests, spark1 is the aarch64 node (no host Python there)
    args = ["cluster=torch", f"video_dir={videos}", f"batch_dir={batch}", "num_select=0",
            f"flowportal.checkout={CHECKOUT}", "video.height=24", "video.width=32", "deadline_margin_s=5",
            "pipeline.modes.batch.infer.time='00:01:00'", "pipeline.modes.batch.infer.cpus_per_task=1",
            "pipeline.modes.batch.manifest.cpus_per_task=1", "pipeline.modes.batch.manifest.mem=1G",
            "pipeline.modes.batch.infer.sbatch_args=['--signal=B:USR1@50']"]
    # the manifest decides which video is second in chunk 0: run the same manifest first to name it
    from tests.entrypoints.flowportal.conftest import make_manifest, mpath

    probe = make_manifest(videos, tmp_path / "probe", num_select=0, num_chunks=2)
    rows = mpath(probe, "chunk0.csv").read_text().splitlines()[1:]
    fp_env["CONTAINERS_TEST_FLOWPORTAL_HANG"] = rows[1].split(",")[0]
    out = subprocess.run([sys.executable, "-m", "containers", "submit", "flowportal", *args], cwd=REPO,
                         env=fp_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ids = job_ids(out)
    job = run_dir(out) / "jobs" / "infer"
    first = job / f"slurm-{ids['infer']}_0.out"
    deadline = time.time() + 240
    cont = ""
    # USR1 comes 50 s before the limit; then end the task as the limit would
    while time.time() < deadline and not cont:
        found = re.search(r"continues in job (\d+)", first.read_text() if first.exists() else "")
        if found:
            cont = found.group(1)
            subprocess.run(["scancel", f"{ids['infer']}_0"], env=slurm_cluster.env, check=True, timeout=30)
        time.sleep(0.5)
    assert cont, first.read_text() if first.exists() else "no log"
    # the continuation's progress lines come after the outputs' markers: wait for the job to end
    slurm_cluster.wait([ids["infer"], cont], timeout=max(60.0, deadline - time.time()))
    slurm_cluster.wait_drained(deadline)  # and any continuation it chained
    names = [f"w{i}" for i in range(4)]
    logs = {p.name: p.read_text() for p in job.glob("slurm-*.out")}
    assert all((batch / "outputs" / n / ".complete.json").exists() for n in names), logs
    assert "continues in job" in logs[first.name], logs
    # tasks 0 and 1, then task 0's continuation (another job id; with a 1-minute limit it may chain
    # one more, which finds the chunk complete)
    assert len(logs) >= 3 and any(f"slurm-{ids['infer']}_" not in n for n in logs), sorted(logs)
    for chunk in (0, 1):
        log = (batch / "progress" / f"chunk{chunk}.log").read_text().splitlines()
        assert len([ln for ln in log if " OK " in ln]) == 2, log
