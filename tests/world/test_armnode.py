"""The arm64 node root's cache stamp: only a root whose marker holds this recipe's digest is used."""

from __future__ import annotations

import dataclasses

from suite_core.markers import write_marker
from tests.world import armnode, pieces, rootfs


def _fake_built(cache, digest: str):
    root, marker = armnode._paths(cache)
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "sbin" / "slurmd").write_text("")
    write_marker(marker, digest)
    return root, marker


def test_a_root_counts_only_with_its_own_digest(tmp_path):
    root, marker = _fake_built(tmp_path, "another recipe's digest")
    assert not armnode.is_built(tmp_path)  # stale stamp: ensure() would delete and rebuild it
    write_marker(marker, armnode.NODE.digest())
    assert armnode.is_built(tmp_path)
    (root / "usr" / "sbin" / "slurmd").unlink()
    assert not armnode.is_built(tmp_path)  # half-built or damaged: not trusted


def test_the_digest_follows_the_base_the_packages_and_the_steps():
    node = pieces.SPARK_NODE
    other_base = dataclasses.replace(node, base=dataclasses.replace(node.base, include=("python3",)))
    changed = [dataclasses.replace(node, packages=("slurmd",)),
               dataclasses.replace(node, steps=node.steps + 1), other_base]
    assert len({node.digest(), *(c.digest() for c in changed)}) == 4
    assert rootfs.root_path(node).name == f"{node.name}.{node.digest()[:12]}"
    assert node in pieces.EXTRA_ROOTS  # `python -m tests.world gc` keeps it
