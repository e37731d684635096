"""A private, real Slurm cluster on loopback for tests (and ``make slurm-up`` / ``slurm-down``).

Debian's slurmctld/slurmd/munge are installed when missing (root + apt). One slurmctld, one
munged on a private socket and one slurmd per node (``MULTIPLE_SLURMD``) mimic both clusters:
``l40s_public`` (gpu:l40s), ``h200_public`` (gpu:h200), ``spark`` (gpu:gb10) and the torch
profile's CPU partition ``cpu_short``. Fake GPUs are symlinks to /dev/null (Slurm wants a
character device). Everything lives under one root folder; stopping cancels the jobs and kills
only the daemons whose pid files are there, so nothing is left running.

The ``spark`` node is an aarch64 node (an arm64 slurmd under qemu-user in the world's arm64 root,
:mod:`tests.world.armnode`) when the session collects a test marked ``arm64`` (``make slurm-up
ARM64=1`` by hand); otherwise it stays an x86 slurmd, which the x86-only tests (``--test-only``
preflights) cannot tell apart. The arm64 node sees the repository, /tmp (pytest's folders, the
Slurm root, the munge socket), the SMB-like share, the per-node "NVMe" folders and the world cache
(the Apptainer launcher's root) at the same paths as the login side; every process left in its
mount namespace is killed on stop.

Skipped with a loud reason where it cannot install; with ``CI`` set that is a failure instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from suite_core.runner import run

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "munged")
CPU_PARTITION = "cpu_short"  # the torch profile's default CPU partition name
ARM64_NODE = "spark1"  # the node that becomes aarch64 when the arm64 world piece is there
# name, partition, gres type, GPU count
NODES = (
    ("l40s1", "l40s_public", "l40s", 4),
    ("l40s2", "l40s_public", "l40s", 4),  # a second GPU node: the multi-node DDP tests
    ("h200n1", "h200_public", "h200", 4),
    ("spark1", "spark", "gb10", 1),
    ("cpu1", CPU_PARTITION, None, 0),
    ("cpu2", CPU_PARTITION, None, 0),
)
DEFAULT_ROOT = Path(os.environ.get("CONTAINERS_SLURM_ROOT", f"/tmp/containers-slurm-{os.getuid()}"))


def _sbin(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def why_unavailable() -> str | None:
    """None when a cluster can be started here, else the reason (after trying to install)."""
    if os.name != "posix" or os.getuid() != 0:
        return "the local Slurm cluster needs root (to run slurmd and munged)"
    missing = [b for b in BINARIES if not shutil.which(_sbin(b))]
    if not missing:
        return None
    if not shutil.which("apt-get"):
        return f"{', '.join(missing)} missing and no apt-get to install {' '.join(PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = run(argv, env=env, timeout=600, check=False)
    if proc.returncode != 0:
        run(["apt-get", "update"], env=env, timeout=600, check=False)
        proc = run(argv, env=env, timeout=600, check=False)
    missing = [b for b in BINARIES if not shutil.which(_sbin(b))]
    if missing:
        return f"could not install {' '.join(PACKAGES)} with apt-get: {proc.stderr.strip()[-300:]}"
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class LocalSlurm:
    """One private cluster under ``root``; ``env`` is what clients (sbatch, squeue) need."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    arm64_root: Path | None = None  # the arm64 node root: spark1 runs the arm64 slurmd in it
    arm64_unavailable: str | None = None  # why spark1 is not aarch64 when arm64 tests wanted it
    shared: Path | None = None  # the shared root (the SMB-like share), bound into the arm64 node
    _children: dict[int, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def node_local(self, node: str) -> Path:
        """The node's own "NVMe" folder (one per node; jobs find it in ``$SUITE_NODE_NVME``)."""
        return self.root / "nvme" / node

    def arm64_binds(self) -> list[str]:
        """Host paths the arm64 node sees at the same paths (recursive binds: mounts below come too)."""
        from tests.world import rootfs

        paths = {str(REPO), "/tmp", str(self.root), str(self.root / "nvme")}
        if self.shared is not None:
            paths.add(str(self.shared))
        cache = rootfs.cache_dir()
        if cache.is_dir():
            paths.add(str(cache))  # the Apptainer launcher enters the sid root from there
        # A path under another bound path comes along with it, except a mount made there later.
        return sorted(paths)

    # ---------------------------------------------------------------- set-up
    def write_config(self) -> None:
        r = self.root
        for sub in ("etc", "state", "spool", "log", "dev", "munge", "run", "nvme"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        ctl_port, *node_ports = _free_ports(1 + len(NODES))
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=suite",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctl_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge/munge.socket",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "GresTypes=gpu",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,sched_min_interval=0,bf_interval=1,batch_sched_delay=0",
            "KillWait=2",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "EnforcePartLimits=ALL",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={r}/log/jobcomp.txt",
            "MaxArraySize=1001",
            "SlurmdTimeout=300",
            "InactiveLimit=0",
            "DefMemPerCPU=1000",
            f"TaskProlog={r}/etc/task_prolog.sh",
        ]
        gres = ["AutoDetect=off"]
        parts: dict[str, list[str]] = {}
        for (name, part, gtype, count), port in zip(NODES, node_ports, strict=True):
            node = (
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=32 "
                f"RealMemory=256000 State=UNKNOWN"
            )
            if count:
                node += f" Gres=gpu:{gtype}:{count}"
                for i in range(count):
                    dev = r / "dev" / f"{name}-gpu{i}"
                    if not dev.is_symlink():
                        dev.symlink_to("/dev/null")
                files = f"{r}/dev/{name}-gpu[0-{count - 1}]" if count > 1 else f"{r}/dev/{name}-gpu0"
                gres.append(f"NodeName={name} Name=gpu Type={gtype} File={files}")
            lines.append(node)
            (r / "spool" / name).mkdir(exist_ok=True)
            self.node_local(name).mkdir(exist_ok=True)
            parts.setdefault(part, []).append(name)
        for part, names in parts.items():
            default = " Default=YES" if part == CPU_PARTITION else ""
            lines.append(f"PartitionName={part} Nodes={','.join(names)} MaxTime=INFINITE State=UP{default}")
        self.conf.write_text("\n".join(lines) + "\n")
        (r / "etc" / "gres.conf").write_text("\n".join(gres) + "\n")
        # Each task learns its node's own local folder (real clusters: the same path, another disk).
        prolog = r / "etc" / "task_prolog.sh"
        prolog.write_text(f'#!/bin/sh\necho "export SUITE_NODE_NVME={r}/nvme/$SLURMD_NODENAME"\n')
        prolog.chmod(0o755)

    def start(self, timeout: float = 60) -> LocalSlurm:
        """Start munged, slurmctld and every slurmd; return when all nodes are idle."""
        if self.running():
            return self
        self.stop()
        self.write_config()
        r = self.root
        # Foreground daemons, children of this process: stop() can reap them, so none is left as a zombie.
        self._spawn(
            "munged",
            [
                _sbin("munged"),
                "-F",
                "--force",
                f"--socket={r}/munge/munge.socket",
                f"--key-file={r}/munge/munge.key",
                f"--log-file={r}/log/munged.log",
                f"--pid-file={r}/munge/munged.pid",
                f"--seed-file={r}/munge/munge.seed",
            ],
        )
        for _ in range(50):
            if (r / "munge" / "munge.socket").exists():
                break
            time.sleep(0.05)
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-f", str(self.conf), "-c", "-i"])
        for name, *_ in NODES:
            argv = [_sbin("slurmd"), "-D", "-f", str(self.conf), "-N", name]
            if name == ARM64_NODE and self.arm64_root is not None:
                from tests.world import armnode

                argv = armnode.slurmd_argv(self.arm64_root, self.conf, name, self.arm64_binds())
                timeout += 120  # slurmd starts under emulation
            self._spawn(f"slurmd-{name}", argv)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, check=False, timeout=60).stdout
            states = dict(ln.split() for ln in out.splitlines() if ln.strip())
            if len(states) == len(NODES) and all(s in ("idle", "mix", "alloc") for s in states.values()):
                self._record_arm64_ns()
                return self
            dead = self._dead_daemon()
            if dead:  # a daemon that exited will not come back: say which, now, with its output
                self.stop()
                raise RuntimeError(f"local Slurm: {dead}")
            time.sleep(0.3)
        log = (
            (r / "log" / "slurmctld.log").read_text(errors="replace")[-1500:]
            if (r / "log" / "slurmctld.log").exists()
            else ""
        )
        self.stop()
        raise RuntimeError(f"local Slurm did not become ready in {timeout:g} s; slurmctld log tail:\n{log}")

    def _dead_daemon(self) -> str | None:
        for name, pid in self._pids():
            proc = self._children.get(pid)
            if proc is not None and proc.poll() is not None:
                daemon = name.removesuffix(".pid")
                out = self.root / "log" / f"{daemon}.stdout"
                tail = out.read_text(errors="replace").strip().splitlines()[-1:] if out.exists() else []
                return f"{daemon} exited with code {proc.returncode}" + (f": {tail[0]}" if tail else "")
        return None

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 (the daemon keeps it)
        proc = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._children[proc.pid] = proc
        (self.root / "run" / f"{name}.pid").write_text(f"{proc.pid}\n")

    def _record_arm64_ns(self) -> None:
        """Remember the arm64 node's mount namespace: stop() kills whatever is still in it."""
        if self.arm64_root is None:
            return
        from tests.world import armnode

        for name, pid in self._pids():
            ns = armnode.mount_ns(pid) if name == f"slurmd-{ARM64_NODE}.pid" else None
            if ns and ns != armnode.mount_ns(os.getpid()):
                (self.root / "run" / f"{ARM64_NODE}.mntns").write_text(ns + "\n")

    def _pids(self) -> list[tuple[str, int]]:
        out = []
        for pid_file in sorted((self.root / "run").glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                out.append((pid_file.name, int(pid_file.read_text().split()[0])))
        return out

    def _alive(self, pid: int) -> bool:
        proc = self._children.get(pid)
        if proc is not None:
            return proc.poll() is None
        return _alive(pid)

    def running(self) -> bool:
        if not self.conf.exists():
            return False
        alive = [p for _, p in self._pids() if self._alive(p)]
        return len(alive) == len(NODES) + 2

    def stop(self) -> None:
        """Cancel every job, then stop only the daemons this root started (pid files)."""
        if self.conf.exists() and shutil.which("squeue"):
            ids = self._queued()
            if ids and self.running():
                run(["scancel", *sorted(set(ids))], env=self.env, check=False, timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self._queued():
                    time.sleep(0.3)
        pids = self._pids()
        # slurmd first (it reaps its slurmstepds), then slurmctld, munged last (the others need it).
        for group in ("slurmd", "slurmctld", "munged"):
            members = [p for n, p in pids if n.startswith(group + ("-" if group == "slurmd" else ""))]
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(self._alive(p) for p in members):
                time.sleep(0.05)
        for _, pid in pids:
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        for proc in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._children.clear()
        ns_file = self.root / "run" / f"{ARM64_NODE}.mntns"
        if ns_file.exists():  # slurmstepds and job processes of the arm64 node, if any outlived it
            from tests.world import armnode

            armnode.kill_ns(ns_file.read_text().strip())
            ns_file.unlink()
        for pid_file in (self.root / "run").glob("*.pid") if (self.root / "run").is_dir() else ():
            pid_file.unlink()

    def _queued(self) -> list[str]:
        return run(["squeue", "-h", "-o", "%A"], env=self.env, check=False, timeout=10).stdout.split()

    # ---------------------------------------------------------------- helpers for tests
    def wait_drained(self, deadline: float) -> None:
        """Until no job is queued or running (a continuation may chain another), or ``deadline``."""
        while self._queued() and time.time() < deadline:
            time.sleep(0.5)

    def sbatch(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | str | None = None
    ) -> str:
        proc = run(
            ["sbatch", "--parsable", *argv],
            env={**(env or os.environ), **self._client_env()},
            cwd=cwd or REPO,
            timeout=60,
            what="sbatch",
        )
        return proc.stdout.strip().split(";")[0]

    def _client_env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _show(self, job_id: str) -> str:
        argv = ["scontrol", "-o", "show", "job", str(job_id)]
        return run(argv, env=self.env, check=False, timeout=60).stdout

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (first record; arrays: the first task)."""
        out = self._show(job_id)
        line = out.splitlines()[0] if out.strip() else ""
        fields: dict[str, str] = {}
        for tok in line.split():
            k, eq, v = tok.partition("=")
            if eq:
                fields[k] = v
        return fields

    def states(self, job_id: str) -> list[str]:
        """JobState of a job or of every task of an array job."""
        out = self._show(job_id)
        return [
            tok.split("=", 1)[1]
            for ln in out.splitlines()
            for tok in ln.split()
            if tok.startswith("JobState=")
        ]

    def wait(
        self, job_ids: list[str] | str, *, timeout: float = 60, poll: float = 0.25
    ) -> dict[str, list[str]]:
        """Poll until every job (and array task) reached a final state; return their states."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        final = {
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
            "PREEMPTED",
        }
        deadline = time.monotonic() + timeout
        while True:
            got = {i: self.states(i) for i in ids}
            if all(s and all(x in final for x in s) for s in got.values()):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished after {timeout:g} s: {got}")
            time.sleep(poll)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is not alive
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


# -------------------------------------------------------------------- pytest
try:
    import pytest
except ImportError:  # the up/down CLI runs without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster(request, tmp_path_factory):
        """A started private cluster for the whole session; stopped (no processes left) at the end.

        When the session has tests marked ``arm64``, spark1 is the aarch64 node and the SMB-like
        share is mounted first (a mount made after the node started would not reach it).
        """
        reason = why_unavailable()
        if reason:
            msg = f"LOCAL SLURM UNAVAILABLE, Slurm tests not run: {reason}"
            if os.environ.get("CI"):
                pytest.fail(msg + " (CI is set: these tests must run)")
            pytest.skip(msg)
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
        if any(item.get_closest_marker("arm64") for item in request.session.items):
            _prepare_arm64(request, cluster)
        try:
            try:
                cluster.start()
            except Exception as exc:
                if cluster.arm64_root is None:
                    raise
                # The x86 tests still get their cluster; the arm64 ones report why theirs is missing.
                cluster.arm64_unavailable = " ".join(f"the arm64 slurmd did not start: {exc}".split())[:400]
                cluster.arm64_root = None
                cluster.start()
        except Exception as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"LOCAL SLURM DID NOT START: {exc}")
        try:
            yield cluster
        finally:
            cluster.stop()

    def _prepare_arm64(request, cluster: LocalSlurm) -> None:
        """Build or reuse the arm64 node root; on failure spark1 stays x86 and says why."""
        from tests.world import armnode, rootfs, smbfs

        try:
            cluster.arm64_root = armnode.ensure()
        except rootfs.WorldUnavailable as exc:
            cluster.arm64_unavailable = exc.line()
            return
        except Exception as exc:  # a failed build (apt, copy) is reported like a missing piece
            cluster.arm64_unavailable = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
            return
        if smbfs.why_unavailable() is None:
            cluster.shared = request.getfixturevalue("smb_share").path

    @pytest.fixture
    def spark_arm64(slurm_cluster):
        """The cluster, with spark1 being the aarch64 node; a loud skip (CI: a failure) otherwise."""
        if slurm_cluster.arm64_root is None:
            msg = ("ARM64 NODE UNAVAILABLE, tests marked 'arm64' not run: "
                   f"{slurm_cluster.arm64_unavailable or 'no test marked arm64 was collected at start-up'}")
            if os.environ.get("CI"):
                pytest.fail(msg + " (CI is set: these tests must run)")
            pytest.skip(msg)
        return slurm_cluster


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.plugins.slurm_cluster", description="start/stop a private local Slurm cluster"
    )
    ap.add_argument("action", choices=("up", "down", "status"))
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--arm64", action="store_true",
                    help="make spark1 the aarch64 node (builds its root once)")
    a = ap.parse_args(argv)
    cluster = LocalSlurm(a.root)
    if a.action == "up" and a.arm64:
        from tests.world import armnode, rootfs

        try:
            cluster.arm64_root = armnode.ensure()
        except rootfs.WorldUnavailable as exc:
            print(f"error: {exc.line()}", file=sys.stderr)
            return 2
    if a.action == "up":
        reason = why_unavailable()
        if reason:
            print(f"error: {reason}; fix: run as root on a Debian/Ubuntu machine", file=sys.stderr)
            return 2
        cluster.start()
        print(f"local Slurm up: export SLURM_CONF={cluster.conf}")
        print(run(["sinfo"], env=cluster.env, check=False, timeout=60).stdout, end="")
    elif a.action == "down":
        cluster.stop()
        print("local Slurm stopped")
    else:
        print("running" if cluster.running() else "stopped")
        return 0 if cluster.running() else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
