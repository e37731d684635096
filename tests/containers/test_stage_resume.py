"""Staging after a kill resumes from what is in place (per file, per chunk); dead writers' parts go.

Chunk sizes are shrunk (monkeypatched, in the child process too) so a few MB exercise the same
code as tens of GB; the kill is a real SIGKILL of a real staging process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import containers.stage as st
from containers.stage import HOST, journal_path, manifest_path, part_path, stage
from tests.helpers import REPO

SMALL_CHUNK = 64 << 10


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(st, "CHUNK", SMALL_CHUNK)
    monkeypatch.setattr(st, "RESUMABLE", 2 * SMALL_CHUNK)


def make_tree(root: Path, small: int = 60, big: int = 2) -> Path:
    src = root / "shared" / "model"
    for i in range(small):
        d = src / f"shard{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part{i:03d}.bin").write_bytes(os.urandom(4096 + i))
    for j in range(big):
        (src / f"big{j}.safetensors").write_bytes(os.urandom(2 << 20))  # 32 chunks of 64 KiB
    return src


# The child stages with small chunks and a pause per copied piece, so the parent can kill it midway.
CHILD = """
import sys, time
import containers.stage as st
st.CHUNK = 64 << 10
st.RESUMABLE = 128 << 10
real = st._copy_range
def slow(*a, **k):
    time.sleep(0.01)
    return real(*a, **k)
st._copy_range = slow
st.stage(sys.argv[1], sys.argv[2], jobs=int(sys.argv[3]))
"""


def _kill_midway(src: Path, dst: Path, jobs: int, wait_for) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(dst), str(jobs)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not wait_for():
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert time.monotonic() < deadline, "the staging process never got that far"


def _logged_chunks(dst: Path) -> int:
    n = 0
    for log in dst.rglob("*.part.log"):
        n += max(0, len(log.read_bytes().splitlines()) - 1)
    return n


def _in_place_bytes(dst_dir: Path, name: str) -> int:
    """Bytes a rerun may keep: files listed in the journal plus logged chunks of parts."""
    kept = sum(e.size for e in st.read_journal(journal_path(dst_dir, name)).values())
    for log in (dst_dir / name).rglob("*.part.log"):
        kept += (len(log.read_bytes().splitlines()) - 1) * SMALL_CHUNK
    return kept


@pytest.mark.parametrize("jobs", [1, 4])
def test_rerun_after_kill_copies_only_what_is_missing(tmp_path, small_chunks, jobs):
    src = make_tree(tmp_path)
    dst = tmp_path / "nvme"
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    # kill once the small files are in and the first large file is partly copied
    _kill_midway(src, dst, jobs, lambda: _logged_chunks(dst) >= 8)
    assert not manifest_path(dst, src.name).exists()          # nothing looks complete
    parts = list((dst / src.name).glob(".*.part"))
    assert parts and all(f"-{HOST}-" in p.name for p in parts)
    kept = _in_place_bytes(dst, src.name)
    assert kept >= 8 * SMALL_CHUNK
    missing = total - kept
    res = stage(src, dst, jobs=jobs)
    assert res.resumed >= 1 and res.bytes_resumed > 0
    assert res.bytes_copied <= 1.1 * missing, (res.bytes_copied, missing, total)
    for p in src.rglob("*"):
        if p.is_file():
            assert (dst / src.name / p.relative_to(src)).read_bytes() == p.read_bytes()
    assert not list((dst / src.name).rglob("*.part*"))
    assert not journal_path(dst, src.name).exists() and manifest_path(dst, src.name).exists()
    assert stage(src, dst).copied == 0


def test_journal_keeps_small_files_across_a_kill(tmp_path, small_chunks):
    src = make_tree(tmp_path, small=300, big=0)
    dst = tmp_path / "nvme"

    def some_files_in() -> bool:
        return len(st.read_journal(journal_path(dst, src.name))) >= 50

    _kill_midway(src, dst, 1, some_files_in)
    done = st.read_journal(journal_path(dst, src.name))
    res = stage(src, dst)
    assert res.copied <= 300 - len(done) + 1
    assert st.check(src, dst) == []


def test_changed_source_is_not_resumed_from_an_old_part(tmp_path, small_chunks):
    src = tmp_path / "shared" / "model.sif"
    src.parent.mkdir(parents=True)
    src.write_bytes(os.urandom(1 << 20))
    dst = tmp_path / "nvme"
    _kill_midway(src, dst, 1, lambda: _logged_chunks(dst) >= 4)
    time.sleep(0.01)
    src.write_bytes(os.urandom(1 << 20))                        # a new version, same name and size
    res = stage(src, dst)
    assert res.resumed == 0 and res.bytes_copied == 1 << 20
    assert (dst / "model.sif").read_bytes() == src.read_bytes()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphaned_parts_of_dead_writers_are_removed(tmp_path):
    src = tmp_path / "shared" / "x.sif"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"SIF" * 1000)
    dst = tmp_path / "nvme"
    dst.mkdir()
    target = dst / "x.sif"
    dead = _dead_pid()
    orphan = part_path(target, pid=dead)
    legacy = dst / f".x.sif.stage-{dead}.part"                  # the name older versions used
    alive = part_path(target, pid=os.getppid())                 # a live writer: not ours to delete
    elsewhere = part_path(target, pid=dead, host="other-node")  # another host: cannot tell
    for p in (orphan, legacy, alive, elsewhere):
        p.write_bytes(b"half")
    res = stage(src, dst)
    assert not orphan.exists() and not legacy.exists()
    assert alive.exists() and elsewhere.exists()
    assert res.cleaned == 2 and target.read_bytes() == src.read_bytes()


def test_parallel_copy_with_checksums(tmp_path, small_chunks):
    src = make_tree(tmp_path, small=40, big=2)
    res = stage(src, tmp_path / "nvme", jobs=4, checksum=True)
    man = st.read_manifest(manifest_path(tmp_path / "nvme", src.name))
    import hashlib

    assert man is not None and len(man) == 42
    for rel, e in man.items():
        data = (src / rel).read_bytes()
        assert e.sha256 == hashlib.sha256(data).hexdigest()
        assert (tmp_path / "nvme" / src.name / rel).read_bytes() == data
    assert res.copied == 42


def test_cli_jobs_option(tmp_path):
    src = make_tree(tmp_path, small=10, big=0)
    out = subprocess.run([sys.executable, "-m", "containers", "stage", "--jobs", "3", str(src),
                          str(tmp_path / "nvme")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "copied 10" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "containers", "stage", "--jobs", "0", str(src),
                          str(tmp_path / "nvme")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
