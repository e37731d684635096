"""Lint: Apptainer's vocabulary, each trap on a fixture definition or lock, the import closure of
every image against its locks (the gaps of issue 11 on the locks as they were), and the real recipes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from containers import apptainer_vocab as vocab
from containers.lint import (
    _check_presets,
    _check_sources,
    _check_unlocked_wheel,
    cuda_majors,
    image_closure,
    lint_closure,
    lint_definition,
    lint_lock,
    lint_repo,
    parse_definition,
)
from containers.locks import ImageSpec, get_image, load_images, parse_lock, stale_locks
from containers.wheels import load_facts
from tests.helpers import APPTAINER_FACTS, REPO, assert_one_line_error, cli

DATA = REPO / "tests" / "data" / "recipes"
PREFIX = DATA / "locks" / "prefix"   # the locks as they were before issue 11 (from main)
SPEC = ImageSpec(name="demo", recipe="good.def", arches=("amd64", "arm64"), python="3.10", cuda="12.8",
                 lock_input="demo.in", platforms={})
OLD_FORK = "tests/data/recipes/flowportal-e161b93.imports.json"   # the fork before its DGX work


def errors(findings) -> list[str]:
    return [f.message for f in findings if f.severity == "error"]


def prefix_facts() -> dict:
    return json.loads((PREFIX / "wheels.json").read_text())["wheels"]


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
    ("unpinned.def", "'uv==0.13.9' is installed by pip install outside the lock"),
    ("crlf.def", "CRLF line endings"),
    ("paddle-old.def", "paddlepaddle-gpu must be pinned explicitly to >= 3.2.1"),
    ("paddle-unpinned.def", "paddlepaddle-gpu must be pinned explicitly"),
    ("unknown-arg.def", "{{ CUDA_TAG }} has no default"),
    ("latest.def", "is not pinned to a tag"),
    ("hashes-comment.def", "does not install the lock with --require-hashes (a comment does not count)"),
    ("hashes-comment.def", "uv pip sync /opt/suite/lock.txt without --require-hashes"),
    ("bypass.def", "'albumentations func_timeout' is installed by uv pip install outside the lock"),
    ("pip-bypass.def", "'IPython==8.30.0' is installed by pip install outside the lock"),
    ("pythonpath.def", "replaces PYTHONPATH when it is set"),
])
def test_definition_traps(fixture, needle):
    found = errors(lint_definition(DATA / fixture, None, repo=DATA))
    assert any(needle in m for m in found), found


def test_files_must_not_copy_the_ignored_local_config():
    """hydra_conf/local/ (git-ignored: a user's accounts and paths) never goes into an image."""
    found = errors(lint_definition(DATA / "local-files.def", None, repo=REPO))
    assert any("holds the git-ignored hydra_conf/local/" in m for m in found), found
    assert errors(lint_definition(DATA / "good.def", None, repo=REPO)) == []


def test_cuda_base_under_cuda_wheels_is_refused(tmp_path):
    """The base must not ship the CUDA libraries the lock brings again as wheels."""
    (tmp_path / "recipes" / "locks").mkdir(parents=True)
    (tmp_path / "recipes" / "locks" / "demo-amd64.txt").write_text(
        "nvidia-cublas-cu12==12.8.4.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    shutil.copy(DATA / "cuda-base.def", tmp_path / "cuda-base.def")
    found = errors(lint_definition(tmp_path / "cuda-base.def", SPEC, repo=tmp_path))
    assert any("ships CUDA libraries that the lock brings again" in m for m in found), found


def test_spython_alone_would_accept_an_unknown_section():
    """Why lint parses sections itself: spython keeps %pots as comments and reports nothing."""
    from spython.main.parse.parsers import SingularityParser

    text = (DATA / "bad-section.def").read_text().replace("{{ BOOTSTRAP }}", "docker").replace(
        "{{ BASE }}", "ubuntu:22.04")
    rendered = DATA.parent.parent.parent / ".pytest_cache" / "bad-section-rendered.def"
    rendered.parent.mkdir(exist_ok=True)
    rendered.write_text(text)
    layers = SingularityParser(str(rendered)).recipe
    assert any(r.fromHeader for r in layers.values())
    assert "pots" in parse_definition(text).unknown_sections[0][0]


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
    ("deleted-amd64.txt", "amd64",
     "written with 2 packages and now has 1: 1 deleted by hand without relocking"),
    ("localver-amd64.txt", "amd64", "numpy==2.2.6+cu128 is a local version (+cu128)"),
    ("nobinary-amd64.txt", "amd64", "not compiled wheels-only (--only-binary :all:)"),
])
def test_lock_traps(fixture, arch, needle):
    found = errors(lint_lock(DATA / "locks" / fixture, SPEC, arch, repo=DATA))
    assert any(needle in m for m in found), found


def test_an_sdist_outside_the_allowlist_is_refused():
    """A lock entry whose only file is an sdist would need a compiler in the image."""
    good = parse_lock((DATA / "locks" / "good-amd64.txt").read_text())
    numpy = next(r for r in good.requirements if r.name == "numpy")
    facts = {h: {"file": "numpy-2.2.6.tar.gz", "size": 1, "modules": ["numpy"]} for h in numpy.sha256}
    found = errors(lint_lock(DATA / "locks" / "good-amd64.txt", SPEC, "amd64", repo=DATA, facts=facts))
    assert any("numpy==2.2.6 would be built from source" in m for m in found), found


def test_changed_input_makes_the_lock_stale(tmp_path):
    """Editing the .in without relocking is caught offline."""
    (tmp_path / "demo.in").write_text((DATA / "demo.in").read_text() + "pillow==11.0.0\n")
    lock = tmp_path / "good-amd64.txt"
    lock.write_bytes((DATA / "locks" / "good-amd64.txt").read_bytes())
    assert errors(lint_lock(lock, SPEC, "amd64", repo=DATA)) == []
    found = errors(lint_lock(lock, SPEC, "amd64", repo=tmp_path))
    assert any("stale lock" in m for m in found), found


# ------------------------------------------------------------ the import closure (issue 11 gaps)
@pytest.mark.parametrize("image, arch, modules", [
    ("flowportal-cu130", "amd64", {"hydra"}),
    ("flowportal-cu130", "arm64", {"hydra"}),
    ("mineru-dell-py310", "amd64", {"hydra", "omegaconf", "rapid_layout", "matplotlib"}),
    ("paddle-py312", "amd64", {"hydra", "omegaconf"}),
])
def test_locks_before_the_fix_miss_the_toolkit(image, arch, modules):
    """Gap 1: hydra (suite_core/config.py) in no lock, omegaconf missing from mineru and paddle,
    and the newsbag apps the mineru image serves (rapid_layout, matplotlib) not in its lock."""
    spec = get_image(image)
    found = errors(lint_closure(spec, arch, PREFIX / f"{image}-{arch}.txt", prefix_facts()))
    missing = {m.split("module '", 1)[1].split("'", 1)[0] for m in found if "module '" in m}
    assert modules <= missing, found
    assert all(f"({arch})" in m and f"make lock IMAGE={image}" in m for m in found)


def test_old_fork_imports_are_missing_from_the_old_lock():
    """Gap 2: the fork's videox_fun imports albumentations and func_timeout at module level, its
    preprocess script (before the DGX work) IPython; none was in the flowportal lock."""
    spec = dataclasses.replace(get_image("flowportal-cu130"), imports=OLD_FORK)
    for arch in spec.arches:
        found = errors(lint_closure(spec, arch, PREFIX / f"flowportal-cu130-{arch}.txt", prefix_facts()))
        missing = {m.split("module '", 1)[1].split("'", 1)[0] for m in found if "module '" in m}
        assert {"albumentations", "func_timeout", "IPython"} <= missing, found
        ipy = next(m for m in found if "'IPython'" in m)
        assert "FlowPortal@e161b93a:run-preprocess-flow-portal.py:41" in ipy


def test_the_fixed_locks_provide_every_import():
    """The same check on today's locks and pinned revision: nothing missing on any arch."""
    facts = load_facts()
    for spec in load_images().values():
        closure = image_closure(spec)
        for arch in spec.arches:
            assert errors(lint_closure(spec, arch, spec.lock_path(arch), facts, closure=closure)) == []
        assert "albumentations" in closure.required or spec.name != "flowportal-cu130"


def test_a_module_missing_for_one_arch_only(tmp_path):
    """The arm64 lock without the OpenCV wheel: cv2 (entrypoints.flowportal) fails on arm64 only."""
    spec = get_image("flowportal-cu130")
    text = spec.lock_path("arm64").read_text().split("\n")
    out, skip = [], False
    for ln in text:
        if ln.startswith("opencv-python-headless=="):
            skip = True
            continue
        if skip and ln.startswith("    "):
            continue
        skip = False
        out.append(ln)
    lock = tmp_path / "flowportal-cu130-arm64.txt"
    lock.write_text("\n".join(out))
    facts = load_facts()
    found = errors(lint_closure(spec, "arm64", lock, facts))
    assert len(found) == 1 and "module 'cv2'" in found[0] and "(arm64)" in found[0], found
    assert errors(lint_closure(spec, "amd64", spec.lock_path("amd64"), facts)) == []


def test_guarded_imports_are_allowed_and_listed():
    """decord (try/except ImportError in videox_fun) and pai_fuser (find_spec) are optional."""
    c = image_closure(get_image("flowportal-cu130"))
    assert {"decord", "pai_fuser", "flash_attn"} <= set(c.optional)
    assert "decord" not in c.required
    proc = cli("lint", "flowportal-cu130", "--list-optional")
    assert proc.returncode == 0, proc.stderr
    assert "flowportal-cu130: optional import decord" in proc.stdout


def test_an_old_fork_revision_without_the_dgx_flags_is_refused():
    """Gap 3: e161b93 has neither run-flow-portal-cat-dgx.sh nor the speed flags dgx_fast passes."""
    spec = get_image("flowportal-cu130")
    data = json.loads((REPO / OLD_FORK).read_text())
    found = errors(_check_presets(spec, REPO, data, OLD_FORK))
    assert any("FlowPortal revision e161b93af52e is upstream, not the fork's DGX revision" in m
               for m in found), found
    assert any("preset dgx_fast" in m and "--edge_mode canny is not accepted" in m for m in found), found
    stale = dataclasses.replace(spec, imports=OLD_FORK)
    d = parse_definition((REPO / spec.recipe).read_text())
    found = errors(_check_sources(stale, REPO, d))
    assert any("was extracted from revision e161b93af52e but recipes/flowportal-cu130.def pins "
               "FLOWPORTAL_REV=e60e1948d717" in m for m in found), found


def test_the_pinned_fork_revision_takes_both_presets():
    spec = get_image("flowportal-cu130")
    data = json.loads((REPO / spec.imports).read_text())
    assert data["sources"]["FlowPortal"]["revision"].startswith("e60e1948d717")
    assert errors(_check_presets(spec, REPO, data, spec.imports)) == []


def test_paddle_lock_before_the_fix_violates_the_cu126_wheel(tmp_path):
    """Gap 4: NCCL 2.21.5 (torch 2.6's) where the wheel needs 2.25.1; cusparselt, nvtx, cufile absent."""
    spec = get_image("paddle-py312")
    (tmp_path / "recipes" / "locks").mkdir(parents=True)
    shutil.copy(PREFIX / "paddle-py312-amd64.txt", tmp_path / "recipes" / "locks" / "paddle-py312-amd64.txt")
    shutil.copy(REPO / spec.unlocked_wheel["requires"], tmp_path / spec.unlocked_wheel["requires"])
    found = errors(_check_unlocked_wheel(spec, tmp_path))
    assert any("requires nvidia-nccl-cu12==2.25.1 but the amd64 lock pins nvidia-nccl-cu12==2.21.5" in m
               for m in found), found
    for name in ("nvidia-cusparselt-cu12", "nvidia-nvtx-cu12", "nvidia-cufile-cu12"):
        assert any(f"has no {name}" in m for m in found), (name, found)
    assert errors(_check_unlocked_wheel(spec, REPO)) == []


def test_cuda_majors_of_the_real_stacks():
    fp = parse_lock((REPO / "recipes/locks/flowportal-cu130-arm64.txt").read_text())
    assert set(cuda_majors(fp, arch="arm64").values()) == {13}
    md = parse_lock((REPO / "recipes/locks/mineru-dell-py310-amd64.txt").read_text())
    majors = cuda_majors(md, arch="amd64")
    assert majors["torch"] == 12 and majors["onnxruntime-gpu"] == 12
    assert set(majors.values()) == {12}


def test_real_locks_pin_the_stack_the_issue_asks_for():
    pins = {p.name: parse_lock(p.read_text()).pins() for p in (REPO / "recipes/locks").glob("*-*.txt")}
    fp_amd, fp_arm = pins["flowportal-cu130-amd64.txt"], pins["flowportal-cu130-arm64.txt"]
    assert fp_amd["torch"] == "2.14.1"
    assert "decord" in fp_amd and "decord" not in fp_arm and "decord2" in fp_arm
    for p in (fp_amd, fp_arm):
        assert {"albumentations", "func-timeout", "hydra-core", "omegaconf"} <= set(p)
    md = pins["mineru-dell-py310-amd64.txt"]
    assert md["onnxruntime-gpu"] == "1.23.2" and md["torch"].startswith("2.10")
    assert "onnxruntime" not in md and "opencv-python" not in md   # excluded: same modules
    pd = pins["paddle-py312-amd64.txt"]
    assert pd["paddleocr"] == "3.7.0" and "paddlepaddle-gpu" not in pd
    assert pd["nvidia-nccl-cu12"] == "2.25.1"
    assert {"nvidia-cusparselt-cu12", "nvidia-nvtx-cu12", "nvidia-cufile-cu12"} <= set(pd)
    for p in pins.values():
        assert {"hydra-core", "omegaconf", "pyyaml", "spython", "rich"} <= set(p)


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
    for sub in ("containers", "hydra_conf", "recipes", "entrypoints", "suite_core"):
        shutil.copytree(REPO / sub, tmp_path / sub, ignore=shutil.ignore_patterns("__pycache__", "local"))
    for name in ("pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, tmp_path / name)
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


def test_an_in_without_hydra_core_fails_lint_in_one_line(tmp_path):
    """Bad input: the toolkit's hydra-core dropped from an .in: what, which image, fix."""
    _repo_copy(tmp_path)
    inp = tmp_path / "recipes" / "paddle-py312.in"
    inp.write_text(inp.read_text().replace("hydra-core>=1.3,<1.4\n", ""))
    proc = cli("lint", "paddle-py312", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    line = next(ln for ln in proc.stderr.splitlines() if "hydra-core (a host toolkit dependency" in ln)
    assert "image paddle-py312" in line and "fix: add it and make lock IMAGE=paddle-py312" in line


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


def test_a_pipeline_step_in_an_image_without_that_app_fails_lint(tmp_path):
    _repo_copy(tmp_path)
    y = tmp_path / "hydra_conf" / "image" / "mineru-dell-py310.yaml"
    y.write_text(y.read_text().replace(", review,", ","))
    proc = cli("lint", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "step runs app review in image mineru-dell-py310, whose apps list lacks it" in proc.stderr


def _local_index(tmp_path: Path) -> Path:
    """A PEP 503 index in a directory holding one real (tiny) wheel: uv runs for real, offline."""
    import base64
    import hashlib
    import zipfile

    name = "demo_pkg-1.0-py3-none-any.whl"
    files = {"demo_pkg/__init__.py": b"", "demo_pkg-1.0.dist-info/METADATA":
             b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
             "demo_pkg-1.0.dist-info/WHEEL":
             b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{p},sha256={digest(d)},{len(d)}\n" for p, d in files.items())
    record += "demo_pkg-1.0.dist-info/RECORD,,\n"
    pkg = tmp_path / "index" / "demo-pkg"
    pkg.mkdir(parents=True)
    with zipfile.ZipFile(pkg / name, "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
        zf.writestr("demo_pkg-1.0.dist-info/RECORD", record)
    (pkg / "index.html").write_text(f'<a href="{name}">{name}</a>\n')
    return tmp_path / "index"


def test_make_lock_writes_header_and_body_once(tmp_path, monkeypatch):
    """A lock from make_lock (real uv, a local index) carries our header and lints clean."""
    from containers.locks import make_lock

    monkeypatch.setenv("UV_DEFAULT_INDEX", (_local_index(tmp_path)).as_uri())
    monkeypatch.setenv("UV_OFFLINE", "1")
    (tmp_path / "demo.in").write_text("demo-pkg==1.0\n")
    lock = make_lock(SPEC, "amd64", repo=tmp_path)
    text = lock.read_text()
    assert text.startswith("# containers-lock v2\n# image: demo\n# arch: amd64\n# variant: production\n")
    assert parse_lock(text).pins() == {"demo-pkg": "1.0"}
    assert errors(lint_lock(lock, SPEC, "amd64", repo=tmp_path)) == []
    assert sorted(p.name for p in lock.parent.iterdir()) == ["demo-amd64.txt"]


def test_lock_without_our_header_is_refused(tmp_path):
    body = (DATA / "locks" / "good-amd64.txt").read_text().split("# regenerate: make lock IMAGE=demo\n", 1)[1]
    lock = tmp_path / "demo-amd64.txt"
    lock.write_text(body)
    found = errors(lint_lock(lock, SPEC, "amd64", repo=DATA))
    assert any("no lock header" in m for m in found), found


def _index_reachable() -> bool:
    import subprocess
    import sys

    uv = str(Path(sys.executable).with_name("uv"))
    proc = subprocess.run([uv, "pip", "compile", "-", "--python-version", "3.11", "--quiet", "--no-header"],
                          input="six==1.17.0\n", capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "UV_PYTHON_DOWNLOADS": "never"})
    return proc.returncode == 0


def test_lock_check_tells_relock_from_newer_releases(tmp_path):
    """make lock-check: newer releases are reported (exit 0); a changed input fails (exit 1)."""
    if not _index_reachable():
        pytest.skip("the package index is not reachable from here")
    repo = _repo_copy(tmp_path)
    (repo / "recipes" / "tiny.in").write_text("six\n")
    (repo / "hydra_conf" / "image" / "tiny.yaml").write_text(
        "name: tiny\nrecipe: recipes/tiny.def\narches: [amd64]\npython: \"3.11\"\n"
        "lock: {input: recipes/tiny.in}\n")
    env = {"PYTHONPATH": str(repo), "UV_PYTHON_DOWNLOADS": "never"}
    old = cli("lock", "tiny", "--arch", "amd64", cwd=repo,
              env={**env, "UV_EXCLUDE_NEWER": "2019-01-01T00:00:00Z"})
    assert old.returncode == 0, old.stderr
    assert "six==1.12.0" in (repo / "recipes" / "locks" / "tiny-amd64.txt").read_text()
    proc = cli("lock", "--check", "tiny", cwd=repo, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tiny amd64: current with its inputs; newer releases exist" in proc.stdout
    assert "six 1.12.0 -> 1.17.0" in proc.stdout
    (repo / "recipes" / "tiny.in").write_text("six\nrequests\n")
    proc = cli("lock", "--check", "tiny", cwd=repo, env=env)
    assert proc.returncode == 1
    assert "tiny amd64: INPUTS CHANGED (its inputs changed since it was made): relock: make lock IMAGE=tiny" \
        in proc.stdout
    assert "Traceback" not in proc.stderr


def test_the_unlocked_wheel_version_must_be_the_one_whose_requirements_are_checked(tmp_path):
    _repo_copy(tmp_path)
    d = tmp_path / "recipes" / "paddle-py312.def"
    d.write_text(d.read_text().replace("PADDLE_VERSION=3.2.1", "PADDLE_VERSION=3.3.0"))
    proc = cli("lint", "paddle-py312", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "installs paddlepaddle-gpu==3.3.0 but lock.unlocked_wheel declares version 3.2.1" in proc.stderr


def test_a_cpu_only_image_says_gpu_false_and_cuda_none(tmp_path):
    """`gpu: false` in the image yaml is the one way to drop the torch/paddle label, and it must say
    `cuda none`; a GPU image still must name its framework and may not say `cuda none`."""
    good = (DATA / "good.def").read_text()
    cpu = good.replace("    cuda 12.8\n    torch 2.10.0\n", "    cuda none\n")
    (tmp_path / "cpu.def").write_text(cpu)
    cpu_spec = dataclasses.replace(SPEC, cuda=None, gpu=False)
    labels = [m for m in errors(lint_definition(tmp_path / "cpu.def", cpu_spec, repo=DATA)) if "label" in m]
    assert labels == [], labels
    found = errors(lint_definition(tmp_path / "cpu.def", SPEC, repo=DATA))
    assert any("names neither a torch nor a paddle version" in m for m in found), found
    assert any("says cuda none but the image yaml says gpu: true" in m for m in found), found
    (tmp_path / "cuda.def").write_text(good.replace("    torch 2.10.0\n", ""))
    found = errors(lint_definition(tmp_path / "cuda.def", cpu_spec, repo=DATA))
    assert any("says cuda 12.8 but the image yaml says gpu: false" in m for m in found), found
    both = dataclasses.replace(SPEC, gpu=False)
    found = errors(lint_definition(tmp_path / "cpu.def", both, repo=DATA))
    assert any("says gpu: false and cuda: 12.8" in m for m in found), found
