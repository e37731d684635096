"""Dispatch ``python -m entrypoints <app> [--config-path DIR --config-name NAME] [overrides]``.

Two-level config: the submit side writes a job's resolved ``config.yaml`` into its job folder
and starts the app with ``--config-path <jobdir> --config-name config``; a bare run composes
``hydra_conf/`` with ``app=<name>`` plus the overrides.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from entrypoints import discover


def _usage() -> str:
    APPS = discover()
    width = max(len(n) for n in APPS)
    lines = ["usage: python -m entrypoints <app> [key=value ...] [--config-path DIR --config-name NAME]",
             "", "apps:"]
    lines += [f"  {n.ljust(width)}  {s}" for n, (_, s) in APPS.items()]
    lines += ["", "Run 'python -m entrypoints <app> --help' for an app's settings;",
              "add --cfg to print the composed config and stop."]
    return "\n".join(lines)


def _app_help(name: str) -> str:
    module_name, summary = discover()[name]
    conf = Path(__file__).resolve().parent.parent / "hydra_conf" / "app" / f"{name}.yaml"
    text = [f"usage: python -m entrypoints {name} [key=value ...]", "", summary, ""]
    if conf.is_file():
        text += [f"settings ({conf.relative_to(conf.parent.parent.parent)}):",
                 *("  " + ln for ln in conf.read_text().splitlines() if ln.strip())]
    flags = _flags(module_name)
    if flags:
        text += ["", "flags:", *(f"  {f}  ->  {k[:-1]}=true" if k.endswith("?") else
                                  f"  {f} VALUE  ->  {k.removesuffix('[]')}=..." for f, k in flags.items())]
    return "\n".join(text)


def _flags(module_name: str) -> dict[str, str]:
    """An app's convenience flags (``--require a,b`` -> ``require=[a,b]``), read without import."""
    import ast

    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return {}
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FLAGS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _hydra_quote(value: str) -> str:
    """Quote a flag's value for Hydra's override grammar (commas, spaces, quotes in paths)."""
    import re

    if re.fullmatch(r"[\w./:@+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _split(argv: list[str], flags: dict[str, str]) -> tuple[list[str], str | None, str, bool]:
    overrides: list[str] = []
    config_path, config_name, show_cfg = None, "config", False
    it = iter(argv)
    for arg in it:
        key, eq, val = arg.partition("=")
        if key in flags and flags[key].endswith("?"):  # "name?" marks a boolean switch
            overrides.append(f"{flags[key][:-1]}={val.lower() if eq else 'true'}")
        elif key in ("--config-path", "--config-name", *flags):
            if not eq:
                val = next(it, None)
                if val is None:
                    _die(f"{key} needs a value")
            if key == "--config-path":
                config_path = val
            elif key == "--config-name":
                config_name = val.removesuffix(".yaml")
            else:
                target = flags[key]  # "name[]" marks a list setting
                if target.endswith("[]"):
                    items = [v.strip() for v in val.split(",") if v.strip()]
                    overrides.append(f"{target[:-2]}=[{','.join(map(_hydra_quote, items))}]")
                else:
                    overrides.append(f"{target}={_hydra_quote(val)}")
        elif arg == "--cfg":
            show_cfg = True
        elif arg.startswith("--"):
            _die(f"unknown flag '{arg}'; app settings are key=value overrides (see --help)")
        else:
            overrides.append(arg)
    return overrides, config_path, config_name, show_cfg


def _die(msg: str, code: int = 2) -> None:
    from suite_core.secrets import mask

    print(f"error: {mask(msg)}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch; a user mistake or an OS error before the app starts is one line, never a traceback."""
    from suite_core.errors import UserError, from_os_error

    try:
        return _main(argv)
    except UserError as exc:
        _die(exc.line(), exc.code)
    except OSError as exc:
        _die(from_os_error(exc).line())
    return 2


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    APPS = discover()
    if name not in APPS:
        _die(f"unknown app '{name}'; choose one of: {', '.join(APPS)}")
    if "-h" in rest or "--help" in rest:
        print(_app_help(name))
        return 0
    overrides, config_path, config_name, show_cfg = _split(rest, _flags(APPS[name][0]))
    from entrypoints.framework import launch

    return launch(name, APPS[name][0], overrides, config_path=config_path,
                  config_name=config_name, show_cfg=show_cfg)
