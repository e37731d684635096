"""Set-up cost of the aarch64 Slurm node (tests/world/armnode.py), against an x86 slurmd as the peer.

Measured: deriving the node root from a cached bookworm arm64 root (copy + apt-get install of
slurmd, slurm-client and munge under qemu-user), a private cluster's start until every node is
idle with spark1 arm64 and with spark1 x86, and a trivial job's round trip on each kind of node.
Root only (debootstrap, mounts, slurmd).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from suite_core.runner import run

N = 3


def _seed_cache(tmp: Path) -> Path:
    """A private world cache holding a hard-linked copy of the cached base root: only the
    derivation is timed, not the (much longer, emulated) debootstrap of the base."""
    from tests.world import armnode, rootfs

    base = rootfs.ensure(armnode.NODE.base)
    roots = tmp / "world" / "roots"
    roots.mkdir(parents=True)
    run(["cp", "-al", str(base), str(roots / base.name)], timeout=600)
    shutil.copy2(base.with_name(base.name + ".done"), roots / f"{base.name}.done")
    return tmp / "world"


def _cluster_start(tmp: Path, arm64_root: Path | None) -> tuple[float, float]:
    """Seconds from start() to all nodes idle, and one `uname -m` job's round trip on spark."""
    from tests.plugins.slurm_cluster import LocalSlurm

    cluster = LocalSlurm(Path(tempfile.mkdtemp(dir=tmp)), arm64_root=arm64_root)
    try:
        t0 = time.monotonic()
        cluster.start(timeout=300)
        started = time.monotonic() - t0
        out = Path(cluster.root) / "job.out"
        t0 = time.monotonic()
        jid = cluster.sbatch(["--partition=spark", "--mem=1G", f"--output={out}", "--wrap", "uname -m"])
        cluster.wait(jid, timeout=120, poll=0.05)
        round_trip = time.monotonic() - t0
        want = "aarch64" if arm64_root else "x86_64"
        assert out.read_text().strip() == want, out.read_text()
        return started, round_trip
    finally:
        cluster.stop()


def main(out_dir: Path) -> None:
    from tests.plugins.slurm_cluster import why_unavailable as slurm_missing
    from tests.world import armnode, rootfs

    missing = (os.getuid() != 0 and "needs root") or slurm_missing() or armnode.why_unavailable()
    if missing:
        raise SystemExit(f"error: {missing}; fix: run as root on Debian 12 with the test world's packages")
    lines = ["# bench/world_arm64.py, " + time.strftime("%Y-%m-%d %H:%M:%S")
             + f", {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
             "# command: python -m bench world_arm64   (make bench ARGS=world_arm64)",
             "# load average at start (1/5/15 min): {:.1f} {:.1f} {:.1f}; "
             "emulated steps slow down most under load".format(*os.getloadavg()), ""]
    with tempfile.TemporaryDirectory(prefix="bench-arm64-") as tmp_s:
        tmp = Path(tmp_s)
        cache = _seed_cache(tmp)
        base_name = rootfs.root_path(armnode.NODE.base, cache).name
        t0 = time.monotonic()
        root = armnode.ensure(cache=cache, log=lambda s: None)
        derive = time.monotonic() - t0
        lines.append(f"node root derived from the cached bookworm arm64 root (copy + apt-get install "
                     f"{' '.join(armnode.NODE.packages)}, emulated): {derive:.1f} s")
        facts = json.loads((cache / "roots" / f"{base_name}.done").read_text())
        took = f"{facts['seconds']} s" if "seconds" in facts else "not recorded in this cache's marker"
        lines.append(f"base root (debootstrap --arch=arm64, emulated second stage), from its marker: {took}")
        lines += ["", f"{'spark1 kind':<12} {'cluster start s':>16} {'uname job s':>12}  (median of {N})"]
        res = {}
        for kind, arm in (("arm64", root), ("x86", None)):
            runs = [_cluster_start(tmp, arm) for _ in range(N)]
            res[kind] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            lines.append(f"{kind:<12} {res[kind][0]:>16.2f} {res[kind][1]:>12.2f}")
        lines += ["", "ratios (arm64 node / x86 slurmd peer; > 1 means the emulated node is slower):",
                  f"  cluster start: {res['arm64'][0] / res['x86'][0]:.2f}",
                  f"  uname job round trip: {res['arm64'][1] / res['x86'][1]:.2f}"]
        subprocess.run(["sync"], check=False)
    (out_dir / "world_arm64.txt").write_text("\n".join(lines) + "\n")
