"""The users' exact commands on the test world: real Apptainer on the local Slurm's nodes.

Nodes run nothing of ours outside the image: no PY, no .venv; the job finds the SIF for its arch
through the pointer file, stages it to the node's folder and runs every step in it. The test
world's image stands in for the product images (mineru-dell-py310, paddle-py312): it carries
the toolkit's light dependencies, ONNX Runtime and newsbag's CPU sources, not Paddle or MinerU,
so the GPU sources that need those are replaced by ones that run in it (an embedded source on
the L40S node, Dell on a tiny ONNX graph on the H200 node) -- every job still runs on its
partition, every step inside Apptainer.
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
pytestmark = [pytest.mark.apptainer, pytest.mark.slurm, pytest.mark.slow]
JOB_LINE = re.compile(r"^\s+([A-Za-z0-9_.-]+)\s+(\d+)\s", re.M)
TORCH_IMAGES = ("mineru-dell-py310", "paddle-py312")
# one variant per CPU source is enough here; the test image has rapidocr-onnxruntime, not rapidocr 3
OFF = ("variants.cdla.low=null", "variants.ppocrv6_det=null")


def publish_as(sif: Path, images: Path, name: str, arch: str) -> Path:
    """The world's test SIF published under a product image's name, pointer written last."""
    images.mkdir(parents=True, exist_ok=True)
    dst = images / f"{name}-{arch}-world.sif"
    if not dst.exists():
        try:
            os.link(sif, dst)
        except OSError:
            shutil.copy2(sif, dst)
    (images / f"{name}-{arch}.current").write_text(dst.name + "\n")
    return dst


@pytest.fixture
def torch_world(isolated_roots, real_apptainer, test_sif_amd64, slurm_cluster, monkeypatch):  # noqa: F811
    images = isolated_roots / "shared" / "images"
    for name in TORCH_IMAGES:
        publish_as(test_sif_amd64, images, name, "amd64")
    monkeypatch.delenv("PY", raising=False)
    env = {k: v for k, v in os.environ.items() if k not in ("PY", "CONTAINERS_RUNTIME", "VIRTUAL_ENV")}
    env["SLURM_CONF"] = slurm_cluster.env["SLURM_CONF"]  # the rest of cluster.env predates the launcher
    env.update({"CONTAINERS_ACCOUNT": "suite_test", "CONTAINERS_GPU_GUARD": "warn", "NEWSBAG_GPU_MEM": "4G",
                "NEWSBAG_VLM_MEM": "4G", "NEWSBAG_POST_MEM": "4G"})
    env.pop("CI", None)
    return env


def one_page(tmp_path: Path) -> Path:
    d = tmp_path / "scans"
    d.mkdir()
    for f in ("chronicle_p01.png", "chronicle_p01.gt.json"):
        shutil.copy(SAMPLES_DIR / f, d / f)
    return d


def submit(env, *args: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "containers", "submit", "newsbag", "cluster=torch", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return dict(JOB_LINE.findall(out.stdout))


def finished(cluster, run: Path, ids: dict[str, str]) -> None:
    states = cluster.wait(list(ids.values()), timeout=900)
    logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in run.glob("jobs/*/slurm-*.out"))
    assert all(s == ["COMPLETED"] for s in states.values()), f"{states}\n{logs}"


def in_container(report: Path, nvme: Path) -> dict:
    data = json.loads(report.read_text())
    assert data["exit_status"] == 0, data
    assert data["image"]["runtime"] == "container", data["image"]
    assert data["image"]["file"].startswith(str(nvme / "images")), data["image"]  # the staged copy
    return data


def test_torch_embedded_mode_in_apptainer(torch_world, slurm_cluster, tmp_path, isolated_roots):  # noqa: F811
    run = tmp_path / "run"
    ids = submit(torch_world, "mode=embedded", f"--input-dir={one_page(tmp_path)}", f"--run-dir={run}",
                 *OFF)
    assert set(ids) == {"sources", "post"}
    finished(slurm_cluster, run, ids)
    nvme = isolated_roots / "nvme"
    for step in ("sources/steps/01-newsbag_embedded", "post/steps/01-fusion", "post/steps/02-review"):
        in_container(run / "jobs" / step / "run_report.json", nvme)
    fusion = run / "outputs" / "fusion"
    assert (fusion / "variant_leaderboard.tsv").is_file() and (fusion / "source_leaderboard.tsv").is_file()
    assert (run / "review" / "summary.png").is_file()
    log = (run / "jobs" / "sources" / f"slurm-{ids['sources']}.out").read_text()
    assert "runtime apptainer" in (run / "jobs" / "sources" / "timeline.tsv").read_text(), log


def test_torch_split_mode_in_apptainer(torch_world, slurm_cluster, tmp_path, isolated_roots):  # noqa: F811
    from tests.slurm.test_newsbag_submit import dell_models

    dell_models(isolated_roots / "shared" / "models")
    run = tmp_path / "run"
    ids = submit(torch_world, "gpu=split", f"--input-dir={one_page(tmp_path)}", f"--run-dir={run}",
                 "pipeline.modes.split.paddle.steps=[{app:newsbag_embedded,image:paddle-py312}]",
                 "pipeline.modes.split.vlm.steps=[{app:dell,image:mineru-dell-py310}]", *OFF)
    assert set(ids) == {"paddle", "vlm", "post"}
    finished(slurm_cluster, run, ids)
    nodes = {j: slurm_cluster.show_job(i)["NodeList"] for j, i in ids.items()}
    assert nodes["paddle"] == "l40s1" and nodes["vlm"] == "h200n1" and nodes["post"] in ("cpu1", "cpu2")
    nvme = isolated_roots / "nvme"
    dell = in_container(run / "jobs" / "vlm" / "steps" / "01-dell" / "run_report.json", nvme)
    assert dell["slurm"]["partition"] == "h200_public"
    assert (nvme / "models" / "dell" / "layout_model_new.onnx").is_file()  # staged before the app ran
    sources = (run / "outputs" / "fusion" / "source_leaderboard.tsv").read_text()
    assert "dell" in sources and "cdla" in sources


@pytest.mark.apptainer
def test_node_side_variables_arrive_verbatim(real_apptainer, test_sif_amd64, tmp_path):
    """What exec.sh hands Apptainer (suite_container_env) reaches the process byte for byte."""
    value = "$(id) `uname` a\\b, \"quoted\" =x ünï"
    code = (f'source {REPO}/slurm/lib/common.sh; SUITE_ENV_PREFIX=APPTAINERENV_; '
            'SUITE_PASS=("CONTAINERS_PROBE=$PROBE"); suite_container_env "STATIC=$PROBE"; '
            f'env -i PATH="$PATH" "${{SUITE_CENV[@]}}" apptainer exec --cleanenv --no-home {test_sif_amd64} '
            'python3 -c "import os; print(repr((os.environ[\'CONTAINERS_PROBE\'], os.environ[\'STATIC\'])))"')
    out = subprocess.run(["bash", "-c", code], env={**os.environ, "PROBE": value}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == repr((value, value))


# ------------------------------------------------------------------ scripts that run their own steps
# The x86 L40S nodes (spark1 may be the aarch64 node in this session); small requests for the test nodes.
X86 = ["--partition=l40s_public", "--account=suite_test", "--mem=1G", "--cpus-per-task=1"]


def by_hand(cluster, env, tmp_path: Path, argv: list[str], timeout: float = 900) -> tuple[str, str]:
    """sbatch typed at the repository root; returns (state, log)."""
    jid = cluster.sbatch([*X86, f"--output={tmp_path}/slurm-%j.out", *argv], env=env, cwd=REPO)
    states = cluster.wait(jid, timeout=timeout)
    log = (tmp_path / f"slurm-{jid}.out").read_text()
    return states[jid][0], log


def test_ddp_by_hand_runs_every_step_in_apptainer(torch_world, slurm_cluster, tmp_path, isolated_roots,  # noqa: F811
                                                  test_sif_amd64):
    """slurm/ddp.sbatch IMAGE -- CMD on 2 nodes x 2 ranks: the SIF staged on each node, ddp-env and every
    rank inside the image (the test image has no torch: the ranks print what they were given)."""
    publish_as(test_sif_amd64, isolated_roots / "shared" / "images", "flowportal-cu130", "amd64")
    env = {**torch_world, "CONTAINERS_CLUSTER": "torch"}
    probe = ("import os; e = os.environ; print('rank', e['RANK'], 'of', e['WORLD_SIZE'], "
             "'local', e['LOCAL_RANK'], 'at', e['MASTER_ADDR'] + ':' + e['MASTER_PORT'], "
             "'in', e.get('APPTAINER_CONTAINER'), flush=True)")
    state, log = by_hand(slurm_cluster, env, tmp_path, [
        "--nodes=2", "--ntasks-per-node=2", "--gres=gpu:l40s:2", "slurm/ddp.sbatch", "flowportal-cu130", "--",
        "python", "-c", probe])
    assert state == "COMPLETED", log[-4000:]
    assert "launcher srun, world 4, rendezvous 127.0.0.1:" in log and "runtime apptainer" in log, log[-3000:]
    staged = isolated_roots / "nvme" / "images" / "flowportal-cu130-amd64-world.sif"
    ranks = sorted(ln.split()[1] for ln in log.splitlines() if ln.startswith("rank "))
    assert ranks == ["0", "1", "2", "3"], log[-3000:]
    assert all(ln.endswith(f"in {staged}") for ln in log.splitlines() if ln.startswith("rank ")), log[-3000:]


def test_experiment_stages_run_in_apptainer(torch_world, slurm_cluster, tmp_path, isolated_roots,  # noqa: F811
                                            test_sif_amd64):
    """An experiment (kind: experiment) writes the same job folders as submit: each stage runs through
    its exec.sh inside the image, and an input file outside the default binds is bound read-only."""
    from tests.containers.test_experiment import make_points

    publish_as(test_sif_amd64, isolated_roots / "shared" / "images", "flowportal-cu130", "amd64")
    # tinyexp's setup and prep stages only: the rest train with torch, which the test image lacks
    drop = [f"~pipeline.stages.{s}" for s in ("train_linear", "train_mlp", "evaluate", "attack_fgsm",
                                                "attack_shift", "aggregate")]
    (tmp_path / "data").mkdir()
    data = make_points(tmp_path / "data" / "points.csv", n=60)  # under pytest's base, not scratch
    out = subprocess.run([sys.executable, "-m", "containers", "submit", "tinyexp", "cluster=torch",
                          "seeds=[1,2]", f"data_file={data}", "pipeline.stages.setup.mem=1G",
                          "pipeline.stages.prep.mem=1G", *drop], cwd=REPO, env=torch_world,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    ids = dict(JOB_LINE.findall(out.stdout))
    run = Path(next(ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("run dir: ")))
    finished(slurm_cluster, run, ids)
    nvme = isolated_roots / "nvme"
    for job, app in (("setup", "exp_setup"), ("prep.s1", "exp_prep"), ("prep.s2", "exp_prep")):
        in_container(run / "jobs" / job / "steps" / f"01-{app}" / "run_report.json", nvme)
    exec_sh = run / "jobs" / "setup" / "steps" / "01-exp_setup" / "exec.sh"
    assert f"suite_bind {data} ro" in exec_sh.read_text()
    for seed in (1, 2):
        assert (run / "outputs" / f"seed{seed}" / "prep" / "_complete.json").is_file()


def test_flowportal_batch_script_runs_in_apptainer(torch_world, slurm_cluster, tmp_path,  # noqa: F811
                                                   isolated_roots, test_sif_amd64):
    """sbatch slurm/flowportal_batch.sbatch (what flowportal_status action=submit sends) on a node with
    Apptainer and no PY: the model set staged and the chunk composed and run inside the image."""
    from tests.entrypoints.flowportal.conftest import CHECKOUT, make_manifest, make_mp4, stage_models

    publish_as(test_sif_amd64, isolated_roots / "shared" / "images", "flowportal-cu130", "amd64")
    models = stage_models(isolated_roots / "shared" / "models")
    videos = tmp_path / "videos"  # outside scratch and the repository: bound by exec.sh (binds_ro)
    for i in range(2):
        make_mp4(videos / f"v{i}.mp4", 40)
    batch = make_manifest(videos, tmp_path / "batch", num_select=0, num_chunks=1)
    env = {**torch_world, "FLOWPORTAL_BATCH_DIR": str(batch), "FLOWPORTAL_VIDEO_DIR": str(videos),
           "FLOWPORTAL_CHECKOUT": str(CHECKOUT), "FLOWPORTAL_MODELS": str(models)}
    state, log = by_hand(slurm_cluster, env, tmp_path, [
        "--gres=gpu:l40s:1", "--array=0", "slurm/flowportal_batch.sbatch", "video.height=24",
        "video.width=32"])
    assert state == "COMPLETED", log[-4000:]
    for i in range(2):
        assert (batch / "outputs" / f"v{i}" / ".complete.json").is_file(), log[-3000:]
    nvme = isolated_roots / "nvme"
    assert (nvme / "models" / "flowportal" / "Wan2.1-Fun-V1.1-1.3B-Control").is_dir()
    reports = list((batch / "jobs" / "chunk0").glob("*/run_report.json"))  # where the app puts it
    assert len(reports) == 1, log[-3000:]
    in_container(reports[0], nvme)
    tasks = json.loads((batch / "progress" / "chunk0.tasks.json").read_text())
    assert tasks and all(t["staging_s"] is not None for t in tasks), tasks  # measured by the script


def test_ddp_submit_finds_the_image_in_the_submit_time_images_dir(torch_world, slurm_cluster, tmp_path,  # noqa: F811
                                                                   isolated_roots, test_sif_amd64):
    """`submit ddp_demo paths.images=DIR` with the SIF published only in DIR: the DDP job's own steps on
    the batch node (staging, ddp-env) read DIR from the job folder, as the ranks do. The test image has no
    torch, so the training itself stops in the ranks; everything before it is what is checked here."""
    from tests.containers.test_experiment import make_points

    images = tmp_path / "other-images"
    publish_as(test_sif_amd64, images, "flowportal-cu130", "amd64")
    (tmp_path / "data").mkdir()
    data = make_points(tmp_path / "data" / "points.csv", n=60)
    out = subprocess.run([sys.executable, "-m", "containers", "submit", "ddp_demo", "cluster=torch",
                          f"paths.images={images}", f"data_file={data}"],
                         cwd=REPO, env=torch_world, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert not list((isolated_roots / "shared" / "images").glob("flowportal-cu130*"))  # not in the profile's
    ids = dict(JOB_LINE.findall(out.stdout))
    run = Path(next(ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("run dir: ")))
    states = slurm_cluster.wait(list(ids.values()), timeout=900)
    log = (run / "jobs" / "train.s1" / f"slurm-{ids['train.s1']}.out").read_text()
    assert states[ids["setup"]] == ["COMPLETED"] and states[ids["prep.s1"]] == ["COMPLETED"], (states, log)
    assert "launcher srun, world 4, rendezvous 127.0.0.1:" in log and "runtime apptainer" in log, log[-3000:]
    assert (isolated_roots / "nvme" / "images" / "flowportal-cu130-amd64-world.sif").is_file()
    assert "torch" in log, log[-3000:]  # the ranks ran in the image, which lacks it
