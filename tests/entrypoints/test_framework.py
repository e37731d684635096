"""Run reports and device selection."""

from __future__ import annotations

import json

import pytest

from entrypoints.framework import Run, select_device
from suite_core.config import compose
from suite_core.errors import UserError


def _run(tmp_path):
    cfg = compose(["app=doctor", f"run_dir={tmp_path}"])
    return Run("doctor", cfg, tmp_path / "jobs" / "doctor" / "run_report.json")


def test_report_is_saved_after_each_step_and_records_failures(tmp_path):
    run = _run(tmp_path)
    with run.step("load"):
        pass
    with pytest.raises(ValueError), run.step("infer"):
        raise ValueError("bad page")
    rep = json.loads(run.report_path.read_text())
    assert [(s["name"], s["status"]) for s in rep["steps"]] == [("load", "ok"), ("infer", "failed")]
    assert rep["steps"][1]["error"] == "bad page"
    assert rep["exit_status"] is None  # not finished yet: a killed job shows this
    run.finish(1, "bad page")
    rep = json.loads(run.report_path.read_text())
    assert rep["exit_status"] == 1 and rep["end"] and rep["seconds"] >= 0
    assert "load" in run.timing_table()


def test_skips_and_outputs_are_listed(tmp_path):
    run = _run(tmp_path)
    (tmp_path / "o.txt").write_text("x")
    run.output(tmp_path / "o.txt")
    run.skip("page7.png", "not an image")
    run.finish(0)
    rep = json.loads(run.report_path.read_text())
    assert rep["outputs"] == [{"path": str(tmp_path / "o.txt"), "bytes": 1}]
    assert rep["skipped"] == [{"item": "page7.png", "reason": "not an image"}]


def test_device_selection_records_why():
    no_gpu = lambda: (False, "no CUDA device visible")  # noqa: E731
    gpu = lambda: (True, "")  # noqa: E731
    assert select_device("auto", "cpu", gpu).used == "cuda"
    d = select_device("auto", "error", no_gpu)
    assert (d.used, d.why) == ("cpu", "CPU fallback: no CUDA device visible")
    d = select_device("cuda:1", "cpu", no_gpu)
    assert d.used == "cpu" and d.requested == "cuda:1"
    assert select_device("cuda:1", "cpu", gpu).used == "cuda:1"
    assert select_device("cpu", "error", gpu).used == "cpu"
    with pytest.raises(UserError, match="device=cuda requested but no usable GPU"):
        select_device("cuda", "error", no_gpu)
