"""An aarch64 compute node for the local Slurm: an arm64 ``slurmd`` in a Debian arm64 root under qemu-user.

Why: the DGX Spark's GB10 nodes are aarch64 while its login node is x86_64, so a login-node
virtualenv or x86 program cannot run in a Spark job, and images must be arm64. An x86 slurmd
flattens that away. Here the ``spark`` node's slurmd is Debian's arm64 build, run by the kernel
through qemu-user binfmt_misc (flag F) inside the world's bookworm arm64 root, entered with
pivot_root (``tests/world/enter.sh``; not chroot: Apptainer's own namespace set-up must work there).

The node root (``pieces.SPARK_NODE``) is derived from the world's ``bookworm-arm64`` root by
copying it and apt-installing its packages inside (slurmd 22.05.8, like the host's). It is cached
next to the other roots, one folder per digest (base digest, packages, derivation steps), with a
completion marker written last; a half-built copy is deleted and rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from suite_core.markers import is_done, write_marker
from suite_core.runner import run
from tests.world import rootfs
from tests.world.pieces import SPARK_NODE

NODE = SPARK_NODE
# Daemons must not start while packages are installed: nothing may outlive the build.
POLICY_RC_D = "#!/bin/sh\n# gpu-image-suite test world: never start services in this root\nexit 101\n"


def why_unavailable() -> str | None:
    """None when the arm64 node can be built and run here, else one line naming the missing piece."""
    return rootfs.why_unavailable(NODE.base)


def _paths(cache: Path | None) -> tuple[Path, Path]:
    root = rootfs.root_path(NODE, cache)  # one folder per digest, like every world root
    return root, root.with_name(root.name + ".done")


def is_built(cache: Path | None = None) -> bool:
    root, marker = _paths(cache)
    return is_done(marker, NODE.digest()) and (root / "usr" / "sbin" / "slurmd").exists()


def ensure(*, cache: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The node root (built now when missing or half-built); raises rootfs.WorldUnavailable."""
    root, marker = _paths(cache)
    if is_built(cache):
        return root
    why = why_unavailable()
    if why:
        raise rootfs.WorldUnavailable(f"the arm64 Slurm node cannot be built: {why}")
    source = rootfs.ensure(NODE.base, cache=cache, log=log)
    base = root.parent
    with rootfs.piece_lock(base / f".{root.name}.lock"):
        if is_built(cache):
            return root
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        for stale in [root, *base.glob(f"{root.name}.building-*")]:
            rootfs.remove_tree(stale)  # half-built: never trusted (the lock says no one is building it)
        work = base / f"{root.name}.building-{os.getpid()}"
        start = time.monotonic()
        rootfs._say(log, f"world: deriving '{NODE.name}' from '{source.name}' (+ {' '.join(NODE.packages)})")
        try:
            run(["cp", "-a", "--reflink=auto", str(source), str(work)], timeout=900,
                what="copy of the arm64 root")
            _install(work)
            work.rename(root)
        except BaseException:
            with contextlib.suppress(Exception):
                rootfs.remove_tree(work)
            raise
        seconds = time.monotonic() - start
        write_marker(marker, NODE.digest(), base=NODE.base.digest(), packages=list(NODE.packages),
                     seconds=round(seconds, 1), built=time.strftime("%Y-%m-%dT%H:%M:%S"))
        rootfs._say(log, f"world: '{NODE.name}' built in {seconds:.0f} s")
        return root


def _install(work: Path) -> None:
    """apt-get install inside the copy (bump SPARK_NODE.steps when this changes)."""
    policy = work / "usr" / "sbin" / "policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    script = ("set -e; apt-get update -qq; "
              f"apt-get install -y -qq --no-install-recommends {' '.join(NODE.packages)}; "
              "apt-get clean; rm -rf /var/lib/apt/lists/*")
    proc = rootfs.run_in(work, ["/bin/sh", "-c", script], env=env, timeout=1800, check=False)
    if proc.returncode != 0 or not (work / "usr" / "sbin" / "slurmd").exists():
        said = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
        raise rootfs.WorldUnavailable(
            f"apt-get install {' '.join(NODE.packages)} in the arm64 root failed: {said}",
            fix="check the network to the Debian mirror in /etc/apt/sources*")


# ------------------------------------------------------------------ running the node
def slurmd_argv(root: Path, conf: Path, node: str, binds: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The argv that runs the arm64 ``slurmd -D -N node`` in ``root`` with ``binds`` at the same paths.

    enter.sh execs through unshare and sh into slurmd, so the started process *is* slurmd (its
    pid is the pid Slurm writes): a SIGTERM to it stops the node.
    """
    return rootfs.enter_argv(root, ["/usr/sbin/slurmd", "-D", "-f", str(conf), "-N", node],
                             binds=sorted({str(b) for b in binds}))


def mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in_ns(ns: str) -> list[int]:
    """Every process in mount namespace ``ns`` (the node's slurmd, slurmstepds and job processes)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_ns(int(entry.name)) == ns:
            out.append(int(entry.name))
    return out


def kill_ns(ns: str, grace: float = 5) -> list[int]:
    """SIGTERM, then SIGKILL, every process left in the node's namespace (never the caller's own)."""
    if ns == mount_ns(os.getpid()):
        return []
    pids = pids_in_ns(ns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pids_in_ns(ns):
            time.sleep(0.1)
        pids = pids_in_ns(ns)
        if not pids:
            break
    return pids
