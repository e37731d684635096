"""The SIF reader against real SIF files made with Debian's siftool."""

from __future__ import annotations

import json

import pytest

from containers.errors import UserError
from containers.sif import read_sif
from tests.helpers import assert_one_line_error, cli, make_sif


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_arch_and_labels(tmp_path, arch):
    labels = {"recipe": "flowportal-cu130", "lock.sha256": "0123abcd", "torch": "2.14.1"}
    info = read_sif(make_sif(tmp_path / f"{arch}.sif", arch, labels))
    assert info.arch == arch
    assert info.labels == labels
    fs = [d for d in info.descriptors if d.datatype == "FS"]
    assert fs and fs[0].parttype == "PrimSys" and fs[0].fstype == "Squashfs"


def test_not_a_sif(tmp_path):
    p = tmp_path / "x.sif"
    p.write_text("#!/bin/sh\necho hi\n" * 20)
    with pytest.raises(UserError, match="not a SIF image"):
        read_sif(p)


def test_truncated_sif(tmp_path):
    sif = make_sif(tmp_path / "t.sif", "amd64")
    data = sif.read_bytes()
    cut = tmp_path / "cut.sif"
    cut.write_bytes(data[:5000])  # header intact, descriptor table cut
    with pytest.raises(UserError, match="truncated"):
        read_sif(cut)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_sif(tmp_path / "none.sif")


def test_sif_command(tmp_path):
    sif = make_sif(tmp_path / "a.sif", "arm64", {"recipe": "x"})
    proc = cli("sif", str(sif), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["arch"] == "arm64"
    assert_one_line_error(cli("sif", str(tmp_path / "none.sif")), "does not exist")
