"""Lint: Apptainer's vocabulary, each trap on a fixture definition or lock, and the real recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from containers import apptainer_vocab as vocab
from containers.lint import cuda_majors, lint_definition, lint_lock, lint_repo, parse_definition
from containers.locks import ImageSpec, load_images, parse_lock, stale_locks
from tests.helpers import APPTAINER_FACTS, REPO, assert_one_line_error, cli

DATA = REPO / "tests" / "data" / "recipes"
SPEC = ImageSpec(name="demo", recipe="good.def", arches=("amd64", "arm64"), python="3.10", cuda="12.8",
                 lock_input="demo.in", platforms={})


def errors(findings) -> list[str]:
    return [f.message for f in findings if f.severity == "error"]


def test_vocabulary_matches_apptainer_source_facts():
    assert set(APPTAINER_FACTS["deffile_sections"]) == vocab.SECTIONS
    assert set(APPTAINER_FACTS["deffile_app_sections"]) == vocab.APP_SECTIONS
    assert set(APPTAINER_FACTS["deffile_headers"]) == vocab.HEADERS
    for cmd, table in (("build", vocab.BUILD_FLAGS), ("test", vocab.TEST_FLAGS),
                       ("inspect", vocab.INSPECT_FLAGS)):
        facts = {f["name"]: f["takes_value"] for f in APPTAINER_FACTS["commands"][cmd]}
        assert facts == table, cmd


def test_good_definition_is_clean():
    assert errors(lint_definition(DATA / "good.def", None, repo=DATA)) == []


@pytest.mark.parametrize("fixture, needle", [
    ("bad-section.def", "unknown section %pots"),
    ("bad-header.def", "unknown header key 'Maintainer'"),
    ("unpinned.def", "'uv' is installed unpinned"),
    ("crlf.def", "CRLF line endings"),
    ("paddle-old.def", "paddlepaddle-gpu must be pinned explicitly to >= 3.2.1"),
    ("paddle-unpinned.def", "paddlepaddle-gpu must be pinned explicitly"),
    ("unknown-arg.def", "{{ CUDA_TAG }} has no default"),
    ("latest.def", "is not pinned to a tag"),
])
def test_definition_traps(fixture, needle):
    found = errors(lint_definition(DATA / fixture, None, repo=DATA))
    assert any(needle in m for m in found), found


def test_spython_alone_would_accept_an_unknown_section():
    """Why lint parses sections itself: spython keeps %pots as comments and reports nothing."""
    from spython.main.parse.parsers import SingularityParser

    layers = SingularityParser(str(DATA / "bad-section.def")).recipe
    assert any(r.fromHeader for r in layers.values())
    assert "pots" in parse_definition((DATA / "bad-section.def").read_text()).unknown_sections[0][0]


def test_base_image_python_must_match_the_lock_python():
    found = errors(lint_definition(DATA / "python-mismatch.def", SPEC, repo=DATA))
    assert any("has Python 3.12 but the image's locks target Python 3.10" in m for m in found), found
    found_ok = errors(lint_definition(DATA / "good.def", SPEC, repo=DATA))
    assert not any("Python" in m for m in found_ok), found_ok


def test_good_lock_is_clean():
    assert errors(lint_lock(DATA / "locks" / "good-amd64.txt", SPEC, "amd64", repo=DATA)) == []


@pytest.mark.parametrize("fixture, arch, needle", [
    ("unpinned-amd64.txt", "amd64", "numpy is not pinned with =="),
    ("unpinned-amd64.txt", "amd64", "pillow has no --hash"),
    ("mixed-cuda-amd64.txt", "amd64", "mixed CUDA majors"),
    ("decord-arm64.txt", "arm64", "decord has no aarch64 wheel"),
    ("ort-cp310-arm64.txt", "arm64", "onnxruntime-gpu has no aarch64 wheel for Python 3.10"),
    ("paddle-pypi-amd64.txt", "amd64", "paddlepaddle-gpu 2.6.2 came from PyPI"),
    ("python-mismatch-amd64.txt", "amd64", "lock was made for Python 3.12"),
    ("stale-amd64.txt", "amd64", "stale lock"),
    ("crlf-amd64.txt", "amd64", "CRLF line endings"),
])
def test_lock_traps(fixture, arch, needle):
    found = errors(lint_lock(DATA / "locks" / fixture, SPEC, arch, repo=DATA))
    assert any(needle in m for m in found), found


def test_changed_input_makes_the_lock_stale(tmp_path):
    """Editing the .in without relocking is caught offline."""
    (tmp_path / "demo.in").write_text((DATA / "demo.in").read_text() + "pillow==11.0.0\n")
    lock = tmp_path / "good-amd64.txt"
    lock.write_bytes((DATA / "locks" / "good-amd64.txt").read_bytes())
    assert errors(lint_lock(lock, SPEC, "amd64", repo=DATA)) == []
    found = errors(lint_lock(lock, SPEC, "amd64", repo=tmp_path))
    assert any("stale lock" in m for m in found), found


def test_cuda_majors_of_the_real_stacks():
    fp = parse_lock((REPO / "recipes/locks/flowportal-cu130-arm64.txt").read_text())
    assert set(cuda_majors(fp, arch="arm64").values()) == {13}
    md = parse_lock((REPO / "recipes/locks/mineru-dell-py310-amd64.txt").read_text())
    majors = cuda_majors(md, arch="amd64")
    assert majors["torch"] == 12 and majors["onnxruntime-gpu"] == 12
    assert set(majors.values()) == {12}


def test_real_locks_pin_the_stack_the_issue_asks_for():
    pins = {p.name: parse_lock(p.read_text()).pins() for p in (REPO / "recipes/locks").glob("*.txt")}
    assert pins["flowportal-cu130-amd64.txt"]["torch"] == "2.14.1"
    assert "decord" in pins["flowportal-cu130-amd64.txt"]
    assert "decord" not in pins["flowportal-cu130-arm64.txt"]
    assert "decord2" in pins["flowportal-cu130-arm64.txt"]
    assert pins["mineru-dell-py310-amd64.txt"]["onnxruntime-gpu"] == "1.23.2"
    assert pins["mineru-dell-py310-amd64.txt"]["torch"].startswith("2.10")
    assert pins["paddle-py312-amd64.txt"]["paddleocr"] == "3.7.0"
    assert "paddlepaddle-gpu" not in pins["paddle-py312-amd64.txt"]


def test_repository_recipes_and_locks_lint_clean():
    """What `make test` enforces: every real definition and lock passes, no lock is stale."""
    assert stale_locks(load_images().values()) == []
    assert [f.render() for f in lint_repo() if f.severity == "error"] == []


def test_lint_command():
    proc = cli("lint")
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(cli("lint", "no-such-image"), "unknown image 'no-such-image'")


def _repo_copy(tmp_path: Path) -> Path:
    """The parts of the repository `containers lint` reads, copied for a test to break."""
    import shutil

    for sub in ("containers", "hydra_conf", "recipes", "entrypoints"):
        shutil.copytree(REPO / sub, tmp_path / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_lint_command_reports_a_stale_lock(tmp_path):
    """A copy of the repository whose input changed: lint exits 1 and names the fix."""
    _repo_copy(tmp_path)
    inp = tmp_path / "recipes" / "mineru-dell-py310.in"
    inp.write_text(inp.read_text().replace("torch==2.10.0", "torch"))
    proc = cli("lint", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr
    assert "stale lock" in proc.stderr and "make lock IMAGE=mineru-dell-py310" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_section_in_a_recipe_fails_lint(tmp_path):
    _repo_copy(tmp_path)
    d = tmp_path / "recipes" / "paddle-py312.def"
    d.write_text(d.read_text().replace("%post", "%pots"))
    proc = cli("lint", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "unknown section %pots" in proc.stderr
    assert Path(tmp_path / "recipes" / "paddle-py312.def").is_file()
    pots = d.read_text().split("\n").index("%pots") + 1
    assert f"recipes/paddle-py312.def:{pots}: error: unknown section %pots" in proc.stderr


def test_make_lock_writes_header_and_body_once(tmp_path):
    """A lock from make_lock (uv stubbed by a script) carries our header and lints clean."""
    from containers.locks import make_lock

    (tmp_path / "demo.in").write_text("numpy==2.0.0\n")
    uv = tmp_path / "uv"
    uv.write_text('#!/bin/sh\nfor a; do out="$a"; done\n'
                  "printf 'numpy==2.0.0 \\\\\\n    --hash=sha256:abc\\n' > \"$out\"\n")
    uv.chmod(0o755)
    lock = make_lock(SPEC, "amd64", repo=tmp_path, uv=str(uv))
    assert lock.read_text().startswith("# containers-lock v1\n# image: demo\n")
    assert parse_lock(lock.read_text()).pins() == {"numpy": "2.0.0"}
    assert errors(lint_lock(lock, SPEC, "amd64", repo=tmp_path)) == []
    assert [p.name for p in lock.parent.iterdir()] == ["demo-amd64.txt"]


def test_lock_without_our_header_is_refused(tmp_path):
    body = (DATA / "locks" / "good-amd64.txt").read_text().split("containers-lock v1\n", 1)[1]
    lock = tmp_path / "demo-amd64.txt"
    lock.write_text(body)
    found = errors(lint_lock(lock, SPEC, "amd64", repo=DATA))
    assert any("no lock header" in m for m in found), found
