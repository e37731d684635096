"""The import walker lint's closure check stands on: levels, guards, relative imports, stdlib."""

from __future__ import annotations

import textwrap

from containers.closure import SourceTree, is_stdlib, scan, walk

SRC = textwrap.dedent('''
    import os
    import numpy as np
    from PIL import Image
    from . import sibling
    from .sub import thing
    try:
        import decord
    except ImportError:
        decord = None
    if importlib.util.find_spec("pai_fuser") is not None:
        import pai_fuser
    def f():
        import torch
        try:
            import flash_attn
        except Exception:
            pass
''')


def test_scan_records_level_and_guard():
    refs = {r.module: r for r in scan(SRC, "pkg.mod", "pkg/mod.py")}
    assert not refs["numpy"].function and not refs["numpy"].guarded
    assert refs["torch"].function and not refs["torch"].guarded
    assert refs["decord"].guarded and refs["pai_fuser"].guarded and refs["flash_attn"].guarded
    assert "pkg.sibling" in refs and "pkg.sub" in refs and "pkg.sub.thing" in refs
    assert refs["PIL"].where == "pkg/mod.py:4"


def test_walk_follows_first_party_and_keeps_guards():
    files = {"app/__init__.py": "", "app/main.py": "from app import helpers\nimport yaml\n",
             "app/helpers.py": ("def g():\n    import cv2\n"
                                "try:\n    from app import extra\nexcept ImportError:\n    pass\n"),
             "app/extra.py": "import IPython\n"}
    tree = SourceTree(files.get, "mem")
    c = walk(["app.main"], tree, {"app"}, python=(3, 10))
    assert set(c.required) == {"yaml", "cv2"}
    assert set(c.optional) == {"IPython"}      # reached only through a guarded import
    assert c.required["cv2"][0].where == "app/helpers.py:2"


def test_stdlib_depends_on_the_image_python():
    assert not is_stdlib("tomllib", (3, 10)) and is_stdlib("tomllib", (3, 11))
    assert is_stdlib("distutils", (3, 10)) and not is_stdlib("distutils", (3, 12))
    assert is_stdlib("json", (3, 10)) and not is_stdlib("numpy", (3, 12))
