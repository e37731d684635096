"""newsbag submitted to the private local Slurm with the host runtime: real sbatch, real afterok chains.

The GPU stages need Paddle/MinerU models that no test machine has, so the end-to-end run uses the
``embedded`` mode (CPU sources from the wheels, then fusion and review); the ``single`` mode is
submitted too, to check that a failing GPU job cancels its ``afterok`` post job instead of
leaving it pending forever.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoints.newsbag.samples import SAMPLES_DIR
from tests.plugins.slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
JOB_LINE = re.compile(r"^\s+([A-Za-z0-9_.-]+)\s+(\d+)\s", re.M)


def submit(cluster, run_dir: Path, *args: str) -> tuple[dict[str, str], str]:
    env = {**os.environ, **cluster.env, "CONTAINERS_RUNTIME": "host", "NEWSBAG_GPU_MEM": "4G",
           "NEWSBAG_VLM_MEM": "4G", "NEWSBAG_POST_MEM": "4G"}  # the test nodes declare 32 GB
    r = subprocess.run([sys.executable, "-m", "containers", "submit", "newsbag", "cluster=torch",
                        f"--run-dir={run_dir}", *args], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = dict(JOB_LINE.findall(r.stdout))
    assert ids, r.stdout
    return ids, r.stdout


def one_page_input(tmp_path: Path) -> Path:
    d = tmp_path / "scans" / "issue1"
    d.mkdir(parents=True)
    for f in ("chronicle_p01.png", "chronicle_p01.gt.json"):
        shutil.copy(SAMPLES_DIR / f, d / f)
    (d / "notes.txt").write_text("not a page")
    return tmp_path / "scans"


def test_embedded_mode_runs_sources_fusion_and_review_on_slurm(slurm_cluster, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    scans = one_page_input(tmp_path)
    ids, out = submit(slurm_cluster, run_dir, "mode=embedded", f"++input_dir={scans}", "++recursive=true",
                      "++variants.cdla.low=null")
    assert set(ids) == {"sources", "post"} and "after sources" in out
    states = slurm_cluster.wait(list(ids.values()), timeout=300)
    logs = "\n".join(p.read_text() for p in run_dir.glob("jobs/*/slurm-*.out"))
    assert all(s == ["COMPLETED"] for s in states.values()), f"{states}\n{logs[-3000:]}"
    fusion = run_dir / "outputs" / "fusion"
    assert (fusion / "variant_leaderboard.tsv").is_file() and (fusion / "source_leaderboard.tsv").is_file()
    assert (fusion / "pages" / "issue1__chronicle_p01.json").is_file()
    assert "consensus" in (fusion / "accuracy.tsv").read_text()
    assert len(list((run_dir / "review" / "top20_informative" / "pages").glob("*.png"))) == 1
    assert (run_dir / "review" / "summary.png").is_file()
    report = (run_dir / "jobs" / "sources" / "steps" / "01-newsbag_embedded" / "run_report.json").read_text()
    assert "notes.txt" in report  # the non-image file is listed as skipped, the run went on


def test_single_mode_chains_post_afterok_and_cancels_it_when_the_gpu_job_fails(slurm_cluster, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    scans = one_page_input(tmp_path)
    ids, out = submit(slurm_cluster, run_dir, f"++input_dir={scans}")
    assert set(ids) == {"infer", "post"} and "gpu:l40s:1" in out
    assert f"afterok:{ids['infer']}" in (run_dir / "jobs" / "post" / "cmd.log").read_text()
    states = slurm_cluster.wait(list(ids.values()), timeout=300)
    # no Paddle models here: the GPU job fails with a clear error and post is cancelled, not left pending
    assert states[ids["infer"]] == ["FAILED"] and states[ids["post"]] == ["CANCELLED"]
    log = "\n".join(p.read_text() for p in (run_dir / "jobs" / "infer").glob("slurm-*.out"))
    assert "error:" in log and "Traceback" not in log
