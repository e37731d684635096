"""Submission planning without Slurm: resources from the profile, GPU/CPU routing, dry run, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from containers.submit import build_plan, sbatch_argv, submit, write_job_files
from suite_core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "slurm"


def _render(plan) -> str:
    ids: dict[str, str] = {}
    lines = []
    for n, job in enumerate(plan.jobs, 1):
        argv = sbatch_argv(plan, job, ids)
        ids[job.name] = str(1000 + n)
        lines.append(" ".join(argv))
    text = "\n".join(lines) + "\n"
    return text.replace(str(plan.run_dir), "<RUN>").replace(str(REPO), "<REPO>")


def _plan(*args, **kw):
    return build_plan("selftest", list(args), run_dir=kw.pop("run_dir", "/runs/x"), **kw)


@pytest.mark.parametrize(
    "name,args",
    [
        ("torch_split", ["cluster=torch", "gpu=split"]),
        ("torch_h200_single", ["cluster=torch", "gpu=h200"]),
        ("spark_single", ["cluster=dgx_spark"]),
    ],
)
def test_sbatch_lines_match_golden(name, args, monkeypatch):
    monkeypatch.delenv("CONTAINERS_ACCOUNT", raising=False)
    for var in ("CONTAINERS_SCRATCH", "CONTAINERS_SHARED_ROOT", "CONTAINERS_NODE_LOCAL"):
        monkeypatch.setenv(var, f"/{var.lower()}")
    got = _render(_plan(*args))
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text()


def test_gpu_and_cpu_routing():
    plan = _plan("cluster=torch", "gpu=split")
    by = {j.name: j for j in plan.jobs}
    assert (by["layout"].partition, by["layout"].gres) == ("l40s_public", "gpu:l40s:1")
    assert (by["vlm"].partition, by["vlm"].gres) == ("h200_public", "gpu:h200:1")
    assert (by["post"].partition, by["post"].gres) == ("cpu_short", None)
    post = sbatch_argv(plan, by["post"], {"layout": "1", "vlm": "2"})
    assert "--dependency=afterok:1:2" in post and "--kill-on-invalid-dep=yes" in post
    assert not any(a.startswith(("--gres", "--gpus")) for a in post)
    assert [j.name for j in plan.jobs][-1] == "post"  # dependencies are submitted first


def test_untyped_gres_on_spark():
    plan = _plan("cluster=dgx_spark")
    assert plan.job("infer").gres == "gpu:1" and plan.job("post").partition == "spark"
    assert plan.account is None


@pytest.mark.parametrize(
    "args,kw,needle",
    [
        (["cluster=torch"], {"pipeline": "nope"}, "unknown pipeline 'nope'"),
        (["cluster=nope"], {}, "unknown cluster 'nope'"),
        (["cluster=laptop"], {}, "has no Slurm scheduler"),
        (["cluster=torch", "gpu=a100"], {}, "no GPU partition of type 'a100'"),
        (["cluster=torch", "mode=nope"], {}, "has no mode 'nope'"),
        (["cluster=torch"], {"only": ["nope"]}, "unknown stage 'nope'"),
    ],
)
def test_bad_input_is_one_line(args, kw, needle):
    pipeline = kw.pop("pipeline", "selftest")
    with pytest.raises(UserError) as exc:
        build_plan(pipeline, args, run_dir="/runs/x", **kw)
    assert needle in exc.value.line() and "\n" not in exc.value.line()


def _pipeline_dir(tmp_path, body: str) -> Path:
    """A copy of hydra_conf with one extra pipeline, to exercise refusals."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "hydra_conf", conf)
    (conf / "pipeline" / "bad.yaml").write_text(body)
    return conf


@pytest.mark.parametrize(
    "job,needle",
    [
        (
            "{gpu: false, partition: l40s, steps: [{app: doctor, image: paddle-py312}]}",
            "would land in GPU partition",
        ),
        ("{partition: cpu, gpus: 2, steps: [{app: doctor, image: paddle-py312}]}", "asks for 2 GPU(s)"),
        ("{gpu: true, partition: cpu, steps: [{app: doctor, image: paddle-py312}]}", "has no GPUs"),
        (
            "{partition: cpu, after: [ghost], steps: [{app: doctor, image: paddle-py312}]}",
            "runs after 'ghost'",
        ),
        ("{partition: cpu, steps: [{app: ghost, image: paddle-py312}]}", "unknown app 'ghost'"),
        (
            "{partition: cpu, sbatch: tests/golden/slurm/gpu_script.sbatch,"
            " steps: [{app: doctor, image: paddle-py312}]}",
            "asks for a GPU",
        ),
        # the schema (containers/pipeline_spec.py), checked by OmegaConf's structured configs
        ("{partition: cpu, gpuz: 1, steps: [{app: doctor, image: x}]}",
         "'modes.m.j.gpuz' is not a known setting"),
        ("{partition: cpu, gpus: two, steps: [{app: doctor, image: x}]}", "'modes.m.j.gpus': Value 'two'"),
        ("{partition: cpu, steps: [{app: doctor}]}", "'modes.m.j.steps[0].image' is required and missing"),
        ("{partition: cpu}", "'modes.m.j.steps' is required and missing"),
        ("{partition: cpu, gpu_guard: maybe, steps: [{app: doctor, image: x}]}",
         "expected one of [error, warn, off]"),
        ("{partition: cpu, stage: [{dst: models}], steps: [{app: doctor, image: x}]}",
         "stage[0].src' is required"),
    ],
)
def test_refused_job_configs(tmp_path, job, needle):
    from suite_core.config import compose

    conf = _pipeline_dir(tmp_path, f"name: bad\ndefault_mode: m\nmodes:\n  m:\n    j: {job}\n")
    with pytest.raises(UserError) as exc:
        build_plan(
            "bad", ["cluster=torch"], run_dir="/runs/x", compose=lambda ov: compose(ov, config_dir=conf)
        )
    assert needle in exc.value.line()


def test_dry_run_writes_job_folders_with_fake_ids(tmp_path):
    plan = _plan("cluster=torch", run_dir=str(tmp_path / "run"))
    write_job_files(plan)
    ids = submit(plan, dry_run=True)
    assert ids == {"infer": "1001", "post": "1002"}
    job = tmp_path / "run" / "jobs" / "post"
    assert "--dependency=afterok:1001" in (job / "cmd.log").read_text()
    step = (job / "steps.tsv").read_text().split("\t")
    assert step[1:4] == ["doctor", "mineru-dell-py310", "cpu"]
    cfg = (Path(step[4].strip()) / "config.yaml").read_text()
    assert "app_name: doctor" in cfg and "job_name: post" in cfg and f"run_dir: {tmp_path / 'run'}" in cfg
    assert (tmp_path / "run" / "submission.dry-run.json").is_file()


def test_no_sbatch_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="no 'sbatch' on PATH"):
        submit(_plan("cluster=torch", run_dir=str(tmp_path / "r")))


def test_cli_dry_run(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "containers",
            "submit",
            "selftest",
            "cluster=torch",
            "gpu=split",
            "--dry-run",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "fake job ids" in out.stdout and "--gres=gpu:h200:1" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "containers", "submit", "nope", "cluster=torch", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown pipeline" in bad.stderr


def test_overrides_are_routed_to_pipeline_and_steps():
    from containers.submit import route_overrides

    pipe, steps = route_overrides(
        ["cluster=torch", "pipeline.x=1", "input_dir=/s", "+a=1", "paths.models=/m"])
    assert pipe == ["cluster=torch", "pipeline.x=1", "paths.models=/m"]
    assert steps == ["cluster=torch", "++input_dir=/s", "+a=1", "paths.models=/m"]


def test_input_dir_flag_reaches_every_step(tmp_path):
    from tests.helpers import cli

    scans = tmp_path / "my scans, 2026"
    scans.mkdir()
    run = tmp_path / "run"
    proc = cli("submit", "newsbag", "cluster=torch", "gpu=split", "--input-dir", str(scans), "--recursive",
               "--run-dir", str(run), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    configs = sorted(run.glob("jobs/*/steps/*/config.yaml"))
    assert configs
    import yaml

    for c in configs:
        cfg = yaml.safe_load(c.read_text())
        assert (cfg["input_dir"], cfg["recursive"]) == (str(scans), True), c


def test_input_dir_must_exist(tmp_path):
    from tests.helpers import assert_one_line_error, cli

    proc = cli("submit", "newsbag", "cluster=torch", "--input-dir", str(tmp_path / "nope"), "--dry-run")
    assert_one_line_error(proc, "does not exist", "--input-dir")


def test_gpu_directive_check_reads_requests_not_partition_names(tmp_path):
    from containers.submit import _refuse_gpu_directives
    from suite_core.errors import UserError

    ok = tmp_path / "ok.sbatch"
    ok.write_text("#!/bin/bash\n#SBATCH --partition=h200_public\n#SBATCH --gres=none\n"
                  "true\n#SBATCH --gres=gpu:1\n")
    _refuse_gpu_directives("post", ok, "here")  # command-line --partition wins; directives stop at `true`
    bad = tmp_path / "bad.sbatch"
    bad.write_text("#!/bin/bash\n#SBATCH --gpus-per-node=2\ntrue\n")
    with pytest.raises(UserError, match="asks for a GPU"):
        _refuse_gpu_directives("post", bad, "here")


def _job_files(tmp_path, *args, pipeline="newsbag"):
    plan = build_plan(pipeline, ["cluster=torch", *args], run_dir=str(tmp_path / "run"))
    write_job_files(plan)
    return plan


def test_step_configs_keep_node_values_as_tokens(tmp_path, monkeypatch):
    """Composed once on the submitting side; what only the node knows stays ${node:...}."""
    import yaml

    monkeypatch.delenv("CONTAINERS_NODE_LOCAL", raising=False)
    monkeypatch.setenv("SLURM_TMPDIR", "/login/tmp")  # the login node's own: must not leak into the job
    plan = _job_files(tmp_path, "paths.models=/data/models")
    step = plan.job("infer").steps[2]
    cfg = yaml.safe_load((step.dir / "config.yaml").read_text())
    assert cfg["paths"]["node_local"] == "${node:local_root}"
    assert cfg["paths"]["staged_models"] == "${node:local_root}/models"
    assert cfg["dell_model"]["path"] == "${node:local_root}/models/dell/layout_model_new.onnx"
    assert cfg["dell_model"]["stage_src"] == "/data/models/dell"
    assert "/login/tmp" not in (plan.job("infer").dir / "job.env").read_text()
    env = (plan.job("infer").dir / "job.env").read_text()
    assert "SUITE_NODE_VAR=SLURM_TMPDIR" in env and "SUITE_NODE_FIXED=''" in env


def test_gpu_job_stages_every_model_its_apps_declare(tmp_path):
    import yaml

    plan = _job_files(tmp_path, "paths.models=/data/models")
    rows = yaml.safe_load((plan.job("infer").dir / "stage.yaml").read_text())["stage"]
    assert rows == [
        {"src": "/data/models/paddlex/official_models", "dst": "${node:local_root}/models/paddlex",
         "checksum": False},
        {"src": "/data/models/dell", "dst": "${node:local_root}/models", "checksum": False},
        {"src": "/data/models/MinerU2.5-2509-1.2B", "dst": "${node:local_root}/models", "checksum": False},
    ]
    post = yaml.safe_load((plan.job("post").dir / "stage.yaml").read_text())["stage"]
    assert post == []  # fusion/review read no model
    # a dropped variant's model is not staged
    plan = _job_files(tmp_path / "b", "paths.models=/data/models", "variants.mineru.layout=null",
                      "mineru_model.stage_src=null")
    rows = yaml.safe_load((plan.job("infer").dir / "stage.yaml").read_text())["stage"]
    assert [r["src"] for r in rows] == ["/data/models/paddlex/official_models", "/data/models/dell"]


def test_explicit_node_root_is_fixed_for_the_node(tmp_path):
    plan = _job_files(tmp_path, "paths.node_local=/nvme/me")
    env = (plan.job("infer").dir / "job.env").read_text()
    assert "SUITE_NODE_FIXED=/nvme/me" in env
    exec_sh = (plan.job("infer").steps[0].dir / "exec.sh").read_text()
    assert "suite_bind /nvme/me rw" in exec_sh and "HF_HOME=/nvme/me/cache/hf" in exec_sh


def test_exec_sh_golden(tmp_path, monkeypatch, isolated_roots):
    """The exact container command of a step, with binds, variables and the node's values."""
    plan = _job_files(tmp_path)
    text = (plan.job("infer").steps[2].dir / "exec.sh").read_text()
    for real, alias in ((plan.run_dir, "<RUN>"), (isolated_roots, "<ROOT>"), (REPO, "<REPO>")):
        text = text.replace(str(real), alias)
    from tests.helpers import assert_golden

    assert_golden("slurm/exec_dell.sh", text)


def test_exec_sh_binds_the_inputs_an_app_declares(tmp_path):
    """FlowPortal declares binds_ro (video, checkout): exec.sh binds them read-only at their paths
    (on the node, each one that exists there)."""
    video = tmp_path / "in" / "cat.mp4"
    plan = build_plan("flowportal", ["cluster=dgx_spark", "mode=cat", f"video.input={video}"],
                      run_dir=str(tmp_path / "run"))
    write_job_files(plan)
    text = (plan.job("cat").steps[0].dir / "exec.sh").read_text()
    assert f"suite_bind {video} ro" in text and "suite_bind /opt/FlowPortal ro" in text


def test_here_runs_exactly_one_job(tmp_path):
    from tests.helpers import assert_one_line_error, cli

    proc = cli("submit", "selftest", "cluster=torch", "--here", "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(proc, "--here runs one job", "infer, post", "--only JOB")
    ok = cli("submit", "selftest", "cluster=laptop", "--here", "--only", "post",
             "--run-dir", str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "r" / "jobs" / "post")  # no scheduler needed to run here


def test_continuation_arguments_drop_dependencies(tmp_path):
    plan = build_plan("selftest", ["cluster=torch", "mode=chain"], run_dir=str(tmp_path / "r"))
    write_job_files(plan)
    submit(plan, dry_run=True)
    args = (plan.job("last").dir / "sbatch.args").read_text().splitlines()
    assert not any(a.startswith(("--dependency", "--parsable", "--array")) for a in args)
    assert args[-2:] == [str(plan.job("last").script), str(plan.job("last").dir)]


def test_dependency_order_puts_dependencies_first_and_names_a_cycle():
    from containers.submit import dependency_order

    order = dependency_order({"c": ["b", "a"], "a": [], "b": ["a"]}, noun="jobs", where="p.yaml")
    assert order == ["a", "b", "c"]
    with pytest.raises(UserError, match=r"jobs depend on each other in a cycle: a -> c -> b -> a"):
        dependency_order({"a": ["c"], "b": ["a"], "c": ["b"]}, noun="jobs", where="p.yaml")
