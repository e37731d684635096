"""The DGX Spark user's exact commands on the test world: the checkout copied onto the SMB-like
share as the status quo does, `make venv` there on the (x86) login side, and jobs on the aarch64
node that need only bash and the real Apptainer (the world's arm64 image stands in for
flowportal-cu130: Python 3.11 with the toolkit's light dependencies; the FlowPortal fixture
checkout stands in for the fork)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.plugins.slurm_cluster import ARM64_NODE

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--mem=1G", "--cpus-per-task=1"]


def copy_checkout(share: Path) -> Path:
    """The status quo's copy: rsync without permissions, owners or groups, in place (no temp+rename)."""
    dst = share / "gpu-image-suite-checkout"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout
    out = subprocess.run(["rsync", "-a", "--no-perms", "--no-owner", "--no-group", "--inplace", "--from0",
                          "--files-from=-", f"{REPO}/", f"{dst}/"], input=files, timeout=600,
                         capture_output=True)
    # rsync still tries to chmod what it creates: the share refuses (code 23), the files arrive
    assert out.returncode in (0, 23), out.stderr[-2000:]
    names = [n for n in files.decode().split("\0") if n and (REPO / n).is_file()]
    missing = [n for n in names if not (dst / n).is_file()]
    assert not missing, missing[:5]
    return dst


@pytest.fixture(scope="module")
def checkout_on_share(smb_share, tmp_path_factory):
    if not shutil.which("rsync"):
        pytest.skip("rsync is not installed (apt-get install rsync)")
    return copy_checkout(smb_share.path)


@pytest.mark.slow
@pytest.mark.smb
def test_make_venv_on_the_share_goes_to_local_disk(checkout_on_share, tmp_path):
    share_repo = checkout_on_share
    assert subprocess.run(["python3", "-m", "venv", str(share_repo / ".venv-try")], capture_output=True,
                          timeout=120).returncode != 0  # what the status quo runs into
    shutil.rmtree(share_repo / ".venv-try", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SUITE_VENV", "MAKEFLAGS")}
    env.update({"XDG_CACHE_HOME": str(tmp_path / "xdg"),
                "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))})
    out = subprocess.run(["make", "venv"], cwd=share_repo, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    venvs = tmp_path / "xdg" / "gpu-image-suite" / "venvs"
    made = [p for p in venvs.iterdir() if (p / "bin" / "python").exists()]
    assert len(made) == 1, list(venvs.iterdir())
    assert f"the venv goes to local disk at {made[0]}" in out.stdout and f"venv: {made[0]}" in out.stdout
    assert not (share_repo / ".venv").exists()
    ok = subprocess.run([str(made[0] / "bin" / "python"), "-m", "containers", "config", "cluster=dgx_spark"],
                        cwd=share_repo, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "node_local_default: /mnt/nvme/" in ok.stdout, ok.stderr
    again = subprocess.run(["make", "venv"], cwd=share_repo, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and f"venv: {made[0]}" in again.stdout  # found again, not rebuilt


# ------------------------------------------------------------------ the aarch64 node
def publish_arm64(sif: Path, images: Path, name: str = "flowportal-cu130") -> Path:
    images.mkdir(parents=True, exist_ok=True)
    dst = images / f"{name}-arm64-world.sif"
    if not dst.exists():
        shutil.copyfile(sif, dst)  # onto the share: no chmod, no link
    (images / f"{name}-arm64.current").write_text(dst.name + "\n")
    return dst


@pytest.fixture
def dgx(spark_arm64, checkout_on_share, smb_share, world_launcher_dir, test_sif_arm64, tmp_path):
    """The DGX user's environment on the x86 login side: roots on the share, the node's NVMe folder."""
    from tests.entrypoints.flowportal.conftest import stage_models

    if spark_arm64.shared is None:
        pytest.fail("the arm64 node started without the SMB-like share bound in")
    root = smb_share.path / f"suite-{tmp_path.name}"
    models = stage_models(root / "models")
    publish_arm64(test_sif_arm64, root / "images")
    drop = ("PY", "CONTAINERS_RUNTIME", "VIRTUAL_ENV", "CONTAINERS_SCRATCH", "CONTAINERS_REPO", "CI")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({
        "PATH": f"{world_launcher_dir}{os.pathsep}{env.get('PATH', '')}",
        "SLURM_CONF": spark_arm64.env["SLURM_CONF"],
        "CONTAINERS_SHARED_ROOT": str(root),
        "CONTAINERS_NODE_LOCAL": str(spark_arm64.node_local(ARM64_NODE)),  # the user's NVMe path
        "FLOWPORTAL_MODELS": str(models),
        "FLOWPORTAL_CHECKOUT": str(checkout_on_share / "tests" / "fixtures" / "flowportal_checkout"),
        "CONTAINERS_GPU_GUARD": "warn",  # fake GPUs
    })
    return {"env": env, "root": root, "repo": checkout_on_share, "nvme": spark_arm64.node_local(ARM64_NODE),
            "cluster": spark_arm64}


def sbatch_here(dgx, *argv: str, timeout: float = 1200) -> tuple[str, str]:
    """sbatch typed at the repository root on the share; returns (job id, its log)."""
    cluster = dgx["cluster"]
    jid = cluster.sbatch([*SMALL, *argv], env=dgx["env"], cwd=dgx["repo"])
    states = cluster.wait(jid, timeout=timeout)
    logs = sorted(dgx["repo"].glob(f"slurm-*-{jid}.out"))
    text = logs[0].read_text() if logs else "(no log)"
    assert states[jid] == ["COMPLETED"], text[-4000:]
    return jid, text


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.smb
@pytest.mark.arm64
@pytest.mark.apptainer
def test_flowportal_cat_on_the_aarch64_node(dgx, tmp_path):
    from tests.entrypoints.flowportal.conftest import make_mp4

    video = make_mp4(dgx["root"] / "data" / "cat.mp4", 40)  # the input lives on the share
    args = ["slurm/flowportal_cat.sbatch", f"video.input={video}", "video.height=24", "video.width=32",
            "video.k_frames=9"]  # the app declares the video (binds_ro): it is bound read-only
    _, log = sbatch_here(dgx, *args)
    assert f"node {ARM64_NODE} arch aarch64" in log
    runs = dgx["root"] / "scratch" / "runs" / "flowportal"
    run = max(runs.iterdir())
    marker = json.loads((run / "outputs" / "cat_ic" / ".complete.json").read_text())
    assert marker["preset"] == "dgx_fast"
    report = json.loads((run / "jobs" / "cat" / "steps" / "01-flowportal" / "run_report.json").read_text())
    staged_sif = dgx["nvme"] / "images" / "flowportal-cu130-arm64-world.sif"
    assert report["arch"] == "aarch64" and report["image"]["file"] == str(staged_sif), report["image"]
    assert (dgx["nvme"] / "models" / "flowportal" / "Wan2.1-Fun-V1.1-1.3B-Control").is_dir()
    n = sum(1 for f in Path(dgx["env"]["FLOWPORTAL_MODELS"]).rglob("*") if f.is_file())
    assert "staging " in log and f"copied {n} (" in log, log[-3000:]
    # the second run reuses both staged copies: stat only, nothing copied
    _, log2 = sbatch_here(dgx, *args)
    assert f"staging {dgx['root'] / 'images'}" not in log2, log2[-3000:]
    assert "unchanged since they were staged (stat only)" in log2, log2[-3000:]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.smb
@pytest.mark.arm64
@pytest.mark.apptainer
@pytest.mark.parametrize("where", ["login venv", "visible x86 binary"])
def test_login_python_named_in_py_stops_the_job_in_one_line(dgx, tmp_path, where):
    """PY pointing at the login node's x86 venv (not on the node) or at an x86 Python the node can
    see: one line naming both arches and the fix."""
    py = Path(sys.executable)
    if where == "visible x86 binary":
        py = tmp_path / "python3"  # /tmp is visible on the node; the ELF is x86-64
        shutil.copy2(os.path.realpath(sys.executable), py)
    env = {**dgx["env"], "PY": str(py)}
    cluster = dgx["cluster"]
    jid = cluster.sbatch([*SMALL, "slurm/flowportal_cat.sbatch"], env=env, cwd=dgx["repo"])
    states = cluster.wait(jid, timeout=300)
    log = next(dgx["repo"].glob(f"slurm-*-{jid}.out")).read_text()
    assert states[jid] == ["FAILED"], log
    errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in log, log
    assert "x86_64" in errors[0] and "aarch64" in errors[0] and "unset PY" in errors[0], errors[0]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.smb
@pytest.mark.arm64
@pytest.mark.apptainer
def test_flowportal_batch_array_with_a_time_limit_continuation_on_the_aarch64_node(dgx, tmp_path):
    """submit's FlowPortal batch on the aarch64 node: 2 chunks; chunk 0 hangs in a video, USR1 before
    the limit chains a continuation of that task, which redoes it; both chunks end complete."""
    from tests.entrypoints.flowportal.conftest import make_manifest, make_mp4, mpath

    videos = dgx["root"] / "videos"
    for i in range(4):
        make_mp4(videos / f"w{i}.mp4", 40)
    probe = make_manifest(videos, tmp_path / "probe", num_select=0, num_chunks=2)
    hang = mpath(probe, "chunk0.csv").read_text().splitlines()[2].split(",")[0]
    batch = dgx["root"] / "batch"
    hung = dgx["root"] / "hung.flag"
    env = {**dgx["env"], "FLOWPORTAL_CHUNKS": "2", "FLOWPORTAL_ARRAY": "0-1", "FLOWPORTAL_MEM": "1G",
           "CONTAINERS_TEST_FLOWPORTAL_HANG": hang, "CONTAINERS_TEST_FLOWPORTAL_HANG_ONCE": str(hung),
           "FLOWPORTAL_CHECKOUT": str(REPO / "tests" / "fixtures" / "flowportal_checkout")}
    out = subprocess.run(
        [sys.executable, "-m", "containers", "submit", "flowportal", "cluster=dgx_spark",
         f"video_dir={videos}", f"batch_dir={batch}", "num_select=0", "video.height=24", "video.width=32",
         "deadline_margin_s=5",
         "pipeline.modes.batch.infer.time='00:04:00'", "pipeline.modes.batch.infer.cpus_per_task=1",
         "pipeline.modes.batch.manifest.cpus_per_task=1", "pipeline.modes.batch.manifest.mem=1G",
         "pipeline.modes.batch.infer.sbatch_args=['--signal=B:USR1@150']"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ids = {ln.split()[0]: ln.split()[1] for ln in out.stdout.splitlines()
           if ln.startswith("  ") and len(ln.split()) > 2 and ln.split()[1].isdigit()}
    run = Path(next(ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("run dir: ")))
    job = run / "jobs" / "infer"
    cluster = dgx["cluster"]
    first = job / f"slurm-{ids['infer']}_0.out"
    deadline = time.time() + 1500
    cont = ""
    # USR1 comes 150 s before the 4-minute limit, Slurm may send it up to 60 s early: at the earliest 30 s
    # after the start (with 3 minutes it could come before the job's first line and be lost); once the
    # hang has begun, end the task as the limit would
    while time.time() < deadline and not cont:
        found = re.search(r"continues in job (\d+)", first.read_text() if first.exists() else "")
        if hung.exists() and found:
            cont = found.group(1)
            subprocess.run(["scancel", f"{ids['infer']}_0"], env=cluster.env, check=True, timeout=30)
        time.sleep(1)
    assert cont, first.read_text() if first.exists() else "no log"
    # the continuation writes its progress lines after the outputs' markers: wait for it to end,
    # and for any continuation it chained
    cluster.wait([ids["infer"], cont], timeout=max(60.0, deadline - time.time()))
    cluster.wait_drained(deadline)
    names = [f"w{i}" for i in range(4)]
    logs = {p.name: p.read_text() for p in job.glob("slurm-*.out")}
    assert all((batch / "outputs" / n / ".complete.json").exists() for n in names), {
        k: v[-2000:] for k, v in logs.items()}
    assert "continues in job" in logs[first.name] and f"node {ARM64_NODE} arch aarch64" in logs[first.name]
    for chunk in (0, 1):
        log = (batch / "progress" / f"chunk{chunk}.log").read_text().splitlines()
        assert len([ln for ln in log if " OK " in ln]) == 2, log
