"""Render and run ``apptainer build`` for one image and arch; decide where an arm64 build runs.

Each choice here answers a failure people hit: ``--fakeroot`` because login and GPU nodes give
no root; APPTAINER_TMPDIR/CACHEDIR on node-local disk because builds on NFS, SMB or Lustre fail
with chown/xattr errors or stall; a foreign-arch build goes to a native node through Slurm
(an emulated torch install takes hours) and uses binfmt emulation only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from containers.apptainer_vocab import BUILD_FLAGS
from suite_core.arch import UNAME, normalize
from suite_core.errors import UserError

NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "lustre", "beegfs", "gpfs",
                        "fuse.sshfs", "9p"})
BINFMT = {"arm64": "/proc/sys/fs/binfmt_misc/qemu-aarch64", "amd64": "/proc/sys/fs/binfmt_misc/qemu-x86_64"}


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def fs_type(path: str | os.PathLike[str], mountinfo: str | None = None) -> tuple[str, str]:
    """(filesystem type, mount point) holding ``path``: the longest matching mount point wins.

    ``mountinfo`` is the text of /proc/self/mountinfo (passed in by tests). A path that does not
    exist yet is judged by the mount point that would hold it.
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
        except OSError:
            return "unknown", "/"
    target = os.path.abspath(os.fspath(path))
    best = ("unknown", "/")
    best_len = -1
    for line in mountinfo.splitlines():
        parts = line.split()
        if "-" not in parts or len(parts) < 7:
            continue
        sep = parts.index("-")
        mount_point = _unescape(parts[4])
        fstype = parts[sep + 1] if sep + 1 < len(parts) else "unknown"
        mp = mount_point.rstrip("/") or "/"
        if (target == mp or target.startswith(mp + "/") or mp == "/") and len(mp) >= best_len:
            best, best_len = (fstype, mp), len(mp)
    return best


def check_local_dir(var: str, path: str, mountinfo: str | None = None) -> None:
    """Refuse a build temp/cache directory on a network filesystem, in one line."""
    fstype, mp = fs_type(path, mountinfo)
    if fstype.lower() in NETWORK_FS or fstype.lower().startswith(("nfs", "fuse.s3")):
        raise UserError(f"{var}={path} is on {fstype} (mounted at {mp}); Apptainer builds there fail "
                        "with chown/xattr/permission errors or stall",
                        fix=f"point {var} at node-local disk (e.g. /tmp or the node's NVMe; "
                            "paths.node_local=...)")


def build_env(environ: Mapping[str, str], node_local: str, *, mountinfo: str | None = None) -> dict[str, str]:
    """APPTAINER_TMPDIR/CACHEDIR (the user's if set, else under node-local disk), checked."""
    env = dict(environ)
    env.setdefault("APPTAINER_TMPDIR", str(Path(node_local) / "apptainer" / "tmp"))
    env.setdefault("APPTAINER_CACHEDIR", str(Path(node_local) / "apptainer" / "cache"))
    for var in ("APPTAINER_TMPDIR", "APPTAINER_CACHEDIR"):
        check_local_dir(var, env[var], mountinfo)
    return env


def build_argv(*, apptainer: str, deffile: str, sif: str, arch: str, host: str, is_root: bool,
               build_args: Mapping[str, str], force: bool = True, userns: bool = False,
               binds: Sequence[str] = ()) -> list[str]:
    """The exact ``apptainer build`` argv; every flag is one Apptainer 1.5 has.

    ``userns``: an unprivileged build in a user namespace (no subuid/fakeroot needed; the base
    must be root-owned files only), what machines without fakeroot have.
    """
    argv = [apptainer, "build"]
    if userns:
        argv.append("--userns")
    elif not is_root:
        argv.append("--fakeroot")          # no root on login or GPU nodes
    for b in binds:
        argv += ["--bind", b]
    if normalize(arch) != normalize(host):
        argv += ["--arch", normalize(arch)]  # binfmt emulation; only where the user asked
    if force:
        argv.append("--force")             # the output is a temp name we own
    for key, value in sorted(build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    argv += [sif, deffile]
    for a in argv[2:]:
        if a.startswith("--") and a[2:] not in BUILD_FLAGS:
            raise AssertionError(f"apptainer build has no flag {a}")
    return argv


@dataclass(frozen=True)
class Route:
    """Where a build for ``arch`` runs: here natively, here emulated, or via Slurm on a native node."""

    kind: str               # native | emulate | slurm
    arch: str
    why: str
    partition: str | None = None


def decide_route(target: str, *, host: str, sbatch_available: bool, build_partition: str | None,
                 binfmt_registered: bool, emulate: bool, cluster: str = "this cluster") -> Route:
    """The build-arm64 (or build-amd64) decision matrix, as a pure function.

    Same arch -> native. Foreign arch: emulation when the user asked and binfmt is registered
    (explicit wins), else Slurm when sbatch exists and the cluster profile names a build
    partition of that arch, else one message listing the ways out.
    """
    target, host = normalize(target), normalize(host)
    if target == host:
        return Route("native", target, f"this machine is {UNAME.get(host, host)}")
    if emulate and binfmt_registered:
        return Route("emulate", target, f"EMULATE=1 and binfmt for {UNAME[target]} is registered "
                                        "(slow: hours for a torch image)")
    if sbatch_available and build_partition:
        return Route("slurm", target, f"submitting to the {target} partition {build_partition}",
                     partition=build_partition)
    options = []
    if emulate and not binfmt_registered:
        options.append(f"EMULATE=1 needs qemu binfmt for {UNAME[target]} registered "
                       f"({BINFMT[target]} is absent; e.g. apt-get install qemu-user-static)")
    if not sbatch_available:
        options.append("no sbatch here: run on a cluster login node")
    elif not build_partition:
        options.append(f"{cluster} has no {target} build partition (cluster.build.{target}.partition)")
    options.append(f"or run 'make build' on a {UNAME[target]} machine")
    if not emulate and binfmt_registered:
        options.append("or pass EMULATE=1 to emulate with binfmt (slow)")
    raise UserError(f"cannot build {target} on this {UNAME.get(host, host)} host: " + "; ".join(options),
                    fix=f"use cluster=<profile with a {target} build partition>, a native machine, "
                        "or EMULATE=1 with qemu binfmt")


def sbatch_argv(*, image: str, arch: str, partition: str, account: str | None, repo: str,
                log_dir: str, time: str = "04:00:00", cpus: int = 16, mem: str = "64G",
                extra_export: Mapping[str, str] | None = None) -> list[str]:
    """Submit slurm/build_image.sbatch so the build runs natively on an ``arch`` node."""
    export = {"CONTAINERS_REPO": repo, "BUILD_IMAGE": image, "BUILD_ARCH": arch, **(extra_export or {})}
    for k, v in export.items():
        if "," in v:
            raise UserError(f"{k}={v} contains ',' which sbatch --export cannot carry",
                            fix="use a path without commas")
    argv = ["sbatch", "--parsable", f"--partition={partition}", f"--job-name=build-{image}-{arch}",
            f"--time={time}", f"--cpus-per-task={cpus}", f"--mem={mem}",
            f"--output={log_dir}/%x_%j.out"]
    if account:
        argv.append(f"--account={account}")
    argv.append("--export=ALL," + ",".join(f"{k}={v}" for k, v in export.items()))
    argv.append(f"{repo}/slurm/build_image.sbatch")
    return argv


def binfmt_registered(arch: str, root: str = "/") -> bool:
    path = Path(root) / BINFMT[normalize(arch)].lstrip("/")
    try:
        return path.is_file() and "enabled" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def check_build_args(spec: object, arch: str, overrides: Mapping[str, str], *, declared: Sequence[str],
                     repo: Path) -> None:
    """Refuse, in one line and before anything is downloaded, a build argument that cannot work.

    Only the base and the lock may be swapped (BOOTSTRAP, BASE, LOCK) besides the definition's own
    %arguments; a localimage BASE must exist; a LOCK must be a clean lock of this image and arch.
    """
    from containers.lint import SWAPPABLE, lint_lock
    from containers.locks import read_lock

    name = getattr(spec, "name", "?")
    where = f"image {name}, {arch}"
    for key in overrides:
        if key not in declared:
            raise UserError(f"build argument {key} is not one the definition declares", where=where,
                            fix=f"use one of {', '.join(sorted(declared))}")
    bootstrap = overrides.get("BOOTSTRAP", "docker")
    base = overrides.get("BASE")
    if base is not None and bootstrap == "localimage" and not Path(base).is_file():
        raise UserError(f"build argument BASE={base} names no image file", where=where,
                        fix="build the base SIF first (the test world: tests/world) or pass an existing path")
    tag_less = base is not None and (":" not in base.rsplit("/", 1)[-1] or base.endswith(":latest"))
    if base is not None and bootstrap == "docker" and tag_less:
        raise UserError(f"build argument BASE={base} is not pinned to a tag", where=where,
                        fix="name a version tag, e.g. ubuntu:22.04")
    lock = overrides.get("LOCK")
    if lock is not None:
        path = Path(lock) if Path(lock).is_absolute() else repo / lock
        if not path.is_file():
            raise UserError(f"build argument LOCK={lock} names no file", where=where,
                            fix=f"make lock IMAGE={name} (test locks live in recipes/locks/test/)")
        header = read_lock(path).header
        if header.get("image") != name or header.get("arch") != arch:
            raise UserError(f"build argument LOCK={lock} is a lock of {header.get('image')} "
                            f"{header.get('arch')}, not of {name} {arch}", where=where,
                            fix=f"pass one of {name}'s {arch} locks")
        test = header.get("variant") == "test"
        bad = [x for x in lint_lock(path, spec, arch, repo=repo, test=test)  # type: ignore[arg-type]
               if x.severity == "error"]
        if bad:
            raise UserError(f"build argument LOCK={lock} does not lint: {bad[0].message}", where=where,
                            fix=f"make lock IMAGE={name}")
    for key in overrides:
        if key not in SWAPPABLE and key in ("ARCH", "LOCK_HASH", "GIT_REV"):
            raise UserError(f"build argument {key} is set by containers build itself", where=where,
                            fix=f"drop --build-arg {key}")
