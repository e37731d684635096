"""The doctor on this machine (CPU, host runtime) and its GPU-coverage rule."""

from __future__ import annotations

import json

import pytest

from containers.launch import nvidia_gpu_present
from entrypoints.apps.doctor import arch_covered
from tests.helpers import assert_one_line_error, cli


@pytest.mark.parametrize(("cap", "archs", "ok"), [
    ((12, 1), ["sm_80", "sm_90", "sm_100", "sm_120"], True),     # GB10 runs sm_120 SASS
    ((12, 0), ["sm_80", "sm_90", "sm_121"], False),               # newer minor cannot run on older
    ((9, 0), ["sm_80", "sm_86"], False),                          # no sm_9x, no PTX
    ((9, 0), ["sm_80", "compute_80"], True),                      # PTX JIT
    ((8, 9), ["sm_80", "sm_86", "sm_90"], True),                  # L40S (8.9) runs sm_86
    ((10, 0), ["sm_90a", "sm_100a"], True),
])
def test_arch_covered_same_major_rule(cap, archs, ok):
    assert arch_covered(cap, archs)[0] is ok


def test_doctor_runs_here_and_reports_absent_as_absent(tmp_path):
    out = tmp_path / "doctor.json"
    proc = cli("doctor", f"json={out}", module="entrypoints")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    result = json.loads(out.read_text())
    caps = result["capabilities"]
    assert set(caps) >= {"gpu", "torch", "torch-cuda", "onnx", "onnx-cuda", "paddle", "paddle-cuda",
                         "video", "caches", "models"}
    # the test venv: onnxruntime (CPU build) and OpenCV, no paddle; a GPU only where the driver is
    assert caps["onnx"]["ok"] and result["onnxruntime"]["provider_used"] == "CPUExecutionProvider"
    assert result["onnxruntime"]["inference_ok"] is True
    assert caps["gpu"]["ok"] is nvidia_gpu_present(), caps["gpu"]
    assert caps["onnx-cuda"]["ok"] is False  # the CPU wheel has no CUDA provider, GPU or not
    assert result["paddle"] == {"present": False}
    assert caps["caches"]["ok"], caps["caches"]["detail"]  # the framework puts caches on node-local disk
    assert "cv2" in result["video"]["readers"]
    assert "onnx" in proc.stdout and "gpu" in proc.stdout


def test_doctor_report_records_the_run(isolated_roots):
    proc = cli("doctor", module="entrypoints")
    assert proc.returncode == 0, proc.stderr
    reports = list((isolated_roots / "scratch" / "runs" / "doctor").glob("*/jobs/doctor/run_report.json"))
    assert len(reports) == 1
    rep = json.loads(reports[0].read_text())
    assert rep["app"] == "doctor" and rep["exit_status"] == 0
    assert rep["steps"][0]["name"] == "probe" and rep["steps"][0]["status"] == "ok"
    assert rep["versions"]["python"] and rep["end"] and rep["doctor"]["capabilities"]


def test_require_missing_capability_is_an_error():
    proc = cli("doctor", "--require", "onnx,paddle", module="entrypoints")
    assert proc.returncode == 1
    assert "missing required capabilities: paddle" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_require_gpu_follows_the_machine():
    """Here (no GPU) --require gpu fails; on a GPU machine it passes: the same test holds on both."""
    proc = cli("doctor", "--require", "gpu", module="entrypoints")
    if nvidia_gpu_present():
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 1 and "missing required capabilities: gpu" in proc.stderr


def test_require_present_capability_passes():
    proc = cli("doctor", "--require", "onnx", module="entrypoints")
    assert proc.returncode == 0, proc.stderr


def test_unknown_capability():
    assert_one_line_error(cli("doctor", "--require", "warp-drive", module="entrypoints"),
                          "unknown capability 'warp-drive'")
