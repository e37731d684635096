"""``python -m containers.imagecheck IMAGE``: what a recipe's ``%test`` runs inside the new image.

An image is only published when this passes (Apptainer runs ``%test`` before writing the SIF):

1. every third-party module the image's code imports (the same closure lint checks against the
   lock: the apps the image serves, the toolkit, and the imports extracted from checkouts the
   image clones) is installed, found without importing it; those that load system libraries
   (cv2, PIL, onnxruntime, ...) are imported too, in a fresh interpreter;
2. every app module the image serves imports, in a fresh interpreter;
3. for each cloned checkout, each stage script's own imports run in a fresh interpreter from the
   script's directory (the script itself is not run: it parses arguments and loads weights);
4. the doctor, with the capabilities the image config asks for (GPU ones only where a GPU is
   visible), which also stops on a node driver older than the image's CUDA needs;
5. image-specific production checks named with ``--check``;
6. byte code: every module of ours under /opt/suite, and all but a few of the venv's, has its
   ``.pyc``: a SIF is read-only, so a module without one is compiled again at every job start.

A test-world build installs a lock that leaves some CUDA-only packages out and says so in its
header (``# omitted: torch (why)``): anything that fails *only* because an omitted package is
absent is reported as "not checkable in this build" instead of failing; anything else fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from suite_core.errors import UserError, guard

SUITE = Path(__file__).resolve().parent.parent
LOCK = Path("/opt/suite/lock.txt")
# third-party modules whose import loads system libraries the base image must provide
NATIVE = ("cv2", "PIL", "onnxruntime", "decord", "av", "soundfile")
_CACHE_VARS = ("HF_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
               "PADDLE_PDX_CACHE_HOME", "XDG_CACHE_HOME")


def _lock_info(lock_path: Path) -> tuple[str, dict[str, str]]:
    """(variant, omitted package -> why) from the installed lock's header."""
    from containers.locks import read_lock

    if not lock_path.is_file():
        return "production", {}
    lock = read_lock(lock_path)
    omitted = {}
    for entry in lock.multi.get("omitted", []):
        name, _, why = entry.partition(" (")
        omitted[name] = why.rstrip(")")
    return lock.header.get("variant", "production"), omitted


def _omitted_modules(omitted: dict[str, str]) -> dict[str, str]:
    """Top-level module -> the omitted package that would provide it (from the wheel facts)."""
    from containers.locks import canonical
    from containers.wheels import load_facts

    out: dict[str, str] = {}
    names = {canonical(n) for n in omitted}
    for fact in load_facts(SUITE).values():
        dist = canonical(fact["file"].split("-", 1)[0])
        if dist in names:
            for m in fact["modules"]:
                out.setdefault(m.split(".", 1)[0], dist)
    for n in names:  # a package whose facts are absent: assume its module is its name
        out.setdefault(n.replace("-", "_"), n)
    return out


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.skipped: list[str] = []

    def ok(self, text: str) -> None:
        print(f"ok    {text}", flush=True)

    def fail(self, text: str) -> None:
        print(f"FAIL  {text}", flush=True)
        self.failures.append(text)

    def skip(self, text: str) -> None:
        print(f"skip  {text}", flush=True)
        self.skipped.append(text)


_IMPORTER = """
import importlib, json, sys
mods, cwd = json.loads(sys.argv[1]), sys.argv[2]
if cwd:
    sys.path.insert(0, cwd)
out = {}
for m in mods:
    try:
        importlib.import_module(m)
        out[m] = [None, None]
    except BaseException as exc:
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
        out[m] = [msg, getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None]
print(json.dumps(out))
"""


def _python_import(modules: list[str], cwd: Path | None = None) -> dict[str, tuple[str | None, str | None]]:
    """Import each of ``modules`` in one fresh interpreter (``cwd`` first on sys.path, like a
    script there): module -> (error line or None, the missing module's name if that was why)."""
    from suite_core.runner import run

    res = run([sys.executable, "-c", _IMPORTER, json.dumps(modules), str(cwd or "")], check=False,
              cwd=str(cwd) if cwd else None, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
              timeout=900)
    try:
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        lines = [ln for ln in (res.stderr or "").strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit {res.returncode}"
        return {m: (f"the interpreter died: {why}", None) for m in modules}
    return {m: (v[0], v[1]) for m, v in data.items()}


def check(image: str, *, lock_path: Path = LOCK, checks: list[str] | None = None) -> Report:
    from containers.lint import image_closure
    from containers.locks import get_image

    spec = get_image(image, SUITE)
    variant, omitted = _lock_info(lock_path)
    gone = _omitted_modules(omitted) if omitted else {}
    r = Report()
    print(f"imagecheck {image}: {variant} lock" + (f", left out: {', '.join(sorted(omitted))}"
                                                  if omitted else ""), flush=True)

    def explain(what: str, message: str, name: str | None) -> None:
        top = name.split(".", 1)[0] if name else None
        if top and top in gone:
            r.skip(f"{what}: needs {top} ({gone[top]} is left out of this {variant} lock: "
                   f"{omitted.get(gone[top], '')})")
        else:
            r.fail(f"{what}: {message}")

    # 1. the import closure, installed (find_spec: no import, so torch-free checks still run)
    py = sys.version_info[:2]
    closure = image_closure(spec, SUITE, python=(py[0], py[1]))
    for top, refs in sorted(closure.required.items()):
        if top in spec.imports_not_needed:
            continue
        if importlib.util.find_spec(top) is not None:
            continue
        if top in gone:
            r.skip(f"module {top} ({refs[0].where}): {gone[top]} is left out of this {variant} lock")
        else:
            r.fail(f"module {top} is not installed; {refs[0].where} imports it")
    r.ok(f"{len(closure.required)} imported third-party modules checked "
         f"({len(closure.optional)} optional ones not required)")
    # 1b. modules that load system libraries when imported (found is not enough: opencv-python
    # wheels need libGL.so.1, which a minimal base lacks; the apps and the libraries they drive
    # import them lazily, at run time): every one the image installs
    native = [m for m in NATIVE if m not in gone and importlib.util.find_spec(m) is not None]
    for module, (err, missing) in _python_import(native).items():
        what = f"import {module} (loads system libraries)"
        r.ok(what) if err is None else explain(what, err, missing)

    # 2. every app module the image serves
    from suite_core.apps import discover

    apps = discover()
    unknown = [a for a in spec.apps if a not in apps]
    for a in unknown:
        r.fail(f"app {a} is listed in hydra_conf/image/{image}.yaml but has no hydra_conf/app/{a}.yaml")
    served = {apps[a][0]: a for a in spec.apps if a in apps}
    for module, (err, missing) in _python_import(list(served)).items():
        what = f"import {module} ({served[module]})"
        r.ok(what) if err is None else explain(what, err, missing)

    # 3. the stage scripts' own imports, from each script's directory
    if spec.imports:
        data = json.loads((SUITE / spec.imports).read_text(encoding="utf-8"))
        for name, src in data["sources"].items():
            root = Path(spec.sources[name]["path"])
            for script, rec in src["scripts"].items():
                if not (root / script).is_file():
                    r.fail(f"{name} has no {script} under {root}")
                    continue
                results = _python_import(rec["import_check"], cwd=(root / script).parent)
                for module, (err, missing) in results.items():
                    what = f"{name}/{script}: import {module}"
                    r.ok(what) if err is None else explain(what, err, missing)

    # 4. the doctor (GPU capabilities only where a GPU is visible)
    from containers.launch import nvidia_gpu_present
    from suite_core.runner import run

    gpu = nvidia_gpu_present()
    want = list(spec.doctor.get("gpu" if gpu else "cpu", []))
    dropped = [c for c in want if _cap_package(c) and _cap_package(c) in gone.values()]
    for c in dropped:
        r.skip(f"doctor capability {c}: {_cap_package(c)} is left out of this {variant} lock")
    want = [c for c in want if c not in dropped]
    argv = [sys.executable, "-m", "entrypoints", "doctor"] + (["--require", ",".join(want)] if want else [])
    with tempfile.TemporaryDirectory(prefix="imagecheck-") as tmp:
        # a throwaway scratch and caches: an image's own filesystem is read-only
        env = {**os.environ, "CONTAINERS_SCRATCH": f"{tmp}/scratch", "CONTAINERS_NODE_LOCAL": f"{tmp}/nvme",
               **{var: f"{tmp}/cache/{var.lower()}" for var in _CACHE_VARS}}
        res = run(argv, check=False, capture=False, timeout=900, env=env)
    if res.returncode == 0:
        r.ok(f"doctor --require {','.join(want) or '(none)'}" + ("" if gpu else " (no GPU visible)"))
    else:
        r.fail(f"doctor exited {res.returncode} (its output is above)")

    # 5. production-only checks
    for name in checks or []:
        fn = PRODUCTION_CHECKS.get(name)
        if fn is None:
            raise UserError(f"unknown check '{name}'", fix=f"choose from {', '.join(PRODUCTION_CHECKS)}")
        if variant != "production":
            r.skip(f"{name}: a {variant} lock installs the CPU builds ({PRODUCTION_CHECKS_WHY[name]})")
            continue
        ok, msg = fn()
        r.ok(name) if ok else r.fail(f"{name}: {msg}")

    # 6. byte code (inside an image: /opt/suite and the venv)
    if LOCK.parent.is_dir():
        import sysconfig

        for root, allowed in ((str(LOCK.parent), 0.0), (sysconfig.get_paths()["purelib"], 0.01)):
            total, missing = _missing_bytecode(root)
            what = f"byte code under {root}: {total - len(missing)} of {total} modules compiled"
            if len(missing) <= allowed * total:
                r.ok(what)
            else:
                r.fail(f"{what}; e.g. {', '.join(missing[:3])} (compileall / UV_COMPILE_BYTECODE in %post)")
    return r


def _missing_bytecode(root: str) -> tuple[int, list[str]]:
    """.py files under ``root`` and those without a current-interpreter .pyc beside them."""
    total, missing = 0, []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                total += 1
                src = os.path.join(dirpath, f)
                if not os.path.exists(importlib.util.cache_from_source(src)):
                    missing.append(src)
    return total, missing


def _cap_package(cap: str) -> str | None:
    return {"torch": "torch", "torch-cuda": "torch", "onnx": "onnxruntime", "onnx-cuda": "onnxruntime-gpu",
            "paddle": "paddlepaddle", "paddle-cuda": "paddlepaddle-gpu"}.get(cap)


def _onnx_cuda_provider() -> tuple[bool, str]:
    """ORT's CUDA provider library loads its CUDA 12 dependencies (dlopen: no GPU needed)."""
    code = ("import ctypes, os, torch, onnxruntime as ort\n"
            "getattr(ort, 'preload_dlls', lambda **k: None)(cuda=True, cudnn=True, msvc=False)\n"
            "ctypes.CDLL(os.path.join(os.path.dirname(ort.__file__), 'capi', "
            "'libonnxruntime_providers_cuda.so'))\n"
            "assert 'CUDAExecutionProvider' in ort.get_available_providers()\n")
    return _python_code(code)


def _paddle_cuda_build() -> tuple[bool, str]:
    return _python_code("import paddle, sys\n"
                        "sys.exit(0 if paddle.device.is_compiled_with_cuda() else "
                        "'paddle was built without CUDA (a CPU wheel got in)')\n")


def _python_code(code: str) -> tuple[bool, str]:
    from suite_core.runner import run

    res = run([sys.executable, "-c", code], check=False, timeout=900)
    lines = [ln for ln in (res.stderr or "").strip().splitlines() if ln.strip()]
    return res.returncode == 0, (lines[-1] if lines else f"exit {res.returncode}")


PRODUCTION_CHECKS = {"onnx-cuda-provider": _onnx_cuda_provider, "paddle-cuda-build": _paddle_cuda_build}
PRODUCTION_CHECKS_WHY = {"onnx-cuda-provider": "onnxruntime instead of onnxruntime-gpu",
                         "paddle-cuda-build": "paddlepaddle instead of paddlepaddle-gpu"}


@guard
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m containers.imagecheck", description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("--lock", default=str(LOCK), help="the installed lock (default: %(default)s)")
    p.add_argument("--check", action="append", default=[], help="production-only check (repeatable)")
    args = p.parse_args(argv)
    r = check(args.image, lock_path=Path(args.lock), checks=args.check)
    if r.failures:
        print(f"error: {len(r.failures)} check(s) failed in image {args.image}: {r.failures[0]}",
              file=sys.stderr)
        return 1
    print(f"imagecheck {args.image}: all checks passed ({len(r.skipped)} not checkable in this build)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
