"""The launcher's command lines: golden text, real Apptainer flags, arch and SIF checks."""

from __future__ import annotations

import shlex
import sys

import pytest

from containers.images import resolve_sif
from containers.launch import Bind, _env_flag, _sourced_value, detect_runtime, plan_exec
from suite_core.config import compose
from suite_core.errors import UserError
from tests.helpers import APPTAINER_FACTS, REPO, assert_golden, assert_one_line_error, cli, make_sif

ENV = {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "4242", "OMP_NUM_THREADS": "8",
       "PATH": "/usr/bin:/bin", "HOME": "/home/u", "LD_PRELOAD": "/evil.so", "PYTHONPATH": "/leak"}
CMD = ["python", "-m", "entrypoints", "doctor", "--require", "gpu"]


def _cfg(roots, *overrides):
    return compose(["cluster=torch", *overrides])


def _normalize(text: str, roots) -> str:
    return text.replace(str(roots), "<ROOT>").replace(str(REPO), "<REPO>")


def _plan(roots, runtime="apptainer", gpu=True, present=True, image="mineru-dell-py310", **kw):
    cfg = _cfg(roots, f"image={image}")
    (roots / "shared" / "models").mkdir(parents=True, exist_ok=True)
    sif = roots / "images" / f"{image}-amd64-abc123.sif"
    return plan_exec(cfg, command=CMD, runtime=runtime, sif=sif, gpu=gpu, gpu_present=present,
                     environ=ENV, **kw)


def _pretty(argv: list[str]) -> str:
    """One flag per line, then the image and command, so golden diffs are readable."""
    sif_at = next(i for i, a in enumerate(argv) if a.endswith(".sif"))
    out, line = [], []
    for a in argv[:sif_at]:
        if a.startswith("-") and line:
            out.append(" ".join(line))
            line = []
        line.append(shlex.quote(a))
    out.append(" ".join(line))
    out.append(shlex.join(argv[sif_at:]))
    return " \\\n  ".join(out) + "\n"


@pytest.mark.parametrize(("name", "kw"), [
    ("apptainer_gpu_stage", {}),
    ("apptainer_cpu_stage", {"gpu": False}),
    ("apptainer_gpu_stage_no_gpu_here", {"present": False}),
    ("singularity_gpu_stage", {"runtime": "singularity"}),
])
def test_container_command_golden(isolated_roots, name, kw):
    plan = _plan(isolated_roots, **kw)
    assert_golden(f"launch/{name}.txt", _normalize(_pretty(plan.argv), isolated_roots))


def test_host_command_golden(isolated_roots):
    plan = _plan(isolated_roots, runtime="host")
    text = "\n".join(f"{k}={v}" for k, v in sorted(plan.env.items())) + "\n" + " ".join(plan.argv[1:]) + "\n"
    assert_golden("launch/host_env.txt", _normalize(text, isolated_roots))


def test_nv_only_for_gpu_stages_on_gpu_nodes(isolated_roots):
    assert "--nv" in _plan(isolated_roots).argv
    assert "--nv" not in _plan(isolated_roots, gpu=False).argv
    assert "--nv" not in _plan(isolated_roots, present=False).argv


def test_env_flag_forms_follow_apptainers_parser():
    """pflag string-to-string: one '=' -> only outer quotes stripped; more -> one CSV record.
    What real Apptainer makes of each form is in test_launch_apptainer.py."""
    assert _env_flag("A", "x,y") == '"A=x,y"'
    assert _env_flag("A", 'a "b" c') == 'A=a "b" c'
    assert _env_flag("A", "a=b,c") == '"A=a=b,c"'
    assert _env_flag("A", 'a=b "c" d') == '"A=a=b ""c"" d"'
    assert _env_flag("A", 'say "hi"') is None and _env_flag("A", "a=b\r") is None
    assert _sourced_value("A", "$(id) `id` \\") == "\\$(id) \\`id\\` \\\\"
    with pytest.raises(UserError, match="CR LF"):
        _sourced_value("A", "a\r\nb")


def test_clean_environment_with_explicit_pass_through(isolated_roots):
    plan = _plan(isolated_roots)
    envs = [plan.argv[i + 1] for i, a in enumerate(plan.argv) if a == "--env"]
    assert "--cleanenv" in plan.argv and "--no-home" in plan.argv
    assert '"CUDA_VISIBLE_DEVICES=0,1"' in envs  # CSV-quoted: Apptainer splits --env on commas
    assert "SLURM_JOB_ID=4242" in envs and "PYTHONNOUSERSITE=1" in envs
    assert "HF_HUB_OFFLINE=1" in envs and "TRANSFORMERS_OFFLINE=1" in envs
    assert not any(e.startswith(("LD_PRELOAD", "PYTHONPATH=/leak")) for e in envs)
    caches = {e.split("=", 1)[0]: e.split("=", 1)[1] for e in envs if "CACHE" in e or "HOME=" in e}
    nvme = str(isolated_roots / "nvme")
    for key in ("HF_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
                "PADDLE_PDX_CACHE_HOME"):
        assert caches[key].startswith(nvme), key


def test_host_runtime_gets_the_same_variables(isolated_roots):
    host = _plan(isolated_roots, runtime="host")
    box = _plan(isolated_roots)
    assert host.container_env == box.container_env
    assert "LD_PRELOAD" not in host.env and host.env["PYTHONPATH"] == str(REPO)
    assert host.argv[0] == sys.executable  # "python" becomes this interpreter


def test_every_emitted_flag_exists_for_that_subcommand(isolated_roots):
    for runtime in ("apptainer", "singularity"):
        for sub in ("exec", "shell"):
            for gpu in (True, False):
                plan = _plan(isolated_roots, runtime=runtime, gpu=gpu, subcommand=sub)
                flags = {f["name"]: f for f in APPTAINER_FACTS["commands"][sub]}
                sif_at = next(i for i, a in enumerate(plan.argv) if a.endswith(".sif"))
                for arg in plan.argv[2:sif_at]:
                    if arg.startswith("--"):
                        name = arg[2:].split("=", 1)[0]
                        assert name in flags, f"{runtime} {sub}: --{name} is not an Apptainer flag"
                        if runtime == "apptainer":
                            assert not flags[name]["hidden"], f"--{name} is hidden (deprecated)"


def test_paths_with_spaces_and_quotes(tmp_path, monkeypatch):
    odd = tmp_path / "my scratch's \"dir\""
    odd.mkdir()
    monkeypatch.setenv("CONTAINERS_SCRATCH", str(odd))
    cfg = compose(["cluster=torch", "image=flowportal-cu130"])
    plan = plan_exec(cfg, command=["python", "-c", "print('a b')"], runtime="apptainer",
                     sif=odd / "x.sif", gpu=False, gpu_present=False, environ={})
    assert shlex.split(plan.shell()) == plan.argv  # the dry-run text is exactly the argv
    assert f"{odd}:{odd}" in plan.argv


def test_bind_paths_with_commas_or_colons_go_through_mount_and_newlines_are_refused():
    assert Bind("/a b", "/a b", ro=True).args() == ["--bind", "/a b:/a b:ro"]
    assert Bind('/x, "y":z', '/x, "y":z').args() == [
        "--mount", 'type=bind,"source=/x, ""y"":z","destination=/x, ""y"":z"']
    assert Bind("/a,b", "/a,b", ro=True).args()[1].endswith('"destination=/a,b",ro')
    with pytest.raises(UserError, match="contains a newline"):
        Bind("/a\nb", "/a\nb").args()


def test_runtime_detection(tmp_path):
    assert detect_runtime("auto", path=str(tmp_path))[0] == "host"
    assert "no apptainer or singularity" in detect_runtime("auto", path=str(tmp_path))[1][0]
    with pytest.raises(UserError, match="no 'apptainer' is on PATH"):
        detect_runtime("apptainer", path=str(tmp_path))
    assert detect_runtime("apptainer", path=str(tmp_path), dry_run=True)[0] == "apptainer"
    with pytest.raises(UserError, match="unknown runtime"):
        detect_runtime("docker")


def test_sif_for_this_arch_is_found_through_the_pointer(isolated_roots, tmp_path):
    cfg = compose(["image=flowportal-cu130"])
    images = tmp_path / "imgs"
    images.mkdir()
    make_sif(images / "flowportal-cu130-arm64-0123abcd.sif", "arm64", {"recipe": "flowportal-cu130"})
    (images / "flowportal-cu130-arm64.current").write_text("flowportal-cu130-arm64-0123abcd.sif\n")
    got = resolve_sif(cfg.image, "arm64", [tmp_path / "staged", images])
    assert got.sif.name == "flowportal-cu130-arm64-0123abcd.sif"
    assert got.info.labels["recipe"] == "flowportal-cu130"


def test_wrong_arch_sif_is_refused_naming_both(tmp_path):
    cfg = compose(["image=flowportal-cu130"])
    sif = make_sif(tmp_path / "fp.sif", "amd64")
    with pytest.raises(UserError) as err:
        resolve_sif(cfg.image, "arm64", [], explicit=str(sif))
    assert "built for amd64 but this node is arm64" in err.value.line()


def test_unsupported_arch_says_why():
    cfg = compose(["image=paddle-py312"])
    with pytest.raises(UserError) as err:
        resolve_sif(cfg.image, "arm64", [])
    assert "no Paddle GPU build for aarch64" in err.value.line()


def test_missing_sif(tmp_path):
    cfg = compose(["image=mineru-dell-py310"])
    with pytest.raises(UserError, match="no amd64 SIF for image mineru-dell-py310"):
        resolve_sif(cfg.image, "amd64", [tmp_path])


# --- the CLI as a user types it -------------------------------------------------------------

def test_cli_dry_run_prints_the_exact_command(tmp_path):
    sif = make_sif(tmp_path / "fp.sif", "amd64")
    proc = cli("exec", "flowportal-cu130", f"image_sif={sif}", "--runtime", "apptainer",
               "--arch", "amd64", "--gpu-present", "yes", "--dry-run", "--", "python", "-m",
               "entrypoints", "doctor")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:3] == ["apptainer", "exec", "--nv"]
    assert argv[-4:] == ["python", "-m", "entrypoints", "doctor"]


@pytest.mark.parametrize(("args", "needles"), [
    (["exec", "nope", "--", "true"], ["unknown image 'nope'"]),
    (["exec", "flowportal-cu130", "cluster=nope", "--", "true"], ["unknown cluster 'nope'"]),
    (["exec", "flowportal-cu130", "x=[", "--", "true"], ["malformed override"]),
    (["exec", "flowportal-cu130", "--runtime", "apptainer", "--", "true"], ["no 'apptainer' is on PATH"]),
    (["exec", "paddle-py312", "--arch", "arm64", "--dry-run", "--", "true"], ["no arm64 build"]),
    (["exec", "mineru-dell-py310", "--runtime", "apptainer", "--dry-run", "--", "true"], ["no amd64 SIF"]),
    (["exec", "flowportal-cu130"], ["no command"]),
    (["frobnicate"], ["unknown command 'frobnicate'"]),
])
def test_cli_bad_input_is_one_line_exit_2(args, needles):
    if "--arch" not in args and "mineru" in " ".join(args):
        args = [*args[:2], "--arch", "amd64", *args[2:]]
    assert_one_line_error(cli(*args), *needles)


def test_cli_wrong_arch_sif_path(tmp_path):
    sif = make_sif(tmp_path / "x.sif", "arm64")
    proc = cli("exec", str(sif), "--runtime", "apptainer", "--arch", "amd64", "--dry-run", "--", "true")
    assert_one_line_error(proc, "built for arm64 but this node is amd64")


def test_cli_not_a_sif(tmp_path):
    bogus = tmp_path / "x.sif"
    bogus.write_bytes(b"\0" * 200)
    proc = cli("exec", str(bogus), "--runtime", "apptainer", "--dry-run", "--", "true")
    assert_one_line_error(proc, "not a SIF image")


def test_host_runtime_really_runs_the_entrypoint(tmp_path):
    out = tmp_path / "env.txt"
    code = ("import os,sys,pathlib; pathlib.Path(sys.argv[1]).write_text("
            "os.environ['PYTHONNOUSERSITE']+' '+os.environ['HF_HUB_OFFLINE']+' '+os.environ['HF_HOME'])")
    proc = cli("exec", "flowportal-cu130", "--runtime", "host", "--", "python", "-c", code, str(out))
    assert proc.returncode == 0, proc.stderr
    nousersite, offline, hf = out.read_text().split(" ", 2)
    assert (nousersite, offline) == ("1", "1") and hf.endswith("/cache/hf")


def test_inputs_the_run_reads_are_bound_read_only(isolated_roots, tmp_path):
    """binds_ro: each existing path, read-only at its own path; missing and null ones are left out."""
    scans = tmp_path / "my scans"
    scans.mkdir()
    video = tmp_path / "cat.mp4"
    video.write_bytes(b"x")
    cfg = _cfg(isolated_roots, "image=mineru-dell-py310",
               f"+binds_ro=['{scans}','{video}','{tmp_path / 'absent'}',null,relative/path]")
    plan = plan_exec(cfg, command=CMD, runtime="apptainer", sif=tmp_path / "x.sif", gpu=False,
                     gpu_present=False, environ=ENV)
    binds = [plan.argv[i + 1] for i, a in enumerate(plan.argv) if a == "--bind"]
    assert f"{scans}:{scans}:ro" in binds and f"{video}:{video}:ro" in binds
    assert not any("absent" in b or "relative" in b for b in binds)
