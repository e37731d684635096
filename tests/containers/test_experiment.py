"""Experiment pipelines without Slurm: the DAG, seeds sharing stages, the rendered sbatch lines,
bad input (one line, exit 2, nothing written or submitted), stage input checks, resume decisions."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from containers import experiment
from containers.experiment import COMPLETE, STATE, plan
from suite_core.errors import UserError
from tests.helpers import REPO, assert_golden, assert_one_line_error, cli


def make_points(path: Path, n: int = 120, seed: int = 0, shift: float = 0.0) -> Path:
    """Two Gaussian blobs (label 0 and 1) in a CSV: the example's raw data, made here."""
    rng = random.Random(seed)
    lines = ["x1,x2,label"]
    for i in range(n):
        label = i % 2
        x1, x2 = rng.gauss(2.0 * label + shift, 1.0), rng.gauss(-label + shift, 1.0)
        lines.append(f"{x1:.4f},{x2:.4f},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data(tmp_path):
    return make_points(tmp_path / "points.csv"), make_points(tmp_path / "shift.csv", seed=1, shift=0.5)


def args(data, *extra):
    return ["cluster=torch", f"data_file={data[0]}", f"shift_file={data[1]}", *extra]


def runs_dir() -> Path:
    return Path(os.environ["CONTAINERS_SCRATCH"]) / "runs"


def test_seeds_share_seed_independent_stages(data):
    exp = plan("tinyexp", args(data, "seeds=[1,2,3]"))
    names = list(exp.instances)
    assert len(names) == 1 + 6 * 3 + 1  # setup and aggregate shared, six stages per seed
    assert names[0] == "setup" and names[-1] == "aggregate"
    inst = exp.instances
    assert inst["prep.s2"].deps == ["setup"]
    assert inst["evaluate.s3"].deps == ["train_linear.s3", "train_mlp.s3"]
    assert inst["aggregate"].deps == [f"{a}.s{s}" for a in ("attack_fgsm", "attack_shift") for s in (1, 2, 3)]
    # a seed changes the fingerprint of every per-seed stage, never of the shared setup
    assert inst["train_mlp.s1"].fingerprint != inst["train_mlp.s2"].fingerprint
    assert inst["train_mlp.s1"].settings["seed"] == 1 and "seed" not in inst["setup"].settings
    assert inst["train_linear.s1"].settings["model"] == "linear"
    assert inst["train_mlp.s1"].settings["hidden"] == 32
    # a stage's own settings beat a plain key=value: the FGSM attack never depends on the shift file
    assert inst["attack_fgsm.s1"].settings["shift_file"] is None and inst["attack_fgsm.s1"].input_files == []
    assert inst["attack_shift.s1"].input_files == [str(data[1])]


def test_dry_run_renders_every_job_with_afterok_and_kill_on_invalid_dep(data, tmp_path, monkeypatch):
    for var in ("CONTAINERS_SCRATCH", "CONTAINERS_SHARED_ROOT", "CONTAINERS_NODE_LOCAL"):
        monkeypatch.setenv(var, f"/{var.lower()}")
    monkeypatch.delenv("CONTAINERS_ACCOUNT", raising=False)
    rd = tmp_path / "run"
    out = cli("submit", "tinyexp", *args(data, "seeds=[1,2]"), "--dry-run", "--run-dir", str(rd))
    assert out.returncode == 0, out.stderr
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith("sbatch ")]
    assert len(lines) == 1 + 6 * 2 + 1
    text = "\n".join(lines) + "\n"
    text = text.replace(str(rd), "<RUN>").replace(str(REPO), "<REPO>")
    assert_golden("experiment/tinyexp_2seeds.txt", text)
    assert all("--kill-on-invalid-dep=yes" in ln for ln in lines)
    assert not (rd / STATE).exists() and (rd / "experiment.dry-run.json").is_file()
    cfg = (rd / "jobs" / "train_mlp.s2" / "steps" / "01-exp_train" / "config.yaml").read_text()
    assert "seed: 2" in cfg and "model: mlp" in cfg and f"out_dir: {rd}/outputs/seed2/train_mlp" in cfg


def test_ddp_stage_renders_the_srun_shape(data, tmp_path):
    rd = tmp_path / "run"
    out = cli("submit", "ddp_demo", "cluster=torch", f"data_file={data[0]}", "--dry-run",
              "--run-dir", str(rd))
    assert out.returncode == 0, out.stderr
    train = next(ln for ln in out.stdout.splitlines() if "--job-name=ddp_demo.train.s1" in ln)
    for flag in ("--gres=gpu:l40s:2", "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=2", "--mem=16G",
                 "slurm/ddp.sbatch"):
        assert flag in train, flag
    assert (rd / "jobs" / "train.s1" / "ddp.conf").read_text().startswith("launcher=srun\n")
    cfg = (rd / "jobs" / "train.s1" / "steps" / "01-exp_train" / "config.yaml").read_text()
    assert "run_report.rank${oc.env:RANK,0}.json" in cfg  # one report per rank
    torchrun = cli("submit", "ddp_demo", "cluster=torch", f"data_file={data[0]}", "--dry-run",
                   "--run-dir", str(tmp_path / "run2"), "pipeline.stages.train.ddp.launcher=torchrun",
                   "pipeline.stages.train.cpus_per_task=4")
    assert torchrun.returncode == 0, torchrun.stderr
    line = next(ln for ln in torchrun.stdout.splitlines() if "--job-name=ddp_demo.train.s1" in ln)
    assert "--ntasks-per-node=1" in line and "--gres=gpu:l40s:2" in line


@pytest.mark.parametrize("extra,needles", [
    (["pipeline.stages.setup.after=[aggregate]"], ["cycle", "setup -> aggregate", "-> setup"]),
    (["pipeline.stages.prep.after=[nope]"], ["'prep' runs after 'nope'", "use one of"]),
    (["pipeline.stages.train_mlp.partition=cpu"], ["GPU stage 'train_mlp'", "no GPUs", "l40s"]),
    (["seeds=[]"], ["seed list is empty", "seeds=[1,2,3]"]),
    (["seeds=[1,x]"], ["not a list of integers"]),
    (["seeds=[2,2]"], ["appear twice"]),
    (["pipeline.stages.prep.settings={lrr: 1}"], ["sets lrr", "exp_prep does not have"]),
    (["pipeline.stages.setup.app=nope"], ["unknown app 'nope'"]),
    (["pipeline.stages.setup.image=nope"], ["unknown image 'nope'"]),
    (["pipeline.stages.setup.nodes=2"], ["without a ddp: block"]),
    (["cluster=laptop"], ["no Slurm scheduler"]),
    (["pipeline.stages.prep.bogus=1"], ["does not fit the schema", "bogus"]),
])
def test_bad_input_is_one_line_and_nothing_is_written(data, extra, needles):
    with pytest.raises(UserError) as err:
        plan("tinyexp", args(data, *extra))
    line = err.value.line()
    assert "\n" not in line and err.value.code == 2
    for n in needles:
        assert n in line, (n, line)
    assert not runs_dir().exists() or not any(runs_dir().rglob("*"))


def test_bad_input_on_the_command_line_exits_2_without_submitting(data):
    for extra, needle in ((["pipeline.stages.setup.after=[aggregate]"], "cycle"),
                          (["seeds=[]"], "seed list is empty")):
        assert_one_line_error(cli("submit", "tinyexp", *args(data, *extra)), needle)
    assert not runs_dir().exists() or not any(runs_dir().rglob("*"))


@pytest.mark.parametrize("extra,needles", [
    (["pipeline.stages.train.gpus=4", "pipeline.stages.train.ntasks_per_node=8",
      "pipeline.stages.train.nodes=1"],
     ["8 tasks per node but 4 GPUs per node", "MEMBER: 4/8", "ntasks_per_node: 4"]),
    (["pipeline.stages.train.ddp.launcher=torchrun", "pipeline.stages.train.ntasks_per_node=2"],
     ["torchrun starts each node's ranks itself"]),
    # the status quo's OOM: 4 nodes x 4 L40S, 8 workers per GPU at ~2 GB, 256 GB for the job
    (["pipeline.stages.train.nodes=4", "pipeline.stages.train.gpus=4", "pipeline.stages.train.mem=64G",
      "pipeline.stages.train.cpus_per_task=9", "pipeline.stages.train.ddp.worker_rss=2G",
      "pipeline.stages.train.ddp.rank_rss=4G", "pipeline.stages.train.settings.num_workers=8"],
     ["would run out of memory", "16 ranks x 8 workers x ~2 GB = 256 GB", "fix: num_workers=5 or mem=89G"]),
])
def test_ddp_shapes_and_memory_are_refused_before_submission(data, extra, needles):
    with pytest.raises(UserError) as err:
        plan("ddp_demo", ["cluster=torch", f"data_file={data[0]}", *extra])
    for n in needles:
        assert n in err.value.line(), (n, err.value.line())
    assert not runs_dir().exists() or not any(runs_dir().rglob("*"))


def test_the_memory_fix_passes(data, tmp_path):
    common = ["pipeline.stages.train.nodes=4", "pipeline.stages.train.gpus=4",
              "pipeline.stages.train.cpus_per_task=9",
              "pipeline.stages.train.ddp.worker_rss=2G", "pipeline.stages.train.ddp.rank_rss=4G"]
    for fix in (["pipeline.stages.train.mem=64G", "pipeline.stages.train.settings.num_workers=5"],
                ["pipeline.stages.train.mem=128G", "pipeline.stages.train.settings.num_workers=8"]):
        exp = plan("ddp_demo", ["cluster=torch", f"data_file={data[0]}", *common, *fix],
                   run_dir=str(tmp_path / fix[0][-4:]))
        assert exp.instances["train.s1"].cfg["num_workers"] == int(fix[1][-1])


def test_missing_mandatory_input_setting_is_one_line():
    with pytest.raises(UserError, match=r"data_file.*mandatory"):
        plan("tinyexp", ["cluster=torch"])


# --------------------------------------------------------------------------- stages and resume, by hand
def run_stage(rd: Path, job: str, env: dict | None = None) -> subprocess.CompletedProcess:
    step = next((rd / "jobs" / job / "steps").iterdir())
    app = step.name.split("-", 1)[1]
    return subprocess.run([sys.executable, "-m", "entrypoints", app, "--config-path", str(step),
                           "--config-name", "config"], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "CONTAINERS_GPU_GUARD": "warn", **(env or {})})


def write_record(exp) -> None:
    """What submit records (the same code path), for resume decisions without a scheduler."""
    from suite_core.atomic import write_json

    plan_ = experiment._to_plan(exp)
    experiment.write_job_files(exp, plan_)
    doc = experiment._state_doc(exp, None)
    doc["submissions"].append({"jobs": {}, "resume": False})
    write_json(exp.run_dir / STATE, doc)


def test_cpu_stages_check_inputs_flag_last_and_never_import_torch(data, tmp_path):
    rd = tmp_path / "run"
    exp = plan("tinyexp", args(data, "seeds=[1,2]"), run_dir=str(rd))
    write_record(exp)
    early = run_stage(rd, "prep.s1")  # before setup ran: its input flag is missing
    assert_one_line_error(early, "input stage setup is not complete", "resume=")
    assert not (rd / "outputs" / "seed1" / "prep" / COMPLETE).exists()
    probe = ("import sys, runpy; sys.argv = ['entrypoints', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('entrypoints', run_name='__main__')\n"
             "except SystemExit as e:\n    assert 'torch' not in sys.modules, 'torch imported'\n    raise")
    for job in ("setup", "prep.s1"):
        step = next((rd / "jobs" / job / "steps").iterdir())
        argv = [sys.executable, "-c", probe, step.name.split("-", 1)[1], "--config-path", str(step),
                "--config-name", "config"]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert out.returncode == 0, out.stderr
    flag = json.loads((rd / "outputs" / "setup" / COMPLETE).read_text())
    assert flag["fingerprint"] == exp.instances["setup"].fingerprint  # the stage and submit agree
    split = json.loads((rd / "outputs" / "seed1" / "prep" / "split.json").read_text())
    assert len(split["train"]) == 72 and len(split["test"]) == 24


def test_bad_data_fails_the_stage_with_its_line_and_no_flag(data, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x1,x2,label\n1.0,2.0,0\n1.5,oops,1\n")
    rd = tmp_path / "run"
    exp = plan("tinyexp", ["cluster=torch", f"data_file={bad}", f"shift_file={data[1]}"], run_dir=str(rd))
    write_record(exp)
    out = run_stage(rd, "setup")
    assert_one_line_error(out, "line 3 of", "is not numeric")
    assert not (rd / "outputs" / "setup" / COMPLETE).exists()
    report = json.loads((rd / "jobs" / "setup" / "steps" / "01-exp_setup" / "run_report.json").read_text())
    assert report["exit_status"] == 2


def test_resume_reruns_what_lacks_a_valid_flag_and_what_follows(data, tmp_path):
    rd = tmp_path / "run"
    exp = plan("tinyexp", args(data, "seeds=[1,2]"), run_dir=str(rd))
    write_record(exp)
    for job in ("setup", "prep.s1", "prep.s2"):
        assert run_stage(rd, job).returncode == 0
    again = plan("tinyexp", [f"resume={rd}"])  # the run's own overrides and seeds are reused
    assert again.complete == ["setup", "prep.s1", "prep.s2"]
    assert sorted(again.instances) == sorted(n for n in exp.instances if n not in again.complete)
    # an input file changed after the fact: setup's flag no longer matches, so everything reruns
    make_points(data[0], n=130)
    assert plan("tinyexp", [f"resume={rd}"]).complete == []


def test_resume_with_other_settings_is_refused(data, tmp_path):
    rd = tmp_path / "run"
    write_record(plan("tinyexp", args(data, "seeds=[1,2]"), run_dir=str(rd)))
    for extra, needle in ((["pipeline.stages.train_mlp.settings.lr=0.01"],
                           "train_mlp.s1: lr = 0.5 there, 0.01 now"),
                          (["seeds=[1,2,3]"], "other seeds or stages")):
        out = cli("submit", "tinyexp", f"resume={rd}", *extra)
        assert_one_line_error(out, "was made with other settings", needle)
    assert len(json.loads((rd / STATE).read_text())["submissions"]) == 1
    # resources are not settings: a longer time limit resumes fine (here: a dry run)
    ok = cli("submit", "tinyexp", f"resume={rd}", "pipeline.stages.train_mlp.time=02:00:00", "--dry-run")
    assert ok.returncode == 0, ok.stderr
    line = next(ln for ln in ok.stdout.splitlines() if "train_mlp.s1" in ln and "sbatch" in ln)
    assert "--time=02:00:00" in line


def test_resume_of_a_folder_that_is_not_an_experiment(tmp_path):
    out = cli("submit", "tinyexp", f"resume={tmp_path}")
    assert_one_line_error(out, "is not an experiment run directory")


@pytest.mark.parametrize("app", ["exp_setup", "exp_prep", "exp_train", "exp_eval", "exp_attack",
                                 "exp_aggregate", "fusion", "doctor"])
def test_app_config_equals_hydras_composition(app, data):
    """The one-composition shortcut gives exactly what Hydra gives (or falls back to Hydra)."""
    from omegaconf import OmegaConf

    from suite_core.config import compose

    overrides = ["cluster=torch", f"++data_file={data[0]}", "++steps=7", "++fusion.grid=32"]
    base = OmegaConf.to_container(compose(["cluster=torch", "+pipeline=tinyexp"]), resolve=True)
    base.pop("pipeline")
    fast = experiment.app_config(base, app, "flowportal-cu130", overrides)
    slow = OmegaConf.to_container(compose([f"app={app}", "image=flowportal-cu130", *overrides]), resolve=True)
    fast.pop("run_dir"), slow.pop("run_dir")  # ${now:...}: the second it was composed
    assert fast == slow


def test_is_experiment_reads_the_kind_line():
    assert experiment.is_experiment("tinyexp") and experiment.is_experiment("ddp_demo")
    assert not experiment.is_experiment("newsbag") and not experiment.is_experiment("nope")


def test_fingerprint_is_order_independent():
    a = experiment.instance_fingerprint({"b": 1, "a": 2}, {"x": "1", "y": "2"}, [], "c")
    b = experiment.instance_fingerprint({"a": 2, "b": 1}, {"y": "2", "x": "1"}, [], "c")
    assert a == b and a != experiment.instance_fingerprint({"a": 2, "b": 1}, {"x": "1", "y": "3"}, [], "c")


def test_plan_refuses_a_used_run_dir(data, tmp_path):
    rd = tmp_path / "run"
    write_record(plan("tinyexp", args(data), run_dir=str(rd)))
    with pytest.raises(UserError, match="already holds an experiment"):
        plan("tinyexp", args(data), run_dir=str(rd))
