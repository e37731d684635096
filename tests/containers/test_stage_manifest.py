"""The staging manifest: a plain-text format read at every job start, the JSON one of earlier
versions still trusted, and anything else never trusted (a doubt means re-check and copy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import containers.stage as st
from containers.stage import manifest_path, read_manifest, stage

REPO = Path(__file__).resolve().parents[2]


def make_tree(root: Path) -> Path:
    src = root / "shared" / "model"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(50_000))
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "tok.txt").write_text("tokens")
    return src


def v1_manifest(dst_dir: Path, src: Path) -> Path:
    """The JSON manifest an earlier version wrote (a dict per file), in place of today's."""
    files = []
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        s = p.stat()
        files.append({"path": p.relative_to(src).as_posix(), "size": s.st_size, "mtime_ns": s.st_mtime_ns})
    old = dst_dir / f".{src.name}.stage.json"
    old.write_text(json.dumps({"version": 1, "source": str(src), "name": src.name, "kind": "tree",
                               "files": files}))
    manifest_path(dst_dir, src.name).unlink()
    return old


def test_version_1_manifest_is_trusted_then_rewritten(tmp_path, monkeypatch):
    src = make_tree(tmp_path)
    dst_dir = tmp_path / "nvme"
    stage(src, dst_dir)
    old = v1_manifest(dst_dir, src)

    def no_copy(*a, **k):
        raise AssertionError("an upgrade must not restage a copy its old manifest vouches for")

    monkeypatch.setattr(st, "copy_file", no_copy)
    res = stage(src, dst_dir)
    assert (res.copied, res.removed) == (0, 0)
    assert not old.exists() and set(read_manifest(manifest_path(dst_dir, src.name)) or {}) == {
        "weights.bin", "config.json", "sub/tok.txt"}


def test_version_1_manifest_that_no_longer_matches_is_not_trusted(tmp_path):
    src = make_tree(tmp_path)
    dst_dir = tmp_path / "nvme"
    stage(src, dst_dir)
    v1_manifest(dst_dir, src)
    staged = dst_dir / src.name / "config.json"
    staged.write_text('{"a": 9}')  # same size; only the mtime tells
    os.utime(staged, ns=(1, 1))
    assert stage(src, dst_dir).copied == 1 and staged.read_text() == '{"a": 1}'


@pytest.mark.parametrize("damage", ["torn", "count", "version", "shape", "number", "escape", "json", "empty"])
def test_a_manifest_in_doubt_is_never_trusted(tmp_path, damage):
    src = make_tree(tmp_path)
    dst_dir = tmp_path / "nvme"
    stage(src, dst_dir)
    mpath = manifest_path(dst_dir, src.name)
    text = mpath.read_text()
    lines = text.splitlines(keepends=True)
    bad = {
        "torn": text[:-3],
        "count": "".join(lines[:3]),  # cut at a line end: the header still says 3 files
        "version": lines[0].replace("manifest 2", "manifest 3") + "".join(lines[1:]),
        "shape": lines[0] + "".join(ln.rsplit("\t", 1)[0] + "\n" for ln in lines[1:]),
        "number": lines[0] + "".join(ln.replace("\t", "\tx", 1) for ln in lines[1:]),
        "escape": lines[0] + "".join(ln.replace("\t", "\\q\t", 1) for ln in lines[1:]),
        "json": json.dumps({"version": 2, "files": []}),
        "empty": "",
    }[damage]
    mpath.write_text(bad)
    assert read_manifest(mpath) is None
    # every file is re-checked and copied again (no journal: nothing else vouches for them)
    res = stage(src, dst_dir)
    assert res.copied == 3 and read_manifest(mpath) is not None
    assert (dst_dir / src.name / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()


def test_any_file_name_round_trips(tmp_path):
    """Tabs, newlines, backslashes and bytes that are not UTF-8 in names and link targets."""
    src = tmp_path / "shared" / "odd"
    src.mkdir(parents=True)
    names = ["tab\there", "new\nline", "back\\slash\\t", "plain"]
    for n in names:
        (src / n).write_text(n)
    os.symlink("back\\slash\\t", src / "link\tto")
    raw = os.fsencode(src) + b"/caf\xe9.bin"  # latin-1 byte: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"x")
    dst_dir = tmp_path / "nvme"
    assert stage(src, dst_dir).copied == 6
    man = read_manifest(manifest_path(dst_dir, "odd"))
    assert man is not None and set(man) == {*names, "link\tto", os.fsdecode(b"caf\xe9.bin")}
    assert man["link\tto"].link == "back\\slash\\t"
    assert os.path.exists(os.fsencode(dst_dir / "odd") + b"/caf\xe9.bin")
    res = stage(src, dst_dir)
    assert (res.copied, res.removed) == (0, 0)


def test_noop_cli_imports_no_parser_config_or_json(tmp_path):
    """``python -m containers stage SRC /abs/DST`` (every job start) imports only what a stat
    check needs: no argparse, pathlib, json/re, Hydra, OmegaConf or YAML."""
    src = make_tree(tmp_path)
    dst = tmp_path / "nvme"
    argv = [sys.executable, "-X", "importtime", "-m", "containers", "stage", "-q", str(src), str(dst)]
    first = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == ""
    imported = {ln.split("|")[-1].strip() for ln in again.stderr.splitlines()
                if ln.startswith("import time:")}
    assert "containers.stage" in imported
    heavy = {"argparse", "pathlib", "json", "re", "hydra", "omegaconf", "yaml", "typing", "hashlib"}
    assert not heavy & imported, sorted(heavy & imported)
    # the same command line through argparse (another option) does the same thing
    slow = subprocess.run([sys.executable, *argv[3:-2], "--lock-timeout", "30", str(src), str(dst)],
                          cwd=REPO, capture_output=True, text=True)
    assert slow.returncode == 0 and slow.stdout == "", slow.stderr


def test_a_file_already_there_is_replaced_not_rewritten(tmp_path):
    """New files are written under their own name; one already there (a job may be reading it,
    or it is a link) is replaced by a rename: open readers keep the old bytes, links are not followed."""
    src = make_tree(tmp_path)
    dst_dir = tmp_path / "nvme"
    stage(src, dst_dir)
    staged = dst_dir / src.name / "weights.bin"
    old = staged.read_bytes()
    victim = tmp_path / "outside.txt"
    victim.write_text("keep me")
    (src / "new.txt").write_text("new")
    os.symlink(victim, dst_dir / src.name / "new.txt")  # a link where the source now has a file
    with open(staged, "rb") as reader:
        (src / "weights.bin").write_bytes(os.urandom(60_000))
        res = stage(src, dst_dir)
        assert res.copied == 2
        assert reader.read() == old  # the old inode, whole: not truncated under the reader
    assert staged.read_bytes() == (src / "weights.bin").read_bytes()
    assert victim.read_text() == "keep me" and not (dst_dir / src.name / "new.txt").is_symlink()
    assert (dst_dir / src.name / "new.txt").read_text() == "new"
    assert not list((dst_dir / src.name).rglob("*.part"))


@pytest.mark.parametrize("argv", [
    ["only-src"], ["src", "relative/dst"], ["--check", "src", "/dst"], ["-j4", "src", "/dst"],
    ["src", "/dst", "cluster=torch"], ["--jobs=2", "src", "/dst"], ["-j", "x", "src", "/dst"],
    ["--", "src", "/dst"], ["--image", "paddle"], ["", "/dst"], ["-j", "²", "src", "/dst"],
])
def test_fast_path_leaves_every_other_form_to_argparse(argv):
    from containers import cmd_slurm

    assert cmd_slurm.fast("stage", argv) is None
    assert cmd_slurm.fast("submit", ["pipeline"]) is None
