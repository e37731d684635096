"""Shared fixtures. Tests never touch the user's real roots: every CONTAINERS_* root points
into a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.plugins.slurm_cluster", "tests.plugins.world", "tests.plugins.smb_share"]


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path_factory, monkeypatch):
    """Scratch, node-local and shared roots in a fresh temporary directory per test."""
    root = tmp_path_factory.mktemp("roots")
    for var, sub in (("CONTAINERS_SCRATCH", "scratch"), ("CONTAINERS_NODE_LOCAL", "nvme"),
                     ("CONTAINERS_SHARED_ROOT", "shared")):
        (root / sub).mkdir()
        monkeypatch.setenv(var, str(root / sub))
    for var in ("CONTAINERS_CLUSTER", "CONTAINERS_RUNTIME", "CONTAINERS_IMAGES", "CONTAINERS_MODELS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", os.environ.get("USER", "tester"))
    return root
