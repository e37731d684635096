"""Run every benchmark module (or those named) and say where the results went."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    unknown = [n for n in names if not (HERE / f"{n}.py").is_file()]
    if unknown:
        print(f"error: unknown benchmark '{unknown[0]}'; fix: choose from "
              f"{', '.join(sorted(p.stem for p in HERE.glob('*.py') if not p.stem.startswith('_')))}",
              file=sys.stderr)
        return 2
    for name in names:
        t0 = time.monotonic()
        print(f"bench {name} ...", flush=True)
        importlib.import_module(f"bench.{name}").main(out)
        print(f"bench {name}: {time.monotonic() - t0:.1f} s -> {out / (name + '.txt')}", flush=True)
    return 0


sys.exit(main(sys.argv[1:]))
