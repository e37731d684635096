"""`make build-arm64` end to end on the test world, typed as a DGX Spark user types it on the x86 side.

The image is a small CPU-only recipe written into a copy of the checkout (never into the checkout:
shards run in parallel) that passes the same product lint `containers build` runs first: templated
Bootstrap/From, a v2 lock made by `make lock IMAGE=tiny` (uv, hashes, wheel facts; it needs the
package index), `%post` installing it with `--require-hashes`, `%test` running
`python -m containers.imagecheck tiny`, `gpu: false` with `cuda none`. The world's arm64 test SIF is
its base (Python 3.11 with the toolkit's dependencies in /opt/venv), so `%post` under qemu stays
short: the lock pins what the base has, and pip fetches only what it lacks.

- Slurm route: the job lands on the aarch64 node, Apptainer builds the SIF there natively, `%test`
  runs there, and the image publishes itself onto the SMB-like share (pointer last).
- EMULATE=1: the build runs on this x86 machine through qemu binfmt, then publishes.

This machine's root lacks CAP_SYS_RESOURCE in its capability bounding set; Apptainer asks for every
capability when root runs %post ("Requesting capability set ... while permitted ..."), so the
environment of both commands names it in APPTAINER_DROP_CAPS (Apptainer's own variable; Slurm's
--export=ALL carries it to the job). A DGX user is not root: the job adds --fakeroot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.plugins.slurm_cluster import ARM64_NODE
from tests.slurm.test_runpath_dgx import copy_checkout
from tests.slurm.test_scripts import bash, one_error

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--mem=1G", "--cpus-per-task=1"]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TINY_DEF = r"""Bootstrap: {{ BOOTSTRAP }}
# A CPU-only test image (tests/slurm/test_build_arm64.py): the toolkit on Debian 12's Python 3.11.
From: {{ BASE }}

%arguments
    BOOTSTRAP=docker
    BASE=debian:bookworm
    LOCK=recipes/locks/tiny-arm64.txt
    ARCH=arm64
    LOCK_HASH=unlocked
    GIT_REV=unknown

%files
    containers /opt/suite/containers
    entrypoints /opt/suite/entrypoints
    suite_core /opt/suite/suite_core
    hydra_conf/config.yaml /opt/suite/hydra_conf/config.yaml
    hydra_conf/app /opt/suite/hydra_conf/app
    hydra_conf/cluster /opt/suite/hydra_conf/cluster
    hydra_conf/image /opt/suite/hydra_conf/image
    hydra_conf/paths /opt/suite/hydra_conf/paths
    hydra_conf/pipeline /opt/suite/hydra_conf/pipeline
    hydra_conf/preset /opt/suite/hydra_conf/preset
    recipes/locks/wheels.json /opt/suite/recipes/locks/wheels.json
    recipes/locks/tools.txt /opt/suite/recipes/locks/tools.txt
    {{ LOCK }} /opt/suite/lock.txt

%post
    set -eu
    # a plain Debian 12 gets its Python here; the test world's base already has /opt/venv
    if [ ! -x /opt/venv/bin/python ]; then
        apt="apt-get -o APT::Sandbox::User=root"
        $apt update
        $apt install -y --no-install-recommends python3 python3-venv ca-certificates
        rm -rf /var/lib/apt/lists/*
        python3 -m venv /opt/venv
    fi
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
        export PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    fi
    /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /opt/suite/lock.txt
    rm -rf /root/.cache
    find /opt/suite -name __pycache__ -prune -exec rm -rf {} +
    /opt/venv/bin/python -m compileall -q /opt/suite

%environment
    export PATH=/opt/venv/bin:$PATH
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/opt/suite"
    export PYTHONNOUSERSITE=1
    export CONTAINERS_IMAGE=tiny

%runscript
    exec python -m entrypoints "$@"

%test
    python -m containers.imagecheck tiny

%labels
    recipe tiny
    lock_hash {{ LOCK_HASH }}
    arch {{ ARCH }}
    cuda none
    python 3.11
    git_revision {{ GIT_REV }}

%help
    A CPU-only test image: the host toolkit and the apps' entry point, nothing else.
"""
# the toolkit's dependencies (pyproject.toml), pinned to what the world's test image holds
TINY_IN = "hydra-core==1.3.2\nomegaconf==2.3.0\nPyYAML==6.0.2\nrich==13.9.4\nspython\n"
TINY_YAML = """name: tiny
recipe: recipes/tiny.def
arches: [arm64]
python: "3.11"
gpu: false
sif: "{name}-{arch}-{lockhash}.sif"
pointer: "{name}-{arch}.current"
doctor: {gpu: [caches], cpu: [caches]}
apps: []
lock:
  input: recipes/tiny.in
  platforms: {arm64: aarch64-manylinux_2_28}
"""


def _make_env(extra: dict[str, str]) -> dict[str, str]:
    """The user's shell on the login side: this test run's venv (the copy has none), no CI leftovers."""
    drop = ("PY", "CONTAINERS_RUNTIME", "VIRTUAL_ENV", "CONTAINERS_SCRATCH", "CONTAINERS_REPO", "CI",
            "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "EMULATE", "BUILD_ARGS", "CLUSTER_ARGS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["SUITE_VENV"] = sys.prefix
    env.update(_drop_caps())
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tiny_checkout(tmp_path_factory) -> Path:
    """A copy of the checkout with the tiny recipe, locked by `make lock IMAGE=tiny` in the copy."""
    if not shutil.which("rsync"):
        pytest.skip("rsync is not installed (apt-get install rsync)")
    if not (Path(sys.prefix) / ".installed").is_file():  # else make would try to create a venv there
        pytest.fail(f"{sys.executable} is not a venv made by `make venv`; run the tests with the checkout's "
                    ".venv (make test)")
    base = tmp_path_factory.mktemp("buildarm")
    repo = copy_checkout(base)
    (repo / "recipes" / "tiny.def").write_text(TINY_DEF)
    (repo / "recipes" / "tiny.in").write_text(TINY_IN)
    (repo / "hydra_conf" / "image" / "tiny.yaml").write_text(TINY_YAML)
    t0 = time.monotonic()
    out = subprocess.run(["make", "lock", "IMAGE=tiny"], cwd=repo, env=_make_env({}), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    print(f"make lock IMAGE=tiny: {time.monotonic() - t0:.0f} s")
    assert (repo / "recipes" / "locks" / "tiny-arm64.txt").is_file(), out.stdout[-2000:]
    return repo


def _drop_caps() -> dict[str, str]:
    """APPTAINER_DROP_CAPS for what root may not hold here (see the module doc), else nothing."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:") and not int(line.split()[1], 16) >> 24 & 1:
            return {"APPTAINER_DROP_CAPS": "CAP_SYS_RESOURCE"}
    return {}


def _ca_bind(tmp_path: Path) -> dict[str, str]:
    """The world reaches the package index through a TLS proxy whose CA is in this host's bundle:
    %post's pip gets it the way Apptainer users pass files to a build (APPTAINER_BIND); the copy sits
    where both the launcher's root and the arm64 node see it."""
    if not HOST_CA.is_file():
        return {}
    ca = tmp_path / "ca-certificates.crt"
    shutil.copyfile(HOST_CA, ca)
    return {"APPTAINER_BIND": f"{ca}:/etc/ssl/certs/ca-certificates.crt"}


def _assert_published(images: Path, started: float) -> Path:
    """arm64 SIF named <image>-arm64-<lockhash>.sif, its pointer written after it, no temp files."""
    from containers.sif import read_sif

    pointer = images / "tiny-arm64.current"
    assert pointer.is_file(), sorted(p.name for p in images.iterdir()) if images.is_dir() else images
    sif = images / pointer.read_text().strip()
    info = read_sif(sif)
    assert sif.name.startswith("tiny-arm64-") and info.arch == "arm64", (sif.name, info.arch)
    assert info.labels.get("recipe") == "tiny" and info.labels.get("cuda") == "none", info.labels
    assert sif.stat().st_mtime >= started - 1
    assert pointer.stat().st_mtime_ns >= sif.stat().st_mtime_ns  # the pointer came last
    assert not [p.name for p in images.iterdir() if p.name.startswith(".")], list(images.iterdir())
    return sif


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.smb
@pytest.mark.arm64
@pytest.mark.apptainer
def test_make_build_arm64_builds_on_the_aarch64_node_and_publishes_to_the_share(
        tiny_checkout, spark_arm64, smb_share, world_launcher_dir, test_sif_arm64, tmp_path):
    if spark_arm64.shared is None:
        pytest.fail("the arm64 node started without the SMB-like share bound in")
    root = smb_share.path / f"suite-{tmp_path.name}"
    env = _make_env({"PATH": f"{world_launcher_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                     "SLURM_CONF": spark_arm64.env["SLURM_CONF"], "CONTAINERS_ACCOUNT": "suite_test",
                     "CONTAINERS_SHARED_ROOT": str(root),
                     "CONTAINERS_NODE_LOCAL": str(spark_arm64.node_local(ARM64_NODE)), **_ca_bind(tmp_path)})
    started = time.time()
    t0 = time.monotonic()
    out = subprocess.run(
        ["make", "build-arm64", "IMAGE=tiny",
         "CLUSTER_ARGS=cluster=dgx_spark cluster.build.arm64.cpus=1 cluster.build.arm64.mem=1G",
         f"BUILD_ARGS=BOOTSTRAP=localimage BASE={test_sif_arm64}"],
        cwd=tiny_checkout, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]  # lint passed, job submitted
    assert "build tiny arm64: slurm (submitting to the arm64 partition spark)" in out.stdout, out.stdout
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("submitted job "))
    jid, log = line.split()[2].rstrip(";"), Path(line.split("log: ", 1)[1])
    try:
        states = spark_arm64.wait(jid, timeout=1500, poll=1)
    finally:
        subprocess.run(["scancel", jid], env=spark_arm64.env, timeout=30, check=False)
    text = log.read_text() if log.is_file() else "(no log)"
    print(f"make build-arm64 (Slurm): {time.monotonic() - t0:.0f} s")
    assert states[jid] == ["COMPLETED"], text[-5000:]
    show = spark_arm64.show_job(jid)
    assert show["Partition"] == "spark" and show["NodeList"] == ARM64_NODE, show
    assert "building tiny for arm64 (native on aarch64)" in text, text[-3000:]
    assert "imagecheck tiny: all checks passed" in text, text[-3000:]  # %test ran on the node
    assert log.is_relative_to(root)  # the build log went to the share's scratch
    sif = _assert_published(root / "images", started)
    # the published image runs on the node
    jid2 = spark_arm64.sbatch([*SMALL, "--partition=spark", f"--output={tmp_path}/run-%j.out",
                               "--wrap", f"apptainer exec {sif} uname -m"], env=env, cwd=tmp_path)
    assert spark_arm64.wait(jid2, timeout=300)[jid2] == ["COMPLETED"]
    assert (tmp_path / f"run-{jid2}.out").read_text().split()[-1:] == ["aarch64"]


@pytest.mark.slow
@pytest.mark.arm64
@pytest.mark.apptainer
def test_make_build_arm64_with_emulate_builds_here_under_binfmt(tiny_checkout, world_launcher_dir,
                                                                test_sif_arm64, tmp_path):
    """EMULATE=1 on the x86 side, no Slurm build partition (cluster=laptop): `apptainer build --arch
    arm64` here, %post and %test through qemu binfmt, then published to the images dir."""
    from containers.build import binfmt_registered

    assert binfmt_registered("arm64"), "the arm64 test image exists: qemu-aarch64 binfmt must be registered"
    root = tmp_path / "shared"
    env = _make_env({"PATH": f"{world_launcher_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                     "CONTAINERS_SHARED_ROOT": str(root), "CONTAINERS_NODE_LOCAL": str(tmp_path / "nvme"),
                     **_ca_bind(tmp_path)})
    started = time.time()
    t0 = time.monotonic()
    out = subprocess.run(["make", "build-arm64", "IMAGE=tiny", "EMULATE=1", "CLUSTER_ARGS=cluster=laptop",
                          f"BUILD_ARGS=BOOTSTRAP=localimage BASE={test_sif_arm64}"],
                         cwd=tiny_checkout, env=env, capture_output=True, text=True, timeout=1500)
    print(f"make build-arm64 EMULATE=1: {time.monotonic() - t0:.0f} s")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert "build tiny arm64: emulate (EMULATE=1 and binfmt for aarch64 is registered" in out.stdout
    assert "imagecheck tiny: all checks passed" in out.stdout + out.stderr
    sif = _assert_published(root / "images", started)
    ran = subprocess.run(["apptainer", "exec", str(sif), "uname", "-m"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ran.stdout.split()[-1:] == ["aarch64"], ran.stdout + ran.stderr


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.arm64
@pytest.mark.apptainer
def test_make_build_arm64_on_the_login_side_starts_the_native_build_on_the_aarch64_node(
        spark_arm64, world_launcher_dir, test_sif_arm64, isolated_roots, tmp_path):
    """`make build-arm64 IMAGE=flowportal-cu130 CLUSTER_ARGS=cluster=dgx_spark BUILD_ARGS=...` typed at the
    repository root on the x86 login side: containers build lints the recipe, routes the build to the
    spark partition, and the job on the aarch64 node starts Apptainer's native build with the same
    build arguments. The build itself is stopped once Apptainer has started it: the product recipe's
    %post installs its lock from the package index (torch for aarch64, hours under qemu), and a small
    recipe's whole build and publish are the tests above."""
    env = {k: v for k, v in os.environ.items() if k not in ("PY", "CONTAINERS_RUNTIME", "VIRTUAL_ENV", "CI",
                                                              "MAKEFLAGS", "MAKELEVEL")}
    env.update({"PATH": f"{world_launcher_dir}{os.pathsep}{env.get('PATH', '')}",
                "SLURM_CONF": spark_arm64.env["SLURM_CONF"], "CONTAINERS_ACCOUNT": "suite_test",
                "CONTAINERS_NODE_LOCAL": str(spark_arm64.node_local(ARM64_NODE))})
    cluster_args = "cluster=dgx_spark cluster.build.arm64.cpus=1 cluster.build.arm64.mem=1G"
    out = subprocess.run(["make", "build-arm64", "IMAGE=flowportal-cu130", f"CLUSTER_ARGS={cluster_args}",
                          f"BUILD_ARGS=BOOTSTRAP=localimage BASE={test_sif_arm64}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "build flowportal-cu130 arm64: slurm (submitting to the arm64 partition spark)" in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("submitted job "))
    jid, log = line.split()[2].rstrip(";"), Path(line.split("log: ", 1)[1])
    try:
        deadline = time.time() + 900
        text = ""
        while time.time() < deadline:
            text = log.read_text() if log.exists() else ""
            if "Starting build" in text or spark_arm64.states(jid)[0] not in ("PENDING", "RUNNING"):
                break
            time.sleep(1)
        assert "Starting build" in text, text[-3000:]
        assert "building flowportal-cu130 for arm64 (native on aarch64)" in text, text[-3000:]
        assert f"build arguments: BASE={test_sif_arm64} BOOTSTRAP=localimage;" in text, text[-3000:]
        show = spark_arm64.show_job(jid)
        assert show["Partition"] == "spark" and show["NodeList"] == ARM64_NODE, show
    finally:
        subprocess.run(["scancel", jid], env=spark_arm64.env, timeout=30, check=False)
        spark_arm64.wait(jid, timeout=120)


def test_the_node_side_build_does_not_publish_a_test_lock(tmp_path):
    """build_image.sbatch by hand (sbatch --export=...,BUILD_ARGS=LOCK=<test lock>): one line before
    anything is built; with BUILD_PUBLISH=0 it goes on (here to the missing Apptainer)."""
    lock = "recipes/locks/test/mineru-dell-py310-amd64-py311.txt"
    env = {"BUILD_IMAGE": "mineru-dell-py310", "BUILD_ARGS": f"LOCK={lock}", "CONTAINERS_CLUSTER": "laptop",
           "CONTAINERS_NODE_LOCAL": str(tmp_path / "nvme"),
           "CONTAINERS_SHARED_ROOT": str(tmp_path / "shared"), "PATH": "/usr/bin:/bin"}
    one_error(bash("slurm/build_image.sbatch", **env), f"{REPO / lock} is a test lock: its image must not be "
              "published as mineru-dell-py310", "export BUILD_PUBLISH=0")
    if shutil.which("apptainer", path=env["PATH"]):
        pytest.skip("an apptainer in /usr/bin would start the build")
    one_error(bash("slurm/build_image.sbatch", **env, BUILD_PUBLISH="0"), "no apptainer on node")
