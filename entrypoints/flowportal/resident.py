"""Keep models resident across the videos of a chunk (``flowportal.resident.enabled``, default off).

The status quo starts five Python processes per video and each one imports torch, diffusers or
transformers, initialises CUDA and loads its weights again. Here one long-lived worker per
stage script runs the unchanged script in-process once per video (``runpy``, with that video's
``sys.argv`` and cwd, its output into the stage log) and memoizes the loaders named in
``flowportal.resident.cache`` for that script, so their models are loaded once per chunk.

Only loaders whose result the script does not mutate are listed (docs/flowportal.md says why
for each): IC-Light's UNet is *not* cached because the script widens its ``conv_in`` and adds
the IC-Light offsets into its weights in place; a second run would do it twice. The Wan loaders
are cached for ``gpu_memory_mode=no_offload`` only (offload modes attach hooks per run). A
script that fails ends its worker: the next video gets a fresh process, as without this option.

The worker half of this module is started as ``python -m entrypoints.flowportal.resident`` by
the stage interpreter and uses the standard library only.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------- worker

_STATS = {"hits": 0, "misses": 0}


class _PatchOnImport:
    """A meta-path finder that applies pending caches the moment their module is first imported.

    A loader whose module only becomes importable once the script has run (it extends
    ``sys.path`` itself, as MatAnyone's script does) is still cached from its very first call.
    """

    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                specs, loader = self.pending.pop(name), spec.loader
                original = loader.exec_module

                def exec_module(module: Any, _orig: Any = original, _specs: list[str] = specs) -> None:
                    _orig(module)
                    for s in _specs:
                        _memoize(s, importing=module)

                loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


_HOOK = _PatchOnImport()


def _memoize(spec: str, importing: Any = None) -> str | None:
    """Wrap ``module:Owner.attr`` (or ``module:function``) with a cache; None when done, else why not."""
    mod_name, _, path = spec.partition(":")
    try:
        owner: Any = importing if importing is not None else importlib.import_module(mod_name)
        parts = path.split(".")
        for p in parts[:-1]:
            owner = getattr(owner, p)
        name = parts[-1]
        original = getattr(owner, name)
    except ModuleNotFoundError as exc:  # importable only once the script extends sys.path: patch on import
        if importing is None and exc.name == mod_name:
            _HOOK.pending.setdefault(mod_name, []).append(spec)
            if _HOOK not in sys.meta_path:
                sys.meta_path.insert(0, _HOOK)
            return None
        return f"{spec}: {type(exc).__name__}: {exc}"
    except Exception as exc:  # an optional library the script may not use
        return f"{spec}: {type(exc).__name__}: {exc}"
    if getattr(original, "_resident_cache", None) is not None:
        return None
    cache: dict[str, Any] = {}

    def cached(*args: Any, **kwargs: Any) -> Any:
        key = repr((args, sorted(kwargs.items())))
        if key in cache:
            _STATS["hits"] += 1
            return cache[key]
        _STATS["misses"] += 1
        value = original(*args, **kwargs)
        cache[key] = value
        return value

    cached._resident_cache = cache  # type: ignore[attr-defined]
    setattr(owner, name, staticmethod(cached) if inspect.isclass(owner) else cached)
    return None


def _run_one(script: str, req: dict[str, Any]) -> int:
    """Run the script once as ``__main__`` with the request's argv and cwd; its exit code."""
    os.chdir(req["cwd"])
    sys.argv = [script, *req["argv"]]
    rc = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            rc = 0
        elif isinstance(exc.code, int):
            rc = exc.code
        else:
            print(exc.code, file=sys.stderr)
            rc = 1
    except BaseException:  # the script's own error: its traceback goes to its log, as it would
        traceback.print_exc()
        rc = 1
    return rc


def worker(spec_json: str) -> int:
    spec = json.loads(spec_json)
    script = str(spec["script"])
    sys.path[0] = str(Path(script).parent)  # as `python script.py` would have it
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    notes = [n for n in (_memoize(s) for s in spec.get("cache", [])) if n]
    reply.write(json.dumps({"ready": True, "pid": os.getpid(), "not_cached": notes}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        before = dict(_STATS)
        t0 = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(req["log"], "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                rc = _run_one(script, req)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
        gc.collect()
        torch = sys.modules.get("torch")
        with contextlib.suppress(Exception):
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
        reply.write(
            json.dumps(
                {
                    "rc": rc,
                    "seconds": round(time.monotonic() - t0, 3),
                    "hits": _STATS["hits"] - before["hits"],
                    "misses": _STATS["misses"] - before["misses"],
                }
            )
            + "\n"
        )
    return 0


# ----------------------------------------------------------------------------------------- client


class Pool:
    """One resident worker per stage script, started on first use and ended on failure or close."""

    def __init__(self, env: dict[str, str], cache: dict[str, list[str]]) -> None:
        repo = str(Path(__file__).resolve().parents[2])
        self.env = {
            **env,
            "PYTHONPATH": repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        }
        self.cache = cache
        self.workers: dict[str, Any] = {}
        self.starts: dict[str, int] = {}
        self.hits = 0
        self.misses = 0
        self.notes: dict[str, list[str]] = {}

    def _start(self, python: str, script: str, key: str, cwd: Path) -> Any:
        from suite_core.errors import UserError
        from suite_core.runner import start

        spec = json.dumps({"script": script, "cache": list(self.cache.get(key) or [])})
        proc = start(
            [python, "-m", "entrypoints.flowportal.resident", spec],
            env=self.env,
            cwd=str(cwd),
            what=f"resident worker for {Path(script).name}",
        )
        hello = proc.stdout.readline()
        try:
            info = json.loads(hello)
        except ValueError:
            proc.kill()
            proc.wait()
            raise UserError(
                f"the resident worker for {Path(script).name} did not start: {hello.strip()[:200]}",
                where="flowportal.resident",
                fix="run without flowportal.resident.enabled",
            ) from None
        self.notes[key] = info.get("not_cached", [])
        self.starts[key] = self.starts.get(key, 0) + 1
        return proc

    def run(self, key: str, argv: list[str], cwd: Path, log: Path) -> int:
        """Run one stage (``argv`` = python, script, args...) in its worker; the exit code."""
        python, script = argv[0], argv[1]
        proc = self.workers.get(script)
        if proc is None or proc.poll() is not None:
            proc = self.workers[script] = self._start(python, script, key, cwd)
        try:
            proc.stdin.write(json.dumps({"argv": argv[2:], "cwd": str(cwd), "log": str(log)}) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            res = json.loads(line)
        except (OSError, ValueError):
            rc = proc.wait()
            self.workers.pop(script, None)
            return rc if rc else 1  # the worker died (killed, crashed in C code)
        self.hits += int(res.get("hits", 0))
        self.misses += int(res.get("misses", 0))
        if res["rc"] != 0:
            self._stop(script)  # a failed script may leave CUDA or module state broken: start afresh
        return int(res["rc"])

    def _stop(self, script: str) -> None:
        proc = self.workers.pop(script, None)
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for script in list(self.workers):
            self._stop(script)

    def summary(self) -> dict[str, Any]:
        return {
            "worker_starts": dict(self.starts),
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "not_cached": self.notes,
        }


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
