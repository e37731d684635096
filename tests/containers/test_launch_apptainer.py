"""The launcher's command lines, executed by the REAL Apptainer (tests/world): what the process
inside sees. The flag-list tests in test_launch.py cannot show how Apptainer parses them.

The roots the commands bind live under the world cache, not under /tmp: Apptainer shares /tmp
with every container by default, so a bind of a /tmp path would prove nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from containers.launch import container_env, nvidia_gpu_present, plan_exec
from suite_core.config import compose
from suite_core.runner import run
from tests.helpers import REPO, assert_one_line_error
from tests.world import rootfs

pytestmark = pytest.mark.apptainer
PROBE = ["python3", str(REPO / "tests" / "world" / "probe.py")]
# What Apptainer itself adds to a --cleanenv process (measured with 1.4.5); anything else leaked.
APPTAINER_OWN = {"HOME", "PATH", "PWD", "LANG", "TERM", "LD_LIBRARY_PATH", "PS1", "PROMPT_COMMAND",
                 "LC_CTYPE", "SHLVL", "_"}


@pytest.fixture
def roots(monkeypatch, real_apptainer):
    """Scratch, node-local and shared roots outside /tmp (under the world cache, which the
    launcher binds), so only the command's own binds can make them visible inside."""
    work = rootfs.cache_dir() / "work"
    for bound in ("/tmp", "/var/tmp", str(Path.home())):  # what Apptainer binds into every container
        if work.is_relative_to(bound):
            msg = (f"the test world's cache {rootfs.cache_dir()} lies under {bound}, which Apptainer binds "
                   "into every container, so these tests cannot hide a folder; fix: set CONTAINERS_WORLD "
                   "to a folder outside /tmp, /var/tmp and $HOME (the default for root is /var/cache/...)")
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
    for old in work.glob("*-*"):  # left by a run that was killed before its teardown
        pid = old.name.split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    base = work / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for var, sub in (("CONTAINERS_SCRATCH", "scratch"), ("CONTAINERS_NODE_LOCAL", "nvme"),
                     ("CONTAINERS_SHARED_ROOT", "shared")):
        (base / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(base / sub))
    (base / "shared" / "models").mkdir()
    monkeypatch.setenv("CONTAINERS_REPO", str(REPO))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _plan(sif, command=PROBE, *, gpu=False, present=False, environ=None, **kw):
    cfg = compose(["cluster=torch"])
    env = dict(os.environ) if environ is None else environ
    return plan_exec(cfg, command=command, runtime="apptainer", sif=sif, gpu=gpu, gpu_present=present,
                     environ=env, **kw)


def _run(plan, *, env=None, cwd=None, input=None, timeout=180):
    return run(plan.argv, env=plan.env if env is None else env, cwd=cwd or REPO, check=False,
               timeout=timeout, input=input)


def _seen(proc) -> dict:
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cenv(environ=None) -> dict:
    return container_env(compose(["cluster=torch"]), dict(os.environ) if environ is None else environ)


def test_launcher_runs_the_real_apptainer(real_apptainer):
    proc = run([str(real_apptainer), "--version"], check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("apptainer version "), proc
    assert shutil.which("apptainer") == str(real_apptainer)


def test_cpu_stage_sees_exactly_the_explicit_environment(roots, test_sif_amd64):
    plan = _plan(test_sif_amd64)
    assert "--nv" not in plan.argv
    seen = _seen(_run(plan))
    expected = _cenv()
    for k, v in expected.items():
        assert seen["env"].get(k) == v, k
    leaked = set(seen["env"]) - set(expected) - APPTAINER_OWN
    assert not {k for k in leaked if not k.startswith(("APPTAINER_", "SINGULARITY_"))}, leaked
    assert seen["cwd"] == str(REPO)  # --cwd: the checkout, bound at the same path
    assert seen["containers"] == str(REPO / "containers" / "__init__.py")
    assert seen["python"] == [3, 11] and seen["no_user_site"]


def test_entrypoint_runs_inside_the_image(roots, test_sif_amd64):
    proc = _run(_plan(test_sif_amd64, ["python3", "-m", "entrypoints", "doctor"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_gpu_stage_adds_nv_only_where_a_gpu_exists(roots, test_sif_amd64):
    present = nvidia_gpu_present()
    plan = _plan(test_sif_amd64, gpu=True, present=present)
    seen = _seen(_run(plan))
    if present:
        assert "--nv" in plan.argv and seen["nvidia_dev"]
        smi = _run(_plan(test_sif_amd64, ["nvidia-smi", "-L"], gpu=True, present=True))
        assert smi.returncode == 0 and "GPU 0" in smi.stdout, smi.stderr
    else:
        assert "--nv" not in plan.argv and not seen["nvidia_dev"]
        assert any("not adding --nv" in w for w in plan.warnings)


def test_nv_forced_on_a_node_without_gpu_warns_and_runs(roots, test_sif_amd64):
    if nvidia_gpu_present():
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU case cannot be shown here")
    plan = _plan(test_sif_amd64, ["true"], gpu=True, present=True)  # what a wrong GPU detection would do
    proc = _run(plan)
    assert "--nv" in plan.argv
    assert proc.returncode == 0, proc.stderr  # real Apptainer warns and goes on without a driver


def test_binds_with_spaces_and_a_read_only_model_bind(roots, test_sif_amd64):
    spaced = roots / "data dir" / "with space"
    spaced.mkdir(parents=True)
    models = roots / "shared" / "models"
    hidden = roots / "not bound"
    hidden.mkdir()
    plan = _plan(test_sif_amd64, [*PROBE, "w:/data in/with space", f"w:{models}", f"e:{hidden}",
                                  f"w:{roots / 'scratch'}"],
                 extra_binds=[f"{spaced}:/data in/with space"])
    seen = _seen(_run(plan))
    assert seen["writable"]["/data in/with space"] == "ok"
    assert (spaced / "written-inside.txt").read_text() == "inside"
    assert seen["writable"][str(models)] == "Read-only file system"
    assert not (models / "written-inside.txt").exists()
    assert seen["writable"][str(roots / "scratch")] == "ok"
    assert seen["exists"][str(hidden)] is False  # nothing beyond the plan's binds



def test_folders_with_commas_and_colons_bind_through_mount(roots, real_apptainer, test_sif_amd64):
    """--bind splits at ',' and ':'; Bind.args() (the launcher) and suite_bind (exec.sh) pass such
    a folder with --mount and quoted CSV fields, read-only or writable as asked."""
    from containers.launch import Bind

    odd = roots / "shared" / 'scans, 2026: "late"'
    odd.mkdir()
    (odd / "page.txt").write_text("page\n")
    probe = 'cat "$1/page.txt"; if touch "$1/inside" 2>/dev/null; then echo writable; else echo read-only; fi'
    argv = [str(real_apptainer), "exec", "--cleanenv", "--no-home", *Bind(str(odd), str(odd), ro=True).args(),
            str(test_sif_amd64), "sh", "-c", probe, "sh", str(odd)]
    assert argv[4] == "--mount"
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["page", "read-only"], out.stderr
    code = (f"source {REPO}/slurm/lib/common.sh; SUITE_BINDS=(); suite_bind \"$ODD\" rw; "
            f"{real_apptainer} exec --cleanenv --no-home \"${{SUITE_BINDS[@]}}\" {test_sif_amd64} "
            f"sh -c '{probe}' sh \"$ODD\"")
    out = subprocess.run(["bash", "-c", code], env={**os.environ, "ODD": str(odd)}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["page", "writable"], out.stderr
    assert (odd / "inside").exists()


ENV_VALUES = {
    "COMMAS": "a,b,c",
    "QUOTES": 'say "hi"',
    "TRAILING_QUOTE": 'ends with "',
    "LEADING_QUOTE": '"starts',
    "ONLY_QUOTE": '"',
    "EQUALS": "a=b=c",
    "EQUALS_COMMA_QUOTE": 'k=v,w "x"',
    "EQUALS_TRAILING_QUOTE": 'x=1 "2"',
    "NEWLINE": "line one\nline two",
    "EQUALS_NEWLINE": "a=b\nc=d",
    "LONE_CR": "a=b\rc",
    "UNICODE": "ünïcödé ✓ 日本",
    "EMPTY": "",
    "SPACES": "  padded  ",
    "SHELLISH": "$HOME `id` $(id) ${X:-y} \\ 'single'",  # Apptainer sources values: must not expand
    "BACKSLASH_QUOTE": 'a\\"b',
    "TRAILING_BACKSLASH": "x\\",
    "TAB": "a\tb",
}


def test_env_values_arrive_exactly(roots, test_sif_amd64):
    environ = {**os.environ, **{f"CONTAINERS_T_{k}": v for k, v in ENV_VALUES.items()}}
    plan = _plan(test_sif_amd64, environ=environ)
    seen = _seen(_run(plan))
    got = {k[len("CONTAINERS_T_"):]: v for k, v in seen["env"].items() if k.startswith("CONTAINERS_T_")}
    assert got == ENV_VALUES


def test_crlf_value_is_refused_with_one_line(roots, test_sif_amd64):
    environ = {**os.environ, "CONTAINERS_T_CRLF": "a\r\nb"}
    proc = run([sys.executable, "-m", "containers", "exec", str(test_sif_amd64), "cluster=torch",
                "--runtime", "apptainer", "--cpu", "--", "true"], env=environ, check=False, timeout=60)
    assert_one_line_error(proc, "CONTAINERS_T_CRLF", "CR LF")


def test_apptainer_sources_env_values(real_apptainer, test_sif_amd64):
    """The fact behind _sourced_value: an unescaped --env value is shell-evaluated inside."""
    proc = run(["apptainer", "exec", "--cleanenv", "--env", "C=$(echo evaluated)", test_sif_amd64,
                "python3", "-c", "import os; print(os.environ['C'])"], check=False)
    assert proc.stdout.strip() == "evaluated", proc.stderr


def test_csv_doubled_quotes_are_not_what_apptainer_reads(real_apptainer, test_sif_amd64):
    """The fact behind _env_flag: the old CSV quoting turned say "hi" into say ""hi."""
    proc = run(["apptainer", "exec", "--cleanenv", "--env", '"C=say ""hi"""', test_sif_amd64,
                "python3", "-c", "import os; print(os.environ['C'])"], check=False)
    assert proc.stdout.strip() == 'say ""hi', proc.stderr


def test_dry_run_command_line_runs_the_same(roots, test_sif_amd64, tmp_path):
    """`containers exec --dry-run` prints a command that, pasted into a shell, gives the same env
    (values Apptainer's --env cannot carry go as APPTAINERENV_* in front of it)."""
    environ = {**os.environ, **{f"CONTAINERS_T_{k}": v for k, v in ENV_VALUES.items()}}
    # bytes, not text: text mode would turn the lone CR of the printed line into a newline
    proc = subprocess.run([sys.executable, "-m", "containers", "exec", str(test_sif_amd64), "cluster=torch",
                           "--runtime", "apptainer", "--cpu", "--dry-run", "--", *PROBE],
                          env=environ, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert b"APPTAINERENV_CONTAINERS_T_TRAILING_QUOTE=" in proc.stdout
    line = proc.stdout.decode().rstrip("\n")
    shell = run(["bash", "-c", line], env=environ, cwd=tmp_path, check=False, timeout=180)
    seen = _seen(shell)
    got = {k[len("CONTAINERS_T_"):]: v for k, v in seen["env"].items() if k.startswith("CONTAINERS_T_")}
    assert got == ENV_VALUES


def _hostile(roots: Path) -> dict:
    """A user environment out to break the container; $HOME outside /tmp (Apptainer shares /tmp)."""
    home = roots / "home"
    site = home / ".local" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "hostile_user_site.py").write_text("raise SystemExit('user site leaked')\n")
    (home / "marker-in-home").write_text("x")
    return {**os.environ, "HOME": str(home), "PYTHONPATH": "/leak", "PYTHONHOME": "/evil",
            "LD_PRELOAD": "/evil.so", "PYTHONSTARTUP": "/evil.py", "PYTHONUSERBASE": str(home / ".local"),
            "APPTAINERENV_EVIL": "1", "APPTAINERENV_PYTHONPATH": "/evil",
            "SINGULARITYENV_EVIL2": "1", "APPTAINER_BIND": str(home)}


def test_cleanenv_against_hostile_host_variables(roots, test_sif_amd64, tmp_path):
    environ = _hostile(roots)
    plan = _plan(test_sif_amd64, [*PROBE, f"e:{environ['HOME']}/marker-in-home"], environ=environ)
    assert not any(k.startswith(("APPTAINERENV_", "SINGULARITYENV_")) for k in plan.env)
    seen = _seen(_run(plan))
    env = seen["env"]
    assert "EVIL" not in env and "EVIL2" not in env and "LD_PRELOAD" not in env
    assert "PYTHONHOME" not in env and "PYTHONSTARTUP" not in env and "PYTHONUSERBASE" not in env
    assert env["PYTHONPATH"] == str(REPO) and env["PYTHONNOUSERSITE"] == "1"
    assert seen["hostile_user_site"] is False and seen["no_user_site"]
    assert not any(".local" in p for p in seen["sys_path"])
    assert seen["exists"][f"{environ['HOME']}/marker-in-home"] is False


def test_the_argv_alone_in_a_hostile_shell(roots, test_sif_amd64, tmp_path):
    """The same argv run with the user's whole environment (a script pasting the command):
    --cleanenv keeps host variables out and the explicit --env values win, but Apptainer passes
    APPTAINERENV_* through --cleanenv by design; that is why the launcher's env drops them."""
    environ = _hostile(roots)
    plan = _plan(test_sif_amd64, environ=environ)
    seen = _seen(_run(plan, env={k: v for k, v in environ.items() if k != "APPTAINER_BIND"}))
    env = seen["env"]
    assert env["PYTHONPATH"] == str(REPO) and "LD_PRELOAD" not in env and "PYTHONHOME" not in env
    assert seen["hostile_user_site"] is False
    assert env.get("EVIL") == "1"  # Apptainer's documented behaviour, not ours


def test_no_home_hides_the_host_home(roots, test_sif_amd64):
    environ = _hostile(roots)
    environ = {k: v for k, v in environ.items() if not k.startswith(("APPTAINER", "SINGULARITY"))}
    home = environ["HOME"]
    plan = _plan(test_sif_amd64, [*PROBE, f"e:{home}/marker-in-home"], environ=environ)
    assert "--no-home" in plan.argv
    seen = _seen(_run(plan))
    assert seen["env"]["HOME"] != home
    assert seen["exists"][f"{home}/marker-in-home"] is False
    # Started from inside $HOME, Apptainer mounts the working directory (home and all) despite
    # --no-home; for a cluster user $HOME inside is that same path, so PYTHONNOUSERSITE is what
    # keeps ~/.local out of sys.path (here $HOME inside is root's, so only the mount is shown).
    seen = _seen(_run(plan, cwd=Path(home)))
    assert seen["exists"][f"{home}/marker-in-home"] is True
    assert seen["no_user_site"] and seen["hostile_user_site"] is False


def test_working_directory(roots, test_sif_amd64):
    work = roots / "scratch" / "run dir"
    work.mkdir()
    assert _seen(_run(_plan(test_sif_amd64, cwd=str(work)), cwd=roots))["cwd"] == str(work)
    assert _seen(_run(_plan(test_sif_amd64), cwd=roots))["cwd"] == str(REPO)


def test_exit_codes_pass_through(roots, test_sif_amd64):
    assert _run(_plan(test_sif_amd64, ["python3", "-c", "raise SystemExit(7)"])).returncode == 7
    proc = run([sys.executable, "-m", "containers", "exec", str(test_sif_amd64), "cluster=torch",
                "--runtime", "apptainer", "--cpu", "--", "sh", "-c", "exit 3"], check=False, timeout=180)
    assert proc.returncode == 3, proc.stderr


SIGNAL_PROBE = ("import signal, sys, time\n"
                "signal.signal(signal.SIGTERM, lambda *a: (print('got TERM', flush=True), sys.exit(42)))\n"
                "print('ready', flush=True)\n"
                "time.sleep(120)\n")


@pytest.mark.parametrize("handled", [True, False])
def test_signals_reach_the_process_inside(roots, test_sif_amd64, world_procs, handled):
    """`containers exec` replaces itself with Apptainer; a SIGTERM sent to that pid reaches the
    process in the container (a handler runs; without one the job ends by the signal)."""
    code = SIGNAL_PROBE if handled else SIGNAL_PROBE.replace("signal.signal(", "0 and signal.signal(")
    proc = world_procs([sys.executable, "-m", "containers", "exec", str(test_sif_amd64), "cluster=torch",
                        "--runtime", "apptainer", "--cpu", "--", "python3", "-c", code],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.poll() is not None else ""
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    if handled:
        assert out.strip() == "got TERM" and proc.returncode == 42, (out, err)
    else:
        assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), (proc.returncode, err)


def test_shell_subcommand(roots, test_sif_amd64):
    plan = _plan(test_sif_amd64, [], subcommand="shell")
    assert plan.argv[:2] == ["apptainer", "shell"]
    proc = _run(plan, input='echo "nousersite=$PYTHONNOUSERSITE cwd=$(pwd)"; exit 5\n')
    assert proc.returncode == 5, proc.stderr
    assert f"nousersite=1 cwd={REPO}" in proc.stdout


@pytest.mark.arm64
def test_wrong_arch_image_is_refused_before_apptainer(roots, test_sif_arm64):
    if rootfs.host_arch() != "amd64":
        pytest.skip("the check is shown from an amd64 host")
    proc = run([sys.executable, "-m", "containers", "exec", str(test_sif_arm64), "cluster=torch",
                "--runtime", "apptainer", "--cpu", "--", "true"], check=False, timeout=60)
    assert_one_line_error(proc, "built for arm64", "this node is amd64")


@pytest.mark.arm64
def test_arm64_image_runs_under_qemu(roots, test_sif_arm64):
    seen = _seen(_run(_plan(test_sif_arm64), timeout=300))
    assert seen["machine"] == "aarch64" and seen["python"] == [3, 11]
    assert seen["containers"] == str(REPO / "containers" / "__init__.py")
