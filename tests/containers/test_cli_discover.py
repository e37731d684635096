"""The command table is read from the source text without ast: it must agree with Python's reading."""

from __future__ import annotations

import ast
from pathlib import Path

from containers import cli


def test_text_discovery_matches_the_python_literals():
    want = {}
    for path in sorted(Path(cli.PKG_DIR).glob("cmd_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMANDS" for t in node.targets):
                for name, summary in ast.literal_eval(node.value).items():
                    want[name] = (f"containers.{path.stem}", summary)
    assert cli.discover() == want and "stage" in want
