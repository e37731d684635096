"""Start-up time of the entry points, and proof that heavy libraries load only where needed.

Measured with ``python -X importtime``: the set of top-level modules each command imports.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "paddle", "onnxruntime", "numpy", "cv2", "hydra", "omegaconf", "transformers",
         "diffusers", "matplotlib", "PIL")
COMMANDS = {
    "entrypoints --help": ["-m", "entrypoints", "--help"],
    "entrypoints doctor --help": ["-m", "entrypoints", "doctor", "--help"],
    "containers --help": ["-m", "containers", "--help"],
    "containers exec --dry-run (host)": ["-m", "containers", "exec", "flowportal-cu130", "--runtime", "host",
                                         "--dry-run", "--", "python", "-m", "entrypoints", "doctor"],
    "entrypoints doctor": ["-m", "entrypoints", "doctor"],
}


def _time(args: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, check=True)
        out.append(time.perf_counter() - t0)
    return out


def _heavy_imports(args: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, capture_output=True,
                          text=True, check=True)
    top = {ln.split("|")[-1].strip().split(".")[0] for ln in proc.stderr.splitlines() if "|" in ln}
    return sorted(h for h in HEAVY if h in top)


def main(out_dir: Path) -> None:
    lines = ["command: make bench ARGS=startup   (python -m bench startup)",
             f"machine: {platform.machine()}, {platform.python_version()}, "
             f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores",
             "", f"{'command':<36} {'median s':>9} {'min s':>7}  heavy modules imported"]
    for name, args in COMMANDS.items():
        n = 3 if name.split()[-1] == "doctor" else 7
        times = _time(args, n)
        lines.append(f"{name:<36} {statistics.median(times):>9.3f} {min(times):>7.3f}  "
                     f"{', '.join(_heavy_imports(args)) or '(none)'}")
    lines += ["", "The doctor imports onnxruntime and numpy because it runs a real ONNX inference;",
              "torch and paddle are probed only when installed (absent on this machine)."]
    (out_dir / "startup.txt").write_text("\n".join(lines) + "\n")
