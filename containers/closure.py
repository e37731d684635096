"""Which third-party modules the code running in an image imports, read with ``ast``.

Why our own walker and not deptry: deptry answers "does this *project* declare what it imports"
against one environment; we need, per image and per arch, the imports reachable from the apps
that image serves (first-party modules followed transitively, module level and inside
functions), checked against that image's lock, plus the same for a third-party checkout (the
FlowPortal fork) that is not shipped with this repository. The walk is ~100 lines of ``ast``;
the module -> distribution side comes from the wheels themselves (:mod:`containers.wheels`).

An import inside a ``try`` whose handler catches ImportError (or a broader class) is optional:
it is allowed to be missing and is listed as such.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Handlers that make an import optional (``except ImportError:`` and anything broader).
_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
# Standard-library modules that exist only from / until a Python version (sys.stdlib_module_names
# describes the running interpreter; the images run 3.10-3.12).
STDLIB_SINCE = {"tomllib": (3, 11)}
STDLIB_UNTIL = {"distutils": (3, 12), "imp": (3, 12), "asynchat": (3, 12), "asyncore": (3, 12),
                "smtpd": (3, 12)}


@dataclass(frozen=True)
class ImportRef:
    """One import statement: the absolute module it names, where, and whether it is optional."""

    module: str
    where: str          # "path:line"
    function: bool      # inside a function body (runs when that function is called)
    guarded: bool       # inside try/except ImportError

    @property
    def top(self) -> str:
        return self.module.split(".", 1)[0]


def _guarded_by(handlers: list[ast.ExceptHandler]) -> bool:
    for h in handlers:
        if h.type is None:
            return True
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        for t in types:
            name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
            if name in _GUARDS:
                return True
    return False


def _find_spec_test(test: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and (getattr(n.func, "attr", None) == "find_spec"
                                            or getattr(n.func, "id", None) == "find_spec")
               for n in ast.walk(test))


def _resolve(module: str | None, level: int, current: str, is_pkg: bool) -> str:
    """Absolute name of ``from <level dots><module> import``, relative to ``current``."""
    if level == 0:
        return module or ""
    parts = current.split(".")
    base = parts if is_pkg else parts[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


_SCANS: dict[tuple[str, str, str, bool], list[ImportRef]] = {}


def scan(source: str, modname: str, path: str, *, is_pkg: bool = False) -> list[ImportRef]:
    """Every import in ``source`` (module ``modname``), with function/guard context (memoized)."""
    key = (source, modname, path, is_pkg)
    if key not in _SCANS:
        _SCANS[key] = _scan(source, modname, path, is_pkg)
    return _SCANS[key]


_BODIES = ("body", "orelse", "finalbody")


def _scan(source: str, modname: str, path: str, is_pkg: bool) -> list[ImportRef]:
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise ValueError(f"{path}:{exc.lineno}: cannot parse: {exc.msg}") from None
    out: list[ImportRef] = []

    def record(node: ast.Import | ast.ImportFrom, in_func: bool, guarded: bool) -> None:
        where = f"{path}:{node.lineno}"
        if isinstance(node, ast.Import):
            out.extend(ImportRef(a.name, where, in_func, guarded) for a in node.names)
            return
        base = _resolve(node.module, node.level, modname, is_pkg)
        if node.level and not node.module:
            # ``from . import a, b``: each name may be a submodule
            out.extend(ImportRef(f"{base}.{a.name}", where, in_func, guarded) for a in node.names)
            return
        out.append(ImportRef(base, where, in_func, guarded))
        # ``from pkg import sub`` may import a submodule: recorded for first-party following
        out.extend(ImportRef(f"{base}.{a.name}", where, in_func, guarded) for a in node.names
                   if a.name != "*")

    def visit(stmts: list[ast.stmt], in_func: bool, guarded: bool) -> None:
        """Statements only (imports are statements): an order of magnitude fewer nodes than ast.walk."""
        for node in stmts:
            if isinstance(node, ast.Import | ast.ImportFrom):
                record(node, in_func, guarded)
            elif isinstance(node, ast.If) and _find_spec_test(node.test):
                # ``if importlib.util.find_spec("x") is not None: import x``: optional by construction
                visit(node.body, in_func, True)
                visit(node.orelse, in_func, guarded)
            elif isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)):
                visit(node.body, in_func, guarded or _guarded_by(node.handlers))
                visit(node.orelse, in_func, guarded)
                visit(node.finalbody, in_func, guarded)
                for h in node.handlers:
                    visit(h.body, in_func, guarded)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node.body, True, guarded)
            else:
                for attr in _BODIES:
                    visit(getattr(node, attr, None) or [], in_func, guarded)
                for case in getattr(node, "cases", None) or []:
                    visit(case.body, in_func, guarded)

    visit(tree.body, False, False)
    if "import_module(" in source:  # importlib.import_module("literal"): rare, so a full walk only then
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                out.append(ImportRef(node.args[0].value, f"{path}:{node.lineno}", True, False))
    return out


@dataclass
class SourceTree:
    """A tree of Python sources: a directory, or any ``read(relpath) -> text | None``."""

    read: Callable[[str], str | None]
    label: str = ""

    names: tuple[str, ...] = ()   # every file path, when known (for first_party_names)

    @classmethod
    def directory(cls, root: Path) -> SourceTree:
        def read(rel: str) -> str | None:
            p = root / rel
            return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None
        names = tuple(str(p.relative_to(root)) for p in root.rglob("*.py") if ".venv" not in p.parts)
        return cls(read, str(root), names)

    @classmethod
    def git(cls, gitdir: Path, rev: str) -> SourceTree:
        """The tree of ``rev`` in a git repository (bare or not), read with git itself.

        Files are read on demand with ``git show``: a partial mirror that lacks unrelated blobs
        (images, models) still works.
        """
        from suite_core.runner import run

        listing = run(["git", "-C", str(gitdir), "ls-tree", "-r", "--name-only", rev],
                      what=f"git ls-tree {rev}").stdout.splitlines()
        known = set(listing)

        def read(rel: str) -> str | None:
            if rel not in known:
                return None
            return run(["git", "-C", str(gitdir), "show", f"{rev}:{rel}"], what=f"git show {rel}").stdout
        return cls(read, f"{gitdir}@{rev[:12]}", tuple(listing))

    def find(self, module: str) -> tuple[str, str, bool] | None:
        """(relpath, text, is_package) of ``module`` in this tree, if it is here."""
        rel = module.replace(".", "/")
        for cand, is_pkg in ((f"{rel}.py", False), (f"{rel}/__init__.py", True)):
            text = self.read(cand)
            if text is not None:
                return cand, text, is_pkg
        return None


@dataclass
class Closure:
    """Third-party imports reachable from some roots, and the first-party modules walked."""

    required: dict[str, list[ImportRef]] = field(default_factory=dict)   # top -> refs
    optional: dict[str, list[ImportRef]] = field(default_factory=dict)
    walked: list[str] = field(default_factory=list)
    missing_first_party: list[ImportRef] = field(default_factory=list)

    def add(self, ref: ImportRef) -> None:
        (self.optional if ref.guarded else self.required).setdefault(ref.top, []).append(ref)


def is_stdlib(top: str, python: tuple[int, int]) -> bool:
    if top in STDLIB_SINCE:
        return python >= STDLIB_SINCE[top]
    if top in STDLIB_UNTIL:
        return python < STDLIB_UNTIL[top]
    return top in sys.stdlib_module_names or top == "__future__"


def walk(roots: Iterable[str], tree: SourceTree, first_party: set[str], *,
         python: tuple[int, int] = (3, 11), script_files: Iterable[str] = ()) -> Closure:
    """Follow first-party imports from ``roots`` (module names) and ``script_files`` (paths).

    Every import of a walked module counts, at module level and inside functions: a function of
    a module an app reaches may be called, and a precise call graph is not worth its cost here.
    An import guarded by ``except ImportError`` stays optional, and so does everything it leads to.
    """
    out = Closure()
    seen: set[str] = set()
    queue: list[tuple[str, bool, ImportRef | None]] = [(r, False, None) for r in roots]
    for rel in script_files:
        text = tree.read(rel)
        if text is None:
            raise ValueError(f"{tree.label}: no {rel}")
        out.walked.append(rel)
        for ref in scan(text, Path(rel).stem.replace("-", "_"), rel):
            queue.append((ref.module, ref.guarded, ref))
    while queue:
        module, guarded, via = queue.pop(0)
        top = module.split(".", 1)[0]
        if not module or is_stdlib(top, python):
            continue
        if top not in first_party:
            if via is not None:
                out.add(ImportRef(via.module, via.where, via.function, via.guarded or guarded))
            continue
        key = f"{module}|{guarded}"
        if key in seen:
            continue
        seen.add(key)
        found = tree.find(module)
        if found is None:
            # ``from pkg import name`` where name is an attribute, not a submodule: fine when
            # the package itself exists
            parent = module.rsplit(".", 1)[0]
            if via is not None and "." in module and tree.find(parent) is None:
                out.missing_first_party.append(via)
            continue
        rel, text, is_pkg = found
        if not guarded:
            out.walked.append(rel)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        for i in range(1, len(parts)):
            queue.append((".".join(parts[:i]), guarded, via))
        for ref in scan(text, module, rel, is_pkg=is_pkg):
            queue.append((ref.module, guarded or ref.guarded, ref))
    return out


def first_party_names(tree: SourceTree, base: str = "") -> set[str]:
    """Importable names next to a script in ``base`` (what ``sys.path[0]`` gives that script)."""
    names = set()
    prefix = f"{base.rstrip('/')}/" if base else ""
    for rel in tree.names:
        if not rel.endswith(".py") or not rel.startswith(prefix):
            continue
        first = rel[len(prefix):].split("/", 1)[0]
        stem = first[:-3] if first.endswith(".py") else first
        if stem.isidentifier():
            names.add(stem)
    return names


def _flags(text: str, path: str) -> list[str]:
    """Option names of every ``add_argument`` call (the same reading the flowportal app does)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(text, filename=path)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                    names.add(arg.value.lstrip("-"))
    return sorted(names)


def script_record(tree: SourceTree, script: str, *, python: tuple[int, int]) -> dict:
    """What one script of a checkout needs: its flags, what it imports, the third-party closure."""
    fp = first_party_names(tree)
    text = tree.read(script)
    if text is None:
        raise ValueError(f"{tree.label} has no {script}")
    direct = scan(text, Path(script).stem.replace("-", "_"), script)
    c = walk([], tree, fp, python=python, script_files=[script])

    def where(refs: list[ImportRef]) -> list[str]:
        return sorted({r.where for r in refs})[:3]

    # modules %test imports: what the script itself imports, unguarded, at any level, without
    # running the script (whose body parses arguments and loads weights)
    mods = []
    for r in direct:
        if r.guarded or is_stdlib(r.top, python) or r.module in mods:
            continue
        found = tree.find(r.module) if r.top in fp else None
        if r.top in fp and found is None:
            continue  # ``from pkg import name``: name is an attribute; pkg itself is listed
        mods.append(r.module)
    third = [m for m in mods if m.split(".")[0] not in fp]
    first = [m for m in mods if m.split(".")[0] in fp]
    return {"flags": _flags(text, script),
            "import_check": [*first, *sorted({m.split(".")[0] for m in third})],
            "requires": {t: where(refs) for t, refs in sorted(c.required.items())},
            "optional": {t: where(refs) for t, refs in sorted(c.optional.items())
                         if t not in c.required}}


def extract(sources: dict[str, tuple[SourceTree, str, list[str]]], *, python: tuple[int, int]) -> dict:
    """The data file for checkouts an image clones: per source its revision, per script a record."""
    out: dict = {}
    for name, (tree, rev, scripts) in sorted(sources.items()):
        out[name] = {"revision": rev,
                     "scripts": {sc: script_record(tree, sc, python=python) for sc in scripts}}
    return out
