"""The SIF reader against SIF files built by the real Apptainer (tests/world) for both arches,
compared with what Apptainer itself says about them; siftool only makes the malformed ones."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from containers.sif import read_sif
from suite_core.errors import UserError
from suite_core.runner import run
from tests.helpers import REPO, assert_one_line_error, cli, make_sif

DEF_FILE = REPO / "tests" / "world" / "test-image.def"


def _apptainer_facts(sif) -> tuple[dict, dict]:
    header = run(["apptainer", "sif", "header", str(sif)]).stdout
    facts = dict(ln.split(":", 1) for ln in header.splitlines() if ":" in ln)
    facts = {k.strip(): v.strip() for k, v in facts.items()}
    labels = json.loads(run(["apptainer", "inspect", "--json", "--labels", str(sif)]).stdout)
    return facts, labels["data"]["attributes"]["labels"]


def _check_real(sif, arch):
    info = read_sif(sif)
    header, labels = _apptainer_facts(sif)
    assert info.arch == arch == header["Primary Architecture"]
    assert info.id == header["ID"]
    created = datetime.fromtimestamp(info.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
    assert created == header["Created At"]
    assert info.labels == labels
    assert info.labels["org.gpu-image-suite.role"] == "test-world"
    assert info.labels["org.label-schema.build-arch"] == arch
    text = DEF_FILE.read_text()
    assert info.deffile == text[text.index("Bootstrap:"):]  # Apptainer keeps it from the header on
    fs = [d for d in info.descriptors if d.datatype == "FS"]
    assert len(fs) == 1 and fs[0].parttype == "PrimSys" and fs[0].fstype == "Squashfs" and fs[0].arch == arch


@pytest.mark.apptainer
def test_reads_an_apptainer_built_amd64_image(real_apptainer, test_sif_amd64):
    _check_real(test_sif_amd64, "amd64")


@pytest.mark.apptainer
@pytest.mark.arm64
def test_reads_an_apptainer_built_arm64_image(real_apptainer, test_sif_arm64):
    _check_real(test_sif_arm64, "arm64")


@pytest.mark.apptainer
@pytest.mark.arm64
def test_sif_command_on_a_real_image(real_apptainer, test_sif_arm64):
    proc = cli("sif", str(test_sif_arm64), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["arch"] == "arm64" and out["labels"]["org.gpu-image-suite.role"] == "test-world"


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


def test_sif_command_errors(tmp_path):
    assert_one_line_error(cli("sif", str(tmp_path / "none.sif")), "does not exist")
    bad = tmp_path / "bad.sif"
    bad.write_text("not a sif")
    assert_one_line_error(cli("sif", str(bad)), "not a SIF image")
