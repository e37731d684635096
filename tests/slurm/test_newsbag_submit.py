"""newsbag through the one step runner, with the host runtime.

On the private local Slurm: real sbatch, real afterok chains. The GPU stages need Paddle/MinerU
models that no test machine has, so the end-to-end run uses the ``embedded`` mode (CPU sources
from the wheels, then fusion and review); the ``single`` mode is submitted too, to check that a
failing GPU job cancels its ``afterok`` post job instead of leaving it pending forever.

Without Slurm (plain bash on the node side): the GPU job stages the models its apps declare under
the node's root and the app reads them there (a tiny Dell ONNX graph); submit and the plain sbatch
script write and run the same job folder.
"""

from __future__ import annotations

import json
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
DELL_ONLY = "pipeline.modes.split.vlm.steps=[{app:dell,image:mineru-dell-py310}]"
JOB_LINE = re.compile(r"^\s+([A-Za-z0-9_.-]+)\s+(\d+)\s", re.M)


def submit(cluster, run_dir: Path, *args: str) -> tuple[dict[str, str], str]:
    env = {**os.environ, **cluster.env, "CONTAINERS_RUNTIME": "host", "PY": sys.executable,
           "NEWSBAG_GPU_MEM": "4G", "NEWSBAG_VLM_MEM": "4G", "NEWSBAG_POST_MEM": "4G"}  # test nodes: 32 GB
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


@pytest.mark.slurm
@pytest.mark.slow
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


@pytest.mark.slurm
@pytest.mark.slow
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


def dell_models(root: Path) -> Path:
    pytest.importorskip("onnx")
    from tests.entrypoints.newsbag.test_sources_dell import ROWS, pred_columns, yolo_graph

    (root / "dell").mkdir(parents=True)
    yolo_graph(root / "dell" / "layout_model_new.onnx", pred_columns(ROWS))
    return root


def node_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.pop("CONTAINERS_NODE_LOCAL", None)  # the node rule decides
    env.update({"CONTAINERS_RUNTIME": "host", "PY": sys.executable, "CONTAINERS_GPU_GUARD": "warn", **extra})
    return env


def submit_vlm(run: Path, *args: str) -> None:
    """The split mode's vlm job, reduced to its Dell step, written with fake ids (no Slurm)."""
    sub = subprocess.run([sys.executable, "-m", "containers", "submit", "newsbag", "cluster=torch",
                          "gpu=split", "--only", "vlm", DELL_ONLY, "--run-dir", str(run), "--dry-run", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr


def on_node(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "slurm" / "newsbag_infer.sbatch"), *args], cwd=cwd,
                          env=node_env(**env), capture_output=True, text=True, timeout=300)


def test_submitted_models_root_and_node_root_meet_in_the_app(tmp_path, monkeypatch):
    """paths.models chosen at submit, node root from SLURM_TMPDIR on the node: staged there, read there."""
    models = dell_models(tmp_path / "my models")
    monkeypatch.delenv("CONTAINERS_NODE_LOCAL")
    run = tmp_path / "run"
    submit_vlm(run, f"paths.models='{models}'", "limit=1")
    job_tmp = tmp_path / "slurm-job-tmp"
    job_tmp.mkdir()
    out = on_node(tmp_path, str(run / "jobs" / "vlm"), SLURM_TMPDIR=str(job_tmp))
    assert out.returncode == 0, out.stderr
    staged = job_tmp / "models" / "dell" / "layout_model_new.onnx"
    assert staged.read_bytes() == (models / "dell" / "layout_model_new.onnx").read_bytes()
    reports = [json.loads(p.read_text()) for p in run.glob("outputs/sources/dell/*/run_report.json")]
    assert reports and all(str(staged) in json.dumps(r) for r in reports), reports
    assert len(list(run.glob("outputs/sources/dell/*/pages/*.json"))) == 2  # two variants x 1 page
    assert (job_tmp / "cache" / "hf").is_dir()  # caches under the same node root
    again = on_node(tmp_path, str(run / "jobs" / "vlm"), SLURM_TMPDIR=str(job_tmp))
    assert again.returncode == 0, again.stderr
    assert "unchanged since they were staged (stat only)" in again.stderr  # no container, no copy
    source = models / "dell" / "layout_model_new.onnx"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 1))  # a changed source
    third = on_node(tmp_path, str(run / "jobs" / "vlm"), SLURM_TMPDIR=str(job_tmp))
    assert third.returncode == 0, third.stderr
    assert "copied 1 (" in third.stdout + third.stderr
    assert staged.stat().st_mtime_ns == source.stat().st_mtime_ns


def test_plain_sbatch_script_runs_the_same_job_folder(tmp_path, isolated_roots):
    """`sbatch slurm/newsbag_infer.sbatch key=value` composes once at job start and runs the same steps."""
    dell_models(isolated_roots / "shared" / "models")
    out = on_node(tmp_path, DELL_ONLY.replace("split.vlm", "single.infer"), "limit=1",
                  f"run_dir={tmp_path / 'run'}", CONTAINERS_NODE_LOCAL=str(tmp_path / "nvme"))
    assert out.returncode == 0, out.stderr
    job = tmp_path / "run" / "jobs" / "infer"
    assert (job / "steps" / "01-dell" / "exec.sh").is_file() and (job / "job.env").is_file()
    assert (tmp_path / "nvme" / "models" / "dell" / "layout_model_new.onnx").is_file()
    assert len(list((tmp_path / "run").glob("outputs/sources/dell/*/pages/*.json"))) == 2


def test_a_missing_model_stops_the_job_before_the_first_app(tmp_path):
    run = tmp_path / "run"
    submit_vlm(run, f"paths.models={tmp_path / 'empty'}")
    out = on_node(tmp_path, str(run / "jobs" / "vlm"), CONTAINERS_NODE_LOCAL=str(tmp_path / "nvme"))
    assert out.returncode == 2, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert errors[0].startswith(f"error: staging source {tmp_path / 'empty' / 'dell'} does not exist")
    assert not (run / "jobs" / "vlm" / "steps" / "01-dell" / "run_report.json").exists()
