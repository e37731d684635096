"""The flowportal pipeline renders as: CPU manifest job, then a GPU array afterok (submit --dry-run)."""

from __future__ import annotations

import subprocess
import sys

from tests.entrypoints.flowportal.conftest import REPO


def submit(tmp_path, *args: str) -> str:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "containers",
            "submit",
            "flowportal",
            "cluster=dgx_spark",
            f"--run-dir={tmp_path / 'run'}",
            "--dry-run",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_batch_mode_cpu_manifest_then_gpu_array(tmp_path):
    out = submit(tmp_path, "++video_dir=/data/h2s", "++batch_dir=/scratch/h2s")
    manifest = next(ln for ln in out.splitlines() if "--job-name=flowportal.manifest" in ln)
    infer = next(ln for ln in out.splitlines() if "--job-name=flowportal.infer" in ln)
    assert "--gres" not in manifest
    assert "--gres=gpu:1" in infer and "--array=0-9" in infer and "--dependency=afterok:" in infer
    stage = (tmp_path / "run" / "jobs" / "infer" / "stage.yaml").read_text()  # what the job stages first
    assert "src: " in stage and "/models/flowportal\n" in stage
    cfg = next((tmp_path / "run" / "jobs" / "infer").glob("steps/*/config.yaml")).read_text()
    assert "name: dgx_fast" in cfg and "video_dir: /data/h2s" in cfg


def test_cat_mode_is_one_gpu_job(tmp_path):
    out = submit(tmp_path, "mode=cat")
    jobs = [ln for ln in out.splitlines() if ln.strip().startswith("sbatch ")]
    assert len(jobs) == 1 and "--partition=spark" in jobs[0] and "--time=04:00:00" in jobs[0]
