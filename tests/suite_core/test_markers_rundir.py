"""Fingerprinted markers and the run-dir writer lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from suite_core import markers, rundir
from suite_core.errors import UserError


def test_fingerprint_changes_with_settings_inputs_and_code(tmp_path):
    f = tmp_path / "page.png"
    f.write_bytes(b"x" * 10)
    base = markers.fingerprint({"conf": 0.5}, [f], "c1")
    assert markers.fingerprint({"conf": 0.5}, [f], "c1") == base
    assert markers.fingerprint({"conf": 0.3}, [f], "c1") != base
    assert markers.fingerprint({"conf": 0.5}, [f], "c2") != base
    f.write_bytes(b"y" * 11)
    assert markers.fingerprint({"conf": 0.5}, [f], "c1") != base


def test_marker_reused_only_on_exact_match(tmp_path):
    m = tmp_path / "done.json"
    assert not markers.is_done(m, "abc")
    markers.write_marker(m, "abc", pages=3)
    assert markers.is_done(m, "abc")
    assert not markers.is_done(m, "abd")
    m.write_text("{not json")
    assert not markers.is_done(m, "abc")


def test_code_version_tracks_source():
    assert markers.code_version("suite_core.markers") == markers.code_version("suite_core.markers")
    assert markers.code_version("suite_core.markers") != markers.code_version("suite_core.rundir")


def test_second_writer_is_refused_with_holder(tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, time
        from suite_core.rundir import writer_lock
        with writer_lock({str(run)!r}):
            print("locked", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as err, rundir.writer_lock(run):
            pass
        assert f"pid {proc.pid}" in err.value.line()
        assert "\n" not in err.value.line()
    finally:
        proc.kill()
        proc.wait()
    with rundir.writer_lock(run):  # the dead writer's lock is gone
        pass


def test_unique_dir_under_concurrency(tmp_path):
    got: list[str] = []
    lock = threading.Lock()

    def make():
        d = rundir.unique_dir(tmp_path, "20261130-120000")
        with lock:
            got.append(d.name)

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 16
    assert sorted(os.listdir(tmp_path)) == sorted(got)
