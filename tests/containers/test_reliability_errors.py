"""Every OS error and corrupt file on the host-toolkit side is one line naming the path (no traceback)."""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import subprocess
from pathlib import Path

import pytest

from containers.sif import read_sif
from suite_core.errors import UserError, guard
from tests.helpers import assert_one_line_error, cli, make_sif


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A small or read-only filesystem: root mounts one (chmod does not stop root), else skip."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _patch(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack("<q", value))


DOFF = 96          # global header: descriptors_offset (int64)
DESCR = 585        # one descriptor; its data offset (int64) is at byte 17 of it


def _descriptors_offset(path: Path) -> int:
    with open(path, "rb") as fh:
        fh.seek(DOFF)
        return struct.unpack("<q", fh.read(8))[0]


def test_negative_descriptor_table_offset(tmp_path):
    sif = make_sif(tmp_path / "a.sif", "amd64", {"recipe": "x"})
    _patch(sif, DOFF, -4096)
    with pytest.raises(UserError, match="corrupt SIF image"):
        read_sif(sif)


def test_negative_data_offset_of_a_descriptor(tmp_path):
    sif = make_sif(tmp_path / "a.sif", "amd64", {"recipe": "x"})
    _patch(sif, _descriptors_offset(sif) + DESCR + 17, -100)  # the labels descriptor
    with pytest.raises(UserError, match="corrupt SIF image"):
        read_sif(sif)


def test_images_listing_survives_corrupt_sifs_and_pointers(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    good = make_sif(d / "demo-amd64-aaaaaaaaaaaa.sif", "amd64", {"recipe": "demo"}, tmp=tmp_path)
    bad = make_sif(d / "demo-amd64-bbbbbbbbbbbb.sif", "amd64", {"recipe": "demo"}, tmp=tmp_path)
    _patch(bad, DOFF, -4096)
    (d / "demo-amd64.current").write_bytes(b"\xff\xfe\x00binary\x81")
    (d / "demo-arm64.current").write_text(f"{good.name}\n")
    proc = cli("images", "--dir", str(d))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{bad.name}  UNREADABLE" in proc.stdout and good.name in proc.stdout


def test_binary_pointer_is_one_line_when_resolving(tmp_path, isolated_roots):
    images = isolated_roots / "shared" / "images"
    images.mkdir(parents=True)
    (images / "paddle-py312-amd64.current").write_bytes(b"\x00\xff\xfe garbage \x81")
    proc = cli("exec", "paddle-py312", "--runtime", "apptainer", "--arch", "amd64", "--dry-run", "--", "true")
    assert_one_line_error(proc, "pointer file", "malformed")


def test_publish_refuses_a_lock_hash_that_is_a_path(tmp_path):
    sif = make_sif(tmp_path / "built.sif", "amd64", {"recipe": "mineru-dell-py310"})
    out = tmp_path / "deep" / "er" / "images"
    proc = cli("publish", str(sif), "mineru-dell-py310", "--dir", str(out), "--lockhash", "a/../../x")
    assert_one_line_error(proc, "lock hash", "cannot be part of a file name")
    assert not any(p.suffix == ".sif" for p in tmp_path.rglob("*") if p != sif)
    for bad in ("..", ".hidden", "a b", "x/y", ""):
        from containers.publish import check_name_part

        with pytest.raises(UserError):
            check_name_part("lock hash", bad)


def test_publish_to_read_only_and_full_destinations(tmp_path):
    sif = make_sif(tmp_path / "built.sif", "amd64", {"recipe": "mineru-dell-py310"})
    with open(sif, "ab") as fh:
        fh.write(os.urandom(2 << 20))
    with mounted_tmpfs(tmp_path / "ro", "ro,size=4m") as ro:
        proc = cli("publish", str(sif), "mineru-dell-py310", "--dir", str(ro / "images"))
        assert_one_line_error(proc, str(ro))
    with mounted_tmpfs(tmp_path / "small", "size=1m") as small:
        proc = cli("publish", str(sif), "mineru-dell-py310", "--dir", str(small))
        assert_one_line_error(proc, "images directory is full", str(small))
        assert not list(small.glob("*.sif")) and not list(small.glob("*.current"))


def test_stage_to_read_only_destination(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x" * 1000)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert_one_line_error(cli("stage", str(src), str(ro / "models")), str(ro))
        assert_one_line_error(cli("stage", str(src), str(ro)), str(ro))


def test_stage_destination_that_is_a_file(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x")
    (tmp_path / "nvme").write_text("a file")
    assert_one_line_error(cli("stage", str(src), str(tmp_path / "nvme")), str(tmp_path / "nvme"))


def test_guard_turns_an_escaped_os_error_into_one_line(capsys):
    @guard
    def main() -> int:
        raise PermissionError(errno.EACCES, "Permission denied", "/shared/images/x.sif")

    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: Permission denied (in /shared/images/x.sif); fix: ")
