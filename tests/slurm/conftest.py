"""What the local-Slurm tests of the experiment pipelines and the DDP template share."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def env(slurm_cluster, isolated_roots):
    """The environment of a host-runtime submission to the local Slurm (torch is a dev dependency)."""
    import torch  # noqa: F401  (the example's trainings need it: a missing one fails, never skips)

    e = {**os.environ, **slurm_cluster.env, "CONTAINERS_RUNTIME": "host", "CONTAINERS_GPU_GUARD": "warn",
         "CONTAINERS_ACCOUNT": "suite_test"}
    e.pop("CI", None)
    return e
