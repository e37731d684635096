"""Static checks of the Apptainer definitions and their locks, before any (hour-long) build.

Why our own definition parser next to spython's: spython 0.3.14 keeps an unknown section such as
``%pots`` as comments and turns ``%arguments`` into comments, where Apptainer refuses the file; so
sections and header keys are checked here against Apptainer's own lists
(:mod:`containers.apptainer_vocab`), and spython is used as a second opinion that the file parses.

Lock checks are offline: pins and hashes, inputs changed without relocking, a lock edited by
hand, wheels only (an sdist needs a compiler the images lack), and the resolution traps we know of
(decord on aarch64, onnxruntime-gpu for cp310 aarch64, a PyPI paddlepaddle-gpu, ``+cuXXX`` local
versions, mixed CUDA majors among torch / onnxruntime-gpu / nvidia-* / cuda-* packages).

The import closure: every third-party module the code running in an image imports (the apps it
serves, the toolkit, the stage scripts of checkouts it clones, read from
``recipes/<image>.imports.json``) must be provided by that image's lock on every arch, where
"provided" is read from the wheels' own file lists (``recipes/locks/wheels.json``).
Re-resolving every lock against the index needs the network and is ``make lock-check``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from containers import REPO_ROOT
from containers.apptainer_vocab import APP_SECTIONS, HEADERS, SECTIONS
from containers.locks import (
    LOCK_FORMAT,
    SOURCE_OK,
    TOOLS_LOCK,
    ImageSpec,
    Lock,
    body_sha256,
    canonical,
    load_images,
    parse_lock,
    platform_for,
    spec_digest,
    test_digest,
    version_tuple,
)

# Values `containers build` always passes as --build-arg (so a definition may use them bare).
BUILD_SUPPLIED = ("ARCH", "LOCK_HASH", "GIT_REV")
# What a test-world build may swap (docs/images.md): the base and the lock, nothing else.
SWAPPABLE = ("BOOTSTRAP", "BASE", "LOCK")
REQUIRED_LABELS = ("recipe", "lock_hash", "arch", "cuda", "git_revision")
# Base OS -> (system Python, glibc): the facts a lock's --python-version/platform must agree with.
BASE_OS = {
    "ubuntu20.04": ("3.8", (2, 31)), "ubuntu22.04": ("3.10", (2, 35)),
    "ubuntu24.04": ("3.12", (2, 39)), "debian12": ("3.11", (2, 36)), "bookworm": ("3.11", (2, 36)),
    "ubuntu:20.04": ("3.8", (2, 31)), "ubuntu:22.04": ("3.10", (2, 35)),
    "ubuntu:24.04": ("3.12", (2, 39)), "debian:12": ("3.11", (2, 36)), "debian:bookworm": ("3.11", (2, 36)),
}
# A base image that ships CUDA user-space libraries (the lock's nvidia-* wheels bring them again)
_CUDA_BASE = re.compile(r"(^|/)(cuda|pytorch|tensorrt)(:|$)|cudnn|nvcr\.io/nvidia/")
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


def _spython_ok(path: Path, rendered: str | None = None) -> str | None:
    """spython's parser as a second opinion; returns why it failed, if it did.

    ``rendered``: the text with ``{{ VAR }}`` replaced by the %arguments defaults, which is what
    Apptainer parses (spython knows no build arguments, so a templated Bootstrap: would stop it).
    """
    import tempfile

    try:
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from spython.main.parse.parsers import SingularityParser

        with tempfile.TemporaryDirectory() as tmp, redirect_stdout(io.StringIO()), \
                redirect_stderr(io.StringIO()):
            src = path
            if rendered is not None:
                src = Path(tmp) / path.name
                src.write_text(rendered, encoding="utf-8")
            layers = SingularityParser(str(src)).recipe  # stage name -> Recipe
        if not any(getattr(r, "fromHeader", None) for r in layers.values()):
            return "spython found no From: header"
    except (Exception, SystemExit) as exc:  # spython calls sys.exit on bad input
        return f"spython could not parse it: {type(exc).__name__}"
    return None


def base_os(image_ref: str) -> str | None:
    """The known base OS an image reference names (``ubuntu:22.04``, ``...-ubuntu22.04``)."""
    last = image_ref.rsplit("/", 1)[-1].split("@", 1)[0]
    if last in BASE_OS:
        return last
    tag = last.split(":", 1)[1] if ":" in last else ""
    return next((k for k in BASE_OS if ":" not in k and k in tag), None)


def _strip_comments(script: str) -> str:
    """A shell script without comments (``# ...`` outside quotes) and with continuations joined."""
    out = []
    for line in script.replace("\\\n", " ").split("\n"):
        quote = None
        cut = len(line)
        for i, ch in enumerate(line):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
            elif ch == "#" and (i == 0 or line[i - 1] in " \t;&|("):
                cut = i
                break
        out.append(line[:cut])
    return "\n".join(out)


@dataclass(frozen=True)
class Install:
    """One ``pip install`` / ``uv pip install|sync`` command in a script."""

    line: int
    tool: str               # "pip" or "uv"
    verb: str               # install | sync
    words: tuple[str, ...]  # arguments after the verb

    def has(self, flag: str) -> bool:
        return any(w == flag or w.startswith(flag + "=") for w in self.words)

    def requirement_files(self) -> list[str]:
        out, take = [], False
        for w in self.words:
            if take:
                out.append(w)
                take = False
            elif w in ("-r", "--requirement"):
                take = True
            elif w.startswith("--requirement="):
                out.append(w.split("=", 1)[1])
        if self.verb == "sync":
            out += [w for w in self.words if not w.startswith("-") and w.endswith(".txt")
                    and w not in out and not self._value_of_flag(w)]
        return out

    def _value_of_flag(self, word: str) -> bool:
        ws = list(self.words)
        i = ws.index(word)
        return i > 0 and ws[i - 1] in _TAKES_VALUE

    def packages(self) -> list[str]:
        out, skip = [], False
        for w in self.words:
            if skip:
                skip = False
                continue
            if w in _TAKES_VALUE:
                skip = True
                continue
            if w.startswith("-") or w.startswith(("/", "./")) or w.endswith((".txt", ".whl")):
                continue
            out.append(w.strip("'\""))
        return out


_TAKES_VALUE = {"-r", "--requirement", "-c", "--constraint", "--index-url", "-i", "--extra-index-url",
                "--python", "-p", "--target", "-t", "--find-links", "-f", "--prefix", "--index-strategy",
                "--build-constraints", "-b", "--only-binary", "--no-binary", "--overrides"}


def installs(script: str) -> list[Install]:
    """Every pip / uv pip install or sync in a shell script (comments ignored)."""
    out = []
    for no, line in enumerate(_strip_comments(script).split("\n"), 1):
        for cmd in re.split(r"&&|;|\|\||\bthen\b|\bdo\b", line):
            words = cmd.split()
            names = [w.rsplit("/", 1)[-1] for w in words]
            for i, n in enumerate(names):
                if n in ("pip", "pip3") and i + 1 < len(words) and words[i + 1] == "install":
                    tool = "uv" if i > 0 and names[i - 1] == "uv" else "pip"
                    out.append(Install(no, tool, "install", tuple(words[i + 2:])))
                    break
                if n == "uv" and i + 2 < len(words) and words[i + 1] == "pip" and words[i + 2] == "sync":
                    out.append(Install(no, "uv", "sync", tuple(words[i + 3:])))
                    break
                if n in ("python", "python3") and words[i + 1:i + 4] == ["-m", "pip", "install"]:
                    out.append(Install(no, "pip", "install", tuple(words[i + 4:])))
                    break
    return out


def ignored_dirs(repo: Path) -> list[str]:
    """Directories .gitignore keeps out of git by an anchored path pattern (``hydra_conf/local/*``)."""
    gi = repo / ".gitignore"
    out = []
    if gi.is_file():
        for ln in gi.read_text(encoding="utf-8").splitlines():
            ln = ln.strip()
            if not ln or ln.startswith(("#", "!")) or "/" not in ln.strip("/"):
                continue
            parts = []
            for part in ln.strip("/").split("/"):
                if any(c in part for c in "*?["):
                    break
                parts.append(part)
            if parts:
                out.append("/".join(parts))
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
    # Apptainer consumes %arguments and substitutes {{ VAR }} before it parses the rest: so does
    # the second opinion (spython knows neither)
    args_body = d.sections.get("arguments", ("", 0))[0]
    rendered = d.render(text, {})
    if args_body:
        rendered = rendered.replace("%arguments\n" + args_body, "", 1)
    why = _spython_ok(path, rendered)
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
    labels = {ln.split()[0].lower(): " ".join(ln.split()[1:]) for ln in labels_body.splitlines()
              if ln.strip() and not ln.strip().startswith("#")}
    label_keys = set(labels)
    labels_line = d.sections.get("labels", ("", 1))[1]
    for key in REQUIRED_LABELS:
        if key not in label_keys:
            err(labels_line, f"%labels lacks '{key}'")
    # a GPU image names its framework and CUDA; only an image whose yaml says `gpu: false` may
    # say `cuda none` and name neither torch nor paddle (and it must say `cuda none`)
    gpu = spec.gpu if spec is not None else True
    if gpu and not label_keys & {"torch", "paddle"}:
        err(labels_line, "%labels names neither a torch nor a paddle version (a CPU-only image says "
                         "gpu: false in its hydra_conf/image yaml and cuda none here)")
    if gpu and labels.get("cuda") == "none":
        err(labels_line, "%labels says cuda none but the image yaml says gpu: true")
    if not gpu and "cuda" in labels and labels["cuda"] != "none":
        err(labels_line, f"%labels says cuda {labels['cuda']} but the image yaml says gpu: false "
                         "(say cuda none, or gpu: true)")
    env_body, env_line = d.sections.get("environment", ("", 1))
    env_code = _strip_comments(env_body)
    if "PYTHONNOUSERSITE" not in env_code:
        err(env_line, "%environment does not set PYTHONNOUSERSITE (host ~/.local packages would leak in)")
    if re.search(r"PYTHONPATH=\"?\$\{PYTHONPATH:-", env_code):
        err(env_line, "%environment replaces PYTHONPATH when it is set (${PYTHONPATH:-...}): the image's "
                      "own code disappears; append instead: "
                      "PYTHONPATH=\"${PYTHONPATH:+$PYTHONPATH:}/opt/suite\"")
    test_body, test_line = d.sections.get("test", ("", 1))
    if "containers.imagecheck" not in _strip_comments(test_body):
        err(test_line, "%test does not run 'python -m containers.imagecheck <image>' (the doctor, app "
                       "imports, stage-script imports)")
    post, post_line = d.sections.get("post", ("", 1))
    code = _strip_comments(d.render(post, {}))
    if not re.search(r"rm -rf[^\n]*\.cache|UV_NO_CACHE|--no-cache", code):
        err(post_line, "%post leaves package caches in the image (use --no-cache or remove ~/.cache)")
    f += _check_installs(d.render(post, {}), post_line, spec, err)
    f_files, _ = d.sections.get("files", ("", 1)), None
    files_body, files_line = f_files
    for ig in ignored_dirs(repo):
        for ln in files_body.splitlines():
            src = ln.split()[0] if ln.strip() and not ln.strip().startswith("#") else ""
            if src and (ig == src.rstrip("/") or ig.startswith(src.rstrip("/") + "/")):
                err(files_line, f"%files copies {src}, which holds the git-ignored {ig}/ (a user's "
                                "accounts and paths) into the image; copy its other entries one by one")
    if spec is not None:
        f += _check_against_spec(d, spec, rel, repo, ref, ref_line)
    return f


def _check_installs(post: str, post_line: int, spec: ImageSpec | None, err) -> list[Finding]:
    """Every install goes through a hash-checked lock; the one declared exception is pinned."""
    placeholders = _TEMPLATE.sub(lambda m: f"TEMPLATE_{m.group(1)}", post)
    found = installs(placeholders)
    if not any(i.has("--require-hashes") for i in found):
        err(post_line, "%post does not install the lock with --require-hashes (a comment does not count)")
    unlocked = canonical(spec.unlocked_wheel.get("name", "")) if spec and spec.unlocked_wheel else None
    for i in found:
        cmd = "pip install" if i.tool == "pip" else f"uv pip {i.verb}"
        pkgs = i.packages()
        files = i.requirement_files()
        no = post_line + i.line
        if pkgs:
            name = canonical(re.split(r"[=<>!~\[;]", pkgs[0], maxsplit=1)[0])
            if name == "paddlepaddle-gpu" or name == unlocked:
                ver = pkgs[0].split("==", 1)[1] if "==" in pkgs[0] else ""
                if name == "paddlepaddle-gpu" and (not ver or (not ver.startswith("TEMPLATE_")
                                                               and version_tuple(ver) < PADDLE_GPU_MIN)):
                    err(no, f"paddlepaddle-gpu must be pinned explicitly to >= 3.2.1 (got '{pkgs[0]}'); "
                            "PyPI stops at 2.6.2, install 3.x from Paddle's index")
                elif not ver:
                    err(no, f"'{name}' is installed unpinned in %post; pin it with ==")
                elif spec and name == unlocked and ver != spec.unlocked_wheel.get("version", ver):
                    err(no, f"%post installs {name}=={ver} but lock.unlocked_wheel declares version "
                            f"{spec.unlocked_wheel.get('version')} (whose requirements lint checks); "
                            "make them agree")
                elif name != unlocked:
                    err(no, f"'{pkgs[0]}' is installed outside the lock; declare it as lock.unlocked_wheel "
                            "in the image yaml (its requirements are then checked) or lock it")
                elif not i.has("--no-deps"):
                    err(no, f"{name} is installed without --no-deps: its dependencies would bypass the lock")
                continue
            err(no, f"'{' '.join(pkgs)}' is installed by {cmd} outside the lock (not hash-checked); "
                    "fix: add it to the image's .in and make lock (uv itself: recipes/tools.in)")
            continue
        if not files:
            continue
        if not i.has("--require-hashes"):
            err(no, f"{cmd} {'-r ' if i.verb == 'install' else ''}{files[0]} without --require-hashes: "
                    "hashes are not checked")
    return []


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
    if not spec.gpu and spec.cuda:
        f.append(Finding(rel, 1, f"image {spec.name} says gpu: false and cuda: {spec.cuda} in its yaml; "
                                 "a CPU-only image has no CUDA (drop cuda:, or gpu: true)"))
    m = re.search(r"cuda:(\d+)\.(\d+)", ref)
    if m and spec.cuda and m[1] != spec.cuda.split(".")[0]:
        f.append(Finding(rel, ref_line, f"base image is CUDA {m[1]}.{m[2]} but the image config "
                                        f"says CUDA {spec.cuda}"))
    if _CUDA_BASE.search(ref):
        lock = spec.lock_path(spec.arches[0], repo)
        pins = parse_lock(lock.read_text(encoding="utf-8")).pins() if lock.is_file() else {}
        cuda_wheels = sorted(n for n in pins if n.startswith(("nvidia-", "cuda-")))
        if cuda_wheels:
            f.append(Finding(rel, ref_line, f"base image {ref} ships CUDA libraries that the lock brings "
                                            f"again as wheels ({', '.join(cuda_wheels[:3])}, ...): 2-3 GB "
                                            "twice in every SIF; use a plain OS base (--nv brings "
                                            "the driver)"))
    header = {k: v for k, v in d.headers.items()}
    for key, var in (("bootstrap", "BOOTSTRAP"), ("from", "BASE")):
        if var not in _TEMPLATE.findall(header.get(key, ("", 0))[0]):
            f.append(Finding(rel, header.get(key, ("", 1))[1],
                             f"{key.title()}: is not {{{{ {var} }}}}: the test world swaps the base through "
                             "build arguments (docs/images.md)"))
    files_body, files_line = d.sections.get("files", ("", 1))
    if "{{ LOCK }}" not in files_body.replace("{{LOCK}}", "{{ LOCK }}"):
        f.append(Finding(rel, files_line, "%files does not copy the lock as {{ LOCK }} (the build argument "
                                          "`containers build` and the test world pass)"))
    default_lock = d.arguments.get("LOCK", "")
    if default_lock and default_lock not in {str(spec.lock_path(a, repo).relative_to(repo))
                                             for a in spec.arches}:
        f.append(Finding(rel, files_line,
                         f"%arguments LOCK={default_lock} is not one of {spec.name}'s locks"))
    for arch in spec.arches:
        lock_rel = str(spec.lock_path(arch, repo).relative_to(repo))
        rendered = d.render(files_body, {"ARCH": arch, "LOCK": lock_rel})
        for ln in rendered.splitlines():
            src = ln.split()[0] if ln.strip() and not ln.strip().startswith("#") else ""
            if src and not src.startswith("/") and not (repo / src).exists():
                f.append(Finding(rel, files_line, f"%files source {src} does not exist ({arch})"))
    if str(TOOLS_LOCK) not in files_body:
        f.append(Finding(rel, files_line, f"%files does not copy {TOOLS_LOCK} (uv, hash-pinned)"))
    env_body, env_line = d.sections.get("environment", ("", 1))
    if f"CONTAINERS_IMAGE={spec.name}" not in env_body:
        f.append(Finding(rel, env_line, f"%environment does not export CONTAINERS_IMAGE={spec.name} "
                                        "(the doctor reads the image's driver floor through it)"))
    test_body, test_line = d.sections.get("test", ("", 1))
    if f"containers.imagecheck {spec.name}" not in test_body:
        f.append(Finding(rel, test_line, f"%test does not run 'python -m containers.imagecheck {spec.name}'"))
    for name, src in spec.sources.items():
        rev = d.arguments.get(str(src.get("rev_arg", "")), "")
        if not re.fullmatch(r"[0-9a-f]{40}", rev):
            f.append(Finding(rel, d.sections.get("arguments", ("", 1))[1],
                             f"{src.get('rev_arg')}={rev or '(unset)'} is not a full 40-hex commit: {name} "
                             "must be pinned by commit"))
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


def lint_lock(path: Path, spec: ImageSpec, arch: str, *, repo: Path = REPO_ROOT, test: bool = False,
              facts: dict | None = None) -> list[Finding]:
    """One lock (``test``: the image's test-world lock); ``facts``: wheel facts for the sdist check."""
    text = path.read_bytes().decode("utf-8", "replace")
    rel = str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)
    lock = parse_lock(text)
    f: list[Finding] = []
    fix = f"make lock IMAGE={spec.name}"

    def err(line: int, msg: str, severity: str = "error") -> None:
        f.append(Finding(rel, line, msg, severity))

    if lock.crlf:
        err(1, f"CRLF line endings; fix: {fix}")
    h = lock.header
    if LOCK_FORMAT not in text[:200]:
        err(1, f"no lock header ({LOCK_FORMAT}); fix: {fix}")
    if h.get("arch") and h["arch"] != arch:
        err(1, f"lock header says arch {h['arch']}, file is for {arch}")
    python = str(spec.test_build.get("python", "3.11")) if test else spec.python
    if h.get("python") != python:
        err(1, f"lock was made for Python {h.get('python')} but image {spec.name} uses Python "
               f"{python}; fix: {fix}")
    if (repo / spec.lock_input).is_file():
        want = test_digest(spec, repo) if test else spec_digest(spec, arch, repo)
        if h.get("inputs-sha256") != want:
            err(1, f"stale lock: {spec.lock_input} (or the target Python/platform, excludes) changed "
                   f"since the lock was made; fix: {fix}")
    else:
        err(1, f"lock input {spec.lock_input} does not exist")
    if LOCK_FORMAT in text[:200]:
        count = h.get("packages", "")
        if count.isdigit() and int(count) != len(lock.requirements):
            gone = int(count) - len(lock.requirements)
            err(1, f"the lock was written with {count} packages and now has {len(lock.requirements)}: "
                   + (f"{gone} deleted by hand" if gone > 0 else f"{-gone} added by hand")
                   + f" without relocking; fix: {fix}")
        elif h.get("body-sha256") != body_sha256(lock.body):
            err(1, f"the lock's body differs from what make lock wrote (edited by hand); fix: {fix}")
        if not h.get("only-binary", "").startswith(":all:"):
            err(1, f"lock was not compiled wheels-only (--only-binary :all:); fix: {fix}")
    if not lock.requirements:
        err(1, "lock pins no packages")
    for r in lock.requirements:
        if not r.version:
            err(r.line, f"{r.name} is not pinned with == ('{r.spec or 'no version'}')")
        elif "+" in r.version:
            err(r.line, f"{r.name}=={r.version} is a local version (+{r.version.split('+', 1)[1]}) from a "
                        "framework's own index, not the index the lock is checked against; lock the "
                        "index's release instead")
        if r.hashes == 0:
            err(r.line, f"{r.name} has no --hash (uv pip sync --require-hashes would refuse it)")
        if facts is not None and r.sha256 and r.name not in SOURCE_OK:
            kinds = {facts[h_]["file"].endswith(".whl") for h_ in r.sha256 if h_ in facts}
            if kinds == {False}:
                err(r.line, f"{r.name}=={r.version} would be built from source (no wheel): the image has no "
                            "compiler; pin a version with wheels, or if it is pure Python add it to "
                            "containers/locks.py SOURCE_OK with the reason")
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
    from containers.wheels import load_facts

    specs = load_images(repo)
    facts = load_facts(repo)
    f: list[Finding] = []
    declared = set()
    for name, spec in sorted(specs.items()):
        if images and name not in images:
            continue
        recipe = repo / spec.recipe
        declared.add(recipe.resolve())
        d = None
        if not recipe.is_file():
            f.append(Finding(spec.recipe, 0, f"image {name} names this definition but it does not exist"))
        else:
            f += lint_definition(recipe, spec, repo=repo)
            d = parse_definition(recipe.read_text(encoding="utf-8", errors="replace"))
        closure = image_closure(spec, repo)
        locks = [(spec.lock_path(a, repo), a, False) for a in spec.arches]
        if spec.test_build:
            locks.append((spec.test_lock_path(repo), "amd64", True))
        for lock, arch, test in locks:
            if not lock.is_file():
                f.append(Finding(str(lock.relative_to(repo)), 0,
                                 f"no {'test ' if test else ''}lock for {name} on {arch}; "
                                 f"fix: make lock IMAGE={name}"))
                continue
            found = lint_lock(lock, spec, arch, repo=repo, test=test, facts=facts)
            f += found
            if not [x for x in found if x.severity == "error"]:
                f += lint_closure(spec, arch, lock, facts, repo=repo, test=test, closure=closure)
        f += _check_sources(spec, repo, d)
        f += _check_unlocked_wheel(spec, repo)
        f += _check_toolkit_deps(spec, repo)
    f += _check_apps(specs, repo, images)
    if not images:
        f += _check_tools_lock(repo)
        for d_ in sorted((repo / "recipes").glob("*.def")):
            if d_.resolve() not in declared:
                f += lint_definition(d_, None, repo=repo)
    return f


def _check_tools_lock(repo: Path) -> list[Finding]:
    from containers.locks import TOOLS_INPUT, inputs_sha256

    path = repo / TOOLS_LOCK
    rel = str(TOOLS_LOCK)
    if not path.is_file():
        return [Finding(rel, 0, "no bootstrap tools lock (uv, setuptools); fix: make lock")]
    lock = parse_lock(path.read_text(encoding="utf-8"))
    f = []
    src = repo / TOOLS_INPUT
    want = inputs_sha256(src.read_bytes(), "3.10+", "universal") if src.is_file() else None
    if want and lock.header.get("inputs-sha256") != want:
        f.append(Finding(rel, 1, f"stale lock: {TOOLS_INPUT} changed since it was made; fix: make lock"))
    if lock.header.get("body-sha256") != body_sha256(lock.body):
        f.append(Finding(rel, 1, "the tools lock was edited by hand; fix: make lock"))
    for r in lock.requirements:
        if not r.version or not r.hashes:
            f.append(Finding(rel, r.line, f"{r.name} is not pinned with hashes; fix: make lock"))
    return f


def _check_toolkit_deps(spec: ImageSpec, repo: Path) -> list[Finding]:
    """Each image's .in names the host toolkit's dependencies (pyproject.toml), as jobs need them."""
    pyproject = repo / "pyproject.toml"
    in_file = repo / spec.lock_input
    if not pyproject.is_file() or not in_file.is_file():
        return []
    m = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", pyproject.read_text(encoding="utf-8"), re.M | re.S)
    deps = [canonical(re.split(r"[<>=!~\[; ]", q, maxsplit=1)[0])
            for q in re.findall(r'"([^"]+)"', m.group(1))] if m else []
    named = set()
    for ln in in_file.read_text(encoding="utf-8").splitlines():
        mm = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", ln)
        if mm and not ln.strip().startswith("#"):
            named.add(canonical(mm.group(1)))
    return [Finding(spec.lock_input, 1, f"image {spec.name}: {dep} (a host toolkit dependency in "
                                        "pyproject.toml; jobs run every Python step in the image) is not "
                                        f"in {spec.lock_input}; fix: add it and make lock IMAGE={spec.name}")
            for dep in deps if dep not in named]


def _check_unlocked_wheel(spec: ImageSpec, repo: Path) -> list[Finding]:
    """The lock satisfies every requirement the wheel installed with --no-deps declares."""
    uw = spec.unlocked_wheel
    if not uw:
        return []
    from packaging.requirements import InvalidRequirement, Requirement

    req_file = repo / uw.get("requires", "")
    if not req_file.is_file():
        return [Finding(uw.get("requires", spec.name), 0, f"lock.unlocked_wheel of {spec.name} names no "
                                                          "requirements file that exists")]
    f = []
    env = {"platform_system": "Linux", "sys_platform": "linux", "python_version": spec.python,
           "python_full_version": spec.python + ".0", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    for arch in spec.arches:
        lock_path = spec.lock_path(arch, repo)
        if not lock_path.is_file():
            continue
        pins = parse_lock(lock_path.read_text(encoding="utf-8")).pins()
        env["platform_machine"] = "x86_64" if arch == "amd64" else "aarch64"
        for no, ln in enumerate(req_file.read_text(encoding="utf-8").splitlines(), 1):
            if not ln.strip() or ln.strip().startswith("#"):
                continue
            try:
                req = Requirement(ln.strip())
            except InvalidRequirement as exc:
                f.append(Finding(uw["requires"], no, f"not a requirement: {exc}"))
                continue
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            have = pins.get(canonical(req.name))
            rel = str(lock_path.relative_to(repo))
            if have is None:
                f.append(Finding(rel, 1, f"{uw['name']} {uw.get('version')} requires {req} but the {arch} "
                                         f"lock has no {req.name}; fix: add it to {spec.lock_input} "
                                         "and make lock"))
            elif not req.specifier.contains(have, prereleases=True):
                f.append(Finding(rel, 1, f"{uw['name']} {uw.get('version')} requires {req} but the {arch} "
                                         "lock "
                                         f"pins {req.name}=={have} (uv pip check fails at build time); fix: "
                                         f"pin {req} in {spec.lock_input} and make lock"))
    return f


def _check_sources(spec: ImageSpec, repo: Path, d: Definition | None) -> list[Finding]:
    """The extracted imports are of the pinned revisions, and the presets' flags exist there."""
    if not spec.sources:
        return []
    import json

    rel = spec.imports or f"hydra_conf/image/{spec.name}.yaml"
    regen = (f"python -m containers fork-imports {spec.name} "
             + " ".join(f"--git {n}=DIR" for n in sorted(spec.sources)))
    path = repo / spec.imports if spec.imports else None
    if path is None or not path.is_file():
        return [Finding(rel, 0, f"image {spec.name} clones {', '.join(spec.sources)} but their imports were "
                                f"never extracted; fix: {regen}")]
    data = json.loads(path.read_text(encoding="utf-8"))
    f = []
    for name, src in spec.sources.items():
        want = d.arguments.get(str(src.get("rev_arg")), "") if d else ""
        got = data.get("sources", {}).get(name, {})
        if got.get("revision") != want:
            f.append(Finding(rel, 1, f"{name}: {rel} was extracted from revision "
                                     f"{str(got.get('revision', 'none'))[:12]} but {spec.recipe} pins "
                                     f"{src.get('rev_arg')}={want[:12]}; fix: {regen}"))
        for script in src.get("scripts", []):
            if script not in got.get("scripts", {}):
                f.append(Finding(rel, 1, f"{name}: no record of {script}; fix: {regen}"))
    if "FlowPortal" in spec.sources and "FlowPortal" in data.get("sources", {}):
        f += _check_presets(spec, repo, data, rel)
    return f


def _check_presets(spec: ImageSpec, repo: Path, data: dict, rel: str) -> list[Finding]:
    """Each preset's flags are accepted by the pinned revision's scripts (the app's own Builder)."""
    import yaml

    from entrypoints.flowportal.checkout import FORK_ONLY, SCRIPTS, Checkout, detect_flavor
    from entrypoints.flowportal.stages import Builder
    from suite_core.errors import UserError

    flags: dict[str, set[str]] = {}
    for key, script in SCRIPTS.items():
        for name, src in data["sources"].items():
            base = str(spec.sources.get(name, {}).get("path", "")).replace("/opt/FlowPortal", "").strip("/")
            rel_script = script[len(base) + 1:] if base and script.startswith(base + "/") else script
            if rel_script in src.get("scripts", {}):
                flags[key] = set(src["scripts"][rel_script]["flags"])
    rev = str(data["sources"]["FlowPortal"].get("revision", "?"))[:12]
    f = []
    flavor = detect_flavor(flags)
    if flavor != "fork":
        missing = sorted(f"{k}:--{fl}" for k, fs in FORK_ONLY.items() for fl in fs
                         if fl not in flags.get(k, set()))
        f.append(Finding(rel, 1, f"FlowPortal revision {rev} is {flavor}, not the fork's DGX revision: it "
                                 "lacks "
                                 f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; fix: pin a "
                                 "MyFlowPortal revision with the DGX speed flags (FLOWPORTAL_REV) and "
                                 "regenerate"))
    builder = Builder(Checkout(Path("/opt/FlowPortal"), flavor, flags))
    for preset_file in sorted((repo / "hydra_conf" / "preset").glob("*.yaml")):
        p = yaml.safe_load(preset_file.read_text(encoding="utf-8")) or {}
        groups = {"preprocess": [("edge_mode", p.get("edge_mode")), ("batch_size", p.get("batch_size"))],
                  "iclight_fc": list((p.get("iclight") or {}).items()),
                  "flowportal": list((p.get("flowportal") or {}).items())}
        for key, pairs in groups.items():
            try:
                builder.flags(key, pairs)
            except UserError as exc:
                f.append(Finding(str(preset_file.relative_to(repo)), 1,
                                 f"preset {preset_file.stem} with FlowPortal {rev}: {exc.what}"))
    return f


def _check_apps(specs: dict[str, ImageSpec], repo: Path, images: list[str] | None) -> list[Finding]:
    """Every pipeline step runs an app its image declares (so lint checked that app's imports)."""
    from suite_core.apps import discover

    apps = discover(repo / "hydra_conf" / "app")
    f = []
    for name, spec in specs.items():
        if images and name not in images:
            continue
        for a in spec.apps:
            if a not in apps:
                f.append(Finding(f"hydra_conf/image/{name}.yaml", 1,
                                 f"app {a} has no hydra_conf/app/{a}.yaml"))
    for pf in sorted((repo / "hydra_conf" / "pipeline").glob("*.yaml")):
        text = pf.read_text(encoding="utf-8")
        for m in re.finditer(r"\{\s*app:\s*([\w-]+)\s*,\s*image:\s*([\w.-]+)", text):
            app, image = m.group(1), m.group(2)
            if images and image not in images:
                continue
            if image in specs and app not in specs[image].apps:
                f.append(Finding(str(pf.relative_to(repo)), text[:m.start()].count("\n") + 1,
                                 f"step runs app {app} in image {image}, whose apps list lacks it (its "
                                 f"imports are then unchecked); fix: add {app} to "
                                 f"hydra_conf/image/{image}.yaml apps"))
    return f


# ---------------------------------------------------------------- import closure per image
FIRST_PARTY = {"containers", "entrypoints", "suite_core"}


def image_roots(spec: ImageSpec, repo: Path = REPO_ROOT) -> list[str]:
    """Modules whose imports count for an image: its apps, the toolkit's commands, the %test helper."""
    from suite_core.apps import discover

    apps = discover(repo / "hydra_conf" / "app")
    roots = ["entrypoints.__main__", "containers.__main__", "containers.imagecheck"]
    roots += [apps[a][0] for a in spec.apps if a in apps]
    roots += sorted(f"containers.{p.stem}" for p in (repo / "containers").glob("cmd_*.py"))
    return roots


def image_closure(spec: ImageSpec, repo: Path = REPO_ROOT, *, python: tuple[int, int] | None = None):
    """The third-party imports of everything that runs in ``spec``'s image (see module doc)."""
    import json

    from containers.closure import ImportRef, SourceTree, walk

    py = python or tuple(int(x) for x in spec.python.split(".")[:2])
    c = walk(image_roots(spec, repo), SourceTree(lambda rel: _read(repo / rel), str(repo)), FIRST_PARTY,
             python=py)  # type: ignore[arg-type]
    if spec.imports and (repo / spec.imports).is_file():
        data = json.loads((repo / spec.imports).read_text(encoding="utf-8"))
        for name, src in data.get("sources", {}).items():
            for script, rec in src.get("scripts", {}).items():
                for kind, guarded in (("requires", False), ("optional", True)):
                    for top, wheres in rec.get(kind, {}).items():
                        where = f"{name}@{src.get('revision', '?')[:8]}:{wheres[0] if wheres else script}"
                        c.add(ImportRef(top, where, False, guarded))
    for top in list(c.optional):
        if top in c.required:
            del c.optional[top]
    return c


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def provided_modules(lock: Lock, facts: dict, platform: str) -> tuple[dict[str, str], list[str]]:
    """module -> package for a lock on one target, and the packages with no facts."""
    out: dict[str, str] = {}
    unknown = []
    for r in lock.requirements:
        hits = [facts[h] for h in r.sha256 if h in facts]
        if not hits:
            unknown.append(f"{r.name}=={r.version}")
            continue
        for fact in hits:
            if _fits(fact["file"], platform):
                for m in fact["modules"]:
                    out.setdefault(m, r.name)
    return out, unknown


def _fits(filename: str, platform: str) -> bool:
    """Whether a wheel (or sdist) file can be the one installed on ``platform`` (arch only)."""
    if not filename.endswith(".whl"):
        return True
    tag = filename[:-4].rsplit("-", 1)[-1]
    machine = platform.split("-", 1)[0]
    return tag == "any" or machine in tag


def lint_closure(spec: ImageSpec, arch: str, lock_path: Path, facts: dict, *, repo: Path = REPO_ROOT,
                 test: bool = False, closure=None) -> list[Finding]:
    """Every required third-party import of the image is provided by this lock (or left out on purpose)."""
    rel = str(lock_path.relative_to(repo)) if lock_path.is_relative_to(repo) else str(lock_path)
    lock = parse_lock(lock_path.read_text(encoding="utf-8"))
    platform = (str(spec.test_build.get("platform", "x86_64-manylinux_2_28")) if test
                else platform_for(spec, arch))
    provided, unknown = provided_modules(lock, facts, platform)
    f: list[Finding] = []
    if unknown:
        f.append(Finding(rel, 1, f"no wheel facts for {', '.join(unknown[:4])}"
                                 f"{' ...' if len(unknown) > 4 else ''} (recipes/locks/wheels.json); "
                                 f"fix: make lock IMAGE={spec.name}"))
        return f
    omitted = {o.partition(" (")[0] for o in lock.multi.get("omitted", [])}
    c = closure or image_closure(spec, repo)
    label = "test lock" if test else arch
    for top, refs in sorted(c.required.items()):
        if top in spec.imports_not_needed:
            continue
        if top in provided or any(m.startswith(top + ".") for m in provided):
            continue
        if test and _omitted_provider(top, omitted, facts):
            continue
        where = refs[0].where
        hint = _dist_hint(top)
        f.append(Finding(rel, 1, f"image {spec.name} ({label}): module '{top}' imported by {where} is "
                                 f"provided by no package in this lock; fix: add {hint} to "
                                 f"{spec.lock_input} and make lock IMAGE={spec.name} (or, if no stage "
                                 f"reaches it, list it under imports_not_needed with the reason)"))
    return f


def _omitted_provider(top: str, omitted: set[str], facts: dict) -> bool:
    for fact in facts.values():
        if canonical(fact["file"].split("-", 1)[0]) in omitted and top in {
                m.split(".", 1)[0] for m in fact["modules"]}:
            return True
    return top in {canonical(o).replace("-", "_") for o in omitted}


def _dist_hint(top: str) -> str:
    """The distribution that provides ``top`` on this machine, if any (a hint for the fix)."""
    try:
        from importlib.metadata import packages_distributions

        dists = packages_distributions().get(top)
    except Exception:  # metadata of odd installs must not break lint
        dists = None
    return f"'{dists[0]}'" if dists else f"the package that provides '{top}'"


def optional_imports(spec: ImageSpec, repo: Path = REPO_ROOT) -> dict[str, str]:
    """ImportError-guarded imports of an image: allowed to be missing, listed (lint --list-optional)."""
    c = image_closure(spec, repo)
    return {top: refs[0].where for top, refs in sorted(c.optional.items())}
