"""Run one video through the five stages in a working dir; preflight the staged models.

A video is done only when :func:`workdir.publish` wrote its marker; anything less (a failed
stage, a killed job, an output that does not decode) leaves it unmarked, so a rerun redoes
exactly that video and skips the marked ones.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers.atomic import write_text
from containers.errors import UserError
from containers.runner import run as run_cmd
from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.checkout import Checkout
from entrypoints.flowportal.stages import Stage, Video, build, model_paths, teacache_active

STAGE_HOWTO = (
    "stage the model set to node-local disk first: python -m containers stage "
    "{src} {dst} (it lands in {dst}/<basename>; slurm/flowportal_*.sbatch do this first)"
)


def required_models(cfg: Any) -> list[tuple[str, Path]]:
    """(what, path) for every model file the configured stages load."""
    m = {k: Path(v) for k, v in model_paths(cfg).items()}
    need = [(f"Wan2.1 file {f}", m["wan"] / str(f)) for f in cfg.flowportal.wan_files]
    need.append(
        (
            "IC-Light fbc" if cfg.video.get("bg_path") else "IC-Light fc",
            m["iclight_fbc"] if cfg.video.get("bg_path") else m["iclight_fc"],
        )
    )
    need.append(("MatAnyone checkpoint", m["matanyone"]))
    if str(cfg.preset.edge_mode) != "canny":
        need.append(("HED/Midas Annotators", m["annotators"]))
    for repo in cfg.flowportal.hf_repos:
        need.append((f"HF cache of {repo}", m["hf_hub"] / ("models--" + str(repo).replace("/", "--"))))
    need.append(("torch hub checkpoints (ResNet50 for MatAnyone)", m["torch_home"] / "hub" / "checkpoints"))
    return need


def missing_models(cfg: Any) -> list[tuple[str, Path]]:
    return [(what, p) for what, p in required_models(cfg) if not p.exists()]


def preflight(cfg: Any) -> None:
    """Refuse to start when a model file is absent: name it and say how to stage it."""
    missing = missing_models(cfg)
    if missing:
        what, path = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        src = Path(str(cfg.paths.models)) / "flowportal"
        raise UserError(
            f"missing model file: {what} at {path}{more}",
            where="flowportal.models",
            fix=STAGE_HOWTO.format(src=src, dst=Path(str(cfg.flowportal.models)).parent),
        )


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


def run_video(
    cfg: Any,
    checkout: Checkout,
    video: Video,
    work: Path,
    out_dir: Path,
    *,
    env: dict[str, str],
    step: Any = None,
    log_tail: int = 15,
) -> Outcome:
    """Run the five stages for ``video`` in ``work``; publish to ``out_dir`` on success.

    ``step`` is a context-manager factory (``Run.step``) used to time each stage in the report.
    """
    t0 = time.monotonic()
    if wd.is_complete(out_dir):
        return Outcome(video.name, "SKIPPED", reason="complete marker present")
    stages = build(cfg, checkout, video)
    wd.clean_video(work, video.name)  # leftovers of a killed attempt are never reused
    (work / "datasets" / video.name).mkdir(parents=True, exist_ok=True)
    logs = work / "logs" / video.name
    logs.mkdir(parents=True, exist_ok=True)
    out = Outcome(video.name, "OK")
    for s in stages:
        t = time.monotonic()
        try:
            with step(s.name, video=video.name, gpu=s.gpu) if step else contextlib.nullcontext():
                _run_stage(s, work, env, logs, log_tail)
        except UserError as exc:
            out.status, out.stage, out.reason = "FAILED", s.name, exc.what
            out.stages.append({"name": s.name, "seconds": round(time.monotonic() - t, 3), "status": "failed"})
            break
        out.stages.append({"name": s.name, "seconds": round(time.monotonic() - t, 3), "status": "ok"})
    if out.status == "OK":
        active, why = teacache_active(cfg)
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
            )
        except UserError as exc:
            out.status, out.stage, out.reason = "FAILED", "publish", exc.what
    if out.status == "OK" or not bool(cfg.flowportal.keep_failed):
        wd.clean_video(work, video.name)
    out.seconds = round(time.monotonic() - t0, 3)
    return out


def _run_stage(s: Stage, work: Path, env: dict[str, str], logs: Path, log_tail: int) -> None:
    res = run_cmd(s.argv, env=env, cwd=work, capture=True, check=False, what=f"stage {s.name}")
    text = f"$ {s.shell()}\n# exit {res.returncode} after {res.seconds:.1f} s\n{res.stdout}{res.stderr}"
    write_text(logs / f"{s.name}.log", text)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or res.stdout).strip().splitlines() if ln.strip()]
        for ln in lines[-log_tail:]:
            print(f"  | {ln}")
        raise UserError(
            f"exit {res.returncode}: {lines[-1].strip()[:200] if lines else 'no output'}",
            where=str(logs / f"{s.name}.log"),
        )
    missing = [e for e in s.expects if not (work / e).is_file() or (work / e).stat().st_size == 0]
    if missing:
        raise UserError(f"exit 0 but it did not write {missing[0]}", where=str(logs / f"{s.name}.log"))
