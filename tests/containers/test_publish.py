"""Publishing: an interrupted copy leaves nothing that looks complete; a rerun resumes and verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from containers.images import pointer_target
from containers.publish import copy_resumable, partial_path, publish
from suite_core.errors import UserError
from tests.helpers import REPO, make_sif


class Boom(Exception):
    pass


def _big_sif(tmp_path, arch="amd64", size=3 << 20):
    sif = make_sif(tmp_path / "built.sif", arch, {"recipe": "demo"})
    with open(sif, "ab") as fh:  # pad: the reader only needs the header and descriptors
        fh.write(os.urandom(size))
    return sif


def _looks_complete(images):
    return sorted(p.name for p in images.iterdir() if p.name.endswith((".sif", ".current")))


def test_injected_failure_then_resume(tmp_path):
    sif = _big_sif(tmp_path)
    images = tmp_path / "images"

    def fail_midway(done: int) -> None:
        if done >= 1 << 20:
            raise Boom

    with pytest.raises(Boom):
        publish(sif, images, name="demo", arch="amd64", lockhash="abc", chunk=256 << 10,
                on_chunk=fail_midway)
    dst = images / "demo-amd64-abc.sif"
    assert _looks_complete(images) == []                      # no SIF, no pointer
    assert 0 < partial_path(dst).stat().st_size < sif.stat().st_size
    pointer, copied = publish(sif, images, name="demo", arch="amd64", lockhash="abc", chunk=256 << 10)
    assert copied.resumed_from >= 1 << 20 and not copied.skipped
    assert dst.read_bytes() == sif.read_bytes()
    assert not partial_path(dst).exists()
    assert pointer.read_text() == "demo-amd64-abc.sif\n"
    # the launcher's resolver follows the pointer (no symlink involved)
    from omegaconf import OmegaConf

    image = OmegaConf.create({"name": "demo", "arches": ["amd64"], "pointer": "{name}-{arch}.current"})
    assert pointer_target(images, image, "amd64") == dst
    # a third run finds it complete and copies nothing
    _, again = publish(sif, images, name="demo", arch="amd64", lockhash="abc")
    assert again.skipped


def test_a_partial_that_does_not_match_is_redone(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1 << 20))
    dst = tmp_path / "out" / "x.sif"
    dst.parent.mkdir()
    partial_path(dst).write_bytes(b"\0" * 1000)               # garbage from another file
    copied = copy_resumable(src, dst, chunk=64 << 10)
    assert dst.read_bytes() == src.read_bytes()
    assert copied.resumed_from == 0 and copied.bytes_copied == src.stat().st_size


def test_killed_copy_process_leaves_nothing_complete(tmp_path):
    """SIGKILL a real copying process midway, then finish the job with a rerun."""
    sif = _big_sif(tmp_path, size=8 << 20)
    images = tmp_path / "images"
    dst = images / "demo-amd64-abc.sif"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from containers.publish import publish\n"
        "publish(Path(sys.argv[1]), Path(sys.argv[2]), name='demo', arch='amd64', lockhash='abc',\n"
        "        chunk=128 << 10, on_chunk=lambda n: time.sleep(0.02))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(sif), str(images)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        part = partial_path(dst)
        if part.exists() and part.stat().st_size >= 1 << 20:
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("the copy never started")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _looks_complete(images) == []
    pointer, copied = publish(sif, images, name="demo", arch="amd64", lockhash="abc")
    assert copied.resumed_from > 0
    assert dst.read_bytes() == sif.read_bytes() and pointer.is_file()


def test_wrong_arch_is_refused(tmp_path):
    sif = make_sif(tmp_path / "a.sif", "arm64")
    with pytest.raises(UserError, match="is an image for arm64, not amd64"):
        publish(sif, tmp_path / "images", name="demo", arch="amd64", lockhash="abc")
