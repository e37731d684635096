"""Static checks of the Apptainer definitions and their locks, before any (hour-long) build.

Why our own definition parser next to spython's: spython 0.3.14 keeps an unknown section such as
``%pots`` as comments and turns ``%arguments`` into comments, where Apptainer refuses the file; so
sections and header keys are checked here against Apptainer's own lists
(:mod:`containers.apptainer_vocab`), and spython is used as a second opinion that the file parses.

Lock checks are offline: pins and hashes, inputs changed without relocking, and the resolution
traps we know of (decord on aarch64, onnxruntime-gpu for cp310 aarch64, a PyPI paddlepaddle-gpu,
mixed CUDA majors among torch / onnxruntime-gpu / nvidia-* / cuda-* packages). Re-resolving every
lock against the index needs the network and is ``make lock-check``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from containers import REPO_ROOT
from containers.apptainer_vocab import APP_SECTIONS, HEADERS, SECTIONS
from containers.locks import (
    LOCK_FORMAT,
    ImageSpec,
    Lock,
    inputs_sha256,
    load_images,
    parse_lock,
    platform_for,
    version_tuple,
)

# Values `containers build` always passes as --build-arg (so a definition may use them bare).
BUILD_SUPPLIED = ("ARCH", "LOCK_HASH", "GIT_REV")
REQUIRED_LABELS = ("recipe", "lock_hash", "arch", "cuda", "git_revision")
# Base OS -> (system Python, glibc): the facts a lock's --python-version/platform must agree with.
BASE_OS = {
    "ubuntu20.04": ("3.8", (2, 31)), "ubuntu22.04": ("3.10", (2, 35)),
    "ubuntu24.04": ("3.12", (2, 39)), "debian12": ("3.11", (2, 36)), "bookworm": ("3.11", (2, 36)),
}
PADDLE_GPU_MIN = (3, 2, 1)
# Packages whose version's major is the CUDA major (others, e.g. nvidia-cufft 12.0 = CUDA 13.0, not).
_CUDA_VERSIONED = {"cuda-toolkit", "cuda-bindings", "cuda-python", "nvidia-cuda-runtime",
                   "nvidia-cuda-nvrtc", "nvidia-cuda-cupti", "nvidia-cublas", "nvidia-nvjitlink",
                   "nvidia-nvtx", "nvidia-cuda-cccl"}
_SECTION = re.compile(r"^%([A-Za-z_][\w-]*)\b(.*)$")
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str
    severity: str = "error"

    def render(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


@dataclass
class Definition:
    """A definition file split the way Apptainer reads it."""

    headers: dict[str, tuple[str, int]] = field(default_factory=dict)   # lower key -> (value, line)
    sections: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (body, line)
    unknown_sections: list[tuple[str, int]] = field(default_factory=list)
    bad_headers: list[tuple[str, int]] = field(default_factory=list)
    arguments: dict[str, str] = field(default_factory=dict)

    def render(self, text: str, args: dict[str, str]) -> str:
        """``text`` with ``{{ VAR }}`` replaced by build args, then %arguments defaults."""
        values = {**self.arguments, **args}
        return _TEMPLATE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def parse_definition(text: str) -> Definition:
    d = Definition()
    current: str | None = None
    body: list[str] = []
    start = 0
    for no, raw in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        m = _SECTION.match(raw)
        if m and not raw.startswith("%%"):
            if current is not None:
                d.sections[current] = ("\n".join(body), start)
            name = m.group(1).lower()
            known = name in SECTIONS or name in APP_SECTIONS
            if not known:
                d.unknown_sections.append((m.group(1), no))
            current, body, start = name, [], no
            continue
        if current is None:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if not sep or key.strip().lower() not in HEADERS:
                d.bad_headers.append((key.strip() if sep else line, no))
            else:
                d.headers[key.strip().lower()] = (value.strip(), no)
        else:
            body.append(raw)
    if current is not None:
        d.sections[current] = ("\n".join(body), start)
    for ln in d.sections.get("arguments", ("", 0))[0].splitlines():
        key, sep, value = ln.strip().partition("=")
        if sep and key and not key.startswith("#"):
            d.arguments[key.strip()] = value.strip().strip('"')
    return d


def _spython_ok(path: Path) -> str | None:
    """spython's parser as a second opinion; returns why it failed, if it did."""
    try:
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from spython.main.parse.parsers import SingularityParser

        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            layers = SingularityParser(str(path)).recipe  # stage name -> Recipe
        if not any(getattr(r, "fromHeader", None) for r in layers.values()):
            return "spython found no From: header"
    except (Exception, SystemExit) as exc:  # spython calls sys.exit on bad input
        return f"spython could not parse it: {type(exc).__name__}"
    return None


def base_os(image_ref: str) -> str | None:
    tag = image_ref.rsplit(":", 1)[-1] if ":" in image_ref else ""
    return next((k for k in BASE_OS if k in tag), None)


def _install_tokens(post: str) -> list[tuple[str, int]]:
    """Package arguments of every ``pip install`` / ``uv pip install`` in a script, with line."""
    out: list[tuple[str, int]] = []
    takes_value = {"-r", "--requirement", "-c", "--constraint", "--index-url", "-i",
                   "--extra-index-url", "--python", "-p", "--target", "-t", "--find-links", "-f",
                   "--prefix", "--index-strategy"}
    joined = post.replace("\\\n", " ")
    for no, line in enumerate(joined.split("\n"), 1):
        for cmd in re.split(r"&&|;|\|\|", line.split("#", 1)[0]):
            words = cmd.split()
            names = [w.rsplit("/", 1)[-1] for w in words]
            if "install" not in words or not {"pip", "pip3"} & set(names[:words.index("install")]):
                continue
            args = words[words.index("install") + 1:]
            skip = False
            for w in args:
                if skip:
                    skip = False
                    continue
                if w in takes_value:
                    skip = True
                    continue
                if w.startswith("-") or w.startswith(("/", "./")) or w.endswith((".txt", ".whl")):
                    continue
                out.append((w.strip("'\""), no))
    return out


def lint_definition(path: Path, spec: ImageSpec | None, *, repo: Path = REPO_ROOT) -> list[Finding]:
    raw = path.read_bytes()
    rel = str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)
    f: list[Finding] = []

    def err(line: int, msg: str, severity: str = "error") -> None:
        f.append(Finding(rel, line, msg, severity))

    if b"\r\n" in raw:
        err(raw[:raw.index(b"\r\n")].count(b"\n") + 1,
            "CRLF line endings (Apptainer runs %post with them and bash fails on '\\r'); "
            "convert with dos2unix")
    text = raw.decode("utf-8", "replace")
    d = parse_definition(text)
    for name, no in d.unknown_sections:
        err(no, f"unknown section %{name}: Apptainer refuses the file "
                f"(sections: {', '.join(sorted(SECTIONS))})")
    for key, no in d.bad_headers:
        err(no, f"unknown header key '{key}' (Apptainer's header keys: {', '.join(sorted(HEADERS))})")
    why = _spython_ok(path)
    if why:
        err(1, why)
    if "bootstrap" not in d.headers:
        err(1, "no Bootstrap: header")
    ref, ref_line = d.headers.get("from", ("", 1))
    ref = d.render(ref, {})
    if not ref:
        err(1, "no From: header")
    elif ":" not in ref.rsplit("/", 1)[-1] or ref.endswith(":latest"):
        err(ref_line, f"base image '{ref}' is not pinned to a tag; pin a version tag (and a digest "
                      "verified on a connected machine)")
    used = set(_TEMPLATE.findall(text))
    supplied = {*BUILD_SUPPLIED, *(spec.build_env_args if spec else ())}
    for var in sorted(used - set(d.arguments) - supplied):
        err(1, f"{{{{ {var} }}}} has no default in %arguments and is not a build-supplied argument")
    for sec in ("labels", "help", "environment", "test", "files", "post"):
        if sec not in d.sections:
            err(1, f"no %{sec} section")
    labels_body = d.sections.get("labels", ("", 0))[0]
    label_keys = {ln.split()[0].lower() for ln in labels_body.splitlines() if ln.strip()
                  and not ln.strip().startswith("#")}
    for key in REQUIRED_LABELS:
        if key not in label_keys:
            err(d.sections.get("labels", ("", 1))[1], f"%labels lacks '{key}'")
    if not label_keys & {"torch", "paddle"}:
        err(d.sections.get("labels", ("", 1))[1], "%labels names neither a torch nor a paddle version")
    env_body = d.sections.get("environment", ("", 0))[0]
    if "PYTHONNOUSERSITE" not in env_body:
        err(d.sections.get("environment", ("", 1))[1],
            "%environment does not set PYTHONNOUSERSITE (host ~/.local packages would leak in)")
    test_body, test_line = d.sections.get("test", ("", 1))
    if "entrypoints doctor" not in test_body or "--require" not in test_body:
        err(test_line, "%test does not run 'python -m entrypoints doctor --require ...'")
    post, post_line = d.sections.get("post", ("", 1))
    if "--require-hashes" not in post:
        err(post_line, "%post does not install the lock with --require-hashes")
    if not re.search(r"rm -rf[^\n]*\.cache|UV_NO_CACHE|--no-cache", post):
        err(post_line, "%post leaves package caches in the image (use --no-cache or remove ~/.cache)")
    placeholders = _TEMPLATE.sub(lambda m: f"TEMPLATE_{m.group(1)}", d.render(post, {}))
    for token, no in _install_tokens(placeholders):
        name = re.split(r"[=<>!~\[;]", token, maxsplit=1)[0]
        if "==" not in token and "$" not in token:
            err(post_line + no, f"'{name}' is installed unpinned in %post; pin it with ==")
        if name.lower().replace("_", "-") == "paddlepaddle-gpu":
            ver = token.split("==", 1)[1] if "==" in token else ""
            if not ver or version_tuple(ver) < PADDLE_GPU_MIN:
                err(post_line + no, f"paddlepaddle-gpu must be pinned explicitly to >= 3.2.1 (got "
                                    f"'{token}'); PyPI stops at 2.6.2, install 3.x from Paddle's index")
    if spec is not None:
        f += _check_against_spec(d, spec, rel, repo, ref, ref_line)
    return f


def _check_against_spec(d: Definition, spec: ImageSpec, rel: str, repo: Path, ref: str,
                        ref_line: int) -> list[Finding]:
    f: list[Finding] = []
    osname = base_os(ref)
    if osname is None:
        f.append(Finding(rel, ref_line, f"cannot tell the Python of base image '{ref}' "
                                        f"(known: {', '.join(BASE_OS)})", "warning"))
    else:
        py, glibc = BASE_OS[osname]
        if py != spec.python:
            f.append(Finding(rel, ref_line, f"base image {ref} has Python {py} but the image's locks "
                                            f"target Python {spec.python}"))
        for arch in spec.arches:
            m = re.search(r"manylinux_(\d+)_(\d+)", platform_for(spec, arch))
            if m and (int(m[1]), int(m[2])) > glibc:
                f.append(Finding(rel, ref_line, f"{arch} lock targets glibc {m[1]}.{m[2]} but "
                                                f"{osname} has {glibc[0]}.{glibc[1]}"))
    m = re.search(r"cuda:(\d+)\.(\d+)", ref)
    if m and spec.cuda and m[1] != spec.cuda.split(".")[0]:
        f.append(Finding(rel, ref_line, f"base image is CUDA {m[1]}.{m[2]} but the image config "
                                        f"says CUDA {spec.cuda}"))
    files_body, files_line = d.sections.get("files", ("", 1))
    for arch in spec.arches:
        rendered = d.render(files_body, {"ARCH": arch})
        lock_rel = str(spec.lock_path(arch, repo).relative_to(repo))
        if lock_rel not in rendered:
            f.append(Finding(rel, files_line, f"%files does not copy {lock_rel} for {arch}"))
        for ln in rendered.splitlines():
            src = ln.split()[0] if ln.strip() and not ln.strip().startswith("#") else ""
            if src and not src.startswith("/") and not (repo / src).exists():
                f.append(Finding(rel, files_line, f"%files source {src} does not exist ({arch})"))
    return f


def cuda_majors(lock: Lock, *, arch: str) -> dict[str, int]:
    """package -> the CUDA major it was built for, for every package that says so."""
    out: dict[str, int] = {}
    for r in lock.requirements:
        if not r.version:
            continue
        v = version_tuple(r.version)
        m = re.search(r"-cu(\d{2,3})$", r.name)
        if m and (r.name.startswith("nvidia-") or r.name.startswith("cuda-")):
            out[r.name] = int(m[1][:2])
        elif r.name in _CUDA_VERSIONED and v:
            out[r.name] = v[0]
        elif r.name == "torch" and v and (arch == "amd64" or v >= (2, 11)):
            out[r.name] = 12 if v < (2, 11) else 13
        elif r.name == "onnxruntime-gpu" and v:
            out[r.name] = 12 if v < (1, 27) else 13
    return out


def lint_lock(path: Path, spec: ImageSpec, arch: str, *, repo: Path = REPO_ROOT) -> list[Finding]:
    text = path.read_bytes().decode("utf-8", "replace")
    rel = str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)
    lock = parse_lock(text)
    f: list[Finding] = []

    def err(line: int, msg: str, severity: str = "error") -> None:
        f.append(Finding(rel, line, msg, severity))

    if lock.crlf:
        err(1, "CRLF line endings; regenerate with make lock")
    h = lock.header
    if LOCK_FORMAT not in text[:200]:
        err(1, f"no lock header; regenerate with make lock IMAGE={spec.name}")
    if h.get("arch") and h["arch"] != arch:
        err(1, f"lock header says arch {h['arch']}, file is for {arch}")
    if h.get("python") != spec.python:
        err(1, f"lock was made for Python {h.get('python')} but image {spec.name} uses Python "
               f"{spec.python}; fix: make lock IMAGE={spec.name}")
    in_file = repo / spec.lock_input
    if in_file.is_file():
        want = inputs_sha256(in_file.read_bytes(), spec.python, platform_for(spec, arch))
        if h.get("inputs-sha256") != want:
            err(1, f"stale lock: {spec.lock_input} (or the target Python/platform) changed since "
                   f"the lock was made; fix: make lock IMAGE={spec.name}")
    else:
        err(1, f"lock input {spec.lock_input} does not exist")
    if not lock.requirements:
        err(1, "lock pins no packages")
    for r in lock.requirements:
        if not r.version:
            err(r.line, f"{r.name} is not pinned with == ('{r.spec or 'no version'}')")
        if r.hashes == 0:
            err(r.line, f"{r.name} has no --hash (uv pip sync --require-hashes would refuse it)")
    f += _traps(lock, spec, arch, rel)
    return f


def _traps(lock: Lock, spec: ImageSpec, arch: str, rel: str) -> list[Finding]:
    f: list[Finding] = []
    pins = lock.pins()
    line = {r.name: r.line for r in lock.requirements}
    py = version_tuple(spec.python)
    if arch == "arm64":
        for name in ("decord", "eva-decord"):
            if name in pins:
                f.append(Finding(rel, line[name], f"{name} has no aarch64 wheel; use decord2 (imports "
                                                  "as decord) or av on arm64"))
        if "onnxruntime-gpu" in pins:
            ver = version_tuple(pins["onnxruntime-gpu"])
            if py < (3, 11):
                f.append(Finding(rel, line["onnxruntime-gpu"], "onnxruntime-gpu has no aarch64 wheel "
                                 f"for Python {spec.python} (aarch64 GPU wheels start at 1.29, cp311+)"))
            elif ver < (1, 29):
                f.append(Finding(rel, line["onnxruntime-gpu"], f"onnxruntime-gpu {pins['onnxruntime-gpu']}"
                                 " has no aarch64 wheel (aarch64 GPU wheels start at 1.29)"))
        if "torch" in pins and version_tuple(pins["torch"]) < (2, 11):
            f.append(Finding(rel, line["torch"], f"torch {pins['torch']} aarch64 wheels are CPU-only "
                                                 "(CUDA on aarch64 from torch 2.11)"))
    if "onnxruntime-gpu" in pins and py < (3, 11) and version_tuple(pins["onnxruntime-gpu"]) > (1, 23, 2):
        f.append(Finding(rel, line["onnxruntime-gpu"], "onnxruntime-gpu > 1.23.2 has no cp310 wheels"))
    if "paddlepaddle-gpu" in pins:
        f.append(Finding(rel, line["paddlepaddle-gpu"], f"paddlepaddle-gpu {pins['paddlepaddle-gpu']} came "
                         "from PyPI (which stops at 2.6.2, CUDA 11.8); lock it out and install 3.x "
                         "(>= 3.2.1) from Paddle's index in the definition"))
    majors = cuda_majors(lock, arch=arch)
    distinct = sorted(set(majors.values()))
    if len(distinct) > 1:
        by = {m: sorted(n for n, v in majors.items() if v == m) for m in distinct}
        detail = "; ".join(f"CUDA {m}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                           for m, names in by.items())
        anchor = min(line.get(n, 1) for n in majors)
        f.append(Finding(rel, anchor, f"mixed CUDA majors in one lock ({detail}); a CUDA provider "
                                      "will fail to load its libraries and fall back to CPU"))
    elif distinct and spec.cuda and distinct[0] != int(spec.cuda.split(".")[0]):
        f.append(Finding(rel, 1, f"lock is CUDA {distinct[0]} but image {spec.name} declares "
                                 f"CUDA {spec.cuda}"))
    return f


def lint_repo(repo: Path = REPO_ROOT, images: list[str] | None = None) -> list[Finding]:
    """Every definition and lock the image configs declare, plus stray definitions."""
    specs = load_images(repo)
    f: list[Finding] = []
    declared = set()
    for name, spec in sorted(specs.items()):
        if images and name not in images:
            continue
        recipe = repo / spec.recipe
        declared.add(recipe.resolve())
        if not recipe.is_file():
            f.append(Finding(spec.recipe, 0, f"image {name} names this definition but it does not exist"))
        else:
            f += lint_definition(recipe, spec, repo=repo)
        for arch in spec.arches:
            lock = spec.lock_path(arch, repo)
            if not lock.is_file():
                f.append(Finding(str(lock.relative_to(repo)), 0,
                                 f"no lock for {name} on {arch}; fix: make lock IMAGE={name}"))
            else:
                f += lint_lock(lock, spec, arch, repo=repo)
    if not images:
        for d in sorted((repo / "recipes").glob("*.def")):
            if d.resolve() not in declared:
                f += lint_definition(d, None, repo=repo)
    return f
