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
from containers.arch import UNAME, normalize
from containers.errors import UserError
from containers.images import POINTER_PATTERN, SIF_PATTERN

LOCK_FORMAT = "containers-lock v1"
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


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

    def lock_path(self, arch: str, repo: Path = REPO_ROOT) -> Path:
        return repo / "recipes" / "locks" / f"{self.name}-{normalize(arch)}.txt"


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


def inputs_sha256(in_text: bytes, python: str, platform: str) -> str:
    """Digest of everything that decides a lock's content, given the package index."""
    h = hashlib.sha256()
    h.update(in_text.replace(b"\r\n", b"\n"))
    h.update(f"\0python={python}\0platform={platform}\0".encode())
    return h.hexdigest()


def lock_hash(lock_file: Path) -> str:
    """Short content hash of a lock: part of the SIF name, so an image names what it installed."""
    return hashlib.sha256(lock_file.read_bytes()).hexdigest()[:12]


def compile_argv(uv: str, in_file: Path, python: str, platform: str, out: Path) -> list[str]:
    """The uv command for one (image, arch) lock. ``--no-header``: we write our own header."""
    return [uv, "pip", "compile", str(in_file), "--python-version", python,
            "--python-platform", platform, "--generate-hashes", "--no-header",
            "--annotation-style", "line", "--quiet", "-o", str(out)]


def header_text(spec: ImageSpec, arch: str, digest: str) -> str:
    lines = [LOCK_FORMAT, f"image: {spec.name}", f"arch: {arch}", f"python: {spec.python}",
             f"platform: {platform_for(spec, arch)}", f"input: {spec.lock_input}",
             f"inputs-sha256: {digest}", f"regenerate: make lock IMAGE={spec.name}"]
    return "".join(f"# {ln}\n" for ln in lines)


def make_lock(spec: ImageSpec, arch: str, *, repo: Path = REPO_ROOT, uv: str | None = None) -> Path:
    """Resolve one lock with uv (network) and write it atomically, header first."""
    from containers.atomic import atomic_path
    from containers.runner import run, which

    arch = require_arch(spec, arch)
    uv = uv or which("uv") or str(Path(sys.executable).with_name("uv"))
    in_file = repo / spec.lock_input
    if not in_file.is_file():
        raise UserError(f"lock input {spec.lock_input} does not exist", where=spec.name,
                        fix="create it or fix lock.input in the image yaml")
    platform = platform_for(spec, arch)
    dst = spec.lock_path(arch, repo)
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    header = header_text(spec, arch, inputs_sha256(in_file.read_bytes(), spec.python, platform))
    with atomic_path(dst, suffix=".txt") as tmp:  # uv's output gets our header before the rename
        run(compile_argv(uv, in_file, spec.python, platform, tmp), env=env, cwd=repo,
            what=f"uv pip compile for {spec.name} {arch}")
        tmp.write_text(header + tmp.read_text(encoding="utf-8"), encoding="utf-8")
    return dst


@dataclass
class Requirement:
    name: str            # canonical
    spec: str            # e.g. "==2.10.0"
    version: str | None  # the pinned version when spec is ==X
    hashes: int
    line: int


@dataclass
class Lock:
    header: dict[str, str]
    requirements: list[Requirement]
    crlf: bool

    def pins(self) -> dict[str, str]:
        return {r.name: r.version for r in self.requirements if r.version}


def parse_lock(text: str) -> Lock:
    """Parse uv/pip requirements output with hashes (continuation lines joined)."""
    header: dict[str, str] = {}
    reqs: list[Requirement] = []
    lines = text.split("\n")
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
            if sep and key and " " not in key and start < 20:
                header.setdefault(key, value.strip())
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
        reqs.append(Requirement(canonical(m.group(1)), spec, version, hashes, start + 1))
    return Lock(header, reqs, "\r\n" in text)


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
            want = inputs_sha256(in_file.read_bytes(), spec.python, platform_for(spec, arch))
            got = read_lock(path).header.get("inputs-sha256")
            if got != want:
                out.append((spec, arch, "its inputs changed since it was made"))
    return out
