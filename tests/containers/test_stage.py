"""Staging: incremental, atomic, locked, stat-only re-check, clear errors (real files, no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from containers.stage import check, lock_path, manifest_path, node_lock, read_manifest, stage
from suite_core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def make_tree(root: Path) -> Path:
    src = root / "shared" / "wan2.1-fun-v1.1-1.3b"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(os.urandom(300_000))
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "tok.txt").write_text("tokens")
    return src


def test_first_copy_keeps_basename_and_writes_manifest_last(tmp_path):
    src = make_tree(tmp_path)
    res = stage(src, tmp_path / "nvme" / "models")
    dst = tmp_path / "nvme" / "models" / "wan2.1-fun-v1.1-1.3b"
    assert res.dst == dst and res.copied == 3 and res.files == 3
    assert (dst / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    head = manifest_path(dst.parent, dst.name).read_text().splitlines()[0]
    assert head.startswith("containers-stage-manifest 2\ttree\t3\t")
    assert set(read_manifest(manifest_path(dst.parent, dst.name)) or {}) == {
        "model.safetensors", "config.json", "sub/tok.txt"}
    # the manifest is written after every file: its mtime is not older than any staged file's ctime
    mt = manifest_path(dst.parent, dst.name).stat().st_mtime_ns
    assert all(mt >= p.stat().st_ctime_ns for p in dst.rglob("*") if p.is_file())
    assert (dst / "model.safetensors").stat().st_mtime_ns == (src / "model.safetensors").stat().st_mtime_ns
    assert not list(dst.rglob("*.part"))


def test_recheck_is_stat_only_and_incremental(tmp_path, monkeypatch):
    src = make_tree(tmp_path)
    dst_dir = tmp_path / "nvme"
    stage(src, dst_dir)
    import containers.stage as st

    def no_reads(*a, **k):
        raise AssertionError("a no-op re-check must not copy or hash files")

    monkeypatch.setattr(st, "copy_file", no_reads)
    monkeypatch.setattr(st, "sha256_file", no_reads)
    res = stage(src, dst_dir)
    assert res.copied == 0 and res.removed == 0
    monkeypatch.undo()
    time.sleep(0.01)
    (src / "config.json").write_text('{"a": 2}')
    (src / "sub" / "tok.txt").unlink()
    res = stage(src, dst_dir)
    assert (res.copied, res.removed) == (1, 1)
    assert (dst_dir / src.name / "config.json").read_text() == '{"a": 2}'
    assert not (dst_dir / src.name / "sub").exists()
    assert check(src, dst_dir) == []


def test_damaged_copy_is_restaged(tmp_path):
    src = make_tree(tmp_path)
    stage(src, tmp_path / "nvme")
    staged = tmp_path / "nvme" / src.name / "model.safetensors"
    staged.write_bytes(b"truncated")
    assert check(src, tmp_path / "nvme")
    assert stage(src, tmp_path / "nvme").copied == 1
    assert staged.read_bytes() == (src / "model.safetensors").read_bytes()


def test_checksum_and_verify(tmp_path):
    src = make_tree(tmp_path)
    stage(src, tmp_path / "nvme", checksum=True)
    man = read_manifest(manifest_path(tmp_path / "nvme", src.name))
    assert man and all(len(e.sha256 or "") == 64 for e in man.values())
    # same size and mtime but different bytes: only --verify can see it
    staged = tmp_path / "nvme" / src.name / "config.json"
    st = staged.stat()
    staged.write_text('{"b": 1}')
    os.utime(staged, ns=(st.st_mtime_ns, st.st_mtime_ns))
    assert stage(src, tmp_path / "nvme").copied == 0
    assert stage(src, tmp_path / "nvme", verify=True).copied == 1
    assert staged.read_text() == '{"a": 1}'


def test_single_file_sif(tmp_path):
    sif = tmp_path / "shared" / "paddle-py312-amd64-abc123.sif"
    sif.parent.mkdir()
    sif.write_bytes(b"SIF" * 1000)
    res = stage(sif, tmp_path / "nvme" / "images")
    assert res.dst == tmp_path / "nvme" / "images" / sif.name and res.dst.read_bytes() == sif.read_bytes()
    assert stage(sif, tmp_path / "nvme" / "images").copied == 0


def test_symlinks_are_kept_as_links(tmp_path):
    src = make_tree(tmp_path)
    (src / "snap").symlink_to("sub/tok.txt")
    stage(src, tmp_path / "nvme")
    link = tmp_path / "nvme" / src.name / "snap"
    assert link.is_symlink() and os.readlink(link) == "sub/tok.txt"


@pytest.mark.parametrize("case", ["missing", "empty", "partial"])
def test_bad_source_is_one_clear_error(tmp_path, case):
    src = tmp_path / "src"
    if case != "missing":
        src.mkdir()
    if case == "partial":
        (src / "model.bin").write_bytes(b"x")
        (src / "blob.incomplete").write_bytes(b"x")
    with pytest.raises(UserError) as exc:
        stage(src, tmp_path / "nvme")
    assert {"missing": "does not exist", "empty": "is empty", "partial": "incomplete"}[
        case
    ] in exc.value.line()
    assert not manifest_path(tmp_path / "nvme", "src").exists()


def test_source_is_only_read(tmp_path):
    """SMB: the source may refuse chmod/chown; a read-only tree stages fine and is left untouched."""
    src = make_tree(tmp_path)
    before = {p: (p.stat().st_mode, p.stat().st_mtime_ns) for p in src.rglob("*")}
    for p in sorted(src.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    src.chmod(0o555)
    stage(src, tmp_path / "nvme")
    assert {p: p.stat().st_mtime_ns for p in src.rglob("*")} == {p: m for p, (_, m) in before.items()}


def test_destination_full_leaves_nothing_marked_complete(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount tmpfs here")
    try:
        src = make_tree(tmp_path)  # 300 kB > 256 kB
        with pytest.raises(UserError) as exc:
            stage(src, mnt)
        assert "destination is full" in exc.value.line()
        assert not manifest_path(mnt, src.name).exists()
        assert not list(mnt.rglob("*.part"))
        # a previously complete copy loses its manifest before anything changes
        (src / "model.safetensors").write_bytes(os.urandom(100_000))
        stage(src, mnt)
        assert manifest_path(mnt, src.name).exists()
        (src / "model.safetensors").write_bytes(os.urandom(400_000))
        with pytest.raises(UserError):
            stage(src, mnt)
        assert not manifest_path(mnt, src.name).exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_lock_makes_the_second_stager_wait(tmp_path):
    dst = tmp_path / "nvme"
    src = make_tree(tmp_path)
    waited: list[str] = []
    with node_lock(lock_path(dst, src.name)):
        t = threading.Thread(target=lambda: waited.append(str(stage(src, dst, log=waited.append).waited)))
        t.start()
        time.sleep(0.4)
        assert t.is_alive()  # blocked on the lock
        assert not manifest_path(dst, src.name).exists()
    t.join(10)
    assert any("waiting for" in w for w in waited) and float(waited[-1]) >= 0.3


def test_lock_timeout(tmp_path):
    with (
        node_lock(tmp_path / "x.lock"),
        pytest.raises(UserError, match="still held"),
        node_lock(tmp_path / "x.lock", timeout=0.2),
    ):
        pass


def test_cli_relative_destination_and_errors(tmp_path, isolated_roots):
    src = make_tree(tmp_path)
    py = [sys.executable, "-m", "containers", "stage"]
    out = subprocess.run([*py, str(src), "models"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (isolated_roots / "nvme" / "models" / src.name / "config.json").is_file()
    chk = subprocess.run([*py, str(src), "models", "--check"], cwd=REPO, capture_output=True, text=True)
    assert chk.returncode == 0 and chk.stdout == ""
    bad = subprocess.run([*py, str(tmp_path / "nope"), "models"], cwd=REPO, capture_output=True, text=True)
    assert (
        bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    )


def test_stage_image_then_exec_uses_the_node_local_copy(isolated_roots):
    """`stage --image` copies the current SIF and its pointer; exec then resolves the staged copy."""
    import shlex

    from tests.helpers import cli, make_sif

    images = isolated_roots / "shared" / "images"
    images.mkdir(parents=True)
    make_sif(images / "flowportal-cu130-amd64-abc.sif", "amd64", {"recipe": "flowportal-cu130"})
    (images / "flowportal-cu130-amd64.current").write_text("flowportal-cu130-amd64-abc.sif\n")
    first = cli("stage", "--image", "flowportal-cu130")
    assert first.returncode == 0, first.stderr
    staged = isolated_roots / "nvme" / "images"
    assert (staged / "flowportal-cu130-amd64-abc.sif").read_bytes() == \
        (images / "flowportal-cu130-amd64-abc.sif").read_bytes()
    pointer = (staged / "flowportal-cu130-amd64.current").read_text().strip()
    assert pointer == "flowportal-cu130-amd64-abc.sif"
    again = cli("stage", "--image", "flowportal-cu130")
    assert "copied 0" in again.stdout
    run = cli("exec", "flowportal-cu130", "--runtime", "apptainer", "--arch", "amd64", "--dry-run",
              "--", "true")
    assert run.returncode == 0, run.stderr
    assert str(staged / "flowportal-cu130-amd64-abc.sif") in shlex.split(run.stdout)
