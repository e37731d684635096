"""``python -m tests.world``: build, inspect or enter the test world by hand (make world / world-shell).

  build [--arch amd64 --arch arm64]   the sid Apptainer root, base and test SIFs (cached; rebuilt
                                      only when stale); both arches by default
  status                              what is cached, with the digests and build seconds
  gc                                  remove pieces of other recipe versions
  shell [--arch A] [--root NAME]      an interactive shell in the test image through the real
                                      Apptainer (or, with --root, in that cached root itself)

Exit 2 with one line when a piece cannot be built (which piece, and how to get it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from suite_core.errors import guard
from tests.world import images, pieces, rootfs
from tests.world.launcher import write_launcher

REPO = Path(__file__).resolve().parents[2]


def _build_arch(arch: str) -> str:
    start = time.monotonic()
    sif = images.test_sif(arch)
    line = f"{arch}: {sif} ready ({time.monotonic() - start:.0f} s)"
    if arch == "arm64":  # the local Slurm's aarch64 node, derived from the same arm64 root
        from tests.world import armnode

        line += f"; Slurm node root {armnode.ensure()} ready ({time.monotonic() - start:.0f} s)"
    return line


def build(arches: list[str]) -> None:
    start = time.monotonic()
    why = rootfs.ensure_suite_tools()
    if why:
        print(f"world: warning: {why}", file=sys.stderr)
    rootfs.ensure(pieces.SID_APPTAINER)
    # The arches' chains run side by side: the arm64 one is mostly emulated CPU, the amd64 one
    # mostly network, so together they take little more than the arm64 chain alone.
    with ThreadPoolExecutor(max_workers=len(arches)) as pool:
        for line in pool.map(_build_arch, arches):
            print(f"world: {line}")
    print(f"world: ready in {time.monotonic() - start:.0f} s (cache {rootfs.cache_dir()})")


def status() -> None:
    cache = rootfs.cache_dir()
    print(f"cache: {cache}")
    for entry in rootfs.describe(cache):
        print(f"root  {entry['dir']:<32} {entry.get('seconds', '?')} s  {entry.get('built', '')}")
    for marker in sorted((cache / "images").glob("*.sif.done")):
        data = json.loads(marker.read_text())
        print(f"image {marker.name[:-5]:<32} {data.get('seconds', '?')} s")


def collect_garbage() -> None:
    """Remove every cached piece this checkout's recipes do not name (old digests, leftovers)."""
    keep = [rootfs.root_path(r) for r in (pieces.SID_APPTAINER, *map(pieces.bookworm, images.ARCHES))]
    keep += [images.sif_path(kind, arch) for kind in ("base", "test") for arch in images.ARCHES]
    keep += [rootfs.root_path(r) for r in pieces.EXTRA_ROOTS]
    for p in rootfs.gc(keep):
        print(f"world: removed {p}")


def shell(arch: str, root: str | None) -> None:
    sid = rootfs.ensure(pieces.SID_APPTAINER)
    cwd = os.getcwd()
    if root:
        recipe = {r.name: r for r in (pieces.SID_APPTAINER, pieces.bookworm("amd64"),
                                      pieces.bookworm("arm64"))}.get(root)
        if recipe is None:
            raise rootfs.WorldUnavailable(f"no world root named '{root}'",
                                          fix="use sid-apptainer, bookworm-amd64 or bookworm-arm64")
        path = rootfs.ensure(recipe)
        argv = rootfs.enter_argv(path, ["/bin/bash"], binds=[str(REPO)], cwd=cwd)
    else:
        sif = images.test_sif(arch)
        bin_dir = rootfs.cache_dir() / "bin"
        launcher = write_launcher(bin_dir, sid, [str(REPO), str(rootfs.cache_dir())])
        argv = [str(launcher), "shell", "--cleanenv", "--no-home", "--bind", str(REPO), "--cwd", str(REPO),
                "--env", f"PYTHONPATH={REPO}", str(sif)]
    print(f"world: {' '.join(argv[-3:])}  (exit the shell to leave; nothing stays mounted)", file=sys.stderr)
    os.execv(argv[0], argv)


@guard
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.world", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build or reuse every world piece")
    b.add_argument("--arch", action="append", choices=images.ARCHES)
    sub.add_parser("status", help="list the cached pieces")
    sub.add_parser("gc", help="remove cached pieces of other recipe versions (make sure no run uses them)")
    s = sub.add_parser("shell", help="an interactive shell in the test image or a root")
    s.add_argument("--arch", default=rootfs.host_arch(), choices=images.ARCHES)
    s.add_argument("--root", help="enter this cached root instead (sid-apptainer, bookworm-ARCH)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.arch or list(images.ARCHES))
    elif args.cmd == "status":
        status()
    elif args.cmd == "gc":
        collect_garbage()
    else:
        shell(args.arch, args.root)


if __name__ == "__main__":
    main()
