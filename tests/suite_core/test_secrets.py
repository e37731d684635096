"""No secret crosses into what the suite writes or prints; user values are never interpolated.

Each end-to-end test puts a real token value in the environment, runs the product as a user
would, and greps every file it wrote plus stdout and stderr for that value.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import shutil
from pathlib import Path

import pytest

from suite_core.secrets import drop_secret_vars, looks_secret, mask, protect_overrides
from tests.helpers import REPO, cli

SAMPLE = REPO / "entrypoints" / "newsbag" / "samples" / "chronicle_p01.png"


@pytest.fixture
def token(monkeypatch):
    """A fresh secret in the variables an attacker would name (and in allow-listed prefixes)."""
    value = "hf_" + pysecrets.token_hex(16)
    for var in ("HF_TOKEN", "CONTAINERS_API_TOKEN", "SLURM_DB_PASSWORD", "NEWSBAG_S3_SECRET_KEY"):
        monkeypatch.setenv(var, value)
    return value


def grep_tree(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle.encode() in p.read_bytes():
            hits.append(str(p))
    return hits


def test_names_that_look_secret():
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD",
                 "WANDB_API_KEY", "CONTAINERS_API_TOKEN", "SSH_KEY", "GITHUB_TOKEN", "MY_PASSWD"):
        assert looks_secret(name), name
    for name in ("TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "KEYBOARD", "HOME"):
        assert not looks_secret(name), name
    env = {"CONTAINERS_SCRATCH": "/s", "CONTAINERS_HF_TOKEN": "x" * 20, "TOKENIZERS_PARALLELISM": "false"}
    assert drop_secret_vars(env) == {"CONTAINERS_SCRATCH": "/s", "TOKENIZERS_PARALLELISM": "false"}


def test_mask_values_and_url_passwords(token):
    assert mask(f"x={token} y") == "x=*** y"
    assert mask("--index-url https://alice:s3cr3t-pw@pkgs.example.org/simple") == \
        "--index-url https://alice:***@pkgs.example.org/simple"
    assert mask("https://pkgs.example.org/simple git@github.com:x/y") == \
        "https://pkgs.example.org/simple git@github.com:x/y"


@pytest.mark.parametrize("value", ["scans_${oc.env:HF_TOKEN}", "'scans_${oc.env:HF_TOKEN}'",
                                   "a\\${oc.env:HF_TOKEN}", "${paths.runs}", "/data/a,b", "/data/it's",
                                   "it's \"q\""])
def test_user_values_stay_literal_through_compose_and_job_yaml(tmp_path, token, value):
    from suite_core.config import compose, to_yaml

    cfg = compose(["app=newsbag_embedded", f"input_dir={value}"])
    want = value[1:-1] if value.startswith("'") else value
    assert cfg.input_dir == want
    text = to_yaml(cfg)
    assert token not in text
    (tmp_path / "config.yaml").write_text(text)
    back = compose([], config_dir=tmp_path, config_name="config")  # what the job reads
    assert back.input_dir == want
    assert compose([], config_dir=tmp_path, config_name="config", resolve=False).input_dir == want


def test_lists_and_quoted_values_keep_their_meaning():
    assert protect_overrides(["x=[a,b]", "x='a,b'", "cluster=torch", "x={a: 1}", "~y"]) == \
        ["x=[a,b]", "x='a,b'", "cluster=torch", "x={a: 1}", "~y"]


def test_direct_run_with_an_interpolating_folder_name_leaks_nothing(tmp_path, token):
    """The issue's probe: an input folder named scans_${oc.env:HF_TOKEN}."""
    scans = tmp_path / "scans_${oc.env:HF_TOKEN}"
    scans.mkdir()
    shutil.copy(SAMPLE, scans / "p1.png")
    run_dir = tmp_path / "run"
    proc = cli("newsbag_embedded", f"input_dir={scans}", f"run_dir={run_dir}", "limit=1",
               "variants.cdla.low=null", "variants.ppocr_det=null", module="entrypoints")
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout + proc.stderr
    assert grep_tree(run_dir, token) == []
    report = (run_dir / "jobs" / "newsbag_embedded" / "run_report.json").read_text()
    assert "scans_${oc.env:HF_TOKEN}" in report  # the folder's real name, as data


def test_submit_dry_run_and_array_item_leak_nothing(tmp_path, token, isolated_roots):
    scans = tmp_path / "scans_${oc.env:HF_TOKEN}"
    scans.mkdir()
    shutil.copy(SAMPLE, scans / "p1.png")
    run_dir = tmp_path / "run"
    proc = cli("submit", "newsbag", "cluster=torch", "mode=embedded", "--dry-run", "--run-dir", str(run_dir),
               f"input_dir={scans}", "limit=1")
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout + proc.stderr
    assert grep_tree(run_dir, token) == []
    configs = list(run_dir.glob("jobs/*/steps/*/config.yaml"))
    assert configs and all("scans_\\${oc.env:HF_TOKEN}" in c.read_text() for c in configs
                           if "input_dir" in c.read_text())
    # the job reads its config back, with an interpolating array-manifest line as run_stage.sbatch passes it
    step = next(c.parent for c in configs if "newsbag_embedded" in c.parent.name)
    proc = cli("newsbag_embedded", "--config-path", str(step), "--config-name", "config",
               "array_item=${oc.env:HF_TOKEN}", "variants.cdla.low=null", "variants.ppocr_det=null",
               module="entrypoints")
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout + proc.stderr
    assert grep_tree(run_dir, token) == []
    assert (step / "run_report.json").is_file()


def test_allow_listed_prefixes_do_not_carry_secrets_into_containers(token, monkeypatch):
    monkeypatch.setenv("CONTAINERS_HF_TOKEN", token)
    proc = cli("exec", "paddle-py312", "--runtime", "apptainer", "--arch", "amd64", "--dry-run",
               "image_sif=/nonexistent/x.sif", "--", "python", "-c", "pass")
    host = cli("exec", "paddle-py312", "--runtime", "host", "--dry-run", "--", "env")
    for p in (proc, host):
        assert token not in p.stdout + p.stderr
        assert "CONTAINERS_API_TOKEN" not in p.stdout and "SLURM_DB_PASSWORD" not in p.stdout
    assert "CONTAINERS_SCRATCH" in host.stdout  # the allow-list itself still works
    from omegaconf import OmegaConf

    from containers.launch import container_env

    cfg = OmegaConf.create({"paths": {"repo": "/r", "cache": "/c", "caches": dict.fromkeys(
        ("hf", "torch", "triton", "inductor", "paddlex"), "/c")}})
    env = container_env(cfg, dict(os.environ))
    assert token not in env.values() and "SLURM_DB_PASSWORD" not in env


def test_credentialed_index_url_is_shown_masked(monkeypatch):
    monkeypatch.setenv("CONTAINERS_PADDLE_INDEX", "https://alice:pw-s3cr3t-123@pkgs.example.org/cu126/")
    proc = cli("build", "paddle-py312", "--arch", "amd64", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "pw-s3cr3t-123" not in proc.stdout + proc.stderr
    assert "PADDLE_INDEX=https://alice:***@pkgs.example.org/cu126/" in proc.stdout
