"""Build commands (golden argv, real Apptainer flags), filesystem checks, the arm64 decision matrix."""

from __future__ import annotations

import pytest

from containers.build import (
    build_argv,
    build_env,
    check_local_dir,
    decide_route,
    fs_type,
    sbatch_argv,
)
from suite_core.errors import UserError
from suite_core.runner import quote
from tests.helpers import APPTAINER_FACTS, assert_golden, assert_one_line_error, cli

ARGS = {"ARCH": "arm64", "LOCK_HASH": "0123456789ab", "GIT_REV": "abcdef012345"}
MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/x
30 22 259:2 / /tmp rw,relatime shared:2 - ext4 /dev/nvme0n1p2 rw
31 22 0:40 / /scratch rw,relatime shared:3 - nfs4 filer:/scratch rw,vers=4.2
32 31 259:3 / /scratch/local rw,relatime shared:4 - xfs /dev/nvme1n1 rw
33 22 0:41 / /mnt/shared rw,relatime shared:5 - cifs //nas/share rw
34 22 0:42 / /lustre rw,relatime shared:6 - lustre 10.0.0.1@o2ib:/fs rw
35 22 0:43 / /mnt/my\\040disk rw,relatime shared:7 - ext4 /dev/sdb1 rw
"""


def _check_flags(argv: list[str]) -> None:
    flags = {f["name"] for f in APPTAINER_FACTS["commands"]["build"]}
    for a in argv[2:]:
        if a.startswith("--"):
            assert a[2:].split("=", 1)[0] in flags, a


@pytest.mark.parametrize("case, kwargs", [
    ("native_fakeroot", dict(arch="amd64", host="amd64", is_root=False)),
    ("native_root", dict(arch="amd64", host="amd64", is_root=True)),
    ("emulated_arm64", dict(arch="arm64", host="amd64", is_root=False)),
])
def test_build_argv_golden(case, kwargs):
    argv = build_argv(apptainer="apptainer", deffile="recipes/flowportal-cu130.def",
                      sif="/nvme/builds/flowportal-cu130-x-0123456789ab.sif",
                      build_args={**ARGS, "ARCH": kwargs["arch"]}, **kwargs)
    _check_flags(argv)
    assert ("--fakeroot" in argv) is (not kwargs["is_root"])
    assert_golden(f"recipes/build_{case}.txt", quote(argv) + "\n")


def test_sbatch_argv_golden():
    argv = sbatch_argv(image="flowportal-cu130", arch="arm64", partition="spark", account="acct",
                       repo="/home/u/suite", log_dir="/home/u/scratch/builds",
                       extra_export={"CONTAINERS_CLUSTER": "dgx_spark"})
    assert_golden("recipes/sbatch_build_arm64.txt", quote(argv) + "\n")


@pytest.mark.parametrize("path, want", [
    ("/tmp/apptainer", ("ext4", "/tmp")),
    ("/scratch/u/x", ("nfs4", "/scratch")),
    ("/scratch/local/u", ("xfs", "/scratch/local")),       # the longest mount point wins
    ("/scratch/localx", ("nfs4", "/scratch")),            # a prefix that is not a path component
    ("/mnt/shared/u/images", ("cifs", "/mnt/shared")),
    ("/lustre/proj/tmp", ("lustre", "/lustre")),
    ("/mnt/my disk/tmp", ("ext4", "/mnt/my disk")),       # octal-escaped space
    ("/home/u", ("overlay", "/")),
])
def test_fs_type(path, want):
    assert fs_type(path, MOUNTINFO) == want


@pytest.mark.parametrize("path", ["/scratch/u/tmp", "/mnt/shared/tmp", "/lustre/tmp"])
def test_network_tmpdir_refused(path):
    with pytest.raises(UserError) as exc:
        check_local_dir("APPTAINER_TMPDIR", path, MOUNTINFO)
    line = exc.value.line()
    assert "APPTAINER_TMPDIR" in line and "\n" not in line and "fix:" in line


def test_build_env_defaults_to_node_local_and_respects_the_user():
    env = build_env({"PATH": "/bin"}, "/tmp/nvme", mountinfo=MOUNTINFO)
    assert env["APPTAINER_TMPDIR"] == "/tmp/nvme/apptainer/tmp"
    assert env["APPTAINER_CACHEDIR"] == "/tmp/nvme/apptainer/cache"
    with pytest.raises(UserError, match="APPTAINER_CACHEDIR=/scratch/c is on nfs4"):
        build_env({"APPTAINER_CACHEDIR": "/scratch/c"}, "/tmp/nvme", mountinfo=MOUNTINFO)


# the build-arm64 decision matrix
def test_route_aarch64_host_builds_natively():
    r = decide_route("arm64", host="arm64", sbatch_available=True, build_partition="spark",
                     binfmt_registered=False, emulate=False)
    assert r.kind == "native"


def test_route_x86_with_slurm_submits_to_the_aarch64_partition():
    r = decide_route("arm64", host="amd64", sbatch_available=True, build_partition="spark",
                     binfmt_registered=True, emulate=False)
    assert (r.kind, r.partition) == ("slurm", "spark")


def test_route_x86_with_binfmt_emulates_only_when_asked():
    r = decide_route("arm64", host="amd64", sbatch_available=False, build_partition=None,
                     binfmt_registered=True, emulate=True)
    assert r.kind == "emulate"
    with pytest.raises(UserError, match="pass EMULATE=1"):
        decide_route("arm64", host="amd64", sbatch_available=False, build_partition=None,
                     binfmt_registered=True, emulate=False)


def test_route_neither_explains_the_options():
    with pytest.raises(UserError) as exc:
        decide_route("arm64", host="amd64", sbatch_available=False, build_partition=None,
                     binfmt_registered=False, emulate=True)
    line = exc.value.line()
    assert "no sbatch here" in line and "qemu" in line and "aarch64 machine" in line
    with pytest.raises(UserError, match="has no arm64 build partition"):
        decide_route("arm64", host="amd64", sbatch_available=True, build_partition=None,
                     binfmt_registered=False, emulate=False, cluster="torch")


def test_build_command_bad_input():
    assert_one_line_error(cli("build", "nope"), "unknown image 'nope'")
    assert_one_line_error(cli("build", "paddle-py312", "--arch", "arm64"),
                          "no Paddle GPU build for aarch64")


def test_build_takes_overrides_after_options():
    """make build-arm64 writes `build IMAGE --arch arm64 $(CLUSTER_ARGS)`: the override must parse."""
    assert_one_line_error(cli("build", "paddle-py312", "--arch", "arm64", "cluster=dgx_spark"),
                          "no Paddle GPU build for aarch64")


def test_build_dry_run_routes_arm64_to_slurm():
    """On an x86 host with Slurm's sbatch: dgx_spark sends build-arm64 to its aarch64 partition."""
    import shutil

    if not shutil.which("sbatch"):
        pytest.skip("no sbatch on this machine")
    proc = cli("build", "flowportal-cu130", "cluster=dgx_spark", "--arch", "arm64", "--dry-run")
    if proc.returncode == 0 and "native" in proc.stdout:
        pytest.skip("this host is aarch64")
    assert proc.returncode == 0, proc.stderr
    assert "slurm" in proc.stdout and "--partition=spark" in proc.stdout
    assert "slurm/build_image.sbatch" in proc.stdout


def test_build_arguments_reach_the_node_side_build(tmp_path):
    """make build-arm64 BUILD_ARGS=... routed to Slurm: build_image.sbatch gets the same --build-arg
    values (BUILD_ARGS), --userns (BUILD_FLAGS) and the names of the image's env build arguments."""
    import shutil

    if not shutil.which("sbatch"):
        pytest.skip("no sbatch on this machine")
    base = tmp_path / "base.sif"
    base.write_bytes(b"")
    proc = cli("build", "flowportal-cu130", "cluster=dgx_spark", "--arch", "arm64", "--dry-run", "--userns",
               "--build-arg", "BOOTSTRAP=localimage", "--build-arg", f"BASE={base}")
    if proc.returncode == 0 and "native" in proc.stdout:
        pytest.skip("this host is aarch64")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert f"BUILD_ARGS=BASE={base} BOOTSTRAP=localimage" in line and "BUILD_FLAGS=--userns" in line, line
    spaced = cli("build", "flowportal-cu130", "cluster=dgx_spark", "--arch", "arm64", "--dry-run",
                 "--build-arg", "BOOTSTRAP=local image")
    assert_one_line_error(spaced, "holds whitespace")


def test_build_without_apptainer_is_one_line(tmp_path):
    proc = cli("build", "mineru-dell-py310", "--arch", "amd64",
               env={"PATH": "/usr/bin:/bin", "CONTAINERS_NODE_LOCAL": str(tmp_path)})
    if proc.returncode == 0:
        pytest.skip("an apptainer binary exists here")
    if "native" not in proc.stdout:
        pytest.skip("this host is not x86_64")
    assert_one_line_error(proc, "no apptainer on PATH")


def test_a_build_argument_naming_a_missing_base_is_one_line(tmp_path):
    """Bad input, before any download: `containers build` refuses a BASE that does not exist."""
    proc = cli("build", "paddle-py312", "--arch", "amd64", "--dry-run", "--build-arg", "BOOTSTRAP=localimage",
               "--build-arg", f"BASE={tmp_path / 'nope.sif'}")
    assert_one_line_error(proc, f"build argument BASE={tmp_path / 'nope.sif'} names no image file",
                          "image paddle-py312, amd64")


@pytest.mark.parametrize("arg, needle", [
    ("LOCK=recipes/locks/nope.txt", "build argument LOCK=recipes/locks/nope.txt names no file"),
    ("LOCK=recipes/locks/mineru-dell-py310-amd64.txt",
     "is a lock of mineru-dell-py310 amd64, not of paddle-py312 amd64"),
    ("BASE=ubuntu", "build argument BASE=ubuntu is not pinned to a tag"),
    ("CUDA=12", "build argument CUDA is not one the definition declares"),
    ("LOCK_HASH=x", "build argument LOCK_HASH is set by containers build itself"),
])
def test_build_arguments_are_checked_before_anything_runs(arg, needle):
    assert_one_line_error(cli("build", "paddle-py312", "--arch", "amd64", "--dry-run", "--build-arg", arg),
                          needle)


def test_a_test_lock_swaps_only_base_and_lock():
    """The dry run shows what the test world passes: the same .def, BOOTSTRAP/BASE/LOCK swapped."""
    proc = cli("build", "mineru-dell-py310", "--arch", "amd64", "--dry-run", "--userns",
               "--build-arg", "LOCK=recipes/locks/test/mineru-dell-py310-amd64-py311.txt",
               "--build-arg", "BASE=debian:bookworm")
    if "native" not in proc.stdout:
        pytest.skip("this host is not x86_64")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "--userns" in line and "--fakeroot" not in line
    assert "--build-arg BASE=debian:bookworm" in line
    assert "--build-arg LOCK=recipes/locks/test/mineru-dell-py310-amd64-py311.txt" in line
    assert line.endswith("recipes/mineru-dell-py310.def")


def test_a_test_lock_is_not_published_on_the_slurm_route_either(tmp_path):
    """build_image.sbatch publishes what it builds: `containers build` refuses a test lock there as on
    the local route, before anything is submitted; --no-publish reaches the job as BUILD_PUBLISH=0."""
    import re
    import shutil

    from containers.locks import body_sha256, parse_lock
    from tests.helpers import REPO

    # an arm64 test lock of flowportal (there is none in the repo): the amd64 one without decord
    # (no aarch64 wheel), its header counting and hashing what is left, so that it lints
    text = (REPO / "recipes/locks/test/flowportal-cu130-amd64-py311.txt").read_text()
    text = re.sub(r"^decord==.*?\n(?:    .*\n)+", "", text.replace("# arch: amd64\n", "# arch: arm64\n", 1),
                  count=1, flags=re.M)
    parsed = parse_lock(text)
    text = re.sub(r"^# packages: \d+$", f"# packages: {len(parsed.requirements)}", text, count=1, flags=re.M)
    text = re.sub(r"^# body-sha256: \w+$", f"# body-sha256: {body_sha256(parsed.body)}", text, count=1,
                  flags=re.M)
    lock = tmp_path / "flowportal-cu130-arm64-py311.txt"
    lock.write_text(text)
    argv = ["build", "flowportal-cu130", "cluster=dgx_spark", "--arch", "arm64",
            "--build-arg", f"LOCK={lock}"]
    assert_one_line_error(cli(*argv), f"LOCK={lock} is a test lock: its image must not be published as "
                                      "flowportal-cu130", "add --no-publish")
    if not shutil.which("sbatch"):
        pytest.skip("no sbatch on this machine")
    proc = cli(*argv, "--no-publish", "--dry-run")
    if proc.returncode == 0 and "native" in proc.stdout:
        pytest.skip("this host is aarch64")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "slurm/build_image.sbatch" in line and "BUILD_PUBLISH=0" in line, line
    assert "BUILD_PUBLISH" not in cli(*argv[:-2], "--dry-run").stdout  # production lock: publishes
