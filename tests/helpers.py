"""Small helpers shared by tests: golden files, real SIFs via siftool, CLI runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
APPTAINER_FACTS = json.loads((REPO / "tests" / "data" / "apptainer_cli.json").read_text())
SIF_ARCH_CODES = {"386": 1, "amd64": 2, "arm": 3, "arm64": 4, "ppc64le": 6, "s390x": 11}


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites it (review the diff!)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"golden file {path} missing; run with UPDATE_GOLDEN=1 once"
    assert text == path.read_text(), f"output differs from {path}"


def make_sif(path: Path, arch: str, labels: dict | None = None, tmp: Path | None = None) -> Path:
    """A real SIF file made with Debian's siftool: a primary partition and a labels JSON."""
    siftool = shutil.which("siftool")
    if not siftool:
        if os.environ.get("CI"):
            pytest.fail("siftool is not installed (apt-get install siftool)")
        pytest.skip("siftool is not installed (apt-get install siftool)")
    tmp = tmp or path.parent
    part = tmp / f"{path.stem}.squashfs"
    part.write_bytes(b"hsqs" + os.urandom(64))
    subprocess.run([siftool, "new", str(path)], check=True, capture_output=True)
    subprocess.run([siftool, "add", "--datatype", "4", "--parttype", "2", "--partfs", "1",
                    "--partarch", str(SIF_ARCH_CODES[arch]), str(path), str(part)],
                   check=True, capture_output=True)
    if labels is not None:
        lab = tmp / f"{path.stem}.labels.json"
        lab.write_text(json.dumps(labels))
        subprocess.run([siftool, "add", "--datatype", "6", str(path), str(lab)],
                       check=True, capture_output=True)
    return path


def cli(*args: str, module: str = "containers", env: dict | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
