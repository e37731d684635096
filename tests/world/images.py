"""Real SIF images for the test world, built by the real Apptainer inside the sid root.

Why real ones: a SIF made by siftool has the right header but no filesystem; only images Apptainer
itself built and can run show what a process inside sees (binds, --env parsing, --cleanenv ...).

- ``base_sif(arch)``: ``apptainer build [--arch arm64] base-ARCH.sif ROOT/`` from the debootstrapped
  bookworm root (squashfs packing only: works as root here).
- ``test_sif(arch)``: ``apptainer build --userns test-ARCH.sif test-image.def`` from that base,
  as the unprivileged builder user (root builds with %post need a capability this kind of VM
  withholds, and --fakeroot cannot chown), with the host's CA bundle bound over the image's so pip
  reaches the registry through the machine's TLS set-up.

Each SIF is named after (and has a completion marker holding) a digest of everything it was made
from (the root's recipe, the definition file, STEPS_VERSION): a changed definition is a new file,
a missing marker or file means rebuild. Built into a temporary name, renamed, marker last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from suite_core.markers import fingerprint, is_done, write_marker
from tests.world import pieces
from tests.world.rootfs import (
    SYSTEM_PATH,
    WorldUnavailable,
    cache_dir,
    ensure,
    piece_lock,
    remove_tree,
    run_in,
    sha256_file,
)

DEF_FILE = Path(__file__).resolve().parent / "test-image.def"
STEPS_VERSION = 1
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_ROOT = "/run/world-host-ca.crt"  # where the sid root sees the host bundle during a build
ARCHES = ("amd64", "arm64")


def _images_dir(cache: Path | None) -> Path:
    d = (cache or cache_dir()) / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _say(log: Callable[[str], None] | None, text: str) -> None:
    import sys

    (log or (lambda s: print(s, file=sys.stderr, flush=True)))(text)


def _fresh(sif: Path, digest: str) -> bool:
    return sif.is_file() and is_done(sif.with_suffix(".sif.done"), digest)


def base_digest(arch: str) -> str:
    return fingerprint({"base": pieces.bookworm(arch).digest(), "steps": STEPS_VERSION})


def test_digest(arch: str) -> str:
    return fingerprint({"from": base_digest(arch), "def": sha256_file(DEF_FILE), "steps": STEPS_VERSION})


def sif_path(kind: str, arch: str, cache: Path | None = None) -> Path:
    """Where the ``kind`` ("base" or "test") SIF of ``arch`` for the current recipes lives."""
    digest = base_digest(arch) if kind == "base" else test_digest(arch)
    return (cache or cache_dir()) / "images" / f"{kind}-{arch}.{digest[:12]}.sif"


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise WorldUnavailable(f"no test image for arch '{arch}'", fix=f"use one of {', '.join(ARCHES)}")


def base_sif(arch: str, *, cache: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The base SIF of ``arch`` (built now when missing or stale)."""
    _check_arch(arch)
    out_dir = _images_dir(cache)
    digest, sif = base_digest(arch), sif_path("base", arch, cache)
    if _fresh(sif, digest):
        return sif
    sid = ensure(pieces.SID_APPTAINER, cache=cache, log=log)
    root = ensure(pieces.bookworm(arch), cache=cache, log=log)
    with piece_lock(out_dir / f".{sif.name}.lock"):
        if _fresh(sif, digest):
            return sif
        _drop(sif)
        for stale in out_dir.glob(f"{sif.name}.building-*"):
            remove_tree(stale)
        tmp = out_dir / f"{sif.name}.building-{os.getpid()}.sif"
        start = time.monotonic()
        _say(log, f"world: packing {sif.name} from {root}")
        try:
            run_in(sid, ["apptainer", "-s", "build", "--force", "--arch", arch, str(tmp), f"{root}/"],
                   binds=[str(out_dir), str(root)], timeout=1800, env=_env(),
                   what=f"apptainer build of {sif.name}")
            tmp.rename(sif)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        write_marker(sif.with_suffix(".sif.done"), digest, seconds=round(time.monotonic() - start, 1))
        return sif


def test_sif(arch: str, *, cache: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The test image of ``arch``: Python 3.11 + the entrypoints' imports (built when stale)."""
    _check_arch(arch)
    out_dir = _images_dir(cache)
    digest, sif = test_digest(arch), sif_path("test", arch, cache)
    if _fresh(sif, digest):
        return sif
    base = base_sif(arch, cache=cache, log=log)
    sid = ensure(pieces.SID_APPTAINER, cache=cache, log=log)
    if not HOST_CA.is_file():
        raise WorldUnavailable(f"no CA bundle at {HOST_CA} to reach the Python package index from %post",
                               fix="apt-get install ca-certificates")
    with piece_lock(out_dir / f".{sif.name}.lock"):
        if _fresh(sif, digest):
            return sif
        _drop(sif)
        for stale in out_dir.glob(f"{sif.name}.building-*"):
            remove_tree(stale)
        name, uid = pieces.BUILDER
        work = out_dir / f"{sif.name}.building-{os.getpid()}"
        remove_tree(work)
        work.mkdir()
        start = time.monotonic()
        _say(log, f"world: building {sif.name} from {DEF_FILE.name} (pip in %post; minutes under qemu)")
        try:
            if _same_fs(base, work):
                os.link(base, work / "base.sif")
            else:
                shutil.copy2(base, work / "base.sif")
            shutil.copy2(DEF_FILE, work / "test-image.def")
            os.chown(work, uid, uid)
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                    "env", "HOME=/tmp", f"USER={name}", "APPTAINER_CACHEDIR=/tmp/apptainer-cache",
                    "APPTAINER_TMPDIR=/tmp", "apptainer", "-s", "build", "--userns", "--arch", arch,
                    "--bind", f"{CA_IN_ROOT}:/etc/ssl/certs/ca-certificates.crt",
                    "test.sif", "test-image.def"]
            run_in(sid, argv, binds=[str(work)], ro_binds=[f"{HOST_CA}:{CA_IN_ROOT}"], cwd=work,
                   timeout=2400, env=_env(), what=f"apptainer build of {sif.name}")
            built = work / "test.sif"
            os.chown(built, 0, 0)
            built.rename(sif)
        finally:
            with contextlib.suppress(Exception):
                remove_tree(work)
        write_marker(sif.with_suffix(".sif.done"), digest, seconds=round(time.monotonic() - start, 1))
        return sif


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _drop(sif: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        sif.with_suffix(".sif.done").unlink()
    with contextlib.suppress(FileNotFoundError):
        sif.unlink()


def _env() -> dict[str, str]:
    """A plain environment for builds: no caller's APPTAINER_* / proxies' leftovers."""
    keep = ("LANG", "TERM", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    return {"PATH": SYSTEM_PATH, "HOME": "/root", **{k: os.environ[k] for k in keep if k in os.environ}}
