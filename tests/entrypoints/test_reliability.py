"""Apps: one writer per run unit, unique submit dirs, settings validated with the key named, and
every OS error or bad job config is one line (no traceback, no half-written output)."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.containers.test_reliability_errors import mounted_tmpfs
from tests.helpers import REPO, assert_one_line_error, cli

SAMPLES = REPO / "entrypoints" / "newsbag" / "samples"
ONE_VARIANT = ["variants.cdla.low=null", "variants.ppocr_det=null", "variants.ppocrv6_det=null"]


def app(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli(*args, module="entrypoints", env=env)


# ---- one writer per run dir -------------------------------------------------------------------------

def _feed_fifo(fifo: Path, data: bytes, stop: threading.Event) -> None:
    """Serve ``data`` to every reader of ``fifo`` until ``stop`` (a page that arrives when we say)."""
    while not stop.is_set():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader yet
            time.sleep(0.02)
            continue
        try:
            os.set_blocking(fd, True)
            with contextlib.suppress(OSError):
                os.write(fd, data)
        finally:
            os.close(fd)


def test_second_writer_into_one_run_dir_stops_with_the_holder(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    shutil.copy(SAMPLES / "chronicle_p01.png", pages / "p1.png")
    os.mkfifo(pages / "p2.png")  # the first run blocks here, holding the run dir, until we feed it
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "entrypoints", "newsbag_embedded", f"input_dir={pages}",
            f"run_dir={run_dir}"]
    first = subprocess.Popen([*argv, *ONE_VARIANT], cwd=REPO, stderr=subprocess.PIPE, text=True)
    lock = run_dir / "jobs" / "newsbag_embedded" / ".writer.lock"
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (lock.is_file() and lock.stat().st_size):
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        second = app("newsbag_embedded", f"input_dir={pages}", f"run_dir={run_dir}", *ONE_VARIANT)
        assert_one_line_error(second, "is being written by", f"pid {first.pid}", str(run_dir))
        feeder = threading.Thread(target=_feed_fifo, args=(pages / "p2.png", (SAMPLES / "chronicle_p02.png")
                                                           .read_bytes(), stop), daemon=True)
        feeder.start()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        stop.set()
        if first.poll() is None:
            first.kill()
            first.wait()
    again = app("newsbag_embedded", f"input_dir={pages / 'x'}", f"run_dir={run_dir}")  # lock released
    assert "being written" not in again.stderr


def test_array_tasks_and_split_sources_do_not_share_a_lock(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from entrypoints.framework import run_lock_target

    def task_cfg(step: Path, task: int):
        return OmegaConf.create({"run_dir": "x", "report_path": f"{step}/run_report.{task}.json"})

    cfg = OmegaConf.create({"run_dir": str(tmp_path / "run"), "job_name": None, "report_path": None})
    direct = run_lock_target("newsbag_embedded", cfg, None)
    other = run_lock_target("dell", cfg, None)
    assert direct != other and direct[0] == tmp_path / "run" / "jobs" / "newsbag_embedded"
    step = tmp_path / "run" / "jobs" / "infer" / "steps" / "01-dell"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    t3 = run_lock_target("dell", task_cfg(step, 3),
                         str(step))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    t4 = run_lock_target("dell", task_cfg(step, 4),
                         str(step))
    assert t3[0] == t4[0] == step and t3[1] != t4[1]


def test_two_submits_in_the_same_second_get_distinct_run_dirs(monkeypatch, isolated_roots):
    import containers.submit as submit

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 30, 12, 0, 0)

    monkeypatch.setattr(submit, "_dt", type("M", (), {"datetime": Frozen}))
    a = submit.build_plan("selftest", ["cluster=torch", "gpu=l40s"])
    b = submit.build_plan("selftest", ["cluster=torch", "gpu=h200"])
    assert a.run_dir != b.run_dir and a.run_dir.is_dir() and b.run_dir.is_dir()
    submit.write_job_files(a)
    submit.write_job_files(b)
    submit.submit(a, dry_run=True)
    submit.submit(b, dry_run=True)
    assert "gpu:l40s" in (a.run_dir / "jobs" / "infer" / "cmd.log").read_text()
    assert "gpu:h200" in (b.run_dir / "jobs" / "infer" / "cmd.log").read_text()


def test_concurrent_submit_processes_never_share_a_run_dir(isolated_roots):
    procs = [subprocess.Popen([sys.executable, "-m", "containers", "submit", "selftest", "cluster=torch",
                               f"gpu={g}", "--dry-run"], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for g in ("l40s", "h200", "l40s")]
    dirs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        dirs.append(next(ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("run dir: ")))
    assert len(set(dirs)) == 3


# ---- settings: types and ranges from the schema, key named --------------------------------------

@pytest.mark.parametrize("args, key", [
    (["newsbag_embedded", "limit=abc"], "limit"),
    (["newsbag_embedded", "limit=-1"], "limit"),
    (["newsbag_embedded", "variants=5"], "variants"),
    (["review", "panel_width=0"], "panel_width"),
    (["fusion", "workers=-1"], "workers"),
    (["flowportal", "video.k_frames=abc"], "video.k_frames"),
    (["flowportal_manifest", "workers=0", "video_dir=/tmp"], "workers"),
    (["flowportal_manifest", "input_fps=0", "video_dir=/tmp"], "input_fps"),
    (["flowportal_batch", "input_fps=0", "video_dir=/tmp"], "input_fps"),
    (["flowportal_manifest", "prompts_tar=[]", "video_dir=/tmp"], "prompts_tar"),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path, args, key):
    proc = app(*args, f"run_dir={tmp_path / 'run'}", "--cfg")
    assert_one_line_error(proc, f"{key}=" if key != "prompts_tar" else key)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_limit_minus_one_is_refused_not_n_minus_one(tmp_path):
    """limit=-1 used to process all pages but the last and exit 0."""
    proc = app("newsbag_embedded", "limit=-1", f"run_dir={tmp_path / 'run'}", *ONE_VARIANT)
    assert_one_line_error(proc, "limit=-1", ">= 1")


def test_values_are_coerced_by_the_schema(tmp_path):
    proc = app("newsbag_embedded", "limit='2'", f"run_dir={tmp_path}", "--cfg")
    assert proc.returncode == 0 and "\nlimit: 2\n" in proc.stdout


def test_submit_validates_every_step(isolated_roots):
    proc = cli("submit", "newsbag", "cluster=torch", "mode=embedded", "--dry-run", "limit=0")
    assert_one_line_error(proc, "limit=0")


@pytest.mark.parametrize("name", ["a,b", "it's", "it's, \"really\""])
def test_input_dir_with_comma_or_apostrophe(tmp_path, name, isolated_roots):
    pages = tmp_path / name
    pages.mkdir()
    shutil.copy(SAMPLES / "chronicle_p01.png", pages / "p1.png")
    run_dir = tmp_path / "run"
    proc = app("newsbag_embedded", f"input_dir={pages}", f"run_dir={run_dir}", *ONE_VARIANT)
    assert proc.returncode == 0, proc.stderr
    assert len(list((run_dir / "outputs" / "sources").rglob("p1.json"))) == 1
    sub = cli("submit", "newsbag", "cluster=torch", "mode=embedded", "--dry-run", f"input_dir={pages}",
              "--run-dir", str(tmp_path / "sub"))
    assert sub.returncode == 0, sub.stderr
    from suite_core.config import compose

    step = next((tmp_path / "sub").glob("jobs/*/steps/*-newsbag_embedded"))
    assert compose([], config_dir=step, config_name="config").input_dir == str(pages)


# ---- OS errors and bad job configs: one line with the path ------------------------------------

def test_run_dir_that_is_a_file_or_a_link_loop(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(app("doctor", f"run_dir={f}"), "is a file", str(f))
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert_one_line_error(app("doctor", f"run_dir={loop}"), "link loop", str(loop))
    assert_one_line_error(app("doctor", f"run_dir={f}/sub"), str(f))


def test_read_only_and_full_destinations(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert_one_line_error(app("doctor", f"run_dir={ro / 'run'}"), str(ro))
        proc = app("doctor", f"run_dir={tmp_path / 'run'}", f"json={ro / 'doctor.json'}")
        assert_one_line_error(proc, str(ro / "doctor.json"))
    with mounted_tmpfs(tmp_path / "full", "size=64k") as full:
        _fill(full)
        proc = app("doctor", f"run_dir={tmp_path / 'run2'}", f"json={full / 'sub' / 'doctor.json'}")
        assert_one_line_error(proc, str(full))


def _fill(fs: Path) -> None:
    """Write until the filesystem says it is full."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_doctor_json_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = app("doctor", f"run_dir={tmp_path / 'run'}", f"json={tmp_path / 'f' / 'out.json'}")
    assert_one_line_error(proc, str(tmp_path / "f"))
    report = (tmp_path / "run" / "jobs" / "doctor" / "run_report.json").read_text()
    assert '"exit_status": 2' in report


@pytest.mark.parametrize("content, needle", [
    ("", "job config is empty"),
    ("run_dir: [unclosed\n", "not valid YAML at line"),
    ("- a\n- b\n", "not a mapping"),
    (b"\xff\xfe\x00\x81", "cannot read the job config"),
])
def test_malformed_or_empty_job_config(tmp_path, content, needle):
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.yaml").write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = app("doctor", "--config-path", str(job), "--config-name", "config")
    assert_one_line_error(proc, needle, str(job / "config.yaml"))


def test_unreadable_input_is_reported_not_raised(tmp_path):
    """An input folder the OS refuses to read (a symlink loop: refused to root too) is one line."""
    pages = tmp_path / "pages"
    pages.symlink_to(pages)
    proc = app("newsbag_embedded", f"input_dir={pages}", f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(proc, str(pages))


def test_missing_prompts_file_of_a_batch(tmp_path):
    """A manifest generation whose prompts.txt is gone: one line naming it (it was a FileNotFoundError)."""
    from tests.entrypoints.flowportal.conftest import make_manifest, make_mp4, mpath

    videos = tmp_path / "v"
    make_mp4(videos / "a.mp4", 40)
    batch = make_manifest(videos, tmp_path / "batch", num_select=0, num_chunks=1)
    prompts = mpath(batch, "prompts.txt")
    prompts.unlink()
    proc = app("flowportal_batch", f"batch_dir={batch}", f"video_dir={videos}", "chunk=0")
    assert_one_line_error(proc, "prompts.txt")
