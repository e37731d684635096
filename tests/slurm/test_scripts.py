"""The node side of the Slurm layer under plain bash: job folders, the node rule, the step runner,
SIF staging in shell, and one line for each bad input. Runtime host (this Python) except where
the shell-only SIF staging is under test; the real-Apptainer runs are in test_world_runpath.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from containers.jobdir import profiles_sh
from tests.helpers import assert_golden

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(REPO.glob("slurm/*.sbatch"))
OWN = [REPO / "slurm" / n for n in ("run_stage.sbatch", "newsbag_infer.sbatch", "newsbag_post.sbatch",
                                    "flowportal_cat.sbatch", "build_image.sbatch", "lib/common.sh",
                                    "lib/profiles.sh")]


def bash_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PY"))}
    env.update({"CONTAINERS_RUNTIME": "host", "PY": sys.executable, **extra})
    env.pop("CONTAINERS_REPO", None)
    return env


def bash(script: str, *args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], cwd=cwd, env=bash_env(**env), capture_output=True,
                          text=True, timeout=180)


def shell(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", code], cwd=REPO, env=bash_env(**env), capture_output=True,
                          text=True, timeout=60)


def submit_here(run: Path, *args: str, pipeline: str = "selftest", **env: str) -> Path:
    out = subprocess.run([sys.executable, "-m", "containers", "submit", pipeline, *args, "--here",
                          "--run-dir", str(run)], cwd=REPO, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def one_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sbatch_scripts_parse_under_plain_bash(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_profiles_sh_is_generated_from_hydra_conf():
    assert_golden("../../slurm/lib/profiles.sh", profiles_sh())


def test_run_stage_runs_an_app_under_plain_bash(tmp_path):
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), "doctor", f"run_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "node " in out.stderr and "arch " in out.stderr  # suite_init prints the node facts
    step = tmp_path / "jobs" / "run" / "steps" / "01-doctor"
    assert json.loads((step / "run_report.json").read_text())["exit_status"] == 0
    assert (step / "config.yaml").is_file() and (step / "exec.sh").is_file()



def _post_job(tmp_path: Path) -> Path:
    """A run dir with selftest's 'post' job folder written by submit (--dry-run: nothing submitted)."""
    rd = tmp_path / "run"
    sub = subprocess.run([sys.executable, "-m", "containers", "submit", "selftest", "cluster=torch",
                          "--dry-run", "--run-dir", str(rd), "--only", "post"],
                         cwd=REPO, capture_output=True, text=True)
    assert sub.returncode == 0, sub.stderr
    return rd

def test_run_stage_runs_a_submitted_job_folder_under_plain_bash(tmp_path):
    rd = _post_job(tmp_path)
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(rd / "jobs" / "post"), cwd=tmp_path,
               OMP_NUM_THREADS="", SLURM_CPUS_PER_TASK="3")
    assert out.returncode == 0, out.stderr
    assert "cpus 3" in out.stderr  # threads follow the allocation
    report = json.loads((rd / "jobs" / "post" / "steps" / "01-doctor" / "run_report.json").read_text())
    assert report["exit_status"] == 0 and report["stage"] == "post"
    events = [ln.split("\t")[2] for ln in (rd / "jobs" / "post" / "timeline.tsv").read_text().splitlines()]
    assert events == ["job_start", "sifs_ready", "models_ready", "step_start", "step_end", "job_end"]



def test_a_usr1_before_the_jobs_handler_is_acted_on(tmp_path):
    """Slurm may send --signal=B:USR1@N up to 60 s early, even at the job's start (seen on the local
    Slurm: a task died of USR1 2 s in). The scripts note it from their first line; the handler
    chains the continuation once it is set."""
    for name in ("run_stage.sbatch", "flowportal_batch.sbatch"):
        lines = (REPO / "slurm" / name).read_text().splitlines()
        first = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
        assert lines[first] == "trap '_SUITE_EARLY_USR1=1' USR1", name
    rd = _post_job(tmp_path)
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(rd / "jobs" / "post"), cwd=tmp_path,
               _SUITE_EARLY_USR1="1")
    assert out.returncode == 0, out.stderr
    assert "time limit near (USR1, before the job's handler was set)" in out.stderr
    assert "not a submitted Slurm job: rerun" in out.stderr  # suite_continue ran (no Slurm here)


def test_library_sets_threads_and_node_local_caches(tmp_path, isolated_roots):
    probe = ('source slurm/lib/common.sh; suite_init; echo "$OMP_NUM_THREADS $MKL_NUM_THREADS '
             '$TOKENIZERS_PARALLELISM $PYTORCH_CUDA_ALLOC_CONF $HF_HOME"')
    out = shell(probe, SLURM_CPUS_PER_TASK="5")
    assert out.returncode == 0, out.stderr
    omp, mkl, tok, alloc, hf = out.stdout.split()
    assert (omp, mkl, tok, alloc) == ("5", "5", "false", "expandable_segments:True")
    assert hf.startswith(str(isolated_roots / "nvme")) and Path(hf).is_dir()


@pytest.mark.parametrize(("env", "want"), [
    ({}, "/tmp/tester"),
    ({"SLURM_TMPDIR": "/job/tmp"}, "/job/tmp"),
    ({"SLURM_TMPDIR": "/job/tmp", "CONTAINERS_NODE_LOCAL": "/nvme/me"}, "/nvme/me"),
])
def test_node_rule_is_the_same_in_bash_and_python(monkeypatch, env, want):
    """suite_node_root (bash, on the node) and the node_root resolver (Python) agree."""
    from suite_core.config import compose

    monkeypatch.delenv("CONTAINERS_NODE_LOCAL", raising=False)
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    monkeypatch.setenv("USER", "tester")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    py = str(compose(["cluster=torch"]).paths.node_local)
    sh = subprocess.run(["bash", "-c", 'source slurm/lib/common.sh; suite_profile torch; echo "$NODE_LOCAL"'],
                        cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=30)
    assert py == sh.stdout.strip() == want, sh.stderr


def test_missing_repository_is_one_line(tmp_path):
    out = subprocess.run(["bash", "-c", f"source {REPO}/slurm/lib/common.sh; suite_init"], cwd=tmp_path,
                         env=bash_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("error: repository not found")


def test_a_failing_step_stops_the_job_with_its_exit_code(tmp_path):
    """The same runner everywhere: step 2 fails, step 3 never starts, the job exits with step 2's code."""
    job = submit_here(tmp_path / "run", "cluster=torch", "mode=chain", "--only", "middle",
                      "pipeline.modes.chain.middle.steps=[{app:doctor,image:paddle-py312},"
                      "{app:doctor,image:paddle-py312,overrides:['require=[no-such-thing]']},"
                      "{app:doctor,image:paddle-py312}]")
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(job), CONTAINERS_GPU_GUARD="off")
    one_error(out, "unknown capability 'no-such-thing'")
    assert "step 02-doctor of job middle failed with exit code 2; the later steps did not run" in out.stderr
    assert "rerun the job: sbatch" in out.stderr
    assert (job / "steps" / "01-doctor" / "run_report.json").is_file()
    assert not (job / "steps" / "03-doctor" / "run_report.json").exists()


def test_exit_75_outside_slurm_asks_for_a_rerun(tmp_path):
    job = submit_here(tmp_path / "run", "cluster=torch", "--only", "post")
    exec_sh = job / "steps" / "01-doctor" / "exec.sh"
    exec_sh.write_text(exec_sh.read_text().replace("set -euo pipefail\n", "set -euo pipefail\nexit 75\n"))
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(job))
    assert out.returncode == 0 and "rerun" in out.stderr and "by hand to continue" in out.stderr


def test_generated_job_files_are_shellcheck_clean(tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    job = submit_here(tmp_path / "run", "cluster=torch", "--only", "infer")
    files = [job / "job.env", job / "stage.sh", job / "steps" / "01-doctor" / "exec.sh"]
    out = subprocess.run(["shellcheck", "-x", "-e", "SC1091", *map(str, files)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck_clean():
    out = subprocess.run(["shellcheck", "-x", *map(str, OWN)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


# ---- bad input on the node: one line each (what, where, fix), exit 2, nothing half-staged ----

def test_py_that_does_not_exist(tmp_path):
    job = submit_here(tmp_path / "run", "cluster=torch", "--only", "post")
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(job), PY=str(tmp_path / "venv/bin/python"))
    one_error(out, "PY=", "does not exist on node", "unset PY")


def test_py_without_the_toolkit(tmp_path):
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if not bare or subprocess.run([bare, "-c", "import hydra"], capture_output=True).returncode == 0:
        pytest.skip("no python3 without hydra-core on this machine")
    job = submit_here(tmp_path / "run", "cluster=torch", "--only", "post")
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(job), PY=bare)
    one_error(out, f"PY={bare} cannot run the toolkit", "unset PY")


def test_job_folder_not_visible(tmp_path):
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(tmp_path / "gone" / "jobs" / "x"))
    one_error(out, "is not visible", "mount the shared storage")


def test_read_only_node_local_root(tmp_path):
    job = submit_here(tmp_path / "run", "cluster=torch", "--only", "post")
    out = bash(str(REPO / "slurm" / "run_stage.sbatch"), str(job), CONTAINERS_NODE_LOCAL="/proc/sys/kernel")
    one_error(out, "node-local root /proc/sys/kernel is read-only or full", "CONTAINERS_NODE_LOCAL")


def _sif_probe(job: Path, image: str, nvme: Path, **env: str) -> subprocess.CompletedProcess:
    code = (f'source slurm/lib/common.sh; source {job}/job.env; NODE_LOCAL={nvme}; suite_job_paths; '
            f'suite_sif {image}; suite_sif {image}')
    return shell(code, **env)


@pytest.fixture
def sif_job(tmp_path, isolated_roots):
    images = isolated_roots / "shared" / "images"
    images.mkdir(parents=True)
    job = submit_here(tmp_path / "run", "cluster=torch", "--only", "post", CONTAINERS_IMAGES=str(images))
    return job, images, tmp_path / "nvme"


def test_sif_staged_in_shell_then_reused_by_stat(sif_job):
    job, images, nvme = sif_job
    name = "mineru-dell-py310-amd64-abc.sif"
    (images / name).write_bytes(os.urandom(4096))
    (images / "mineru-dell-py310-amd64.current").write_text(name + "\n")
    out = _sif_probe(job, "mineru-dell-py310", nvme)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(nvme / "images" / name)] * 2
    assert out.stderr.count("staging ") == 1  # the second call only compared size and mtime
    assert (nvme / "images" / name).read_bytes() == (images / name).read_bytes()
    assert (nvme / "images" / "mineru-dell-py310-amd64.current").read_text() == name + "\n"
    assert not list((nvme / "images").glob(".*.part"))


def test_no_pointer_for_this_arch(sif_job):
    job, _, nvme = sif_job
    one_error(_sif_probe(job, "mineru-dell-py310", nvme), "no amd64 SIF for image mineru-dell-py310",
              "no pointer file mineru-dell-py310-amd64.current", "make build IMAGE=mineru-dell-py310")


def test_pointer_names_a_missing_sif(sif_job):
    job, images, nvme = sif_job
    (images / "mineru-dell-py310-amd64.current").write_text("mineru-dell-py310-amd64-gone.sif\n")
    one_error(_sif_probe(job, "mineru-dell-py310", nvme),
              "names mineru-dell-py310-amd64-gone.sif, which does not exist", "republish")
    assert not (nvme / "images").exists() or not list((nvme / "images").iterdir())


def test_image_without_a_build_for_this_arch(sif_job):
    job, _, nvme = sif_job
    env = job / "job.env"
    env.write_text(env.read_text().replace("SUITE_IMG_ARCHES[mineru-dell-py310]=amd64",
                                           "SUITE_IMG_ARCHES[mineru-dell-py310]=arm64"))
    one_error(_sif_probe(job, "mineru-dell-py310", nvme), "image mineru-dell-py310 has no amd64 build",
              "onnxruntime-gpu", "node of arch arm64")


def test_images_dir_not_mounted(sif_job):
    job, images, nvme = sif_job
    shutil.rmtree(images)
    one_error(_sif_probe(job, "mineru-dell-py310", nvme), f"images folder {images} is not visible", "mount")


def test_full_node_local_disk_leaves_nothing_half_staged(sif_job):
    job, images, nvme = sif_job
    name = "mineru-dell-py310-amd64-big.sif"
    with open(images / name, "wb") as fh:  # sparse: 1 GiB more than the node-local disk has free
        fh.truncate(shutil.disk_usage(nvme.parent).free + (1 << 30))
    (images / "mineru-dell-py310-amd64.current").write_text(name + "\n")
    one_error(_sif_probe(job, "mineru-dell-py310", nvme), "node-local disk is full", "free space")
    assert not (nvme / "images" / name).exists() and not list((nvme / "images").glob(".*part"))


def test_flowportal_cat_on_a_laptop_with_host_runtime(tmp_path, isolated_roots):
    """The same script a DGX user types, with runtime=host and no Slurm (a laptop)."""
    from tests.entrypoints.flowportal.conftest import CHECKOUT, make_mp4, stage_models

    models = stage_models(isolated_roots / "shared" / "models")
    video = make_mp4(tmp_path / "cat.mp4", 40)
    out = bash(str(REPO / "slurm" / "flowportal_cat.sbatch"), f"video.input={video}", "video.height=24",
               "video.width=32", "video.k_frames=9", cwd=tmp_path, CONTAINERS_CLUSTER="laptop",
               FLOWPORTAL_CHECKOUT=str(CHECKOUT), FLOWPORTAL_MODELS=str(models), CONTAINERS_GPU_GUARD="warn")
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((isolated_roots / "scratch" / "runs" / "flowportal").iterdir())
    marker = json.loads((run / "outputs" / "cat_ic" / ".complete.json").read_text())
    assert marker["preset"] == "dgx_fast"
    assert (isolated_roots / "nvme" / "models" / "flowportal" / "Wan2.1-Fun-V1.1-1.3B-Control").is_dir()
    assert (run / "jobs" / "cat" / "steps" / "01-flowportal" / "exec.sh").is_file()


def test_secret_looking_names_stay_out_on_the_node_as_in_python():
    """The node side's pass-through drops the same names suite_core.secrets.looks_secret does."""
    from suite_core.secrets import looks_secret

    names = ["CONTAINERS_HF_TOKEN", "TOKENIZERS_PARALLELISM", "SLURM_JOB_ID", "CONTAINERS_API_KEY",
             "FLOWPORTAL_PASSWD", "NEWSBAG_PASSWORD", "CONTAINERS_KEY_FILE", "CONTAINERS_MONKEY",
             "CONTAINERS_CREDENTIALS", "SLURM_SECRET_X", "CONTAINERS_WANDB_APIKEY", "CONTAINERS_KEY"]
    code = "source slurm/lib/common.sh; for n in " + " ".join(names) + \
        '; do if _suite_secret_name "$n"; then echo "$n"; fi; done'
    out = shell(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [n for n in names if looks_secret(n)]
    env = shell('source slurm/lib/common.sh; SUITE_PASS_NAMES=(); SUITE_PASS_PREFIXES=(CONTAINERS_); '
                'SUITE_HOST_NAMES=(); SUITE_RT_NAMES=(); _suite_env; printf "%s\\n" "${SUITE_PASS[@]}"',
                CONTAINERS_HF_TOKEN="hf_abcdefgh", CONTAINERS_OK="1")
    assert "CONTAINERS_OK=1" in env.stdout and "hf_abcdefgh" not in env.stdout
