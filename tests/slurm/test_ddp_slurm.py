"""The DDP template for real on the private local Slurm: 2 nodes x 2 ranks, gloo all-reduce with
torch's CPU build, through srun (one task per fake GPU) and through torchrun (one task per node);
and the status quo's wrong shapes stopping at once with one line instead of hanging.

Real Apptainer is not used here: no test image carries torch (its wheels alone are GBs), so the
ranks run with CONTAINERS_RUNTIME=host through the same `python -m containers exec` launcher.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.containers.test_experiment import make_points

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def submit(env, *args):
    return subprocess.run([sys.executable, "-m", "containers", "submit", "ddp_demo", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def ids_and_run_dir(out) -> tuple[dict[str, str], Path]:
    ids = {ln.split()[0]: ln.split()[1] for ln in out.stdout.splitlines()
           if ln.startswith("  ") and len(ln.split()) > 2 and ln.split()[1].isdigit()}
    rd = Path(next(ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("run dir: ")))
    return ids, rd


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_two_nodes_two_ranks_gloo_all_reduce(slurm_cluster, env, tmp_path, launcher):
    data = make_points(tmp_path / "points.csv", n=200)
    out = submit(env, "cluster=torch", f"data_file={data}", f"pipeline.stages.train.ddp.launcher={launcher}",
                 "pipeline.stages.train.cpus_per_task=4")
    assert out.returncode == 0, out.stderr
    ids, rd = ids_and_run_dir(out)
    job = slurm_cluster.show_job(ids["train.s1"])
    assert job["NumNodes"] in ("2", "2-2") and "gpu:l40s:2" in job["TresPerNode"]
    assert job["NumTasks"] == ("4" if launcher == "srun" else "2")
    states = slurm_cluster.wait(list(ids.values()), timeout=600)
    log = (rd / "jobs" / "train.s1" / f"slurm-{ids['train.s1']}.out").read_text()
    assert all(s == ["COMPLETED"] for s in states.values()), (states, log[-3000:])
    assert slurm_cluster.show_job(ids["train.s1"])["NodeList"] == "l40s[1-2]"
    assert f"launcher {launcher}, world 4, rendezvous 127.0.0.1:{15000 + int(ids['train.s1'][-4:])}" in log
    for rank in range(4):
        assert f"rank {rank}/4 first step done" in log
        assert f"rank {rank}/4 all-reduce sum 10 (expected 10), weights differ across ranks by 0.00e+00" \
            in log
    metrics = json.loads((rd / "outputs" / "seed1" / "train" / "metrics.json").read_text())
    assert metrics["world_size"] == 4 and metrics["backend"] == "gloo"
    assert metrics["ddp_checks"]["param_max_diff"] == 0.0 and metrics["final_loss"] < metrics["first_loss"]
    step = rd / "jobs" / "train.s1" / "steps" / "01-exp_train"
    reports = sorted(p.name for p in step.glob("run_report*"))
    assert reports == [f"run_report.rank{r}.json" for r in range(4)]
    rank3 = json.loads((step / "run_report.rank3.json").read_text())
    assert rank3["exit_status"] == 0 and rank3["memory"]["loader_worker_max_rss_gb"] > 0  # measured, per rank
    if launcher == "srun":  # the ranks are spread one task per GPU over both nodes
        rank0 = json.loads((step / "run_report.rank0.json").read_text())
        assert {rank3["slurm"]["node"], rank0["slurm"]["node"]} == {"l40s1", "l40s2"}


def _by_hand(slurm_cluster, env, tmp_path, sbatch_args: list[str], script: Path, *script_args: str):
    job = slurm_cluster.sbatch(["-p", "l40s_public", "-A", "suite_test", "--time=5",
                                f"--output={tmp_path}/slurm-%j.out", *sbatch_args, str(script), *script_args],
                               env=env)
    state = slurm_cluster.wait(job, timeout=300)[job]
    return state, (tmp_path / f"slurm-{job}.out").read_text()


def test_ntasks_on_one_node_stops_with_one_line(slurm_cluster, env, tmp_path):
    """The status quo's '--ntasks=8 on one node' hung at MEMBER: 1/8; the template stops it at once."""
    state, log = _by_hand(slurm_cluster, env, tmp_path, ["--nodes=1", "--ntasks=8", "--gres=gpu:l40s:4"],
                          REPO / "slurm" / "ddp.sbatch", "flowportal-cu130", "--", "python", "-c", "pass")
    assert state == ["FAILED"]
    errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--ntasks=8 but no --ntasks-per-node" in errors[0], log
    two_gpus = ["--nodes=1", "--ntasks-per-node=4", "--gres=gpu:l40s:2"]
    shape, log = _by_hand(slurm_cluster, env, tmp_path, two_gpus, REPO / "slurm" / "ddp.sbatch",
                          "flowportal-cu130", "--", "python", "-c", "pass")
    assert shape == ["FAILED"] and "4 tasks per node but 2 GPUs per node" in log and "MEMBER: 2/4" in log


def test_python_without_srun_stops_with_one_line(slurm_cluster, env, tmp_path):
    """The status quo ran `python train.py` in a 2-node job: 1 of 4 ranks joined and it waited forever."""
    data = make_points(tmp_path / "points.csv")
    dry = submit(env, "cluster=torch", f"data_file={data}", "--dry-run", "--run-dir", str(tmp_path / "run"))
    assert dry.returncode == 0, dry.stderr
    step = tmp_path / "run" / "jobs" / "train.s1" / "steps" / "01-exp_train"
    script = tmp_path / "train.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=2\n"
                      "#SBATCH --gres=gpu:l40s:2\n"
                      f"{sys.executable} -m entrypoints exp_train --config-path {step} "
                      "--config-name config\n")
    lint = subprocess.run([sys.executable, "-m", "containers", "ddp-check", str(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 2 and "without srun" in lint.stderr and "1/4 clients joined" in lint.stderr
    # complete inputs (setup, prep run here), so the rank gets as far as the rendezvous
    for job, app in (("setup", "exp_setup"), ("prep.s1", "exp_prep")):
        step_dir = tmp_path / "run" / "jobs" / job / "steps" / f"01-{app}"
        subprocess.run([sys.executable, "-m", "entrypoints", app, "--config-path", str(step_dir),
                        "--config-name", "config"], cwd=REPO, env=env, check=True, capture_output=True,
                       timeout=120)
    state, log = _by_hand(slurm_cluster, env, tmp_path, [], script)
    assert state == ["FAILED"]
    errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "1 of 4 ranks would join" in errors[0] and "srun" in errors[0], log
    assert not re.search(r"rendezvous start", log)  # it never started waiting
