"""Which FlowPortal checkout we drive: the flags its scripts really accept, read with ``ast``.

The fork (openhe-hub/MyFlowPortal) adds speed flags that upstream (gaowenshuo/FlowPortal)
lacks; passing one of them to upstream makes argparse exit after the job already started
(and after the models were staged). Reading ``add_argument`` names from the scripts lets us
refuse such a flag before anything runs, whichever revision the image carries.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from suite_core.errors import UserError

# script key -> path inside the checkout
SCRIPTS = {
    "preprocess": "run-preprocess-flow-portal.py",
    "matanyone": "pretrained_models/MatAnyone/inference_matanyone.py",
    "iclight_fc": "run-iclight-fc.py",
    "iclight_fbc": "run-iclight-fbc.py",
    "flowportal": "run-flow-portal.py",
}

# Flags only the fork has (workloads.md); upstream behaves as the fork's defaults for them.
FORK_ONLY = {
    "preprocess": {"edge_mode": "combined"},
    "iclight_fc": {"highres_denoise": 0.5},
    "flowportal": {
        "num_inference_steps": 50,
        "sampler_name": "Flow",
        "enable_teacache": False,
        "teacache_threshold": None,
        "cfg_skip_ratio": 0.0,
    },
}


def argparse_flags(path: Path) -> set[str]:
    """Long and short option names (without dashes) of every ``add_argument`` call in a script."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise UserError(
            f"cannot parse {path.name}: {exc.msg} at line {exc.lineno}",
            where=str(path),
            fix="point flowportal.checkout at an intact FlowPortal checkout",
        ) from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                    names.add(arg.value.lstrip("-"))
    return names


@dataclass(frozen=True)
class Checkout:
    """A FlowPortal checkout: its root, flavor (fork/upstream) and the flags per script."""

    root: Path
    flavor: str
    flags: dict[str, set[str]]

    def script(self, key: str) -> Path:
        return self.root / SCRIPTS[key]

    def accepts(self, key: str, flag: str) -> bool:
        return flag in self.flags.get(key, set())


def detect_flavor(flags: dict[str, set[str]]) -> str:
    """``fork`` when every fork-only flag is present, ``upstream`` when none is, else ``mixed``."""
    present = [f in flags.get(k, set()) for k, fs in FORK_ONLY.items() for f in fs]
    if all(present):
        return "fork"
    if not any(present):
        return "upstream"
    return "mixed"


def load(root: str | Path, *, flavor: str = "auto", need_fbc: bool = False) -> Checkout:
    """Read the checkout; refuse a missing one, a missing script, or a flavor other than configured."""
    root = Path(str(root))
    if not root.is_dir():
        raise UserError(
            f"FlowPortal checkout {root} does not exist",
            where="flowportal.checkout",
            fix="pass flowportal.checkout=/path/to/MyFlowPortal (or the image's pinned copy)",
        )
    flags: dict[str, set[str]] = {}
    for key, rel in SCRIPTS.items():
        path = root / rel
        if not path.is_file():
            if key == "iclight_fbc" and not need_fbc:
                continue
            raise UserError(
                f"FlowPortal checkout {root} has no {rel}",
                where="flowportal.checkout",
                fix="use a complete FlowPortal checkout (clone with its MatAnyone folder)",
            )
        flags[key] = argparse_flags(path)
    found = detect_flavor(flags)
    wanted = str(flavor or "auto")
    if wanted not in ("auto", "fork", "upstream"):
        raise UserError(f"unknown flowportal.flavor '{wanted}'", fix="use auto, fork or upstream")
    if found == "mixed":
        missing = sorted(
            f"{k}:--{f}" for k, fs in FORK_ONLY.items() for f in fs if f not in flags.get(k, set())
        )
        raise UserError(
            f"FlowPortal checkout {root} is neither the fork nor upstream (lacks {', '.join(missing[:4])})",
            where="flowportal.checkout",
            fix="update the checkout to the fork's HEAD or use upstream as released",
        )
    if wanted != "auto" and wanted != found:
        raise UserError(
            f"flowportal.flavor={wanted} but the checkout at {root} is {found}",
            where="flowportal.checkout",
            fix=f"set flowportal.flavor={found}, or point flowportal.checkout at a {wanted} checkout",
        )
    return Checkout(root, found, flags)
