"""Run one video through the five stages in a working dir; preflight the staged models.

A video is done only when :func:`workdir.publish` wrote its marker; anything less (a failed
stage, a killed job, an output that does not decode) leaves it unmarked, so a rerun redoes
exactly that video and skips the marked ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.checkout import Checkout
from entrypoints.flowportal.stages import Stage, Video, build, model_paths, teacache_active
from suite_core.atomic import atomic_path
from suite_core.errors import UserError
from suite_core.runner import run as run_cmd


def preflight(cfg: Any, checkout: Checkout) -> None:
    """Every file each stage opens is staged (modelset), and TeaCache is what the preset says."""
    from entrypoints.flowportal.modelset import preflight as models_preflight
    from entrypoints.flowportal.stages import check_teacache

    check_teacache(cfg)
    models_preflight(cfg, checkout.root)


def stage_env(cfg: Any) -> dict[str, str]:
    """The scripts' environment: offline, caches on node-local disk, staged HF/torch hub."""
    env = dict(os.environ)
    m = model_paths(cfg)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "DIFFUSERS_OFFLINE": "1",
            "HF_HUB_CACHE": m["hf_hub"],
            "TORCH_HOME": m["torch_home"],
            "PYTHONNOUSERSITE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.setdefault("HF_HOME", str(cfg.paths.caches.hf))  # writable: remote-code modules go here
    return env


@dataclass
class Outcome:
    """What happened to one video."""

    video: str
    status: str  # OK | SKIPPED | FAILED
    stage: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)
    publish_seconds: float = 0.0
    cleanup_seconds: float = 0.0
    logs: str | None = None


class Subprocesses:
    """Each stage a fresh process of the script (the status quo's way, and the default)."""

    def run(self, key: str, argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> int:
        res = run_cmd(argv, env=env, cwd=cwd, capture=True, check=False, what=f"stage {key}")
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{res.stdout}{res.stderr}")
        return res.returncode

    def close(self) -> None:
        pass


class Resident:
    """Stages in long-lived per-script workers with cached model loads (resident.Pool)."""

    def __init__(self, env: dict[str, str], cache: dict[str, list[str]]) -> None:
        from entrypoints.flowportal.resident import Pool

        self.pool = Pool(env, cache)

    def run(self, key: str, argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> int:
        return self.pool.run(key, argv, cwd, log)

    def close(self) -> None:
        self.pool.close()


def stage_runner(cfg: Any, env: dict[str, str]) -> Subprocesses | Resident:
    from omegaconf import OmegaConf

    r = cfg.flowportal.get("resident")
    if r is None or not bool(r.get("enabled", False)):
        return Subprocesses()
    cache = OmegaConf.to_container(r.cache, resolve=True) if r.get("cache") else {}
    if str(cfg.preset.flowportal.gpu_memory_mode) != "no_offload":
        cache = {k: v for k, v in cache.items() if k != "flowportal"}  # offload hooks are attached per run
    return Resident(env, cache)


def run_video(
    cfg: Any,
    checkout: Checkout,
    video: Video,
    work: Path,
    out_dir: Path,
    *,
    env: dict[str, str],
    fingerprint: str,
    runner: Subprocesses | Resident | None = None,
    step: Any = None,
    log_tail: int = 15,
    failed_logs: Path | None = None,
) -> Outcome:
    """Run the five stages for ``video`` in ``work``; publish to ``out_dir`` on success.

    ``step`` is a context-manager factory (``Run.step``) used to time each stage in the report;
    each stage entry has its start/end (seconds since the video started) so gaps are visible.
    On failure the stage logs are copied to ``failed_logs`` (next to the Slurm log) before the
    node-local workdir is cleaned.
    """
    t0 = time.monotonic()
    runner = runner or Subprocesses()
    if wd.is_complete(out_dir, fingerprint):
        return Outcome(video.name, "SKIPPED", reason="complete marker present")
    stages = build(cfg, checkout, video)
    wd.clean_video(work, video.name)  # leftovers of a killed attempt are never reused
    (work / "datasets" / video.name).mkdir(parents=True, exist_ok=True)
    logs = work / "logs" / video.name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    out = Outcome(video.name, "OK")
    for s in stages:
        t = time.monotonic()
        try:
            with step(s.name, video=video.name, gpu=s.gpu) if step else contextlib.nullcontext():
                _run_stage(s, work, env, logs, log_tail, runner)
        except UserError as exc:
            out.status, out.stage, out.reason = "FAILED", s.name, exc.what
            out.stages.append(_timing(s.name, t0, t, "failed"))
            break
        out.stages.append(_timing(s.name, t0, t, "ok"))
    if out.status == "OK":
        active, why = teacache_active(cfg)
        t = time.monotonic()
        try:
            wd.publish(
                work,
                video.name,
                out_dir,
                {
                    "preset": str(cfg.preset.name),
                    "teacache_active": active,
                    "teacache_why": why,
                    "stages": out.stages,
                    "seconds": round(time.monotonic() - t0, 3),
                },
                fingerprint,
            )
        except UserError as exc:
            out.status, out.stage, out.reason = "FAILED", "publish", exc.what
        out.publish_seconds = round(time.monotonic() - t, 3)
    if out.status == "FAILED" and failed_logs is not None:
        out.logs = _keep_logs(logs, failed_logs / video.name)
    t = time.monotonic()
    if out.status == "OK" or not bool(cfg.flowportal.keep_failed):
        wd.clean_video(work, video.name)
    out.cleanup_seconds = round(time.monotonic() - t, 3)
    out.seconds = round(time.monotonic() - t0, 3)
    return out


def _timing(name: str, t0: float, t: float, status: str) -> dict[str, Any]:
    now = time.monotonic()
    return {
        "name": name,
        "seconds": round(now - t, 3),
        "status": status,
        "start": round(t - t0, 3),
        "end": round(now - t0, 3),
    }


def _keep_logs(src: Path, dst: Path) -> str | None:
    """Copy a failed video's stage logs off node-local disk; where they went (None if impossible)."""
    try:
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.log"):
            with atomic_path(dst / f.name) as tmp:
                shutil.copyfile(f, tmp)
    except OSError as exc:
        print(f"  warning: cannot copy the stage logs to {dst}: {exc.strerror}", flush=True)
        return None
    return str(dst)


def _run_stage(
    s: Stage, work: Path, env: dict[str, str], logs: Path, log_tail: int, runner: Subprocesses | Resident
) -> None:
    log = logs / f"{s.name}.log"
    log.write_text(f"$ {s.shell()}\n", encoding="utf-8")
    t = time.monotonic()
    rc = runner.run(s.script_key, s.argv, work, log, env)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n# exit {rc} after {time.monotonic() - t:.1f} s\n")
    if rc != 0:
        lines = [
            ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()[1:-1] if ln.strip()
        ]
        for ln in lines[-log_tail:]:
            print(f"  | {ln}")
        raise UserError(
            f"exit {rc}: {lines[-1].strip()[:200] if lines else 'no output'}",
            where=str(log),
        )
    missing = [e for e in s.expects if not (work / e).is_file() or (work / e).stat().st_size == 0]
    if missing:
        raise UserError(f"exit 0 but it did not write {missing[0]}", where=str(log))
