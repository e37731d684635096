"""The staged example experiment end to end on the private local Slurm: two seeds, a stage that
fails on a bad input file, a resume refused while jobs run or with other settings, the fix, and a
resume that resubmits exactly the failed stage instances and what follows them.

Jobs run with CONTAINERS_RUNTIME=host (the repository's Python, torch CPU build); the GPUs are
fake (/dev/null links), so GPU stages run with the GPU guard set to ``warn``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.containers.test_experiment import make_points

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def submit(env, *args):
    return subprocess.run([sys.executable, "-m", "containers", "submit", "tinyexp", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def job_ids(out) -> dict[str, str]:
    ids = {}
    for ln in out.stdout.splitlines():
        parts = ln.split()
        if ln.startswith("  ") and len(parts) >= 3 and parts[1].isdigit():
            ids[parts[0]] = parts[1]
    return ids


def run_dir(out) -> Path:
    return Path(next(ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("run dir: ")))


def test_two_seeds_fail_fix_resume(slurm_cluster, env, tmp_path):
    data = make_points(tmp_path / "points.csv", n=160)
    shift = tmp_path / "shift.csv"
    shift.write_text("x1,x2,label\n0.5,0.1,0\n2.5,-1.0,1\n1.0,not-a-number,1\n")  # line 4 is bad
    first = submit(env, "cluster=torch", "seeds=[1,2]", f"data_file={data}", f"shift_file={shift}")
    assert first.returncode == 0, first.stderr
    ids = job_ids(first)
    rd = run_dir(first)
    assert len(ids) == 1 + 6 * 2 + 1
    shown = {n: slurm_cluster.show_job(i) for n, i in ids.items()}
    assert f"afterok:{ids['evaluate.s2']}" in shown["attack_shift.s2"]["Dependency"]
    assert shown["train_mlp.s1"]["Partition"] == "l40s_public"
    assert shown["prep.s1"]["Partition"] == "cpu_short"

    # a resume while the first submission still runs would start a second copy of each stage
    busy = submit(env, f"resume={rd}")
    assert busy.returncode == 2 and "still queued or running" in busy.stderr, busy.stderr

    states = slurm_cluster.wait(list(ids.values()), timeout=600)
    by_name = {n: states[i][0] for n, i in ids.items()}
    failed = {n for n, s in by_name.items() if s != "COMPLETED"}
    assert failed == {"attack_shift.s1", "attack_shift.s2", "aggregate"}, by_name
    assert by_name["aggregate"] == "CANCELLED" and by_name["attack_shift.s1"] == "FAILED"
    log = (rd / "jobs" / "attack_shift.s1" / f"slurm-{ids['attack_shift.s1']}.out").read_text()
    assert "error: line 4 of" in log and "is not numeric" in log and "Traceback" not in log
    assert not (rd / "outputs" / "seed1" / "attack_shift" / "_complete.json").exists()
    assert (rd / "outputs" / "seed2" / "attack_fgsm" / "_complete.json").is_file()

    # other settings than the run dir was made with: one line, exit 2, nothing submitted
    before = slurm_cluster._queued()
    other = submit(env, f"resume={rd}", "pipeline.stages.train_mlp.settings.hidden=64")
    assert other.returncode == 2 and "made with other settings" in other.stderr
    assert "train_mlp.s1: hidden = 32 there, 64 now" in other.stderr and other.stderr.count("\n") == 1
    assert slurm_cluster._queued() == before

    # the fix: a good shift file; the resume resubmits exactly what failed and what follows it
    make_points(shift, n=60, seed=3, shift=0.5)
    again = submit(env, f"resume={rd}")
    assert again.returncode == 0, again.stderr
    resubmitted = job_ids(again)
    assert sorted(resubmitted) == ["aggregate", "attack_shift.s1", "attack_shift.s2"]
    assert "complete (kept): setup, prep.s1, prep.s2, train_linear.s1" in again.stdout
    agg = slurm_cluster.show_job(resubmitted["aggregate"])["Dependency"]
    assert resubmitted["attack_shift.s1"] in agg and ids["attack_fgsm.s1"] not in agg  # done: no dependency
    states = slurm_cluster.wait(list(resubmitted.values()), timeout=600)
    assert all(s == ["COMPLETED"] for s in states.values()), states
    summary = (rd / "outputs" / "aggregate" / "summary.tsv").read_text().splitlines()
    assert summary[0].startswith("model\tmetric\tmean")
    shift_rows = [r for r in summary if "\tshift_accuracy\t" in r]
    assert len(shift_rows) == 2 and all("1:" in r and "2:" in r for r in shift_rows)  # both seeds
    record = json.loads((rd / "experiment.json").read_text())
    assert [s["resume"] for s in record["submissions"]] == [False, True]

    done = submit(env, f"resume={rd}")
    assert done.returncode == 0 and "nothing to resubmit" in done.stdout


def test_preflight_asks_slurm_about_every_job_and_writes_nothing(slurm_cluster, env, tmp_path):
    data = make_points(tmp_path / "points.csv")
    argv = [sys.executable, "-m", "containers", "preflight", "tinyexp", "cluster=torch", "seeds=[1,2]",
            f"data_file={data}", f"shift_file={data}"]
    out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.count("ok  ") == 14 and "aggregate: sbatch: Job " in out.stdout
    runs = Path(env["CONTAINERS_SCRATCH"]) / "runs"
    assert not runs.exists() or not any(runs.rglob("*"))
