"""The SMB-like shared root as a pytest fixture (see tests.world.smbfs).

``smb_share`` is one FUSE mount for the whole session under pytest's temporary folder, so every
process of the run (slurmd jobs, the arm64 node's root, Apptainer) sees it at the same path.
Unmounted in the finalizer, which pytest also runs on a failing test and on Ctrl-C; the daemon
unmounts itself if pytest is killed outright, and the next run sweeps a mount whose daemon died.
"""

from __future__ import annotations

import os

import pytest

from tests.world.smbfs import SmbShare, why_unavailable


def _unavailable(msg: str) -> None:
    msg = f"SMB-LIKE SHARE UNAVAILABLE, tests marked 'smb' not run: {msg}"
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI is set: these tests must run)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def smb_ready() -> None:
    """Installs what a share needs (root + apt) or skips/fails naming the missing piece."""
    reason = why_unavailable()
    if reason:
        _unavailable(reason)


@pytest.fixture(scope="session")
def smb_share(smb_ready, tmp_path_factory):
    """A mounted SMB-like share (an :class:`SmbShare`); its ``path`` refuses chmod, chown and links."""
    base = tmp_path_factory.mktemp("smb")
    share = SmbShare(backing=base / "backing", path=base / "share")
    try:
        share.start()
    except RuntimeError as exc:
        _unavailable(str(exc))
    try:
        yield share
    finally:
        share.stop()
