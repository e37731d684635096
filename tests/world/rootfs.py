"""Cached Debian root filesystems for the test world, and a way to run commands inside them.

Why: the tests need programs this host cannot run directly (Debian sid's Apptainer, built for a
newer glibc; an aarch64 userland under qemu-user). Each is a debootstrapped root, built once per
machine and cached outside the checkout (CI clones afresh; a cache inside the clone would be lost).

API (everything a caller needs; raises :class:`WorldUnavailable` with one line when it cannot):

- ``Recipe(name, suite, arch="amd64", variant="minbase", include=(), sif_ready=False,
  users=(), edits=())``: what a root is. ``digest()`` hashes every field plus :data:`STEPS_VERSION`, so a
  changed recipe (or changed build steps) means a different root.
- ``ensure(recipe, *, cache=None, log=None) -> Path``: the root's directory
  (``roots/NAME.DIGEST12``), built when missing or half-built. A root counts as built only when
  its completion marker (written last, after the build directory was renamed into place) holds the
  recipe's digest; anything else at that path is deleted and rebuilt (never trusted). A changed
  recipe is a new digest, hence a new folder: checkouts at different commits sharing the cache
  never delete each other's roots. Concurrent callers wait on one lock per root.
- ``gc(keep, *, cache=None)``: delete every cached root/image named ``NAME.DIGEST12...`` not in
  ``keep`` (other folders in the cache are left alone).
- ``why_unavailable(recipe) -> str | None``: None when ``ensure`` can work here (root, debootstrap,
  qemu-user binfmt for a foreign arch; installs the Debian packages with apt-get when it can).
- ``enter_argv(root, argv, *, binds=(), ro_binds=(), cwd=None) -> list[str]``: the argv that
  runs ``argv`` inside ``root`` with pivot_root in a private mount namespace (see ``enter.sh``):
  ``binds`` are host paths (``"SRC"`` or ``"SRC:DST"``) mounted at the same (or the given) path.
- ``run_in(root, argv, *, binds=(), ro_binds=(), cwd=None, **kw)``: ``enter_argv`` run through
  :func:`suite_core.runner.run` (``kw`` goes to it: env, timeout, check, capture, input, what).
- ``cache_dir() -> Path``: ``$CONTAINERS_WORLD`` if set, else ``/var/cache/gpu-image-suite/world``
  for root and ``${XDG_CACHE_HOME:-~/.cache}/gpu-image-suite/world`` for anyone else.
- ``host_mirror() -> str | None``: the Debian archive URI of this machine's apt sources (read at
  run time, so no mirror host is written in the project); None lets debootstrap use its default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from suite_core.errors import UserError
from suite_core.markers import fingerprint, is_done, write_marker
from suite_core.rundir import writer_lock
from suite_core.runner import Result, run

ENTER_SH = Path(__file__).resolve().parent / "enter.sh"
WORLD_ENV = "CONTAINERS_WORLD"
STEPS_VERSION = 1  # bump when the build steps below change what a root contains
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_PACKAGES = {"debootstrap": "debootstrap", "unshare": "util-linux", "mount": "mount"}
FOREIGN_PACKAGES = ("qemu-user-static", "binfmt-support")
QEMU_BINFMT = {"arm64": "qemu-aarch64", "armhf": "qemu-arm", "ppc64el": "qemu-ppc64le",
               "riscv64": "qemu-riscv64", "s390x": "qemu-s390x"}
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class WorldUnavailable(UserError):
    """A world piece cannot be built here; the message names the piece and how to get it."""


@dataclass(frozen=True)
class Recipe:
    """One cached root: ``debootstrap --arch ARCH --variant VARIANT --include ... SUITE``.

    ``sif_ready`` removes the device nodes debootstrap leaves in /dev and gives every file to
    root:root: a SIF used as the base of an unprivileged ``--userns`` build must have neither
    (the user namespace maps one uid; unsquashfs fails on the shadow/utmp/staff groups).
    ``users`` are ``(name, uid)`` pairs added to /etc/passwd (a builder needs a name inside).
    ``edits`` are ``(path in the root, old line, new line)``: a build fails when ``old`` is absent
    (a package that changed its default must not pass silently).
    A built root is shared and must stay as built: a root with other packages is another Recipe.
    """

    name: str
    suite: str
    arch: str = "amd64"
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    sif_ready: bool = False
    users: tuple[tuple[str, int], ...] = field(default=())
    edits: tuple[tuple[str, str, str], ...] = field(default=())

    def digest(self) -> str:
        return fingerprint({"recipe": asdict(self), "steps": STEPS_VERSION})


def cache_dir() -> Path:
    """Where the world lives: machine-wide for root, per user otherwise; ``$CONTAINERS_WORLD`` wins."""
    if os.environ.get(WORLD_ENV):
        return Path(os.environ[WORLD_ENV]).expanduser().resolve()
    if os.getuid() == 0:
        return Path("/var/cache/gpu-image-suite/world")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpu-image-suite" / "world"


def host_arch() -> str:
    return DEBIAN_ARCH.get(platform.machine(), platform.machine())


def host_mirror(sources: Iterable[Path] | None = None) -> str | None:
    """The first Debian archive URI (``.../debian``) in this machine's apt sources."""
    if sources is None:
        d = Path("/etc/apt")
        sources = [d / "sources.list", *sorted((d / "sources.list.d").glob("*.list")),
                   *sorted((d / "sources.list.d").glob("*.sources"))]
    for path in sources:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = (re.match(r"URIs:\s*(\S+)", line) if path.suffix == ".sources"
                 else re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s", line + " "))
            if m and m.group(1).rstrip("/").endswith("/debian"):
                return m.group(1).rstrip("/")
    return None


# ------------------------------------------------------------------ host prerequisites
def _apt_install(packages: Sequence[str]) -> str | None:
    """Install Debian packages when root with apt-get; None on success, else the reason."""
    if os.getuid() != 0:
        return "not root (cannot apt-get install)"
    if not shutil.which("apt-get"):
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SYSTEM_PATH}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    proc = run(argv, env=env, timeout=900, check=False)
    if proc.returncode != 0:
        run(["apt-get", "update", "-qq"], env=env, timeout=900, check=False)
        proc = run(argv, env=env, timeout=900, check=False)
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"apt-get install {' '.join(packages)} failed: {said}"
    return None


def _which(prog: str) -> str | None:
    return shutil.which(prog) or shutil.which(prog, path=SYSTEM_PATH)


def binfmt_ready(arch: str) -> bool:
    entry = Path("/proc/sys/fs/binfmt_misc") / QEMU_BINFMT.get(arch, f"qemu-{arch}")
    try:
        text = entry.read_text()
    except OSError:
        return False
    return text.startswith("enabled") and re.search(r"^flags:.*F", text, re.M) is not None


def _ensure_binfmt(arch: str) -> str | None:
    if binfmt_ready(arch):
        return None
    name = QEMU_BINFMT.get(arch)
    if not name:
        return f"no qemu-user binfmt known for arch {arch}"
    if not Path("/proc/sys/fs/binfmt_misc/status").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], check=False)
    if not Path("/proc/sys/fs/binfmt_misc/status").exists():
        return ("binfmt_misc is not mounted and cannot be (kernel without CONFIG_BINFMT_MISC?); "
                "fix: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc")
    if not _which("update-binfmts") or not Path(f"/usr/libexec/qemu-binfmt/{arch}-binfmt-P").exists():
        why = _apt_install(FOREIGN_PACKAGES)
        if why:
            return f"qemu-user binfmt for {arch} missing and {why}"
    run([_which("update-binfmts") or "update-binfmts", "--enable", name], check=False)
    if not binfmt_ready(arch):
        return (f"binfmt_misc entry {name} is not enabled with flag F; "
                f"fix: apt-get install {' '.join(FOREIGN_PACKAGES)} && update-binfmts --enable {name}")
    return None


# Programs the suite needs on the host besides the roots (make test installs them when root).
SUITE_TOOLS = {"siftool": "siftool", "mksquashfs": "squashfs-tools", "shellcheck": "shellcheck"}


def ensure_suite_tools() -> str | None:
    """apt-get install the suite's host programs that are missing; None when all are there."""
    missing = sorted({pkg for prog, pkg in SUITE_TOOLS.items() if not _which(prog)})
    if not missing:
        return None
    why = _apt_install(missing)
    return f"{' '.join(missing)} missing and {why}" if why else None


def why_unavailable(recipe: Recipe | None = None) -> str | None:
    """None when roots (of ``recipe``'s arch) can be built and entered here, else one line why."""
    if os.name != "posix" or os.getuid() != 0:
        return "the test world needs root (debootstrap, mounts in a private namespace); fix: run as root"
    missing = sorted({pkg for prog, pkg in HOST_PACKAGES.items() if not _which(prog)})
    if missing:
        why = _apt_install(missing)
        if why:
            return f"{' '.join(missing)} missing and {why}"
    if recipe is not None and recipe.arch != host_arch():
        return _ensure_binfmt(recipe.arch)
    return None


# ------------------------------------------------------------------ building
def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this namespace (never delete through one)."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == str(path) or mnt.startswith(prefix):
                found.append(mnt)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to descend into anything mounted below ``path``."""
    if not path.exists() and not path.is_symlink():
        return
    mounted = _mounts_under(path)
    if mounted:
        raise WorldUnavailable(f"cannot delete the stale world piece {path}: {mounted[0]} is mounted there",
                               fix=f"umount -R {mounted[0]} and retry")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def piece_lock(lock_dir: Path, wait_s: float = 3600) -> Iterator[None]:
    """Wait for (then hold) the one-builder lock of a world piece (suite_core.rundir.writer_lock)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with writer_lock(lock_dir):
                yield
                return
        except UserError as exc:
            if "being written" not in exc.what or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _say(log: Callable[[str], None] | None, text: str) -> None:
    (log or (lambda s: print(s, file=sys.stderr, flush=True)))(text)


def root_path(recipe: Recipe, cache: Path | None = None) -> Path:
    """Where ``recipe``'s root lives: one folder per recipe digest.

    Why per digest: two checkouts at different commits (a helper's branch, CI's fresh clone) may
    use one machine-wide cache at once; with one folder per name, each would delete the root the
    other is running in. Older digests stay until ``gc`` removes them.
    """
    return (cache or cache_dir()) / "roots" / f"{recipe.name}.{recipe.digest()[:12]}"


def ensure(recipe: Recipe, *, cache: Path | None = None,
           log: Callable[[str], None] | None = None) -> Path:
    """The built root of ``recipe`` (built now when missing or half-built)."""
    root = root_path(recipe, cache)
    base, marker = root.parent, root.with_name(root.name + ".done")
    digest = recipe.digest()
    if is_done(marker, digest) and (root / "bin" / "sh").exists():
        return root
    why = why_unavailable(recipe)
    if why:
        raise WorldUnavailable(f"root filesystem '{recipe.name}' cannot be built: {why}")
    base.mkdir(parents=True, exist_ok=True)
    with piece_lock(base / f".{root.name}.lock"):
        if is_done(marker, digest) and (root / "bin" / "sh").exists():
            return root
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()  # from here on the old root is not vouched for
        for stale in [root, *base.glob(f"{root.name}.building-*")]:
            remove_tree(stale)  # half-built: never trusted (the lock says no one is building it)
        work = base / f"{root.name}.building-{os.getpid()}"
        start = time.monotonic()
        _say(log, f"world: building root '{recipe.name}' ({recipe.suite}/{recipe.arch}) in {root}")
        try:
            _debootstrap(recipe, work)
            _finish(recipe, work)
            work.rename(root)
        except BaseException:
            with contextlib.suppress(Exception):
                remove_tree(work)
            raise
        seconds = time.monotonic() - start
        write_marker(marker, digest, recipe=asdict(recipe), seconds=round(seconds, 1),
                     built=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _say(log, f"world: root '{recipe.name}' built in {seconds:.0f} s")
        return root


def gc(keep: Iterable[Path], cache: Path | None = None) -> list[Path]:
    """Delete cached roots and images not in ``keep`` (other digests, leftovers); returns them."""
    cache = cache or cache_dir()
    keep_names = {p.name for p in keep} | {p.name + ".done" for p in keep}
    ours = re.compile(r"^[\w.-]+\.[0-9a-f]{12}(\.sif)?(\.done|\.building-[\w-]+(\.sif)?)?$")
    removed = []
    for sub in ("roots", "images"):
        for p in sorted((cache / sub).glob("*")):
            if p.name.split(".building-")[0] in keep_names or not ours.match(p.name):
                continue  # kept (or being built now), or not named the way ensure()/images name them
            remove_tree(p)
            removed.append(p)
    return removed


def _debootstrap(recipe: Recipe, work: Path) -> None:
    argv = [_which("debootstrap") or "debootstrap", f"--arch={recipe.arch}", f"--variant={recipe.variant}"]
    if recipe.include:
        argv.append(f"--include={','.join(recipe.include)}")
    argv += [recipe.suite, str(work)]
    mirror = host_mirror()
    if mirror:
        argv.append(mirror)
    env = {**os.environ, "PATH": SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive"}
    proc = run(argv, env=env, timeout=3600, check=False)
    if proc.returncode != 0:
        log = work / "debootstrap" / "debootstrap.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        said = (tail or proc.stderr.strip().splitlines() or ["?"])[-1]
        raise WorldUnavailable(f"debootstrap of '{recipe.name}' ({recipe.suite}/{recipe.arch}) "
                               f"failed: {said}",
                               fix="check the network to the Debian mirror in /etc/apt/sources*")


def _finish(recipe: Recipe, work: Path) -> None:
    """Trim caches, add users, make it SIF-ready: the steps STEPS_VERSION covers."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (work / sub).glob("*"):
            if p.is_file():
                p.unlink()
    passwd, group = work / "etc" / "passwd", work / "etc" / "group"
    for name, uid in recipe.users:
        with passwd.open("a") as fh:
            fh.write(f"{name}:x:{uid}:{uid}::/tmp:/bin/sh\n")
        with group.open("a") as fh:
            fh.write(f"{name}:x:{uid}:\n")
    for rel, old, new in recipe.edits:
        target = work / rel.lstrip("/")
        text = target.read_text() if target.is_file() else ""
        if old not in text.splitlines():
            raise WorldUnavailable(f"recipe '{recipe.name}': line {old!r} not found in {rel}",
                                   fix="update the recipe's edits in tests/world/pieces.py")
        target.write_text("\n".join(new if ln == old else ln for ln in text.splitlines()) + "\n")
    if recipe.sif_ready:
        for p in (work / "dev").rglob("*"):
            if not p.is_dir() and not p.is_file() and not p.is_symlink():
                p.unlink()  # character/block devices, fifos
        for dirpath, dirnames, filenames in os.walk(work):
            for n in (*dirnames, *filenames):
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if st.st_uid or st.st_gid:
                    mode = st.st_mode
                    os.lchown(p, 0, 0)
                    if not os.path.islink(p):
                        os.chmod(p, mode & 0o7777)  # chown clears setgid/setuid: keep the mode
    (work / ".oldroot").mkdir(exist_ok=True)


# ------------------------------------------------------------------ entering
def _bind_spec(b: str | os.PathLike[str]) -> str:
    return str(b)


def enter_argv(root: str | os.PathLike[str], argv: Sequence[str | os.PathLike[str]], *,
               binds: Iterable[str | os.PathLike[str]] = (),
               ro_binds: Iterable[str | os.PathLike[str]] = (),
               cwd: str | os.PathLike[str] | None = None) -> list[str]:
    """argv that runs ``argv`` inside ``root`` (pivot_root, private mount namespace)."""
    out = ["/bin/sh", str(ENTER_SH), str(root)]
    for b in binds:
        out += ["--bind", _bind_spec(b)]
    for b in ro_binds:
        out += ["--ro-bind", _bind_spec(b)]
    if cwd is not None:
        out += ["--cwd", str(cwd)]
    return [*out, "--", *(str(a) for a in argv)]


def run_in(root: str | os.PathLike[str], argv: Sequence[str | os.PathLike[str]], *,
           binds: Iterable[str | os.PathLike[str]] = (), ro_binds: Iterable[str | os.PathLike[str]] = (),
           cwd: str | os.PathLike[str] | None = None, **kw) -> Result:
    """Run ``argv`` inside ``root`` through suite_core.runner.run; ``kw`` goes to it."""
    kw.setdefault("what", f"{Path(str(argv[0])).name} in the world root {Path(root).name}")
    return run(enter_argv(root, argv, binds=binds, ro_binds=ro_binds, cwd=cwd), **kw)


def describe(cache: Path | None = None) -> list[dict]:
    """Every cached root with its marker (for ``python -m tests.world status``)."""
    base = (cache or cache_dir()) / "roots"
    out = []
    for marker in sorted(base.glob("*.done")):
        try:
            out.append({"dir": marker.name[:-5], **json.loads(marker.read_text())})
        except (OSError, ValueError):
            out.append({"dir": marker.name[:-5], "broken": True})
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
