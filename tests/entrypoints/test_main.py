"""The entrypoint dispatcher: fast help, app discovery, bad input, two-level config."""

from __future__ import annotations

import json

import onnx

from entrypoints import discover
from entrypoints.onnx_tiny import add_model
from suite_core.config import compose, to_yaml
from tests.helpers import assert_one_line_error, cli


def test_help_lists_apps_without_importing_hydra():
    proc = cli("--help", module="entrypoints")
    assert proc.returncode == 0 and "doctor" in proc.stdout
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "entrypoints", "--help"],
                         capture_output=True, text=True, check=True)
    imported = {ln.split("|")[-1].strip() for ln in out.stderr.splitlines() if "|" in ln}
    assert not {"hydra", "omegaconf", "torch", "numpy", "onnxruntime", "paddle"} & imported


def test_every_app_config_names_an_importable_module():
    import importlib.util

    for name, (module, summary) in discover().items():
        assert importlib.util.find_spec(module) is not None, (name, module)
        assert summary, name


def test_app_help_shows_settings():
    proc = cli("doctor", "--help", module="entrypoints")
    assert proc.returncode == 0 and "require" in proc.stdout


def test_bad_input():
    assert_one_line_error(cli("nope", module="entrypoints"), "unknown app 'nope'")
    assert_one_line_error(cli("doctor", "--frob", module="entrypoints"), "unknown flag '--frob'")
    assert_one_line_error(cli("doctor", "a=[", module="entrypoints"), "malformed override")
    assert_one_line_error(cli("doctor", "--config-path", "/nonexistent", module="entrypoints"),
                          "config file config.yaml not found")


def test_two_level_config_runs_from_a_job_folder(tmp_path):
    job = tmp_path / "jobs" / "doctor"
    job.mkdir(parents=True)
    cfg = compose(["app=doctor", f"run_dir={tmp_path}", "require=[onnx]"])
    (job / "config.yaml").write_text(to_yaml(cfg))
    proc = cli("doctor", "--config-path", str(job), "--config-name", "config", module="entrypoints")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "jobs" / "doctor" / "run_report.json").read_text())
    assert rep["exit_status"] == 0 and rep["run_dir"] == str(tmp_path)


def test_config_for_another_app_is_refused(tmp_path):
    cfg = compose(["app=doctor", f"run_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg).replace("app_name: doctor", "app_name: fusion"))
    proc = cli("doctor", "--config-path", str(tmp_path), module="entrypoints")
    assert_one_line_error(proc, "config is for app 'fusion'")


def test_tiny_onnx_model_is_valid():
    model = onnx.load_from_string(add_model())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Add"]


def test_flags_map_to_overrides():
    from entrypoints.main import _split

    flags = {"--require": "require[]", "--input-dir": "input_dir", "--recursive": "recursive?"}
    ov, *_ = _split(["--require", "gpu, onnx", "--input-dir=/a b", "--recursive", "x=1"], flags)
    assert ov == ["require=[gpu,onnx]", "input_dir='/a b'", "recursive=true", "x=1"]
    ov, *_ = _split(["--input-dir", "/scans/it's,2026"], flags)
    cfg = compose(["app=doctor", f"+{ov[0]}"])
    assert cfg.input_dir == "/scans/it's,2026"
    ov, *_ = _split(["--recursive=False"], flags)
    assert ov == ["recursive=false"]
