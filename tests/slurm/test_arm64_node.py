"""The DGX Spark's aarch64 compute node in the local Slurm: an arm64 slurmd under qemu-user.

What a user meets there and an x86 node hides: the job's userland is aarch64, x86 programs and the
login node's virtualenv do not run, and the shared root is the SMB-like share at the login path.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.plugins.slurm_cluster import ARM64_NODE, LocalSlurm
from tests.world import armnode

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.arm64]
SMALL = ["--mem=1G", "--cpus-per-task=1"]
ELF_MACHINE_X86_64 = 0x3E


def job(cluster: LocalSlurm, tmp_path: Path, script: str, partition: str = "spark",
        timeout: float = 120) -> str:
    """Run ``script`` as a batch job; return its output (the job must complete)."""
    out = tmp_path / f"job-{partition}-%j.out"
    jid = cluster.sbatch([*SMALL, f"--partition={partition}", f"--output={out}", "--wrap", script],
                         cwd=tmp_path)
    states = cluster.wait(jid, timeout=timeout)
    text = Path(str(out).replace("%j", jid)).read_text()
    assert states[jid] == ["COMPLETED"], text
    return text


def test_spark_jobs_see_aarch64_and_x86_nodes_do_not(spark_arm64, tmp_path):
    probe = 'uname -m; python3 -c "import platform; print(platform.machine())"; echo "$SUITE_NODE_NVME"'
    arm = job(spark_arm64, tmp_path, probe).split()
    x86 = job(spark_arm64, tmp_path, probe, partition="cpu_short").split()
    assert arm[:2] == ["aarch64", "aarch64"]
    assert x86[:2] == ["x86_64", "x86_64"]
    # node-local "NVMe": one folder per node
    assert arm[2] == str(spark_arm64.node_local(ARM64_NODE)) and x86[2] in (
        str(spark_arm64.node_local("cpu1")), str(spark_arm64.node_local("cpu2")))


def test_x86_programs_from_the_login_side_do_not_run_on_spark(spark_arm64, tmp_path):
    """The login node's interpreter (an x86-64 ELF) finds no x86 loader there; the login .venv is unusable."""
    login_python = Path(os.path.realpath(sys.executable))
    header = login_python.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == ELF_MACHINE_X86_64
    copy = tmp_path / "login-python"
    shutil.copy2(login_python, copy)
    assert job(spark_arm64, tmp_path, f"{copy} -c 'print(1)'", partition="cpu_short") == "1\n"
    out = job(spark_arm64, tmp_path, f"{copy} -c 'print(1)'; echo rc=$?")
    # ENOENT from execve: the arm64 root has no /lib64/ld-linux-x86-64.so.2
    assert out.rstrip().endswith("rc=127") and "not found" in out, out
    venv = job(spark_arm64, tmp_path, f"{REPO}/.venv/bin/python -c 'import numpy'; echo rc=$?")
    # Either the login venv's interpreter does not exist on the node, or the node's own arm64
    # python3 is taken and the venv's x86 extension modules are not loadable: never a working import.
    assert not venv.rstrip().endswith("rc=0"), venv
    assert "not found" in venv or "ModuleNotFoundError" in venv or "ImportError" in venv, venv


def test_spark_jobs_share_the_smb_like_root(spark_arm64, tmp_path):
    if spark_arm64.shared is None:
        pytest.skip("the SMB-like share is unavailable here (see the tests marked smb)")
    d = spark_arm64.shared / f"arm64-{tmp_path.name}"
    d.mkdir()
    try:
        (d / "from-login.txt").write_text("login\n")
        out = job(spark_arm64, tmp_path,
                  f"cat {d}/from-login.txt; echo node > {d}/from-node.txt; chmod 755 {d}/from-node.txt; "
                  f"echo chmod=$?; ln -s from-node.txt {d}/link; echo ln=$?")
        assert out.splitlines()[0] == "login"
        assert "chmod=1" in out and "ln=1" in out and "Operation not permitted" in out, out
        assert (d / "from-node.txt").read_text() == "node\n"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_stop_leaves_nothing_in_the_arm64_node(spark_arm64, tmp_path):
    """A second private cluster whose spark job leaves an escaped process: stop() kills it too."""
    own = LocalSlurm(tmp_path / "slurm", arm64_root=spark_arm64.arm64_root)
    try:
        own.start()
        ns = (own.root / "run" / f"{ARM64_NODE}.mntns").read_text().strip()
        marker = tmp_path / "escaped.pid"
        job(own, tmp_path, f"setsid sh -c 'echo $$ > {marker}; exec sleep 300' </dev/null >/dev/null 2>&1 &"
                           " sleep 1")
        pid = int(marker.read_text())
        assert armnode.mount_ns(pid) == ns  # still running in the node after its job ended
    finally:
        own.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and armnode.pids_in_ns(ns):
        time.sleep(0.2)
    assert armnode.pids_in_ns(ns) == []


@pytest.mark.apptainer
def test_arm64_image_runs_through_the_real_apptainer_on_spark(spark_arm64, real_apptainer, test_sif_arm64,
                                                             tmp_path):
    """The launcher (x86 Apptainer in its sid root) works from inside the aarch64 node's root."""
    probe = "import platform, sys; print(platform.machine(), sys.version_info[:2] >= (3, 11))"
    out = job(spark_arm64, tmp_path,
              f"uname -m; command -v apptainer; apptainer --version; "
              f"apptainer exec --cleanenv --no-home {test_sif_arm64} python3 -c '{probe}'", timeout=600)
    lines = out.splitlines()
    assert lines[0] == "aarch64", out
    assert lines[1] == str(real_apptainer), out
    assert lines[2].startswith("apptainer version "), out
    assert lines[-1] == "aarch64 True", out


def test_a_broken_node_root_fails_fast_and_leaves_nothing(slurm_cluster, tmp_path):
    """A node root without a shell: start() names the daemon and its error, and nothing stays up."""
    bogus = tmp_path / "not-a-root"
    bogus.mkdir()
    cluster = LocalSlurm(tmp_path / "slurm", arm64_root=bogus)
    said = r"slurmd-spark1 exited with code 125: error: enter.sh: .* is not a root filesystem"
    with pytest.raises(RuntimeError, match=said):
        cluster.start(timeout=60)
    assert not cluster.running() and list((cluster.root / "run").glob("*.pid")) == []
