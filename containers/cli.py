"""``python -m containers <command>``: the host toolkit's one entry point.

Commands live in ``containers/cmd_*.py``; each module declares ``COMMANDS = {name: summary}``
and defines ``configure(parser, name)`` and ``main(args) -> int`` (optionally
``parse(parser, argv)``). The table is read from the source text and a module is imported only
when its command runs, so ``--help`` needs no Hydra import and adding a command edits no
registry. Running one command reads only the ``COMMANDS`` blocks (no ``ast`` parse of every
module): ``stage`` runs at every job start and its no-op re-check is mostly start-up time. For
the same reason a module may define ``fast(name, argv) -> int | None``, tried before argparse is
even imported (argparse with its gettext look-ups is ~3 ms): it handles the plain forms a job
start uses and returns None for anything else, which then goes through argparse as usual.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

from suite_core.errors import guard

if False:  # typing only: annotations are strings
    import argparse
    from collections.abc import Sequence

PKG_DIR = os.path.dirname(os.path.realpath(__file__))


def _literal_items(text: str) -> list[tuple[str, str]]:
    """``"name": "summary",`` lines of the ``COMMANDS = {...}`` block (string scanning: no re, no ast)."""
    start = text.find("\nCOMMANDS = {")
    if start < 0:
        return []
    items = []
    for line in text[start + 1:].splitlines()[1:]:
        line = line.strip()
        if line.startswith("}"):
            break
        q = line[:1]
        if q not in ("'", '"'):
            continue
        name, sep, rest = line[1:].partition(f"{q}:")
        rest = rest.strip().rstrip(",")
        if sep and len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "'\"":
            items.append((name, rest[1:-1].replace(f"\\{rest[0]}", rest[0])))
    return items


def discover() -> dict[str, tuple[str, str]]:
    """command -> (module, summary), from the ``COMMANDS`` literal of each cmd_*.py."""
    found: dict[str, tuple[str, str]] = {}
    for fname in sorted(os.listdir(PKG_DIR)):
        if not (fname.startswith("cmd_") and fname.endswith(".py")):
            continue
        with open(os.path.join(PKG_DIR, fname), encoding="utf-8") as fh:
            text = fh.read()
        for name, summary in _literal_items(text):
            found[name] = (f"containers.{fname[:-3]}", summary)
    return found


@functools.cache
def parser_class() -> type[argparse.ArgumentParser]:
    """argparse's ArgumentParser with one-line usage errors, made on first use (argparse is imported
    only when a command line needs it)."""
    import argparse

    class _Formatter(argparse.HelpFormatter):
        """argparse's formatter with the width found without importing shutil (and bz2, lzma...).

        argparse builds a formatter for every add_argument; the default one imports shutil each
        time it is made, which is a measurable part of a no-op ``stage`` at job start.
        """

        def __init__(self, prog: str) -> None:
            try:
                columns = int(os.environ.get("COLUMNS", "0"))
                width = columns or os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                width = 80
            super().__init__(prog, width=width)

    class Parser(argparse.ArgumentParser):
        """argparse, but a usage mistake is one line and exit code 2."""

        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("formatter_class", _Formatter)
            super().__init__(*args, **kwargs)

        def error(self, message: str):  # type: ignore[override]
            print(f"error: {message} (in {self.prog}); fix: see '{self.prog} --help'", file=sys.stderr)
            raise SystemExit(2)

    return Parser


def _usage(commands: dict[str, tuple[str, str]]) -> str:
    width = max(len(n) for n in commands)
    lines = ["usage: python -m containers <command> [options]", "", "commands:"]
    lines += [f"  {n.ljust(width)}  {summary}" for n, (_, summary) in sorted(commands.items())]
    lines += ["", "Run 'python -m containers <command> --help' for a command's options."]
    return "\n".join(lines)


@guard
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = discover()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"error: unknown command '{name}'; fix: choose one of: {', '.join(sorted(commands))}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    if hasattr(module, "fast"):
        code = module.fast(name, rest)
        if code is not None:
            return int(code)
    p = parser_class()(prog=f"python -m containers {name}", description=commands[name][1])
    p.set_defaults(command=name)
    module.configure(p, name)
    args = module.parse(p, rest) if hasattr(module, "parse") else p.parse_args(rest)
    return int(module.main(args) or 0)
