"""Each recipe's %post and %test, run by real Apptainer in the test world (issue 11, deliver 3).

The same definition as production, with its build arguments swapping only the base (the world's
Debian bookworm SIF, Python 3.11) and the lock (the image's Python 3.11 x86_64 test lock from the
same .in). `apptainer build --userns` as an unprivileged user; a SIF exists only when %test
(`python -m containers.imagecheck`) passed. Built SIFs are cached in the world cache keyed by the
definition, lock, base and data they read (tests/containers/recipe_world.py): with a warm cache
each image costs one `apptainer exec` of today's imagecheck. docs/images.md says what this proves
and what only a cluster build proves.
"""

from __future__ import annotations

import shutil

import pytest

from containers.locks import get_image, make_test_lock, parse_lock
from tests.containers.recipe_world import (
    REPO,
    build_in_world,
    check_in_world,
    sources_unavailable,
    world_unavailable,
)

pytestmark = [pytest.mark.apptainer, pytest.mark.slow, pytest.mark.recipe_build]
IMAGES = ("mineru-dell-py310", "paddle-py312", pytest.param("flowportal-cu130", marks=pytest.mark.upstream))


@pytest.fixture(scope="module")
def world():
    why = world_unavailable()
    if why:
        pytest.skip(f"test world unavailable: {why}")


@pytest.mark.parametrize("image", IMAGES)
def test_recipe_post_and_test_pass_in_the_test_world(world, image):
    why = sources_unavailable(image)
    if why:
        pytest.skip(why)
    built = build_in_world(image)
    assert built.ok, f"{image}: the build failed (cached failure: {built.cached}):\n{built.log_tail[-4000:]}"
    ok, out = check_in_world(built, image)
    assert ok, out[-4000:]
    assert f"imagecheck {image}: all checks passed" in out
    # what the test build could not check is said, never silently passed
    if image != "paddle-py312":
        assert "left out of this test lock" in out


def test_dropping_a_needed_package_fails_the_build(world, tmp_path):
    """A recipe edit that drops rapid-layout (newsbag_embedded imports it) and relocks: %test fails."""
    repo = tmp_path / "repo"
    for sub in ("containers", "entrypoints", "suite_core", "hydra_conf", "recipes"):
        shutil.copytree(REPO / sub, repo / sub, ignore=shutil.ignore_patterns("__pycache__", "local"))
    for name in ("pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    inp = repo / "recipes" / "mineru-dell-py310.in"
    inp.write_text(inp.read_text().replace("rapid-layout==1.2.1\n", ""))
    lock = make_test_lock(get_image("mineru-dell-py310", repo), repo=repo)
    assert "rapid-layout" not in parse_lock(lock.read_text()).pins()
    built = build_in_world("mineru-dell-py310", repo=repo, tag="no-rapid-layout")
    assert not built.ok, "the build passed without rapid-layout"
    assert "module rapid_layout is not installed" in built.log_tail, built.log_tail[-3000:]
    assert "FATAL" in built.log_tail and "%test" in built.log_tail
