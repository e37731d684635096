"""Facts about the wheels a lock installs: file, size, and the top-level modules each provides.

Why: lint must know, offline and per arch, which import names a lock provides (``PIL`` comes
from ``pillow``, ``decord`` from ``decord`` on amd64 but from ``decord2`` on arm64, ``cv2`` from
any of three OpenCV wheels), and the size report needs each wheel's size. Both come from the
wheels themselves: uv writes a PEP 751 ``pylock.toml`` for a lock (wheel URL, size, sha256), and
the wheel's zip directory (its last few KB, read with HTTP range requests, never the whole wheel)
lists the files, hence the top-level modules. The result is kept in ``recipes/locks/wheels.json``
keyed by sha256, so lint matches a lock's ``--hash`` values to facts without the network.
"""

from __future__ import annotations

import io
import json
import os
import re
import ssl
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from containers import REPO_ROOT
from suite_core.errors import UserError

FACTS = Path("recipes") / "locks" / "wheels.json"
_EXT = re.compile(r"\.(cpython|abi3|cp\d+)[^/]*\.so$|\.so$|\.py$")


def facts_path(repo: Path = REPO_ROOT) -> Path:
    return repo / FACTS


def load_facts(repo: Path = REPO_ROOT) -> dict[str, dict[str, Any]]:
    """sha256 -> {file, size, modules}; empty when the file does not exist yet."""
    path = facts_path(repo)
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["wheels"]


def modules_of(names: Iterable[str]) -> list[str]:
    """Importable top-level names (and first-level children of namespace dirs) in a wheel listing."""
    tops: set[str] = set()
    inits: set[str] = set()
    children: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        if parts[0].endswith(".dist-info"):
            continue
        if parts[0].endswith(".data"):
            if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
                parts = parts[2:]
            else:
                continue
        if len(parts) == 1:
            if _EXT.search(parts[0]):
                tops.add(re.split(r"[.]", parts[0], maxsplit=1)[0])
            continue
        tops.add(parts[0])
        if len(parts) == 2 and parts[1] == "__init__.py":
            inits.add(parts[0])
        if len(parts) >= 3 and parts[1].isidentifier():
            children.setdefault(parts[0], set()).add(parts[1])
    out = {t for t in tops if t.isidentifier()}
    for top in out - inits:  # namespace dirs (google/, nvidia/): name the packages inside them
        out |= {f"{top}.{c}" for c in children.get(top, ())}
    return sorted(out)


class _RangeFile(io.RawIOBase):
    """A read-only file over HTTP range requests: zipfile reads only the central directory."""

    def __init__(self, url: str, size: int, ctx: ssl.SSLContext) -> None:
        self.url, self.size, self.ctx, self.pos = url, size, ctx, 0
        self._cache: dict[int, bytes] = {}

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def _block(self, start: int) -> bytes:
        if start not in self._cache:
            end = min(self.size, start + (1 << 18)) - 1
            req = urllib.request.Request(self.url, headers={"Range": f"bytes={start}-{end}"})
            with urllib.request.urlopen(req, timeout=60, context=self.ctx) as resp:
                data = resp.read()
                if resp.status != 206:
                    raise OSError(f"server ignored the range request for {self.url}")
            self._cache[start] = data
        return self._cache[start]

    def readinto(self, b: Any) -> int:
        want = min(len(b), self.size - self.pos)
        got = 0
        while got < want:
            start = (self.pos // (1 << 18)) * (1 << 18)
            block = self._block(start)[self.pos - start:]
            n = min(len(block), want - got)
            b[got:got + n] = block[:n]
            got += n
            self.pos += n
        return got


def _ssl_context() -> ssl.SSLContext:
    """The CA bundle pip/uv are configured with, if any (sites with TLS inspection need it)."""
    cafile = next((os.environ[v] for v in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
                   if os.environ.get(v) and Path(os.environ[v]).is_file()), None)
    return ssl.create_default_context(cafile=cafile)


def wheel_listing(url: str, size: int) -> list[str]:
    with zipfile.ZipFile(_RangeFile(url, size, _ssl_context())) as zf:
        return zf.namelist()


def sdist_modules(url: str, size: int) -> list[str]:
    """Top-level modules of a (small, pure-Python) sdist: its egg-info top_level.txt, else its dirs."""
    import tarfile

    if size > 20 << 20:
        raise OSError(f"sdist {url.rsplit('/', 1)[-1]} is {size >> 20} MB; refusing to download it")
    with urllib.request.urlopen(url, timeout=120, context=_ssl_context()) as resp:
        data = resp.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        tl = next((n for n in names if n.endswith(".egg-info/top_level.txt")), None)
        if tl:
            member = tf.extractfile(tl)
            text = member.read().decode() if member else ""
            return sorted({ln.strip() for ln in text.splitlines() if ln.strip()})
    found = set()
    for n in names:
        parts = n.split("/")[1:]
        if parts[:1] == ["src"]:
            parts = parts[1:]
        if len(parts) == 2 and parts[1] == "__init__.py":
            found.add(parts[0])
    return sorted(found)


def pylock(lock_file: Path, python: str, platform: str, *, uv: str | None = None) -> list[dict[str, Any]]:
    """uv's PEP 751 view of an existing lock for one target: name, version, wheels (url, size, hash)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the images' and some login nodes' Python
        raise UserError("reading uv's pylock.toml needs Python >= 3.11 (tomllib)",
                        fix="run make lock with python3.11 or newer (make PYTHON=python3.11 lock)") from None

    from suite_core.runner import run, which

    uv = uv or which("uv") or str(Path(sys.executable).with_name("uv"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pylock.facts.toml"
        from containers.locks import binary_args

        run([uv, "pip", "compile", str(lock_file), "--python-version", python, "--python-platform",
             platform, "--no-deps", *binary_args(), "--quiet", "-o", str(out)],
            env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"},
            what=f"uv pip compile (pylock) of {lock_file.name}")
        return tomllib.loads(out.read_text(encoding="utf-8"))["packages"]


def refresh(locks: Iterable[tuple[Path, str, str]], repo: Path = REPO_ROOT,
            log: Any = print) -> dict[str, dict[str, Any]]:
    """Add facts for every wheel the given (lock, python, platform) install; keep the others."""
    from suite_core.atomic import write_json

    facts = load_facts(repo)
    for lock_file, python, platform in locks:
        for pkg in pylock(lock_file, python, platform):
            sd = None if pkg.get("wheels") else pkg.get("sdist")
            if sd and sd["hashes"]["sha256"] not in facts:
                fname = sd["url"].rsplit("/", 1)[-1]
                try:
                    mods = sdist_modules(sd["url"], int(sd["size"]))
                except OSError as exc:
                    raise UserError(f"cannot read {fname}: {exc}",
                                    fix="check the network to the package index and retry") from None
                facts[sd["hashes"]["sha256"]] = {"file": fname, "size": int(sd["size"]), "modules": mods}
                log(f"  {fname} (sdist): {len(mods)} modules")
            for w in pkg.get("wheels", []):
                sha = w["hashes"]["sha256"]
                if sha in facts:
                    continue
                fname = w["url"].rsplit("/", 1)[-1]
                try:
                    names = wheel_listing(w["url"], int(w["size"]))
                except (OSError, zipfile.BadZipFile) as exc:
                    raise UserError(f"cannot read the file list of {fname}: {exc}",
                                    fix="check the network to the package index and retry") from None
                facts[sha] = {"file": fname, "size": int(w["size"]), "modules": modules_of(names)}
                log(f"  {fname}: {len(facts[sha]['modules'])} modules")
    write_json(str(facts_path(repo)), {
        "about": "wheel facts for lint and the size report; regenerate: make lock (or "
                 "python -m containers lock --facts-only)",
        "wheels": dict(sorted(facts.items()))})
    return facts
