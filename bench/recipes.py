"""Recipes: offline lint vs re-resolving the locks, publish throughput, image sizes, test builds.

Three result files:

- ``recipes.txt``: wall time of ``python -m containers lint`` (every definition, lock, import
  closure; target < 5 s warm) side by side with the peer it replaces in a review, a fresh
  ``uv pip compile`` of every lock (what ``make lock-check`` runs); and publish copy throughput
  on the temp disk (chunked, fsync, size + sha256 verified) vs plain ``shutil.copyfile``.
- ``recipes-size.txt``: each image's expected size from its lock, summed from the sizes of the
  wheels it installs (recipes/locks/wheels.json, from the index's metadata), with the CUDA
  user-space part and what a ``nvidia/cuda:*-cudnn-runtime`` base would have added again.
- ``recipes-builds.txt``: each recipe's test-world build (real Apptainer, --userns, the test
  lock): the build's wall time, the SIF's size, whether it came from the cache. With ``--fresh``
  (``make bench ARGS='recipes --fresh'`` is not supported by bench's CLI: set
  RECIPES_BENCH_FRESH=1) cached builds are dropped first so the times are of real builds.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# libraries a nvidia/cuda:*-cudnn-runtime base image ships itself (cuDNN, cuBLAS, cuFFT, ...)
CUDA_BASE_LIBS = ("nvidia-cublas", "nvidia-cudnn", "nvidia-cufft", "nvidia-curand", "nvidia-cusolver",
                  "nvidia-cusparse", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-nvjitlink",
                  "nvidia-npp", "nvidia-nvtx", "nvidia-nccl")


def _times(argv: list[str], n: int) -> list[float]:
    from suite_core.runner import run

    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(argv, cwd=REPO, what=" ".join(argv[:4]))
        out.append(time.perf_counter() - t0)
    return out


def _relock_all() -> float:
    """Peer: a fresh resolution of every lock (uv pip compile, network), into a temp dir."""
    from containers.locks import load_images, make_lock

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in load_images().values():
            (Path(tmp) / spec.lock_input).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / spec.lock_input).write_bytes((REPO / spec.lock_input).read_bytes())
            for arch in spec.arches:
                make_lock(spec, arch, repo=Path(tmp))
    return time.perf_counter() - t0


def _publish_rate(size: int) -> tuple[float, float]:
    """(MB/s of a full verified copy, MB/s of plain shutil.copyfile) on the temp disk."""
    import shutil

    from containers.publish import copy_resumable

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.bin"
        with open(src, "wb") as fh:
            for _ in range(size >> 20):
                fh.write(os.urandom(1 << 20))
        t0 = time.perf_counter()
        copy_resumable(src, Path(tmp) / "out" / "dst.sif")
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        shutil.copyfile(src, Path(tmp) / "plain.bin")
        plain = time.perf_counter() - t0
    return size / 2**20 / ours, size / 2**20 / plain


def sizes() -> list[str]:
    """Expected size per image and arch from the wheels its lock installs."""
    from containers.lint import _fits
    from containers.locks import load_images, platform_for, read_lock
    from containers.wheels import load_facts

    facts = load_facts(REPO)
    gb = 1e9
    lines = [f"{'image':<20} {'arch':<6} {'wheels':>7} {'all GB':>7} {'CUDA GB':>8} {'base-dup GB':>11}"
             "  largest"]
    for spec in load_images(REPO).values():
        targets = [(a, spec.lock_path(a, REPO), platform_for(spec, a)) for a in spec.arches]
        if spec.test_build:
            targets.append(("test", spec.test_lock_path(REPO), str(spec.test_build.get("platform"))))
        for arch, path, plat in targets:
            total = cuda = dup = 0
            count = 0
            sized: list[tuple[int, str]] = []
            for r in read_lock(path).requirements:
                cands = [facts[h] for h in r.sha256 if h in facts and _fits(facts[h]["file"], plat)]
                if not cands:
                    continue
                size = max(c["size"] for c in cands)
                count += 1
                total += size
                sized.append((size, r.name))
                if r.name.startswith(("nvidia-", "cuda-")):
                    cuda += size
                if r.name.startswith(CUDA_BASE_LIBS):
                    dup += size
            top = ", ".join(f"{n} {s / gb:.2f}" for s, n in sorted(sized, reverse=True)[:3])
            lines.append(f"{spec.name:<20} {arch:<6} {count:>7} {total / gb:>7.2f} {cuda / gb:>8.2f} "
                         f"{dup / gb:>11.2f}  {top}")
        if spec.unlocked_wheel:
            lines.append(f"{'':<20} plus {spec.unlocked_wheel['name']} {spec.unlocked_wheel.get('version')} "
                         "installed outside the lock (Paddle's own index, not reachable here: size "
                         "not counted)")
    return lines


def builds() -> list[str]:
    """The test-world builds of every recipe (cached ones report their original build time)."""
    sys.path.insert(0, str(REPO))
    from tests.containers.recipe_world import build_in_world, sources_unavailable, world_unavailable

    why = world_unavailable()
    if why:
        return [f"(not run: {why})"]
    fresh = os.environ.get("RECIPES_BENCH_FRESH") == "1"
    lines = [f"{'image':<20} {'result':<7} {'build s':>8} {'SIF MB':>7}  cache"]
    for image in ("mineru-dell-py310", "paddle-py312", "flowportal-cu130"):
        why = sources_unavailable(image)
        if why:
            lines.append(f"{image:<20} skipped  ({why})")
            continue
        if fresh:
            from tests.world.images import _images_dir

            for p in (_images_dir(None) / "recipes").glob(f"{image}-*"):
                p.unlink()
        b = build_in_world(image, log=lambda s: print(s, flush=True))
        size = f"{b.sif.stat().st_size / 1e6:7.0f}" if b.sif else "      -"
        lines.append(f"{image:<20} {'ok' if b.ok else 'FAILED':<7} {b.seconds:>8.1f} {size}  "
                     f"{'cached (time of the build that made it)' if b.cached else 'built now'}")
    return lines


def main(out_dir: Path) -> None:
    from containers.locks import load_images, read_lock

    machine = f"machine: {platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores"
    lint = [sys.executable, "-m", "containers", "lint"]
    _times(lint, 1)  # warm the page cache and the wheel facts file
    times = _times(lint, 5)
    relock = _relock_all()
    ours, plain = _publish_rate(512 << 20)
    specs = list(load_images().values())
    locks = [s.lock_path(a) for s in specs for a in s.arches] + [s.test_lock_path() for s in specs]
    packages = sum(len(read_lock(p).requirements) for p in locks)
    lines = ["command: make bench ARGS=recipes   (python -m bench recipes)", machine, "",
             f"python -m containers lint ({len(specs)} definitions, {len(locks)} locks, {packages} pinned "
             "packages, the import closure of every image on every arch), warm:",
             f"  median {statistics.median(times):.3f} s, min {min(times):.3f} s over {len(times)} runs "
             "(target: under 5 s)",
             f"peer, side by side: a fresh uv pip compile of the {sum(len(s.arches) for s in specs)} "
             f"production locks (what make lock-check runs, network): {relock:.1f} s",
             f"  ratio: lint is {relock / statistics.median(times):.0f}x faster and needs no network", "",
             "publish of a 512 MiB file on the temp disk (chunked, fsync, size + sha256 verified):",
             f"  {ours:.0f} MiB/s verified copy vs {plain:.0f} MiB/s plain shutil.copyfile",
             "  (verification reads the source and the copy once more each; on an SMB share the",
             "  network write dominates)"]
    (out_dir / "recipes.txt").write_text("\n".join(lines) + "\n")
    size_lines = ["command: make bench ARGS=recipes   (python -m bench recipes)", machine, "",
                  "Expected image size from each lock: the sum of the wheels it installs (sizes from the",
                  "index's metadata, recipes/locks/wheels.json; SIF squashfs stores them compressed about",
                  "as well as the wheels are). Plus the base OS (plain Ubuntu, not measured here).",
                  "CUDA GB: the nvidia-*/cuda-* wheels (the CUDA user space torch/ORT/paddle load).",
                  "base-dup GB: the part of those a nvidia/cuda:*-cudnn-runtime base image ships again",
                  "(cuBLAS, cuDNN, cuFFT, ...): what every SIF carried twice before the plain-OS bases.",
                  "'test' rows: the test-world locks (Python 3.11, CUDA-only packages left out).", "",
                  *sizes()]
    (out_dir / "recipes-size.txt").write_text("\n".join(size_lines) + "\n")
    build_lines = ["command: RECIPES_BENCH_FRESH=1 make bench ARGS=recipes   (python -m bench recipes; "
                   "without RECIPES_BENCH_FRESH=1 cached builds report their original time)",
                   "flowportal needs CONTAINERS_TEST_FLOWPORTAL_GIT and CONTAINERS_TEST_MATANYONE_GIT "
                   "(local git repositories holding the pinned revisions)", machine, "",
                   "Each recipe's real definition built by real Apptainer in the test world (apptainer build",
                   "--userns from the world's Debian bookworm base, the image's Python 3.11 test lock; %post",
                   "downloads and installs the lock, %test runs containers.imagecheck). Wall time includes",
                   "apt-get and the downloads, so it depends on the network and on other load.", "",
                   *builds()]
    (out_dir / "recipes-builds.txt").write_text("\n".join(build_lines) + "\n")
