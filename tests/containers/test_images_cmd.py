"""`containers images`, `publish` and `check-images` on real SIFs made with siftool."""

from __future__ import annotations

import json

import pytest

from containers.cmd_images import list_images
from containers.locks import get_image, lock_hash
from tests.helpers import assert_one_line_error, cli, make_sif

LABELS = {"recipe": "flowportal-cu130", "lock_hash": "0123456789ab", "arch": "arm64", "cuda": "13.0",
          "torch": "2.14.1", "git_revision": "abc123"}


def _images_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    make_sif(d / "flowportal-cu130-arm64-0123456789ab.sif", "arm64", LABELS, tmp=tmp_path)
    make_sif(d / "flowportal-cu130-amd64-0123456789ab.sif", "amd64", {**LABELS, "arch": "amd64"},
             tmp=tmp_path)
    make_sif(d / "flowportal-cu130-arm64-old000000000.sif", "arm64", LABELS, tmp=tmp_path)
    (d / "flowportal-cu130-arm64.current").write_text("flowportal-cu130-arm64-0123456789ab.sif\n")
    (d / ".flowportal-cu130-amd64-x.sif.partial").write_bytes(b"half")   # never listed
    return d


def test_list_images_reads_arch_labels_and_pointer(tmp_path):
    rows = {r["file"]: r for r in list_images(_images_dir(tmp_path))}
    assert len(rows) == 3
    cur = rows["flowportal-cu130-arm64-0123456789ab.sif"]
    assert cur["arch"] == "arm64" and cur["labels"] == LABELS
    assert cur["current"] == "flowportal-cu130-arm64.current"
    assert rows["flowportal-cu130-amd64-0123456789ab.sif"]["arch"] == "amd64"
    assert rows["flowportal-cu130-arm64-old000000000.sif"]["current"] is None


def test_images_command(tmp_path):
    d = _images_dir(tmp_path)
    proc = cli("images", "--dir", str(d))
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "arm64-0123456789ab" in ln)
    assert "arm64" in line and "torch=2.14.1" in line and "<- flowportal-cu130-arm64.current" in line
    data = json.loads(cli("images", "--dir", str(d), "--json").stdout)
    assert {r["arch"] for r in data} == {"amd64", "arm64"}
    (d / "broken.sif").write_text("not a sif")
    proc = cli("images", "--dir", str(d))
    assert proc.returncode == 0 and "UNREADABLE" in proc.stdout


def test_images_default_dir_from_config(tmp_path, isolated_roots):
    proc = cli("images")
    assert proc.returncode == 0, proc.stderr
    assert str(isolated_roots / "shared" / "images") in proc.stdout


def test_publish_command(tmp_path):
    sif = make_sif(tmp_path / "built.sif", "amd64", {"recipe": "mineru-dell-py310"})
    out = tmp_path / "images"
    proc = cli("publish", str(sif), "mineru-dell-py310", "--dir", str(out))
    assert proc.returncode == 0, proc.stderr
    want = lock_hash(get_image("mineru-dell-py310").lock_path("amd64"))
    assert (out / "mineru-dell-py310-amd64.current").read_text().strip() == \
        f"mineru-dell-py310-amd64-{want}.sif"
    arm = make_sif(tmp_path / "arm.sif", "arm64")
    assert_one_line_error(cli("publish", str(arm), "mineru-dell-py310", "--dir", str(out)),
                          "has no arm64 build", "Python 3.10")


def test_check_images_without_apptainer(tmp_path):
    proc = cli("check-images", "--dir", str(_images_dir(tmp_path)), env={"PATH": "/usr/bin:/bin"})
    if proc.returncode == 0:
        pytest.skip("Apptainer exists here: the images ran their %test")
    assert_one_line_error(proc, "cannot run the images' %test here")
