"""Atomic writes: a failure leaves the old file whole and no temporary behind."""

from __future__ import annotations

import pytest

from suite_core.atomic import atomic_path, write_json, write_text


def test_success_replaces(tmp_path):
    dst = tmp_path / "a" / "out.txt"
    write_text(dst, "one")
    write_text(dst, "two")
    assert dst.read_text() == "two"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["out.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    dst = tmp_path / "out.json"
    write_json(dst, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(dst) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert dst.read_text().strip().startswith("{") and '"v": 1' in dst.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_suffix_is_kept_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "x.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.name.startswith(".x.png.")
        tmp.write_bytes(b"png")
    assert (tmp_path / "x.png").read_bytes() == b"png"


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    dst = write_text(tmp_path / "shared.txt", "x")
    assert dst.stat().st_mode & 0o777 == 0o666 & ~mask
