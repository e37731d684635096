"""Run-time GPU guard and GPU utilisation sampler.

A GPU allocation that computes on the CPU is the most expensive silent failure on a shared
cluster (and the torch cluster cancels jobs with low GPU utilisation): a stage that was given
a GPU (``CONTAINERS_GPU_STAGE=1``, set by the Slurm layer) but sees no NVIDIA device, or whose
framework fell back to the CPU (ONNX Runtime without ``CUDAExecutionProvider``, torch without
CUDA), stops at once with one line instead of idling for hours. ``CONTAINERS_GPU_GUARD`` (or the
config key ``gpu_guard``) is ``error`` (default), ``warn`` or ``off``.

When ``nvidia-smi`` exists, the mean utilisation of the job's GPUs is sampled in a background
thread and written to the run report (``gpu_util_mean``), so under-used allocations show up.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from suite_core.errors import UserError

MODES = ("error", "warn", "off")


def guard_mode(cfg: Any = None) -> str:
    value = os.environ.get("CONTAINERS_GPU_GUARD") or (cfg.get("gpu_guard") if cfg is not None else None)
    value = str(value or "error").lower()
    if value not in MODES:
        raise UserError(
            f"gpu_guard '{value}' is not one of {', '.join(MODES)}",
            where="CONTAINERS_GPU_GUARD / gpu_guard",
            fix="use error, warn or off",
        )
    return value


def is_gpu_stage(cfg: Any = None) -> bool:
    env = os.environ.get("CONTAINERS_GPU_STAGE")
    if env is not None:
        return env == "1"
    return bool(cfg.get("gpu_stage")) if cfg is not None else False


def nvidia_visible() -> tuple[bool, str]:
    """Whether this process can reach an NVIDIA GPU, and if not, a reason a user can act on."""
    from suite_core.env import nvidia_gpu_present

    if nvidia_gpu_present():
        if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1", "NoDevFiles"):
            return False, f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
        return True, "NVIDIA driver present"
    granted = os.environ.get("SLURM_JOB_GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if granted:
        return False, (
            f"Slurm granted GPU(s) {granted} but no NVIDIA device is visible in this process "
            "(image started without --nv, or a node without the driver)"
        )
    return False, "no NVIDIA device on this node and no GPU granted (CPU partition or missing --gres?)"


def _act(message: str, cfg: Any, run: Any = None) -> None:
    mode = guard_mode(cfg)
    if mode == "off":
        return
    if run is not None:
        run.report.setdefault("gpu_guard", []).append({"mode": mode, "message": message})
        run.save()
    if mode == "error":
        raise UserError(
            f"GPU stage without a usable GPU: {message}",
            fix="check --nv / the image's CUDA build; CONTAINERS_GPU_GUARD=warn to continue anyway",
        )
    print(f"warning: GPU stage without a usable GPU: {message}", file=sys.stderr)


def check_start(cfg: Any, run: Any = None) -> None:
    """Before any work: a GPU stage must see a GPU."""
    if not is_gpu_stage(cfg):
        return
    ok, why = nvidia_visible()
    if not ok:
        _act(why, cfg, run)
        return
    from entrypoints.apps.doctor import driver_floor_error  # the image's CUDA needs a new enough driver

    too_old = driver_floor_error(cfg)
    if too_old:
        raise UserError(too_old, fix="submit to a partition with that driver (cluster=... gpu=...)")


def check_device(device: Any, cfg: Any = None, run: Any = None) -> None:
    """After a framework picked its device: a GPU stage must not have fallen back to the CPU."""
    if is_gpu_stage(cfg) and str(getattr(device, "used", device)).startswith("cpu"):
        _act(f"the framework fell back to the CPU ({getattr(device, 'why', 'no reason given')})", cfg, run)


def check_onnx_providers(providers: Sequence[str] | Any, cfg: Any = None, run: Any = None) -> None:
    """ONNX Runtime silently drops CUDAExecutionProvider when its CUDA libraries do not load."""
    if hasattr(providers, "get_providers"):
        providers = providers.get_providers()
    if is_gpu_stage(cfg) and not any(
        p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in providers
    ):
        _act(
            f"ONNX Runtime runs on {', '.join(providers) or 'no provider'} (CUDA provider did not load; "
            "check that the CUDA major of onnxruntime-gpu matches the image's)",
            cfg,
            run,
        )


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def check_runtime(what: str, facts: dict[str, Any], *, wanted_gpu: bool, cfg: Any = None,
                  run: Any = None) -> None:
    """After a model's first page: a GPU job, or a run that chose CUDA, must not have computed on the CPU.

    ``facts`` says where the framework really ran: ``{"framework": "onnxruntime", "providers":
    [...]}`` (ONNX Runtime drops its CUDA provider silently when the CUDA libraries do not load,
    most often a CUDA-major mismatch) or ``{"framework": "torch"|"paddle", "device": "cpu"|...}``.
    """
    if not (is_gpu_stage(cfg) or wanted_gpu):
        return
    framework = str(facts.get("framework") or "the framework")
    if "providers" in facts:
        providers = [str(p) for p in facts.get("providers") or []]
        if not any(p in GPU_PROVIDERS for p in providers):
            _act(f"{what}: ONNX Runtime runs on {', '.join(providers) or 'no provider'}: the CUDA provider "
                 "did not load (check that the CUDA major of onnxruntime-gpu matches the image's)", cfg, run)
        return
    device = str(facts.get("device") or "")
    if not device.startswith(("cuda", "gpu")):
        why = f" ({facts['why']})" if facts.get("why") else ""
        _act(f"{what}: {framework} runs on {device or 'an unknown device'}{why}", cfg, run)


def parse_utilization(text: str) -> list[float]:
    """Numbers from ``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits``."""
    out = []
    for ln in text.splitlines():
        ln = ln.strip().rstrip("%").strip()
        try:
            out.append(float(ln))
        except ValueError:
            continue  # "[N/A]" on some MIG setups
    return out


class UtilizationSampler:
    """Samples GPU utilisation every ``interval`` seconds in a daemon thread."""

    def __init__(self, argv: Sequence[str] | None = None, interval: float = 5.0) -> None:
        if argv is None:
            from suite_core.runner import which

            exe = which("nvidia-smi")
            argv = (
                None if exe is None else [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            )
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            if argv and visible and all(p.strip().isdigit() for p in visible.split(",")):
                argv += ["-i", visible]
        self.argv = list(argv) if argv else None
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        from suite_core.runner import run

        while True:
            try:
                res = run(self.argv, check=False, timeout=max(self.interval, 10), what="nvidia-smi")
                if res.returncode == 0:
                    vals = parse_utilization(res.stdout)
                    if vals:
                        self.samples.append(sum(vals) / len(vals))
            except UserError:
                pass  # a hung nvidia-smi must not kill the stage
            if self._stop.wait(self.interval):
                return

    def start(self) -> UtilizationSampler:
        if self.argv:
            self._thread = threading.Thread(target=self._loop, name="gpu-util", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 15)
        if not self.argv:
            return {"gpu_util_mean": None, "gpu_util_note": "nvidia-smi not found: not sampled"}
        mean = round(sum(self.samples) / len(self.samples), 1) if self.samples else None
        return {
            "gpu_util_mean": mean,
            "gpu_util_max": max(self.samples) if self.samples else None,
            "gpu_util_samples": len(self.samples),
            "gpu_util_interval_s": self.interval,
        }


def guarded(fn: Callable[[Any, Any], Any], cfg: Any, run: Any) -> Any:
    """Run an app's ``run(cfg, run)`` behind the start check, with utilisation sampled around it."""
    check_start(cfg, run)
    interval = float(os.environ.get("CONTAINERS_GPU_SAMPLE_S", "5"))
    sampler = UtilizationSampler(interval=interval).start() if is_gpu_stage(cfg) else None
    t0 = time.monotonic()
    try:
        return fn(cfg, run)
    finally:
        if sampler is not None:
            run.report.update(sampler.stop())
            run.report["gpu_util_seconds"] = round(time.monotonic() - t0, 1)
            run.save()
