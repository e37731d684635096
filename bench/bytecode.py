"""Python start-up inside a built image, with the byte code the recipes now compile vs without it.

A SIF is read-only: a module without its ``.pyc`` in the image is compiled again at every Python
start (staging, each app, every rank). The recipes now compile ``/opt/venv`` (uv
``UV_COMPILE_BYTECODE=1``) and ``/opt/suite`` (compileall); before, only the distribution's own
standard library had byte code. Measured in each test-world recipe SIF (real Apptainer, the
image's Python 3.11 test lock): the seconds to import what a step imports, in the image as built,
side by side with the same image whose ``/opt/venv`` and ``/opt/suite`` byte code is removed in a
``--writable-tmpfs`` overlay (the state the recipes built before). Median of 7, alternating.

Run: ``make bench ARGS=bytecode`` (results in bench/results/bytecode.txt with the command).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# what a step of each image imports at start (its app module and the toolkit)
IMPORTS = {
    "mineru-dell-py310": "hydra, omegaconf, numpy, onnxruntime, cv2, PIL.Image, containers.launch, "
    "entrypoints.newsbag.fusion, entrypoints.newsbag.sources.dell",
    "paddle-py312": "hydra, omegaconf, numpy, cv2, PIL.Image, containers.launch, entrypoints.newsbag.fusion",
    "flowportal-cu130": "hydra, omegaconf, numpy, cv2, PIL.Image, containers.launch, "
    "entrypoints.flowportal.batch",
}
REPEAT = 7


def _seconds(sif: Path, modules: str, strip: bool) -> float:
    from tests.world import pieces
    from tests.world.images import _env
    from tests.world.rootfs import ensure, run_in

    code = (f"import time; t = time.perf_counter(); import {modules}; "
            "print(round(time.perf_counter() - t, 4))")
    pre = "find /opt/venv /opt/suite -name __pycache__ -prune -exec rm -rf {} +" if strip else "true"
    argv = ["apptainer", "-s", "exec", "--cleanenv", "--no-home", "--writable-tmpfs",
            "--env", "PYTHONDONTWRITEBYTECODE=1", str(sif), "sh", "-c", f'{pre}; python -c "{code}"']
    res = run_in(ensure(pieces.SID_APPTAINER), argv, binds=[str(sif.parent)], cwd="/", env=_env(),
                 timeout=600, what=f"imports in {sif.name}")
    return float(res.stdout.strip().splitlines()[-1])


def main(out_dir: Path) -> None:
    sys.path.insert(0, str(REPO))
    from tests.containers.recipe_world import build_in_world, sources_unavailable, world_unavailable

    lines = ["command: make bench ARGS=bytecode   (python -m bench bytecode)",
             f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average at start "
             f"{os.getloadavg()[0]:.1f}", "",
             "seconds to import a step's modules inside the image (median of 7, alternating):",
             f"  {'image':<20} {'as built':>9} {'no .pyc':>9}  saved per Python start"]
    why = world_unavailable()
    if why:
        lines.append(f"  (not run: {why})")
    for image, modules in IMPORTS.items():
        if why:
            break
        gone = sources_unavailable(image)
        if gone:
            lines.append(f"  {image:<20} not run ({gone})")
            continue
        built = build_in_world(image)
        if not built.ok or built.sif is None:
            lines.append(f"  {image:<20} not run (its test build failed)")
            continue
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(REPEAT):
            for strip in (False, True):
                runs[strip].append(_seconds(built.sif, modules, strip))
        have, without = statistics.median(runs[False]), statistics.median(runs[True])
        lines.append(f"  {image:<20} {have:>8.2f}s {without:>8.2f}s  {without - have:.2f} s "
                     f"({without / have:.2f}x)")
    lines += ["", "modules: " + "; ".join(f"{k}: {v}" for k, v in IMPORTS.items()),
              "torch (left out of the test locks) has ~2,000 modules more: the production images gain more."]
    (out_dir / "bytecode.txt").write_text("\n".join(lines) + "\n")
