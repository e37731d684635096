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

from containers.atomic import write_json
from containers.errors import UserError

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
        write_json(self.report_path, self.report)

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
    from containers.config import compose

    if config_path:
        cfg = compose(overrides, config_dir=Path(config_path), config_name=config_name)
    else:
        cfg = compose([f"app={app}", *overrides])
    if cfg.get("app_name") not in (None, app):
        raise UserError(f"config is for app '{cfg.get('app_name')}', not '{app}'",
                        where=config_path or "hydra_conf",
                        fix=f"run python -m entrypoints {cfg.get('app_name')}")
    return cfg


def report_path_for(app: str, cfg: Any) -> Path:
    explicit = cfg.get("report_path")
    if explicit:
        return Path(str(explicit))
    job = cfg.get("job_name") or app
    return Path(str(cfg.run_dir)) / "jobs" / str(job) / "run_report.json"


def apply_environment(cfg: Any) -> None:
    """Give a bare run (no launcher) the cache and offline variables the launcher would set."""
    from containers.launch import container_env

    for key, value in container_env(cfg, {}).items():
        if key not in ("PYTHONPATH", "CONTAINERS_CLUSTER"):
            os.environ.setdefault(key, value)


def launch(app: str, module_name: str, overrides: list[str], *, config_path: str | None,
           config_name: str, show_cfg: bool) -> int:
    """Load config, run the app's ``run(cfg, run)``, and always finish the report."""
    try:
        cfg = load_config(app, overrides, config_path, config_name)
        if show_cfg:
            from containers.config import to_yaml

            print(to_yaml(cfg), end="")
            return 0
        apply_environment(cfg)
        module = importlib.import_module(module_name)
        run = Run(app, cfg, report_path_for(app, cfg))
    except UserError as exc:
        print(f"error: {exc.line()}", file=sys.stderr)
        return exc.code
    try:
        from entrypoints.gpu_guard import guarded  # GPU check first; GPU utilisation sampled around the run

        status = int(guarded(module.run, cfg, run) or 0)
    except UserError as exc:
        run.finish(exc.code, exc.line())
        print(f"error: {exc.line()}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        run.finish(130, "interrupted")
        print("error: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        run.finish(1, "".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    run.finish(status)
    return status
