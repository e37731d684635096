"""Every sbatch script and sourced library of the Slurm layer runs under plain bash and is lint-clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(REPO.glob("slurm/*.sbatch"))
OWN = [REPO / "slurm" / "run_stage.sbatch", REPO / "slurm" / "lib" / "common.sh"]


def bash_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"CONTAINERS_RUNTIME": "host", **extra})
    env.pop("CONTAINERS_REPO", None)
    return env


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sbatch_scripts_parse_under_plain_bash(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_run_stage_runs_an_app_under_plain_bash(tmp_path):
    out = subprocess.run(
        ["bash", str(REPO / "slurm" / "run_stage.sbatch"), "doctor", f"run_dir={tmp_path}"],
        cwd=tmp_path,
        env=bash_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "node " in out.stderr and "arch " in out.stderr  # suite_init prints the node facts
    assert json.loads((tmp_path / "jobs" / "doctor" / "run_report.json").read_text())["exit_status"] == 0


def test_run_stage_runs_a_submitted_job_folder_under_plain_bash(tmp_path):
    rd = tmp_path / "run"
    sub = subprocess.run(
        [
            sys.executable,
            "-m",
            "containers",
            "submit",
            "selftest",
            "cluster=torch",
            "--dry-run",
            "--run-dir",
            str(rd),
            "--only",
            "post",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert sub.returncode == 0, sub.stderr
    out = subprocess.run(
        ["bash", str(REPO / "slurm" / "run_stage.sbatch"), str(rd / "jobs" / "post")],
        cwd=tmp_path,
        env=bash_env(OMP_NUM_THREADS="", SLURM_CPUS_PER_TASK="3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "cpus 3" in out.stderr  # threads follow the allocation
    report = json.loads((rd / "jobs" / "post" / "steps" / "01-doctor" / "run_report.json").read_text())
    assert report["exit_status"] == 0 and report["stage"] == "post"


def test_library_sets_threads_and_node_local_caches(tmp_path, isolated_roots):
    probe = (
        "source slurm/lib/common.sh; suite_init; "
        'echo "$OMP_NUM_THREADS $MKL_NUM_THREADS $TOKENIZERS_PARALLELISM $PYTORCH_CUDA_ALLOC_CONF $HF_HOME"'
    )
    out = subprocess.run(
        ["bash", "-c", probe],
        cwd=REPO,
        env=bash_env(SLURM_CPUS_PER_TASK="5"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    omp, mkl, tok, alloc, hf = out.stdout.split()
    assert (omp, mkl, tok, alloc) == ("5", "5", "false", "expandable_segments:True")
    assert hf.startswith(str(isolated_roots / "nvme")) and Path(hf).is_dir()


def test_missing_repository_is_one_line(tmp_path):
    out = subprocess.run(
        ["bash", "-c", f"source {REPO}/slurm/lib/common.sh; suite_init"],
        cwd=tmp_path,
        env=bash_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and out.stderr.startswith("error: repository not found")


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck_clean():
    out = subprocess.run(["shellcheck", "-x", *map(str, OWN)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
