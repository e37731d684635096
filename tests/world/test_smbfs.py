"""The SMB-like share refuses what the DGX Spark share refuses, and nothing else; it never stays mounted."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from suite_core.runner import run
from tests.world.smbfs import FSNAME, SmbShare, is_mounted, mounts, sweep_dead_mounts

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.smb


@pytest.fixture
def share_dir(smb_share, request):
    """A fresh folder on the session's share, removed afterwards."""
    d = smb_share.path / request.node.name
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _eperm(fn, *args) -> None:
    with pytest.raises(PermissionError) as info:
        fn(*args)
    assert info.value.errno == errno.EPERM


def test_is_a_fuse_mount_with_the_suite_name(smb_share):
    found = [(fstype, src) for point, fstype, src in mounts() if point == str(smb_share.path)]
    assert found == [("fuse.smblike", FSNAME)]


def test_chmod_chown_symlink_and_hard_link_are_refused(share_dir):
    f = share_dir / "data.bin"
    f.write_bytes(b"x")
    _eperm(os.chmod, f, 0o755)
    _eperm(os.chown, f, 1, 1)
    _eperm(os.symlink, "data.bin", share_dir / "ln")
    _eperm(os.link, f, share_dir / "hard")
    _eperm(shutil.copymode, f, f)
    assert sorted(p.name for p in share_dir.iterdir()) == ["data.bin"]


def test_plain_file_work_passes_through(smb_share, share_dir):
    d = share_dir / "a dir"
    d.mkdir()
    (d / "part").write_bytes(b"hello ")
    with open(d / "part", "ab") as fh:
        fh.write(b"world")
    os.rename(d / "part", d / "whole.txt")
    os.utime(d / "whole.txt", (1_000_000, 1_000_000))
    assert (d / "whole.txt").read_text() == "hello world"
    assert (d / "whole.txt").stat().st_mtime == 1_000_000
    os.truncate(d / "whole.txt", 5)
    backing = smb_share.backing / share_dir.name / "a dir" / "whole.txt"
    assert backing.read_bytes() == b"hello"  # the bytes are really in the backing folder
    (d / "whole.txt").unlink()
    d.rmdir()
    assert list(share_dir.iterdir()) == []


def test_python_venv_fails_on_the_share(share_dir):
    proc = run([sys.executable, "-m", "venv", "--without-pip", str(share_dir / "venv")], check=False,
               timeout=120)
    assert proc.returncode != 0
    assert "Operation not permitted: 'lib' -> " in proc.stderr, proc.stderr  # the lib64 symlink


def _rsync_onto_share(src: Path, dst: Path):
    """The status quo's copy; rsync still fchmods each new file from its 0600 temp mode to the
    source's, which the share refuses: the bytes arrive, rsync reports exit 23 (partial transfer)."""
    argv = ["rsync", "-r", "-t", "--no-perms", "--no-owner", "--no-group", "--inplace", f"{src}/", f"{dst}/"]
    proc = run(argv, check=False, timeout=120)
    complaints = [ln for ln in proc.stderr.splitlines() if ln.startswith("rsync")]
    others = [ln for ln in complaints if "failed to set permissions" not in ln and "code 23" not in ln]
    assert proc.returncode in (0, 23) and not others, proc.stderr
    return proc


def test_rsync_without_perms_copies_a_tree(tmp_path, share_dir):
    """The status quo: a checkout reaches the share with rsync, without permissions, owners or links."""
    src = tmp_path / "checkout"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("X = 1\n")
    (src / "pkg" / "sub" / "run.sh").write_text("echo hi\n")
    (src / "pkg" / "sub" / "run.sh").chmod(0o755)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    dst = share_dir / "checkout"
    first = _rsync_onto_share(src, dst)
    assert first.returncode == 23 and "failed to set permissions" in first.stderr
    for rel in ("pkg/mod.py", "pkg/sub/run.sh", "big.bin"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
    (src / "pkg" / "mod.py").write_text("X = 22\n")  # a second sync updates in place, now cleanly
    again = _rsync_onto_share(src, dst)
    assert again.returncode == 0, again.stderr
    assert (dst / "pkg" / "mod.py").read_text() == "X = 22\n"
    # ...whereas an archive copy, which also makes links and sets owners, fails harder.
    (src / "link").symlink_to("pkg")
    archive = run(["rsync", "-a", f"{src}/", f"{share_dir}/archive/"], check=False, timeout=120)
    assert archive.returncode == 23 and "symlink" in archive.stderr, archive.stderr


def test_other_users_see_the_share(smb_ready):
    """allow_other: slurmd jobs and the arm64 node run as other processes and users."""
    if os.getuid() != 0:
        pytest.skip("switching to another user needs root")
    base = Path(tempfile.mkdtemp(prefix="smb-other-"))  # pytest's own tmp folders are private to root
    try:
        base.chmod(0o755)
        with SmbShare(base / "b", base / "m") as share:
            (share.path / "note.txt").write_text("shared\n")
            proc = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                        str(share.path / "note.txt")], check=False, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "shared\n"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_unmounted(path: Path, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_mounted(path):
            return True
        time.sleep(0.1)
    return False


def test_stop_unmounts(smb_ready, tmp_path):
    share = SmbShare(tmp_path / "b", tmp_path / "m")
    with share:
        (share.path / "f").write_text("1")
        assert is_mounted(share.path)
    assert not is_mounted(share.path)
    assert (tmp_path / "b" / "f").read_text() == "1"


def test_a_killed_test_run_leaves_nothing_mounted(smb_ready, tmp_path):
    """SIGKILL of the process that mounted it: the daemon is told by the kernel and unmounts."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tests.world.smbfs import SmbShare
        SmbShare(Path({str(tmp_path / 'b')!r}), Path({str(tmp_path / 'm')!r})).start()
        print("up", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert is_mounted(tmp_path / "m")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert _wait_unmounted(tmp_path / "m")


def test_a_dead_daemon_mount_is_swept(smb_ready, tmp_path):
    share = SmbShare(tmp_path / "b", tmp_path / "m").start()
    try:
        share._proc.send_signal(signal.SIGKILL)  # no chance to unmount: the mount stays, disconnected
        share._proc.wait(timeout=10)
        assert is_mounted(share.path)
        with pytest.raises(OSError) as info:
            os.stat(share.path)
        assert info.value.errno == errno.ENOTCONN
        assert str(share.path) in sweep_dead_mounts()
        assert not is_mounted(share.path)
    finally:
        share.stop()
