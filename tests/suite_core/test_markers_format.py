"""The marker fingerprint's exact form: markers already on disk stay valid only while it holds."""

from __future__ import annotations

import hashlib
import os

from suite_core.markers import file_facts, fingerprint


def test_fingerprint_is_the_sha256_of_the_documented_canonical_form(tmp_path):
    f = tmp_path / "in.mp4"
    f.write_bytes(b"x" * 10)
    os.utime(f, ns=(5, 1_000_000_007))
    doc = ('{"code":"c","inputs":[{"mtime_ns":1000000007,"name":"in.mp4","size":10},'
           '{"missing":true,"name":"gone.mp4"}],"settings":{"a":1,"b":[2,"z"]},"v":1}')
    want = hashlib.sha256(doc.encode()).hexdigest()
    settings = {"b": [2, "z"], "a": 1}
    assert fingerprint(settings, [f, tmp_path / "gone.mp4"], "c") == want
    assert fingerprint(settings, [str(f), f"{tmp_path}/gone.mp4"], "c") == want  # str or Path alike
    hashed = fingerprint(settings, [f], "c", hash_inputs=True)
    assert hashed != fingerprint(settings, [f], "c")
    assert file_facts(f, content=True)["sha256"] == hashlib.sha256(b"x" * 10).hexdigest()
    assert file_facts(str(f) + "/") == {"path": str(f), "size": 10, "mtime_ns": 1_000_000_007}
