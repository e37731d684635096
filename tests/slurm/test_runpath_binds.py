"""A newsbag step whose input folder lies outside every default bind reads it inside the real Apptainer.

Apptainer shares /tmp, the home and the working directory with a container by default, so the
pages live under the world cache, which the test world's launcher binds only when a command names
it: only the step's own bind (the app's ``binds_ro: ["${input_dir}"]``) can make them visible. The
job folder is written by ``submit --here`` and its exec.sh run by hand, as a compute node runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from containers.jobdir import shell_word
from entrypoints.newsbag.samples import SAMPLES_DIR
from tests.slurm.test_runpath_world import OFF, publish_as
from tests.world import rootfs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.apptainer
@pytest.mark.slow
# --bind splits at ',' and ':': such a folder goes through --mount (suite_bind)
@pytest.mark.parametrize("folder", ["scans", 'scans, 2026: "late"'])
def test_newsbag_input_outside_the_default_binds_is_read(real_apptainer, test_sif_amd64, isolated_roots,
                                                         tmp_path, folder):
    publish_as(test_sif_amd64, isolated_roots / "shared" / "images", "mineru-dell-py310", "amd64")
    work = rootfs.cache_dir() / "work" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scans = work / folder
    scans.mkdir(parents=True)
    try:
        for f in ("chronicle_p01.png", "chronicle_p01.gt.json"):
            shutil.copy(SAMPLES_DIR / f, scans / f)
        env = {k: v for k, v in os.environ.items() if k not in ("PY", "VIRTUAL_ENV", "CI")}
        env["CONTAINERS_RUNTIME"] = "apptainer"
        run = tmp_path / "run"
        out = subprocess.run([sys.executable, "-m", "containers", "submit", "newsbag", "cluster=torch",
                              "mode=embedded", "--only", "sources", f"--input-dir={scans}",
                              f"--run-dir={run}", "--here", *OFF], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        step = Path(out.stdout.strip().splitlines()[-1]) / "steps" / "01-newsbag_embedded"
        assert f"suite_bind {shell_word(str(scans))} ro" in (step / "exec.sh").read_text()
        res = subprocess.run(["bash", str(step / "exec.sh")], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        report = json.loads((step / "run_report.json").read_text())
        assert report["exit_status"] == 0 and report["image"]["runtime"] == "container", report
        pages = [p.name for p in (run / "outputs" / "sources").rglob("pages/*") if "chronicle_p01" in p.name]
        assert pages, sorted(str(p) for p in (run / "outputs").rglob("*"))[:20]
    finally:
        shutil.rmtree(work, ignore_errors=True)
