"""The inputs a FlowPortal app reads, from its resolved config (``binds_ro`` / ``binds_rw``).

An input outside scratch, the repository and the model folders is invisible inside the
container ("input video ... does not exist" on every video); so each app declares which of its
keys are paths it reads (``binds_ro``, bound read-only) or writes (``binds_rw``). The launcher
binds them; ``python -m entrypoints.flowportal.binds APP [overrides]`` prints them as
``--bind`` arguments for ``python -m containers exec`` (what slurm/lib/flowportal.sh does).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from suite_core.errors import UserError


def declared(cfg: Any) -> list[tuple[str, bool]]:
    """(absolute path, read-only) for every declared, non-null path that exists, without repeats."""
    out: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for key, ro in (("binds_ro", True), ("binds_rw", False)):
        for value in cfg.get(key) or []:
            if value in (None, ""):
                continue
            p = str(Path(str(value)).expanduser().absolute())
            if p in seen or not Path(p).exists():
                continue  # Apptainer refuses a bind whose source does not exist
            seen.add(p)
            out.append((p, ro))
    return out


def bind_args(cfg: Any) -> list[str]:
    args: list[str] = []
    for p, ro in declared(cfg):
        if ":" in p or "," in p:
            raise UserError(
                f"input path '{p}' contains ':' or ','",
                where="binds",
                fix="Apptainer cannot bind such paths; rename or move the folder",
            )
        args += ["--bind", f"{p}:{p}" + (":ro" if ro else "")]
    return args


def main(argv: list[str]) -> int:
    from suite_core.config import compose

    if not argv:
        print("usage: python -m entrypoints.flowportal.binds APP [key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = compose([f"app={argv[0]}", *argv[1:]])
        args = bind_args(cfg)
    except UserError as exc:
        print(f"error: {exc.line()}", file=sys.stderr)
        return exc.code
    print("\n".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
