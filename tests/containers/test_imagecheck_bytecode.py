"""imagecheck step 6: a module without its .pyc is found (a read-only SIF would compile it at every start)."""

from __future__ import annotations

import compileall

from containers.imagecheck import _missing_bytecode


def test_modules_without_byte_code_are_listed(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    for name in ("a.py", "b.py"):
        (tmp_path / "pkg" / name).write_text("X = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "stray.py").write_text("")  # never counted as a module
    total, missing = _missing_bytecode(str(tmp_path))
    assert total == 2 and sorted(m.rsplit("/", 1)[1] for m in missing) == ["a.py", "b.py"]
    assert compileall.compile_file(str(tmp_path / "pkg" / "a.py"), quiet=1)
    total, missing = _missing_bytecode(str(tmp_path))
    assert total == 2 and [m.rsplit("/", 1)[1] for m in missing] == ["b.py"]
