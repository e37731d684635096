"""What every app shares: config loading, the run directory, the run report, device choice.

The run report is one JSON file per app invocation, rewritten atomically after every step,
so a killed job still leaves an accurate account of what finished.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import json
import os
import platform
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from suite_core.atomic import write_json
from suite_core.errors import UserError

VERSION_PACKAGES = (
    "torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "paddlepaddle", "paddlepaddle-gpu",
    "paddleocr", "paddlex", "mineru-vl-utils", "transformers", "diffusers", "numpy",
    "opencv-python-headless", "opencv-contrib-python", "Pillow", "decord", "decord2", "av",
    "rapid-layout", "rapidocr-onnxruntime", "hydra-core", "omegaconf",
)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def package_versions(names: tuple[str, ...] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions from package metadata (no imports, so no start-up cost)."""
    from importlib import metadata

    out: dict[str, str] = {"python": platform.python_version()}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


def image_facts() -> dict[str, Any]:
    """Which image this process runs in, read from what Apptainer exposes inside."""
    sif = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    facts: dict[str, Any] = {"file": sif, "runtime": "container" if sif else "host"}
    labels = Path("/.singularity.d/labels.json")
    if sif and labels.is_file():
        with contextlib.suppress(OSError, ValueError):
            facts["labels"] = json.loads(labels.read_text())
    return facts


def slurm_facts() -> dict[str, str] | None:
    keys = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID",
            "array_task_id": "SLURM_ARRAY_TASK_ID", "partition": "SLURM_JOB_PARTITION",
            "node": "SLURMD_NODENAME", "gpus": "SLURM_JOB_GPUS", "account": "SLURM_JOB_ACCOUNT",
            "cpus_per_task": "SLURM_CPUS_PER_TASK"}
    facts = {k: os.environ[v] for k, v in keys.items() if v in os.environ}
    return facts or None


@dataclass
class Device:
    """The device a stage asked for, the one it got, and why they differ (if they do)."""

    requested: str
    used: str
    why: str


class Run:
    """One app invocation: its config, run directory, report and timed steps."""

    def __init__(self, app: str, cfg: Any, report_path: Path) -> None:
        self.app, self.cfg, self.report_path = app, cfg, report_path
        self.run_dir = Path(str(cfg.run_dir))
        self._t0 = time.monotonic()
        self.report: dict[str, Any] = {
            "app": app, "stage": cfg.get("stage") or app,
            "image": image_facts(), "host": socket.gethostname(),
            "arch": platform.machine(), "slurm": slurm_facts(),
            "start": now_iso(), "end": None, "seconds": None, "steps": [],
            "device": None, "versions": package_versions(),
            "outputs": [], "skipped": [], "exit_status": None, "run_dir": str(self.run_dir),
        }
        self.save()

    def save(self) -> None:
        from suite_core.secrets import mask_obj  # the report lands on shared scratch: no secrets in it

        write_json(self.report_path, mask_obj(self.report))

    @contextlib.contextmanager
    def step(self, name: str, **facts: Any) -> Iterator[dict[str, Any]]:
        """Time a step; its entry (status, seconds, extra facts) is saved when it ends."""
        entry: dict[str, Any] = {"name": name, "status": "running", "seconds": None, **facts}
        self.report["steps"].append(entry)
        t0 = time.monotonic()
        try:
            yield entry
            entry["status"] = "ok"
        except BaseException as exc:
            entry["status"] = "failed"
            entry["error"] = " ".join(str(exc).split())[:500] or type(exc).__name__
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 3)
            self.save()

    def set_device(self, device: Device) -> None:
        self.report["device"] = asdict(device)
        self.save()
        from entrypoints.gpu_guard import check_device  # a GPU stage that fell back to the CPU stops here

        check_device(device, self.cfg, self)

    def skip(self, item: str, reason: str) -> None:
        self.report["skipped"].append({"item": item, "reason": reason})

    def output(self, path: str | Path) -> None:
        p = Path(path)
        self.report["outputs"].append({"path": str(p), "bytes": p.stat().st_size if p.is_file() else None})

    def finish(self, status: int, error: str | None = None) -> None:
        self.report["end"] = now_iso()
        self.report["seconds"] = round(time.monotonic() - self._t0, 3)
        self.report["exit_status"] = status
        if error:
            self.report["error"] = error
        self.save()

    def timing_table(self) -> str:
        rows = [(s["name"], s["status"], f"{s['seconds'] or 0:.1f}") for s in self.report["steps"]]
        if not rows:
            return ""
        w = max(len(r[0]) for r in rows)
        lines = [f"{'step'.ljust(w)}  status   seconds"]
        lines += [f"{n.ljust(w)}  {st:<7}  {sec:>7}" for n, st, sec in rows]
        return "\n".join(lines)


def select_device(requested: str, fallback: str, probe: Any) -> Device:
    """Choose cpu or cuda[:N] for a framework; ``probe()`` returns (usable, why_not).

    ``auto`` takes the GPU when usable. An explicit ``cuda`` that is not usable falls back to
    the CPU only when ``fallback == 'cpu'``, and the report records why; else it is an error.
    """
    requested = str(requested or "auto")
    if requested == "cpu":
        return Device("cpu", "cpu", "cpu requested")
    usable, why_not = probe()
    gpu = requested if requested.startswith("cuda") else "cuda"
    if usable:
        return Device(requested, gpu, "GPU usable")
    if requested == "auto" or fallback == "cpu":
        return Device(requested, "cpu", f"CPU fallback: {why_not}")
    raise UserError(f"device={requested} requested but no usable GPU: {why_not}",
                    fix="run on a GPU node (with --nv), or pass device=cpu / device_fallback=cpu")


def load_config(app: str, overrides: list[str], config_path: str | None, config_name: str) -> Any:
    from suite_core.config import compose

    if config_path:
        _check_job_config(Path(config_path), config_name)
        cfg = compose(overrides, config_dir=Path(config_path), config_name=config_name)
    else:
        cfg = compose([f"app={app}", *overrides])
    if cfg.get("app_name") not in (None, app):
        raise UserError(f"config is for app '{cfg.get('app_name')}', not '{app}'",
                        where=config_path or "hydra_conf",
                        fix=f"run python -m entrypoints {cfg.get('app_name')}")
    if cfg.get("run_dir") in (None, ""):
        raise UserError("config has no run_dir", where=config_path or "hydra_conf",
                        fix="pass run_dir=DIR (or rewrite the job folder with containers submit)")
    validate_settings(app, cfg)
    return cfg


def _check_job_config(job_dir: Path, name: str) -> None:
    """A job folder's config must be a YAML mapping: say so in one line, not in a parser traceback."""
    import yaml

    path = job_dir / f"{name}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return  # compose says which file is missing, with the folder
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the job config: {getattr(exc, 'strerror', None) or exc}",
                        where=str(path), fix="rewrite the job folder with containers submit") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"job config is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}",
                        where=str(path), fix="rewrite the job folder with containers submit") from None
    if not isinstance(data, dict) or not data:
        raise UserError("job config is empty" if not data else "job config is not a mapping of settings",
                        where=str(path), fix="rewrite the job folder with containers submit")


def settings_schema(app: str) -> type | None:
    """The structured-config dataclass for ``app``: ``SCHEMAS[app]`` of its package's ``settings``.

    Apps live in packages (``entrypoints.newsbag.sources.embedded``); each package may declare
    the types and ranges of its apps' settings in ``<package>/settings.py`` (light imports only:
    submit validates every step's config on the login node).
    """
    import importlib.util

    from entrypoints import discover

    module = discover().get(app, ("", ""))[0]
    parts = module.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i]) + ".settings"
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name).SCHEMAS.get(app)
    return None


def _declared(cfg: Any, schema: type) -> dict[str, Any]:
    """The part of ``cfg`` the schema declares (other keys are not its business), as plain data."""
    import dataclasses

    from omegaconf import DictConfig, ListConfig, OmegaConf

    out: dict[str, Any] = {}
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue
        value = cfg[f.name]
        sub = hints.get(f.name)
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, DictConfig):
                raise UserError(f"{f.name} must be a group of settings, not {_show(value)}",
                                where="command line or config",
                                fix=f"set its keys one by one, e.g. {f.name}.<key>=...")
            out[f.name] = _declared(value, sub)  # type: ignore[arg-type]
        elif isinstance(value, (DictConfig, ListConfig)):
            out[f.name] = OmegaConf.to_container(value, resolve=True)
        else:
            out[f.name] = value
    return out


def _hints(schema: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(schema)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_RANGE_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _check_ranges(merged: Any, schema: type, where: str, prefix: str = "") -> None:
    """Ranges and sizes from each field's metadata (``ge``, ``gt``, ``le``, ``lt``, ``min_items``)."""
    import dataclasses

    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        key, value = f"{prefix}{f.name}", merged.get(f.name)
        if dataclasses.is_dataclass(hints.get(f.name)) and value is not None:
            _check_ranges(value, hints[f.name], where, f"{key}.")
            continue
        meta = f.metadata
        fix = meta.get("fix")
        for word, op in _RANGE_WORDS.items():
            bound = meta.get(word)
            if bound is None or value is None:
                continue
            ok = {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[word]
            if not ok:
                raise UserError(f"{key}={value} is out of range: it must be {op} {bound}", where=where,
                                fix=fix or f"pass {key}=<a value {op} {bound}>")
        if meta.get("min_items") is not None and value is not None and len(value) < meta["min_items"]:
            raise UserError(f"{key} needs at least {meta['min_items']} item(s), got {len(value)}",
                            where=where, fix=fix or f"pass {key}=[item, ...]")


def validate_settings(app: str, cfg: Any) -> None:
    """Types and ranges of ``app``'s settings from its structured-config schema, key named on failure.

    Values are checked after composition (command line, job config and YAML alike) and coerced
    where the schema says so (``limit='3'`` -> 3), so the app never meets a wrong type.
    """
    schema = settings_schema(app)
    if schema is None:
        return
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    data = _declared(cfg, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        value: Any = data
        for part in str(key).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        must = _type_of(schema, str(key))
        raise UserError(f"{key}={_show(value)} is not valid: it must be {must}", where=f"{app} settings",
                        fix=f"pass {key}=<{must}>") from None
    _check_ranges(merged, schema, f"{app} settings")
    plain = OmegaConf.to_container(merged)
    with open_dict(cfg):
        _write_back(cfg, plain, data)


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _type_of(schema: type, key: str) -> str:
    """What a dotted key must be, in words (``an integer or null``, ``a list``, ``a mapping``)."""
    import dataclasses
    import typing

    t: Any = schema
    for part in key.split("."):
        if not dataclasses.is_dataclass(t):
            break
        t = _hints(t).get(part, Any)
    args = typing.get_args(t)
    optional = type(None) in args
    if optional:
        t = next(a for a in args if a is not type(None))
    origin = typing.get_origin(t) or t
    words = _WORDS.get(origin) or {list: "a list", dict: "a mapping"}.get(origin, str(t))
    return words + (" or null" if optional else "")


def _write_back(cfg: Any, plain: Any, data: dict[str, Any]) -> None:
    """Put the coerced scalar values back (only keys the user config had)."""
    for key, given in data.items():
        value = plain.get(key) if isinstance(plain, dict) else None
        if isinstance(given, dict) and isinstance(value, dict) and hasattr(cfg[key], "keys"):
            _write_back(cfg[key], value, given)
        elif not isinstance(value, (dict, list)) and value != given:
            cfg[key] = value


def run_lock_target(app: str, cfg: Any, config_path: str | None) -> tuple[Path, str]:
    """(folder, lock file name) for this invocation's writer lock.

    One writer per unit of output: a direct run owns its run report's folder (so two
    ``newsbag_embedded run_dir=X`` collide, while the sources of a split submission, each with its
    own job folder, share X); a submitted job owns its step folder; an array task owns its own
    report in that folder (tasks of one array run side by side by design).
    """
    from suite_core.rundir import LOCK_NAME

    report = report_path_for(app, cfg)
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is not None or report.name != "run_report.json":
        return report.parent, f".{report.name}.writer.lock"
    return (Path(config_path) if config_path else report.parent), LOCK_NAME


def _check_run_dir(cfg: Any) -> None:
    """A run_dir that is a file or a dangling/looping link: one line, before anything is written."""
    p = Path(str(cfg.run_dir))
    if p.is_symlink() and not p.exists():
        raise UserError(f"run_dir {p} is a broken symbolic link or a link loop", where="run_dir",
                        fix="remove the link or pass another run_dir=DIR")
    if p.exists() and not p.is_dir():
        raise UserError(f"run_dir {p} is a file, not a folder", where="run_dir",
                        fix="pass a folder (or a new path) as run_dir=DIR")


def report_path_for(app: str, cfg: Any) -> Path:
    explicit = cfg.get("report_path")
    if explicit:
        return Path(str(explicit))
    job = cfg.get("job_name") or app
    return Path(str(cfg.run_dir)) / "jobs" / str(job) / "run_report.json"


def apply_environment(cfg: Any) -> None:
    """Give a bare run (no launcher) the cache and offline variables the launcher would set."""
    from suite_core.env import container_env

    for key, value in container_env(cfg, {}).items():
        if key not in ("PYTHONPATH", "CONTAINERS_CLUSTER"):
            os.environ.setdefault(key, value)


def launch(app: str, module_name: str, overrides: list[str], *, config_path: str | None,
           config_name: str, show_cfg: bool) -> int:
    """Load config, take the writer lock, run the app's ``run(cfg, run)``, and always finish the report.

    Every way out is one line on stderr and an exit code: a UserError, an OSError (with the path
    it concerns), or Ctrl-C; only a bug in the code shows a traceback.
    """
    with contextlib.ExitStack() as stack:
        try:
            cfg = load_config(app, overrides, config_path, config_name)
            if show_cfg:
                from suite_core.config import to_yaml

                print(to_yaml(cfg), end="")
                return 0
            apply_environment(cfg)
            module = importlib.import_module(module_name)
            _check_run_dir(cfg)
            from suite_core.rundir import writer_lock

            folder, lock_name = run_lock_target(app, cfg, config_path)
            stack.enter_context(writer_lock(folder, name=lock_name))
            run = Run(app, cfg, report_path_for(app, cfg))
        except UserError as exc:
            return _say(exc.line(), exc.code)
        except OSError as exc:
            from suite_core.errors import from_os_error

            return _say(from_os_error(exc).line(), 2)
        try:
            from entrypoints.gpu_guard import guarded  # GPU check first; GPU use sampled around the run

            status = int(guarded(module.run, cfg, run) or 0)
        except UserError as exc:
            return _finish(run, exc.code, exc.line())
        except OSError as exc:
            from suite_core.errors import from_os_error

            return _finish(run, 2, from_os_error(exc).line())
        except KeyboardInterrupt:
            return _finish(run, 130, "interrupted")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                run.finish(1, "".join(traceback.format_exception_only(type(exc), exc)).strip())
            raise
        try:
            run.finish(status)
        except OSError as exc:
            from suite_core.errors import from_os_error

            return _say(from_os_error(exc, "write the run report").line(), 2)
        return status


def _say(line: str, code: int) -> int:
    from suite_core.secrets import mask

    print(f"error: {mask(line)}", file=sys.stderr)
    return code


def _finish(run: Run, code: int, line: str) -> int:
    """Record the failure in the report (if the disk still takes it) and print the one line."""
    with contextlib.suppress(OSError):
        run.finish(code, line)
    return _say(line, code)
