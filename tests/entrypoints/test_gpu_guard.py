"""GPU guard: GPU stages without a GPU (or fallen back to CPU) stop or warn; utilisation is sampled."""

from __future__ import annotations

import sys

import pytest

from entrypoints import gpu_guard
from entrypoints.framework import Device
from suite_core.errors import UserError


class FakeRun:
    def __init__(self):
        self.report: dict = {}
        self.saved = 0

    def save(self):
        self.saved += 1


@pytest.fixture
def gpu_stage(monkeypatch):
    monkeypatch.setenv("CONTAINERS_GPU_STAGE", "1")
    monkeypatch.delenv("CONTAINERS_GPU_GUARD", raising=False)
    monkeypatch.setattr(gpu_guard, "nvidia_visible", lambda: (False, "no NVIDIA device"))


def test_cpu_fallback_in_gpu_stage_is_an_error_by_default(gpu_stage):
    run = FakeRun()
    with pytest.raises(UserError, match="fell back to the CPU"):
        gpu_guard.check_device(Device("cuda", "cpu", "CPU fallback: no driver"), None, run)
    assert run.report["gpu_guard"][0]["mode"] == "error"


def test_warn_and_off(gpu_stage, monkeypatch, capsys):
    monkeypatch.setenv("CONTAINERS_GPU_GUARD", "warn")
    gpu_guard.check_start(None, FakeRun())
    assert "warning: GPU stage without a usable GPU" in capsys.readouterr().err
    monkeypatch.setenv("CONTAINERS_GPU_GUARD", "off")
    gpu_guard.check_start(None, FakeRun())
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CONTAINERS_GPU_GUARD", "loud")
    with pytest.raises(UserError, match="not one of"):
        gpu_guard.check_start(None, None)


def test_cpu_stage_is_never_guarded(monkeypatch):
    monkeypatch.setenv("CONTAINERS_GPU_STAGE", "0")
    gpu_guard.check_device(Device("auto", "cpu", "x"))
    gpu_guard.check_onnx_providers(["CPUExecutionProvider"])


def test_onnx_without_cuda_provider(gpu_stage):
    with pytest.raises(UserError, match="CUDA provider did not load"):
        gpu_guard.check_onnx_providers(["CPUExecutionProvider"])
    gpu_guard.check_onnx_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_granted_but_invisible_gpu_names_slurms_grant(monkeypatch):
    import suite_core.env

    monkeypatch.setenv("SLURM_JOB_GPUS", "2,3")
    monkeypatch.setattr(suite_core.env, "nvidia_gpu_present", lambda: False)
    ok, why = gpu_guard.nvidia_visible()
    assert not ok and "Slurm granted GPU(s) 2,3" in why
    monkeypatch.setattr(suite_core.env, "nvidia_gpu_present", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    ok, why = gpu_guard.nvidia_visible()
    assert not ok and "hides every GPU" in why
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert gpu_guard.nvidia_visible() == (True, "NVIDIA driver present")


def test_parse_utilization():
    assert gpu_guard.parse_utilization("37\n 41 %\n[N/A]\n") == [37.0, 41.0]


def test_sampler_averages_samples():
    argv = [sys.executable, "-c", "print('30'); print('50')"]
    s = gpu_guard.UtilizationSampler(argv=argv, interval=0.05).start()
    import time

    time.sleep(0.6)
    out = s.stop()
    assert out["gpu_util_mean"] == 40.0 and out["gpu_util_samples"] >= 2


def test_sampler_without_nvidia_smi(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    out = gpu_guard.UtilizationSampler(interval=0.05).start().stop()
    assert out["gpu_util_mean"] is None and "not sampled" in out["gpu_util_note"]


def test_real_sampler_follows_the_machine():
    """With the real nvidia-smi (GPU machines) samples are numbers; without one, a note says so."""
    import shutil

    import suite_core.env

    s = gpu_guard.UtilizationSampler(interval=0.2).start()
    import time

    time.sleep(1.0)
    out = s.stop()
    if shutil.which("nvidia-smi") and suite_core.env.nvidia_gpu_present():
        assert out["gpu_util_samples"] >= 1 and 0.0 <= out["gpu_util_mean"] <= 100.0, out
    else:
        assert out["gpu_util_mean"] is None and "not sampled" in out["gpu_util_note"], out


def test_real_visibility_follows_the_machine(monkeypatch):
    import suite_core.env

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    ok, why = gpu_guard.nvidia_visible()
    assert ok is suite_core.env.nvidia_gpu_present(), why


def test_runtime_check_names_the_provider_or_device_it_got(gpu_stage):
    gpu_guard.check_runtime(
        "dell/v",
        {"framework": "onnxruntime", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
        wanted_gpu=True,
    )
    gpu_guard.check_runtime("mineru/layout", {"framework": "torch", "device": "cuda:0"}, wanted_gpu=True)
    gpu_guard.check_runtime("paddle_layout/x", {"framework": "paddle", "device": "gpu:0"}, wanted_gpu=True)
    run = FakeRun()
    with pytest.raises(UserError, match="mineru/layout: torch runs on cpu"):
        gpu_guard.check_runtime(
            "mineru/layout", {"framework": "torch", "device": "cpu"}, wanted_gpu=True, run=run
        )
    assert run.report["gpu_guard"][0]["message"].startswith("mineru/layout: torch runs on cpu")
    with pytest.raises(UserError, match="paddle_layout/x: paddle runs on cpu"):
        gpu_guard.check_runtime("paddle_layout/x", {"framework": "paddle", "device": "cpu"}, wanted_gpu=False)
    with pytest.raises(UserError, match="ONNX Runtime runs on CPUExecutionProvider"):
        gpu_guard.check_runtime(
            "cdla/v", {"framework": "onnxruntime", "providers": ["CPUExecutionProvider"]}, wanted_gpu=False
        )


def test_runtime_check_leaves_cpu_jobs_alone(monkeypatch):
    monkeypatch.setenv("CONTAINERS_GPU_STAGE", "0")
    gpu_guard.check_runtime(
        "cdla/v", {"framework": "onnxruntime", "providers": ["CPUExecutionProvider"]}, wanted_gpu=False
    )
    with pytest.raises(
        UserError, match="torch runs on cpu"
    ):  # asked for CUDA and got the CPU: still an error
        gpu_guard.check_runtime("m/v", {"framework": "torch", "device": "cpu"}, wanted_gpu=True)
