"""Hash-pinned requirement locks per image and arch, made with ``uv pip compile``.

A lock is ``recipes/locks/<image>-<arch>.txt``: uv's requirements output (every package ``==`` with
all its ``--hash`` values, so ``uv pip sync --require-hashes`` installs exactly it) under a header of
``# key: value`` lines we write ourselves. The header records the sha256 of the lock's inputs (the
``.in`` file plus the target Python and platform), so a test can tell offline that an input changed
without relocking; resolving again needs the network and is ``make lock`` / ``make lock-check``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers import REPO_ROOT
from containers.images import POINTER_PATTERN, SIF_PATTERN
from suite_core.arch import UNAME, normalize
from suite_core.errors import UserError

LOCK_FORMAT = "containers-lock v2"
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")
# Locks are wheels only (an sdist would need a compiler the images do not have), except these
# pure-Python sdists that have no wheel at the version their dependents pin.
SOURCE_OK = {
    "antlr4-python3-runtime": "pure Python; omegaconf 2.3 / hydra-core 1.3 pin 4.9.*, published "
                              "as an sdist only (without it uv silently picks hydra-core 0.11)",
    "func-timeout": "pure Python, published as an sdist only; the FlowPortal fork's videox_fun "
                    "imports it at module level",
}
# The bootstrap tools a definition installs before the lock: uv itself (hash-pinned), and the
# build backend of the sdists above (uv builds them with --require-build-hashes against it).
TOOLS_INPUT = Path("recipes") / "tools.in"
TOOLS_LOCK = Path("recipes") / "locks" / "tools.txt"
# Where the test-world locks (Python 3.11 x86_64, CPU builds) live.
TEST_LOCK_DIR = Path("recipes") / "locks" / "test"


def binary_args() -> list[str]:
    """uv flags: wheels only, except the pure-Python sdists in SOURCE_OK."""
    out = ["--only-binary", ":all:"]
    for name in sorted(SOURCE_OK):
        out += ["--no-binary", name]
    return out


def canonical(name: str) -> str:
    """PEP 503 normalized project name (``Pillow`` == ``pillow``, ``a_b`` == ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class ImageSpec:
    """What the lock and build tooling needs from ``hydra_conf/image/<name>.yaml``."""

    name: str
    recipe: str
    arches: tuple[str, ...]
    python: str
    cuda: str | None
    lock_input: str
    platforms: dict[str, str]
    unsupported: dict[str, str] = field(default_factory=dict)
    build_env_args: dict[str, str] = field(default_factory=dict)
    sif: str = SIF_PATTERN
    pointer: str = POINTER_PATTERN
    apps: tuple[str, ...] = ()
    exclude: dict[str, str] = field(default_factory=dict)      # package -> why (another provides it)
    test_build: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # code the image clones
    imports: str | None = None                                  # their extracted imports (data)
    imports_not_needed: dict[str, str] = field(default_factory=dict)  # module -> why not needed
    unlocked_wheel: dict[str, str] = field(default_factory=dict)      # name, version, requires
    driver_min: str | None = None
    doctor: dict[str, list[str]] = field(default_factory=dict)        # gpu/cpu -> capabilities
    gpu: bool = True                 # false: a CPU-only image (labels say cuda none, no torch/paddle)

    def lock_path(self, arch: str, repo: Path = REPO_ROOT) -> Path:
        return repo / "recipes" / "locks" / f"{self.name}-{normalize(arch)}.txt"

    def test_lock_path(self, repo: Path = REPO_ROOT) -> Path:
        py = str(self.test_build.get("python", "3.11")).replace(".", "")
        return repo / TEST_LOCK_DIR / f"{self.name}-amd64-py{py}.txt"


def load_images(repo: Path = REPO_ROOT) -> dict[str, ImageSpec]:
    """Read every image yaml directly (plain data, no interpolations): lint must not pay for Hydra."""
    import yaml

    out: dict[str, ImageSpec] = {}
    for path in sorted((repo / "hydra_conf" / "image").glob("*.yaml")):
        data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        lock = data.get("lock") or {}
        build = data.get("build") or {}
        try:
            out[data["name"]] = ImageSpec(
                name=str(data["name"]), recipe=str(data["recipe"]),
                arches=tuple(normalize(a) for a in data["arches"]), python=str(data["python"]),
                cuda=str(data["cuda"]) if data.get("cuda") else None,
                lock_input=str(lock.get("input", f"recipes/{data['name']}.in")),
                platforms={normalize(k): str(v) for k, v in (lock.get("platforms") or {}).items()},
                unsupported={normalize(k): str(v) for k, v in (data.get("unsupported") or {}).items()},
                build_env_args={str(k): str(v) for k, v in (build.get("env_args") or {}).items()},
                apps=tuple(str(a) for a in data.get("apps") or ()),
                exclude={canonical(str(k)): str(v) for k, v in (lock.get("exclude") or {}).items()},
                test_build=dict(data.get("test_build") or {}),
                sources={str(k): dict(v) for k, v in (data.get("sources") or {}).items()},
                imports=str(data["imports"]) if data.get("imports") else None,
                imports_not_needed={str(k): str(v) for k, v in
                                    (data.get("imports_not_needed") or {}).items()},
                unlocked_wheel={str(k): str(v) for k, v in (lock.get("unlocked_wheel") or {}).items()},
                driver_min=str(data["driver_min"]) if data.get("driver_min") else None,
                doctor={str(k): [str(c) for c in v] for k, v in (data.get("doctor") or {}).items()},
                gpu=bool(data.get("gpu", True)),
                **{k: str(data[k]) for k in ("sif", "pointer") if data.get(k)})
        except KeyError as exc:
            raise UserError(f"image config lacks key {exc}", where=str(path),
                            fix="add it (see the other files in hydra_conf/image/)") from None
    return out


def get_image(name: str, repo: Path = REPO_ROOT) -> ImageSpec:
    images = load_images(repo)
    if name not in images:
        raise UserError(f"unknown image '{name}'", where="hydra_conf/image/",
                        fix=f"choose one of: {', '.join(sorted(images)) or '(none defined)'}")
    return images[name]


def require_arch(spec: ImageSpec, arch: str) -> str:
    """Normalize ``arch`` and refuse one the image does not support, saying why."""
    arch = normalize(arch)
    if arch not in spec.arches:
        why = spec.unsupported.get(arch)
        raise UserError(f"image {spec.name} has no {arch} build" + (f": {why}" if why else ""),
                        where=f"hydra_conf/image/{spec.name}.yaml (arches: {', '.join(spec.arches)})",
                        fix=f"build it for {' or '.join(spec.arches)}")
    return arch


def platform_for(spec: ImageSpec, arch: str) -> str:
    """uv's ``--python-platform`` for ``arch`` (glibc floor from the image yaml, else 2_28)."""
    return spec.platforms.get(arch) or f"{UNAME[arch]}-manylinux_2_28"


def inputs_sha256(in_text: bytes, python: str, platform: str, extra: str = "") -> str:
    """Digest of everything that decides a lock's content, given the package index.

    ``extra`` holds the rest of the resolution's inputs (excluded packages, the sdist allowlist,
    a test lock's replacements) in a canonical text form.
    """
    h = hashlib.sha256()
    h.update(in_text.replace(b"\r\n", b"\n"))
    h.update(f"\0python={python}\0platform={platform}\0".encode())
    if extra:
        h.update(extra.encode())
    return h.hexdigest()


def resolution_extra(spec: ImageSpec, *, test: bool = False) -> str:
    """Canonical text of what besides the .in, Python and platform shapes a lock."""
    import json

    parts: dict[str, Any] = {"exclude": sorted(spec.exclude), "source_ok": sorted(SOURCE_OK)}
    if test:
        tb = spec.test_build
        parts["test"] = {"replace": dict(sorted((tb.get("replace") or {}).items())),
                         "add": sorted(tb.get("add") or []), "omit": sorted(tb.get("omit") or {})}
    return json.dumps(parts, sort_keys=True)


def spec_digest(spec: ImageSpec, arch: str, repo: Path = REPO_ROOT) -> str:
    """The inputs digest an up-to-date lock for (spec, arch) carries."""
    return inputs_sha256((repo / spec.lock_input).read_bytes(), spec.python, platform_for(spec, arch),
                         resolution_extra(spec))


def test_digest(spec: ImageSpec, repo: Path = REPO_ROOT) -> str:
    tb = spec.test_build
    return inputs_sha256((repo / spec.lock_input).read_bytes(), str(tb.get("python", "3.11")),
                         str(tb.get("platform", "x86_64-manylinux_2_28")),
                         resolution_extra(spec, test=True))


def body_sha256(body: str) -> str:
    """Digest of a lock's body (everything after our header): a hand edit changes it."""
    return hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest()


def lock_hash(lock_file: Path) -> str:
    """Short content hash of a lock: part of the SIF name, so an image names what it installed."""
    return hashlib.sha256(lock_file.read_bytes()).hexdigest()[:12]


def compile_argv(uv: str, in_file: Path, python: str, platform: str, out: Path,
                 excludes: Path | None = None) -> list[str]:
    """The uv command for one (image, arch) lock. ``--no-header``: we write our own header."""
    argv = [uv, "pip", "compile", str(in_file), "--python-version", python,
            "--python-platform", platform, "--generate-hashes", *binary_args(), "--no-header",
            "--annotation-style", "line", "--quiet", "-o", str(out)]
    if excludes is not None:
        argv += ["--excludes", str(excludes)]
    return argv


def header_text(spec: ImageSpec, arch: str, digest: str, body: str, *, python: str | None = None,
                platform: str | None = None, variant: str = "production",
                omitted: dict[str, str] | None = None, exclude: set[str] | None = None) -> str:
    count = len(parse_lock(body).requirements)
    lines = [LOCK_FORMAT, f"image: {spec.name}", f"arch: {arch}", f"variant: {variant}",
             f"python: {python or spec.python}", f"platform: {platform or platform_for(spec, arch)}",
             f"input: {spec.lock_input}", f"inputs-sha256: {digest}",
             "only-binary: :all:" + (f" except {', '.join(sorted(SOURCE_OK))}" if SOURCE_OK else ""),
             f"packages: {count}", f"body-sha256: {body_sha256(body)}"]
    lines += [f"excluded: {name} ({why})" for name, why in sorted(spec.exclude.items())
              if exclude is None or name in exclude]
    lines += [f"omitted: {name} ({why})" for name, why in sorted((omitted or {}).items())]
    lines.append("regenerate: make lock IMAGE=" + spec.name + (" TEST=1" if variant == "test" else ""))
    return "".join(f"# {ln}\n" for ln in lines)


def _uv(uv: str | None) -> str:
    from suite_core.runner import which

    return uv or which("uv") or str(Path(sys.executable).with_name("uv"))


def test_excludes(spec: ImageSpec) -> set[str]:
    """A test lock excludes what the production lock does, except what replaced a CUDA wheel."""
    targets = {canonical(_NAME.match(str(v)).group(1))  # type: ignore[union-attr]
               for v in (spec.test_build.get("replace") or {}).values()}
    return set(spec.exclude) - targets


def _resolve(spec: ImageSpec, in_text: str, python: str, platform: str, tmp: Path, uv: str,
             repo: Path, what: str, exclude: set[str] | None = None) -> str:
    """uv's hash-locked resolution of ``in_text`` for one target (the body of a lock)."""
    from suite_core.runner import run

    in_file = tmp.with_suffix(".in")
    in_file.write_text(in_text, encoding="utf-8")
    excludes = None
    exclude = set(spec.exclude) if exclude is None else exclude
    if exclude:
        excludes = tmp.with_suffix(".exclude")
        excludes.write_text("".join(f"{n}\n" for n in sorted(exclude)), encoding="utf-8")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    try:
        run(compile_argv(uv, in_file, python, platform, tmp, excludes), env=env, cwd=repo, what=what)
    finally:
        in_file.unlink(missing_ok=True)
        if excludes:
            excludes.unlink(missing_ok=True)
    return tmp.read_text(encoding="utf-8")


def make_lock(spec: ImageSpec, arch: str, *, repo: Path = REPO_ROOT, uv: str | None = None) -> Path:
    """Resolve one lock with uv (network) and write it atomically, header first."""
    from suite_core.atomic import atomic_path

    arch = require_arch(spec, arch)
    in_file = repo / spec.lock_input
    if not in_file.is_file():
        raise UserError(f"lock input {spec.lock_input} does not exist", where=spec.name,
                        fix="create it or fix lock.input in the image yaml")
    platform = platform_for(spec, arch)
    dst = spec.lock_path(arch, repo)
    with atomic_path(dst, suffix=".txt") as tmp:  # uv's output gets our header before the rename
        body = _resolve(spec, in_file.read_text(encoding="utf-8"), spec.python, platform, tmp,
                        _uv(uv), repo, f"uv pip compile for {spec.name} {arch}")
        tmp.write_text(header_text(spec, arch, spec_digest(spec, arch, repo), body) + body,
                       encoding="utf-8")
    return dst


def test_input(spec: ImageSpec, in_text: str) -> str:
    """The .in for a test-world build: CUDA wheels swapped for their CPU builds, additions appended."""
    replace = {canonical(k): str(v) for k, v in (spec.test_build.get("replace") or {}).items()}
    out = []
    for line in in_text.splitlines():
        m = _NAME.match(line.strip())
        if m and not line.strip().startswith("#") and canonical(m.group(1)) in replace:
            line = replace[canonical(m.group(1))] + (m.group(2) or "") + m.group(3)
        out.append(line)
    adds = [str(a) for a in spec.test_build.get("add") or []]
    if adds:
        out += ["# test build: CPU builds of what the definition installs outside the lock", *adds]
    return "\n".join(out) + "\n"


def omitted_from(lock_body: str, omit: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``lock_body`` without the packages matching ``omit`` patterns, and what was left out, why."""
    from fnmatch import fnmatch

    lines = lock_body.split("\n")
    keep: list[str] = []
    gone: dict[str, str] = {}
    i = 0
    while i < len(lines):
        block = [lines[i]]
        while block[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            block.append(lines[i])
        i += 1
        m = _NAME.match(block[0].strip())
        name = canonical(m.group(1)) if m and not block[0].startswith((" ", "#", "-")) else None
        why = next((w for pat, w in omit.items() if name and fnmatch(name, canonical(pat))), None)
        if why is not None and name:
            gone[name] = why
            continue
        keep.extend(block)
    return "\n".join(keep), gone


def make_tools_lock(*, repo: Path = REPO_ROOT, uv: str | None = None) -> Path:
    """``recipes/locks/tools.txt``: uv and the sdist build backend, every platform's hashes."""
    from suite_core.atomic import atomic_path
    from suite_core.runner import run

    src = repo / TOOLS_INPUT
    dst = repo / TOOLS_LOCK
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    with atomic_path(dst, suffix=".txt") as tmp:
        run([_uv(uv), "pip", "compile", str(src), "--universal", "--python-version", "3.10",
             "--generate-hashes", "--only-binary", ":all:", "--no-header", "--annotation-style", "line",
             "--quiet", "-o", str(tmp)], env=env, cwd=repo, what="uv pip compile recipes/tools.in")
        body = tmp.read_text(encoding="utf-8")
        digest = inputs_sha256(src.read_bytes(), "3.10+", "universal")
        head = [LOCK_FORMAT, "image: (bootstrap tools for every image)", "variant: tools",
                f"input: {TOOLS_INPUT}", f"inputs-sha256: {digest}",
                f"packages: {len(parse_lock(body).requirements)}", f"body-sha256: {body_sha256(body)}",
                "regenerate: make lock"]
        tmp.write_text("".join(f"# {ln}\n" for ln in head) + body, encoding="utf-8")
    return dst


def make_test_lock(spec: ImageSpec, *, repo: Path = REPO_ROOT, uv: str | None = None) -> Path:
    """The Python 3.11 x86_64 lock the test world builds each definition with.

    Compiled from the same .in (plus the image's test_build replacements); packages with no CPU
    build on the index (torch's CUDA wheels, nvidia-*, ...) are resolved, then left out and named
    in the header with the reason, so %test can tell "left out here" from "missing".
    """
    from suite_core.atomic import atomic_path

    tb = spec.test_build
    if not tb:
        raise UserError(f"image {spec.name} has no test_build settings",
                        where=f"hydra_conf/image/{spec.name}.yaml", fix="add a test_build: block")
    python, platform = str(tb.get("python", "3.11")), str(tb.get("platform", "x86_64-manylinux_2_28"))
    dst = spec.test_lock_path(repo)
    with atomic_path(dst, suffix=".txt") as tmp:
        body = _resolve(spec, test_input(spec, (repo / spec.lock_input).read_text(encoding="utf-8")),
                        python, platform, tmp, _uv(uv), repo, f"uv pip compile (test) for {spec.name}",
                        exclude=test_excludes(spec))
        body, gone = omitted_from(body, {str(k): str(v) for k, v in (tb.get("omit") or {}).items()})
        tmp.write_text(header_text(spec, "amd64", test_digest(spec, repo), body, python=python,
                                   platform=platform, variant="test", omitted=gone,
                                   exclude=test_excludes(spec)) + body,
                       encoding="utf-8")
    return dst


@dataclass
class Requirement:
    name: str            # canonical
    spec: str            # e.g. "==2.10.0"
    version: str | None  # the pinned version when spec is ==X
    hashes: int
    line: int
    sha256: tuple[str, ...] = ()


@dataclass
class Lock:
    header: dict[str, str]
    requirements: list[Requirement]
    crlf: bool
    body: str = ""
    multi: dict[str, list[str]] = field(default_factory=dict)  # repeated header keys (excluded, omitted)

    def pins(self) -> dict[str, str]:
        return {r.name: r.version for r in self.requirements if r.version}


_PARSED: dict[int, tuple[str, Lock]] = {}


def parse_lock(text: str) -> Lock:
    """Parse uv/pip requirements output with hashes (continuation lines joined); memoized, as
    lint reads each lock several times."""
    key = hash(text)
    hit = _PARSED.get(key)
    if hit is not None and hit[0] == text:
        return hit[1]
    lock = _parse_lock(text)
    _PARSED[key] = (text, lock)
    return lock


def _parse_lock(text: str) -> Lock:
    header: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    reqs: list[Requirement] = []
    lines = text.split("\n")
    body_start = 0
    i = 0
    while i < len(lines):
        start = i
        raw = lines[i].rstrip("\r")
        while raw.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            raw = raw.rstrip()[:-1] + " " + lines[i].rstrip("\r")
        i += 1
        stripped = raw.strip()
        if stripped.startswith("#"):
            key, sep, value = stripped.lstrip("# ").partition(": ")
            if start == body_start:  # our header: the comment lines before uv's output
                body_start = start + 1
                if sep and key and " " not in key:
                    header.setdefault(key, value.strip())
                    multi.setdefault(key, []).append(value.strip())
            continue
        body = stripped.split(" #", 1)[0].strip()
        if not body or body.startswith("-"):
            continue
        hashes = body.count("--hash=")
        spec_part = body.split("--hash=", 1)[0].strip()
        m = _NAME.match(spec_part)
        if not m:
            continue
        spec = m.group(3).split(";", 1)[0].strip().replace(" ", "")
        version = spec[2:] if spec.startswith("==") and "," not in spec and "*" not in spec else None
        shas = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", body))
        reqs.append(Requirement(canonical(m.group(1)), spec, version, hashes, start + 1, shas))
    body_text = "\n".join(ln.rstrip("\r") for ln in lines[body_start:])
    return Lock(header, reqs, "\r\n" in text, body_text, multi)


def read_lock(path: Path) -> Lock:
    return parse_lock(path.read_bytes().decode("utf-8", "replace"))


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric release of a version (``2.10.0+cu128`` -> (2, 10, 0)); enough for our bounds."""
    out: list[int] = []
    for part in re.split(r"[.+]", version):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
        if m.group() != part:
            break
    return tuple(out)


def stale_locks(specs: Iterable[ImageSpec], repo: Path = REPO_ROOT) -> list[tuple[ImageSpec, str, str]]:
    """(image, arch, why) for each lock missing or whose inputs changed since it was written."""
    out = []
    for spec in specs:
        in_file = repo / spec.lock_input
        for arch in spec.arches:
            path = spec.lock_path(arch, repo)
            if not path.is_file():
                out.append((spec, arch, "no lock file"))
                continue
            if not in_file.is_file():
                out.append((spec, arch, f"input {spec.lock_input} is missing"))
                continue
            if read_lock(path).header.get("inputs-sha256") != spec_digest(spec, arch, repo):
                out.append((spec, arch, "its inputs changed since it was made"))
        if spec.test_build:
            path = spec.test_lock_path(repo)
            if not path.is_file():
                out.append((spec, "test", "no test lock"))
            elif in_file.is_file() and read_lock(path).header.get("inputs-sha256") != test_digest(spec, repo):
                out.append((spec, "test", "its inputs changed since it was made"))
    return out
