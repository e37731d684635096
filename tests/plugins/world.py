"""pytest side of the test world (tests/world/): markers, fixtures, and nothing left behind.

Markers: ``apptainer`` (the real Apptainer through the launcher), ``arm64`` (an aarch64 userland
under qemu-user), ``smb`` (the SMB-like FUSE share). A test carrying one gets the piece from the
fixtures below; when the piece cannot be built here the test is skipped with a reason that names
the marker and the missing piece, and with ``CI`` set it fails instead (CI must never go green
by skipping). A failed build is remembered for the session, so it is tried (and reported) once.

Fixtures:
- ``real_apptainer``: puts the launcher first on PATH for the test; returns its path.
- ``world_launcher_dir``: the launcher's folder, for PATHs a test builds (Slurm jobs, node roots).
- ``world_sid_root``: the sid root (for tests that enter it directly).
- ``test_sif_amd64`` / ``test_sif_arm64``: the test images built by the real Apptainer.
- ``world_procs``: ``start(argv, **popen_kw)`` for background processes; each runs in its own
  session and its whole process group is killed at teardown, at exit and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from tests.world import images, pieces, rootfs
from tests.world.launcher import write_launcher

REPO = Path(__file__).resolve().parents[2]
_failures: dict[str, str] = {}
_groups: set[int] = set()


def world_unavailable(marker: str, piece: str, why: str) -> NoReturn:
    """Skip loudly (fail under CI) naming the marker and the missing piece."""
    message = f"[{marker}] {piece} unavailable: {why}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _piece(marker: str, piece: str, build: Callable[[], Path]) -> Path:
    key = f"{marker}:{piece}"
    if key in _failures:
        world_unavailable(marker, piece, _failures[key])
    try:
        return build()
    except rootfs.WorldUnavailable as exc:
        _failures[key] = exc.line()
    except Exception as exc:  # a build error is reported like any missing piece, once
        _failures[key] = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
    world_unavailable(marker, piece, _failures[key])


def _require_marker(request: pytest.FixtureRequest, *markers: str) -> None:
    """A fixture of the world used without its marker would escape `make test-fast`'s filter."""
    for m in markers:
        if request.node.get_closest_marker(m) is None:
            pytest.fail(f"{request.node.nodeid} uses {request.fixturename} but is not marked "
                        f"@pytest.mark.{m}", pytrace=False)


@pytest.fixture(scope="session")
def _sid_root() -> Path:
    return _piece("apptainer", "the sid root with Apptainer", lambda: rootfs.ensure(pieces.SID_APPTAINER))


@pytest.fixture
def world_sid_root(request, _sid_root: Path) -> Path:
    _require_marker(request, "apptainer")
    return _sid_root


@pytest.fixture(scope="session")
def _launcher_dir(_sid_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("world-bin")
    base = tmp_path_factory.getbasetemp()
    write_launcher(bin_dir, _sid_root, [str(REPO), str(base), str(rootfs.cache_dir())])
    return bin_dir


@pytest.fixture
def world_launcher_dir(request, _launcher_dir: Path) -> Path:
    """The folder holding the launcher, for PATHs the test builds itself (Slurm jobs, a node root)."""
    _require_marker(request, "apptainer")
    return _launcher_dir


@pytest.fixture
def real_apptainer(request, _launcher_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _require_marker(request, "apptainer")
    monkeypatch.setenv("PATH", f"{_launcher_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return _launcher_dir / "apptainer"


def _arm64_ready() -> Path:
    why = rootfs.why_unavailable(pieces.bookworm("arm64"))
    if why:
        raise rootfs.WorldUnavailable(why)
    return images.test_sif("arm64")


@pytest.fixture(scope="session")
def _sif_amd64(_sid_root: Path) -> Path:
    return _piece("apptainer", "the amd64 test image", lambda: images.test_sif("amd64"))


@pytest.fixture(scope="session")
def _sif_arm64(_sid_root: Path) -> Path:
    return _piece("arm64", "the arm64 test image (qemu-user binfmt + Apptainer)", _arm64_ready)


@pytest.fixture
def test_sif_amd64(request, _sif_amd64: Path) -> Path:
    _require_marker(request, "apptainer")
    return _sif_amd64


@pytest.fixture
def test_sif_arm64(request, _sif_arm64: Path) -> Path:
    _require_marker(request, "apptainer", "arm64")
    return _sif_arm64


# ------------------------------------------------------------------ nothing left running
def kill_groups() -> None:
    """SIGKILL every process group started through ``world_procs`` (idempotent)."""
    for pgid in list(_groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _groups.discard(pgid)


def _on_sigterm(signum, frame):
    """SIGTERM (CI cancelling, `timeout`) becomes Ctrl-C: pytest then runs every teardown."""
    kill_groups()
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    atexit.register(kill_groups)
    with contextlib.suppress(ValueError):  # not the main thread: leave the handler alone
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_unconfigure(config: pytest.Config) -> None:
    kill_groups()


@pytest.fixture
def world_procs():
    """Start background processes in their own process groups; all are killed at teardown."""
    mine: list[subprocess.Popen] = []

    def start(argv, **kw) -> subprocess.Popen:
        proc = subprocess.Popen([str(a) for a in argv], start_new_session=True, **kw)
        _groups.add(proc.pid)
        mine.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in mine:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            _groups.discard(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
