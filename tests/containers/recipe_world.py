"""Build a recipe's real definition in the test world: same .def, base and lock swapped.

Used by tests/containers/test_recipe_builds.py and bench/recipes.py. The build is the real
Apptainer (the world's sid root) as the unprivileged builder user with ``--userns``, from the
world's Debian bookworm base SIF (Python 3.11), with the image's Python 3.11 x86_64 test lock;
%post downloads and installs it and %test (``containers.imagecheck``) must pass for a SIF to exist.

Built SIFs are cached in the world cache keyed by everything the build reads that decides its
outcome: the definition, the lock, the base SIF's digest, the bootstrap tools lock, the wheel facts
and the extracted checkout imports (the toolkit code the image copies is not in the key: the
cached SIF's %test ran with the code of the day it was built; a fresh build runs today's).
A failed build is remembered the same way (the last lines of its log), so a broken recipe does
not re-download hundreds of MB per test run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from containers.build import build_argv, check_build_args
from containers.lint import parse_definition
from containers.locks import TOOLS_LOCK, get_image, lock_hash
from containers.wheels import FACTS
from suite_core.errors import UserError
from suite_core.markers import fingerprint, is_done, write_marker

REPO = Path(__file__).resolve().parent.parent.parent
# where the builds see the host CA bundle (the world reaches the index through a TLS proxy)
CA_TARGET = "/etc/ssl/certs/ca-certificates.crt"
# git repositories holding the pinned FlowPortal fork / MatAnyone revisions (this machine has no
# route to their forge): one env var each, or the flowportal build is skipped with that reason
SOURCE_ENV = {"FlowPortal": "CONTAINERS_TEST_FLOWPORTAL_GIT", "MatAnyone": "CONTAINERS_TEST_MATANYONE_GIT"}


@dataclass
class Built:
    image: str
    ok: bool
    sif: Path | None
    seconds: float          # of the build that made it (cached: the original build's time)
    cached: bool
    log_tail: str


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def sources_unavailable(image: str, repo: Path = REPO) -> str | None:
    """Why the image's cloned checkouts cannot be reached here, if so."""
    spec = get_image(image, repo)
    for name in spec.sources:
        var = SOURCE_ENV.get(name)
        if not var or not os.environ.get(var):
            return (f"{image} clones {name}, which this machine cannot fetch; set {var} to a git "
                    "repository holding its pinned revision")
    return None


def build_in_world(image: str, *, repo: Path = REPO, lock: Path | None = None, tag: str = "",
                   log: Callable[[str], None] | None = None) -> Built:
    """Build ``image`` (amd64) in the world with its test lock (or ``lock``); cached by content.

    ``repo``: the tree whose definition, %files and locks are built (a test's edited copy).
    """
    from suite_core.markers import code_version
    from tests.world import pieces
    from tests.world.images import HOST_CA, _env, _images_dir, base_digest, base_sif
    from tests.world.rootfs import ensure, piece_lock, remove_tree, run_in

    spec = get_image(image, repo)
    lock = lock or spec.test_lock_path(repo)
    deffile = repo / spec.recipe
    args = parse_definition(deffile.read_text(encoding="utf-8")).arguments
    key = fingerprint({"def": _sha(deffile), "lock": _sha(lock), "base": base_digest("amd64"),
                       "tools": _sha(repo / TOOLS_LOCK), "facts": _sha(repo / FACTS),
                       "imports": _sha(repo / spec.imports) if spec.imports else None,
                       "sources": {n: args.get(str(s.get("rev_arg"))) for n, s in spec.sources.items()}})
    # a failure is remembered only for the code that failed: a fix of the %test helper retries
    fail_key = fingerprint({"build": key, "code": code_version("containers", "entrypoints", "suite_core")})
    out_dir = _images_dir(None) / "recipes"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{image}{'-' + tag if tag else ''}-{key[:12]}"
    sif, failed = out_dir / f"{stem}.sif", out_dir / f"{stem}.failed"
    marker = out_dir / f"{stem}.sif.done"
    if sif.is_file() and is_done(marker, key):
        return Built(image, True, sif, _seconds(marker), True, "")
    if is_done(failed, fail_key):
        return Built(image, False, None, _seconds(failed), True, _tail(failed))
    base = base_sif("amd64", log=log)
    sid = ensure(pieces.SID_APPTAINER, log=log)
    rel_lock = str(lock.relative_to(repo)) if lock.is_relative_to(repo) else str(lock)
    with piece_lock(out_dir / f".{stem}.lock"):
        if sif.is_file() and is_done(marker, key):
            return Built(image, True, sif, _seconds(marker), True, "")
        name, uid = pieces.BUILDER
        work = out_dir / f"build-{stem}-{os.getpid()}"
        remove_tree(work)
        work.mkdir()
        os.link(base, work / "base.sif") if base.stat().st_dev == work.stat().st_dev else \
            __import__("shutil").copy2(base, work / "base.sif")
        os.chown(work, uid, uid)
        overrides = {"BOOTSTRAP": "localimage", "BASE": str(work / "base.sif"), "LOCK": rel_lock}
        binds = [f"{HOST_CA}:{CA_TARGET}"]
        ro_binds = [f"{HOST_CA}:{HOST_CA}"]
        # a bind needs an existing mount point in the (base) image: the empty dirs Debian ships
        mount_points = iter(("/mnt", "/srv", "/media"))
        for src_name, src in spec.sources.items():
            git = Path(os.environ[SOURCE_ENV[src_name]]).resolve()
            inside = next(mount_points)
            binds.append(f"{git}:{inside}")
            ro_binds.append(f"{git}:{git}")
            overrides[f"{str(src['rev_arg']).rsplit('_REV', 1)[0]}_REPO"] = inside
        check_build_args(spec, "amd64", overrides, declared=list(args), repo=repo)
        build_args = {**overrides, "ARCH": "amd64", "LOCK_HASH": lock_hash(lock), "GIT_REV": "test-world"}
        apptainer = build_argv(apptainer="apptainer", deffile=spec.recipe, sif=str(work / "out.sif"),
                               arch="amd64", host="amd64", is_root=False, build_args=build_args,
                               userns=True, binds=binds)
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "env", "HOME=/tmp",
                f"USER={name}", "APPTAINER_CACHEDIR=/tmp/apptainer-cache", "APPTAINER_TMPDIR=/tmp",
                apptainer[0], "-s", *apptainer[1:]]
        start = time.monotonic()
        (log or print)(f"world: building {image} from {spec.recipe} with {rel_lock} (downloads its lock)")
        try:
            res = run_in(sid, argv, binds=[str(repo), str(work)], ro_binds=ro_binds, cwd=repo,
                         timeout=3600, env=_env(), check=False, what=f"apptainer build of {image}")
            seconds = round(time.monotonic() - start, 1)
            text = (res.stdout or "") + (res.stderr or "")
            if res.returncode != 0:
                write_marker(failed, fail_key, seconds=seconds, log_tail=text[-6000:])
                return Built(image, False, None, seconds, False, text[-6000:])
            os.chown(work / "out.sif", 0, 0)
            (work / "out.sif").rename(sif)
        finally:
            with contextlib.suppress(Exception):
                remove_tree(work)
        write_marker(marker, key, seconds=seconds)
        _prune(out_dir, f"{image}{'-' + tag if tag else ''}-", keep=stem)
        return Built(image, True, sif, seconds, False, text[-6000:])


def _prune(out_dir: Path, prefix: str, keep: str) -> None:
    """Older builds of the same image (other keys) only take space: the cache keeps the newest."""
    for p in out_dir.glob(f"{prefix}*"):
        rest = p.name[len(prefix):].split(".", 1)[0]
        if p.name.startswith(keep) or len(rest) != 12 or not all(c in "0123456789abcdef" for c in rest):
            continue
        with contextlib.suppress(OSError):
            p.unlink()


def check_in_world(built: Built, image: str, repo: Path = REPO) -> tuple[bool, str]:
    """Run today's ``containers.imagecheck`` in a (possibly cached) built image.

    The cached SIF's own %test ran with the code of its build day; this runs the checkout's code
    (bound and first on PYTHONPATH, as the launcher does) against the packages the image installed.
    """
    from tests.world import pieces
    from tests.world.images import _env
    from tests.world.rootfs import ensure, run_in

    assert built.sif is not None
    sid = ensure(pieces.SID_APPTAINER)
    argv = ["apptainer", "-s", "exec", "--cleanenv", "--no-home", "--bind", str(repo),
            "--env", f"PYTHONPATH={repo}", "--env", "PYTHONNOUSERSITE=1", str(built.sif),
            "python", "-m", "containers.imagecheck", image]
    res = run_in(sid, argv, binds=[str(repo), str(built.sif.parent)], cwd="/", env=_env(), check=False,
                 timeout=900, what=f"imagecheck in {built.sif.name}")
    return res.returncode == 0, (res.stdout or "") + (res.stderr or "")


def _seconds(marker: Path) -> float:
    import json

    try:
        return float(json.loads(marker.read_text(encoding="utf-8")).get("seconds", 0))
    except (OSError, ValueError):
        return 0.0


def _tail(marker: Path) -> str:
    import json

    try:
        return str(json.loads(marker.read_text(encoding="utf-8")).get("log_tail", ""))
    except (OSError, ValueError):
        return ""


def world_unavailable() -> str | None:
    """Why the world cannot build here (no root, no user namespaces, ...), if so."""
    try:
        from tests.world.rootfs import why_unavailable
    except ImportError as exc:
        return f"the test world is not in this checkout ({exc})"
    return why_unavailable()


__all__ = ["Built", "UserError", "build_in_world", "check_in_world", "sources_unavailable",
           "world_unavailable"]
