"""The world's pytest plugin, run in an inner pytest: loud skips, CI failures, marker discipline,
and nothing left running when a run is interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from suite_core.runner import run
from tests.helpers import REPO

INNER = '''
import pytest, time, pathlib, os

@pytest.mark.apptainer
def test_with_marker(real_apptainer):
    pass

def test_without_marker(world_sid_root):
    pass

def test_background(world_procs):
    p = world_procs(["sleep", "300"])
    pathlib.Path(os.environ["PID_FILE"]).write_text(str(p.pid))
    time.sleep(300)
'''


def _inner(tmp_path, *args, ci=False, env_extra=None):
    test = tmp_path / "test_inner.py"
    test.write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"PID_FILE": str(tmp_path / "pid"), **(env_extra or {})})
    if ci:
        env["CI"] = "true"
    return [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.plugins.world",
            "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning",
            "--rootdir", str(tmp_path), str(test), *args], env


def test_missing_piece_is_a_loud_skip_and_a_ci_failure(tmp_path):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")  # a world cache that cannot be created: the piece cannot be built
    argv, env = _inner(tmp_path, "-k", "with_marker", env_extra={"CONTAINERS_WORLD": str(blocker)})
    proc = run(argv, env=env, cwd=REPO, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 skipped" in proc.stdout
    assert "[apptainer] the sid root with Apptainer unavailable:" in proc.stdout
    argv, env = _inner(tmp_path, "-k", "with_marker", ci=True, env_extra={"CONTAINERS_WORLD": str(blocker)})
    proc = run(argv, env=env, cwd=REPO, check=False, timeout=300)
    assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout[-2000:]  # a fixture failing
    assert "[apptainer] the sid root with Apptainer unavailable:" in proc.stdout


def test_world_fixture_without_its_marker_fails(tmp_path):
    argv, env = _inner(tmp_path, "-k", "without_marker")
    proc = run(argv, env=env, cwd=REPO, check=False, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "uses world_sid_root but is not marked @pytest.mark.apptainer" in proc.stdout


def test_sigterm_ends_the_run_and_its_background_processes(tmp_path):
    argv, env = _inner(tmp_path, "-k", "background")
    inner = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        pid_file = tmp_path / "pid"
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline and inner.poll() is None:
            time.sleep(0.2)
        assert pid_file.exists(), inner.communicate(timeout=30)[0]
        sleeper = int(pid_file.read_text())
        os.kill(sleeper, 0)  # running
        inner.send_signal(signal.SIGTERM)
        out, _ = inner.communicate(timeout=60)
        assert inner.returncode != 0 and ("KeyboardInterrupt" in out or "!!!" in out), out
        gone = False
        for _ in range(50):
            try:
                os.kill(sleeper, 0)
            except ProcessLookupError:
                gone = True
                break
            time.sleep(0.1)
        assert gone, f"background process {sleeper} survived the interrupted run"
    finally:
        if inner.poll() is None:
            os.killpg(inner.pid, signal.SIGKILL)
            inner.wait()
