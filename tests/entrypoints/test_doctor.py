"""The doctor on this machine (CPU, host runtime) and its GPU-coverage rule."""

from __future__ import annotations

import json

import pytest

from entrypoints.apps.doctor import arch_covered
from suite_core.env import nvidia_gpu_present
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


# the driver floor (issue 11): an image's CUDA needs a driver at least as new as hydra_conf/image
@pytest.mark.parametrize(("found", "image", "ok", "needles"), [
    ("570.86.10", "flowportal-cu130", False,
     ["driver 570.86.10 on this node is older than 580.65.06", "flowportal-cu130 (CUDA 13.0)",
      "partitions with it: dgx_spark/gb10 (spark, driver 580.95.05)"]),
    ("580.95.05", "flowportal-cu130", True, ["580.95.05 >= 580.65.06"]),
    ("535.104.05", "mineru-dell-py310", True, [">= 525.60.13 (CUDA 12.8"]),
    ("470.57.02", "paddle-py312", False, ["older than 525.60.13", "paddle-py312 (CUDA 12.6)"]),
    (None, "flowportal-cu130", True, ["no NVIDIA driver visible"]),
    ("570.86.10", None, True, ["not inside a known image"]),
])
def test_driver_floor_compares_found_with_the_image_needs(found, image, ok, needles):
    from entrypoints.apps.doctor import check_driver_floor
    from suite_core.config import compose

    cfg = compose(["cluster=dgx_spark"])
    got, line = check_driver_floor(found, image, cfg)
    assert got is ok
    assert "\n" not in line
    for n in needles:
        assert n in line, (n, line)


def test_driver_floor_names_no_partition_when_none_records_one():
    from entrypoints.apps.doctor import check_driver_floor
    from suite_core.config import compose

    ok, line = check_driver_floor("570.86.10", "flowportal-cu130", compose(["cluster=torch"]))
    assert not ok and "no partition of this cluster config records a driver that new" in line


def test_doctor_inside_an_image_reports_the_driver_check(tmp_path):
    """CONTAINERS_IMAGE (set by each image's %environment) selects the floor; GPU or not."""
    out = tmp_path / "doctor.json"
    proc = cli("doctor", f"json={out}", module="entrypoints", env={"CONTAINERS_IMAGE": "flowportal-cu130"})
    drv = json.loads(out.read_text())["driver"]
    assert drv["image"] == "flowportal-cu130"
    if drv["found"] is None:  # no NVIDIA driver on this machine: nothing to compare
        assert drv["ok"] is True and proc.returncode == 0, proc.stderr
    else:
        new_enough = tuple(int(p) for p in drv["found"].split(".")) >= (580, 65, 6)
        assert drv["ok"] is new_enough
        assert proc.returncode == (0 if new_enough else 1)
        if not new_enough:
            assert "older than 580.65.06" in proc.stderr and "Traceback" not in proc.stderr
