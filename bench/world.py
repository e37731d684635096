"""Benchmark of the test world: set-up time from scratch and cached, and what one call costs.

Set-up: ``python -m tests.world build`` into a fresh, empty cache (``--from-scratch``; a temporary
``CONTAINERS_WORLD``, deleted afterwards) with each piece's build seconds from its marker, then
the same command again on the complete cache (the cost ``make test`` pays when nothing changed).

Results are appended to ``bench/results/world.txt`` (newest last), each run with its command.

Per call, side by side, median of ``--repeat``: entering the sid root with ``enter.sh``
(pivot_root in a private mount namespace) against ``chroot`` into the same root (the peer that
Apptainer refuses to run under); the real ``apptainer exec IMAGE true`` through the launcher against
that bare enter; and ``python3 -c pass`` in the arm64 image (qemu-user) against the amd64 image.

    python bench/world.py [--from-scratch] [--arch amd64 --arch arm64] [--repeat 5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from suite_core.runner import quote, run  # noqa: E402


def _timed(argv: list[str], env: dict[str, str] | None = None, timeout: float = 7200) -> float:
    t0 = time.perf_counter()
    run(argv, env=env, timeout=timeout)
    return time.perf_counter() - t0


def _median(argv: list[str], repeat: int, env: dict[str, str] | None = None) -> float:
    return statistics.median(_timed(argv, env) for _ in range(repeat))


def _pieces(cache: Path) -> list[str]:
    lines = []
    for marker in sorted([*cache.glob("roots/*.done"), *cache.glob("images/*.done")]):
        data = json.loads(marker.read_text())
        lines.append(f"  {marker.name[:-5]:<42} {data.get('seconds', '?'):>7} s")
    return lines


def setup_times(arches: list[str], from_scratch: bool) -> list[str]:
    build = [sys.executable, "-m", "tests.world", "build", *[a for arch in arches for a in ("--arch", arch)]]
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="world-bench-", dir="/var/tmp")) if from_scratch else None
    env = {**os.environ, **({"CONTAINERS_WORLD": str(tmp)} if tmp else {})}
    try:
        if tmp:
            first = _timed(build, env)
            out += [f"from scratch (empty cache, {', '.join(arches)}): {first:.0f} s  [{quote(build)}]",
                    *_pieces(tmp)]
        again = _timed(build, env)
        out.append(f"cached (nothing changed): {again:.2f} s  [{quote(build)}]")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def call_costs(repeat: int) -> list[str]:
    from tests.world import images, pieces, rootfs
    from tests.world.launcher import write_launcher

    sid = rootfs.ensure(pieces.SID_APPTAINER)
    bin_dir = Path(tempfile.mkdtemp(prefix="world-bench-bin-"))
    try:
        launcher = str(write_launcher(bin_dir, sid, [str(REPO), str(rootfs.cache_dir())]))
        amd, arm = images.test_sif("amd64"), images.test_sif("arm64")
        enter = rootfs.enter_argv(sid, ["true"])
        t_chroot = _median(["chroot", str(sid), "true"], repeat)
        t_enter = _median(enter, repeat)
        t_exec = _median([launcher, "exec", str(amd), "true"], repeat)
        t_py_amd = _median([launcher, "exec", str(amd), "python3", "-c", "pass"], repeat)
        t_py_arm = _median([launcher, "exec", str(arm), "python3", "-c", "pass"], repeat)
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)
    return [
        f"per call, median of {repeat}:",
        f"  chroot ROOT true                      {t_chroot:.3f} s",
        f"  enter.sh ROOT -- true (pivot_root)    {t_enter:.3f} s   enter/chroot = {t_enter / t_chroot:.1f}",
        f"  apptainer exec amd64.sif true         {t_exec:.3f} s   exec/enter = {t_exec / t_enter:.1f}",
        f"  apptainer exec amd64.sif python3 -c pass  {t_py_amd:.3f} s",
        f"  apptainer exec arm64.sif python3 -c pass  {t_py_arm:.3f} s   "
        f"arm64/amd64 = {t_py_arm / t_py_amd:.1f}",
    ]


def main(out_dir: Path, argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-scratch", action="store_true")
    ap.add_argument("--arch", action="append", choices=("amd64", "arm64"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv if argv is not None else [])
    arches = args.arch or ["amd64", "arm64"]
    cmd = "python bench/world.py " + " ".join(argv or [])
    load = os.getloadavg()[0]
    lines = [f"# bench/world.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()} "
             f"({platform.machine()}, {os.cpu_count()} CPUs), load {load:.1f} at start",
             f"# command: {cmd.strip()}", ""]
    lines += setup_times(arches, args.from_scratch)
    lines += ["", *call_costs(args.repeat)]
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Appended, newest last: a cached run must not erase the (rare, slow) from-scratch numbers.
    with open(out_dir / "world.txt", "a") as fh:
        fh.write(("\n" if fh.tell() else "") + text)
    print(text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    known, rest = ap.parse_known_args()
    main(Path(known.out), rest)
