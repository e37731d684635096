"""Secrets stay out of everything the suite writes or prints, and user values are never interpolated.

Two failures this prevents. (1) An input folder named ``scans_${oc.env:HF_TOKEN}`` (or such an
array-manifest line) was resolved by OmegaConf: the token landed in every step's ``config.yaml``,
on stderr and in the run report. User-supplied override values are data, so ``${`` in them is
swapped for a placeholder before Hydra parses them and restored afterwards as an *escaped*
literal (``\\${``), which OmegaConf reads back as the plain text ``${``; YAML written for a later
run keeps the escape (:func:`yaml_safe`), so a job folder's config stays literal when the job
reads it. (2) Allow-listed variable prefixes (``CONTAINERS_*``, ``SLURM_*``) carried any
``CONTAINERS_HF_TOKEN`` into containers and dry-run output: :func:`drop_secret_vars` removes
names that look secret, and :func:`mask` replaces the values of such variables, and the
password of a credentialed URL, wherever text is printed or written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

# TOKEN but not TOKENIZERS_PARALLELISM; SECRET, PASSWORD/PASSWD, CREDENTIAL(S); *_KEY, *APIKEY.
_SECRET_NAME = re.compile(r"TOKEN(?!IZER)|SECRET|PASSW(?:OR)?D|CREDENTIAL|(?:^|_)KEY$|APIKEY|_KEY_", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^/\s@]+)@")
MASK = "***"
MIN_SECRET_LEN = 6  # shorter values (a "1", a "true") would mask ordinary text without protecting anything
# Stands for "${" in user values while Hydra parses them; never produced by anything else.
PLACEHOLDER = "__containers_literal_dollar_brace__"


def looks_secret(name: str) -> bool:
    """True for variable names like HF_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD, WANDB_API_KEY."""
    return bool(_SECRET_NAME.search(name))


def drop_secret_vars(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the variables whose names look secret (for pass-through allow-lists)."""
    return {k: v for k, v in env.items() if not looks_secret(k)}


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking variables, longest first (so a longer secret masks whole)."""
    environ = os.environ if environ is None else environ
    vals = {v for k, v in environ.items() if looks_secret(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(vals, key=len, reverse=True)


def mask_urls(text: str) -> str:
    """``https://user:pw@host/simple`` -> ``https://user:***@host/simple``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def mask(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret variable's value and every URL password replaced by ``***``."""
    if not text:
        return text
    for v in secret_values(environ):
        if v in text:
            text = text.replace(v, MASK)
    return mask_urls(text) if "@" in text else text


def mask_obj(obj: object, environ: Mapping[str, str] | None = None) -> object:
    """:func:`mask` applied to every string inside nested dicts, lists and tuples."""
    values = secret_values(environ)

    def walk(o: object) -> object:
        if isinstance(o, str):
            for v in values:
                if v in o:
                    o = o.replace(v, MASK)
            return mask_urls(o) if "@" in o else o
        if isinstance(o, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(walk(v) for v in o)
        return o

    return walk(obj)


def protect_overrides(overrides: Iterable[str]) -> list[str]:
    """Overrides made literal for Hydra's parser: user values are data, never syntax.

    A value holding ``${`` would be an interpolation (``oc.env`` fetches any variable): it becomes
    one quoted string with a placeholder for ``${``. A bare value holding ``,`` ``'`` or ``"``
    (a folder named ``a,b`` or ``it's``, already quoted once for the shell) would be a sweep or
    a syntax error: it becomes one quoted string too. Lists (``[...]``), dicts (``{...}``) and
    values already quoted for Hydra keep their meaning.
    """
    out = []
    for ov in overrides:
        ov = str(ov)
        key, eq, value = ov.partition("=")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        structured = value[:1] in ("[", "{")
        special = not quoted and not structured and any(c in value for c in ",'\"")
        if not eq or not ("${" in value or special):
            out.append(ov)
            continue
        if quoted:
            q, inner = value[0], value[1:-1]
        else:
            q = '"' if "'" in value and '"' not in value else "'"
            inner = value.replace(q, "\\" + q)
        out.append(f"{key}={q}{inner.replace('${', PLACEHOLDER)}{q}")
    return out


def _walk_strings(cfg: object, fn) -> None:
    """Call ``fn(raw_string) -> new or None`` on every raw (unresolved) string leaf; set what changes."""
    from omegaconf import DictConfig, ListConfig, flag_override

    def visit(node: object) -> None:
        keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))  # type: ignore[arg-type]
        for key in keys:
            child = node._get_node(key)  # type: ignore[union-attr]
            if isinstance(child, (DictConfig, ListConfig)):
                if not child._is_none() and not child._is_missing() and not child._is_interpolation():
                    visit(child)
                continue
            raw = child._value() if child is not None else None
            if isinstance(raw, str):
                new = fn(raw)
                if new is not None and new != raw:
                    with flag_override(node, ["readonly", "struct"], False):  # type: ignore[arg-type]
                        node[key] = new  # type: ignore[index]

    visit(cfg)


_DOLLAR_BRACE = re.compile(r"(\\*)\$\{")


def escape_text(text: str) -> str:
    """Literal text -> OmegaConf's raw form of it: each ``${`` escaped, with the backslashes before it.

    OmegaConf reads ``\\${`` as a backslash and then a live interpolation, so k backslashes before
    a literal ``${`` are written as 2k + 1.
    """
    return _DOLLAR_BRACE.sub(lambda m: "\\" * (2 * len(m[1]) + 1) + "${", text)


def _shield(raw: str) -> str | None:
    """Raw OmegaConf string -> the same text with each *escaped* ``${`` as the placeholder."""
    if "${" not in raw:
        return None

    def one(m: re.Match[str]) -> str:
        k = len(m[1])
        return "\\" * (k // 2) + PLACEHOLDER if k % 2 else m[0]  # odd: escaped, i.e. literal text

    return _DOLLAR_BRACE.sub(one, raw)


def shield_literals(cfg: object) -> None:
    """Before resolving: escaped ``\\${`` (a literal from a job's YAML) -> placeholder.

    ``OmegaConf.resolve`` turns ``\\${x}`` into ``${x}`` and so into a live interpolation; the
    placeholder keeps it text until :func:`restore_literals` writes the escape back.
    """
    _walk_strings(cfg, _shield)


def restore_literals(cfg: object) -> None:
    """After resolving: placeholder -> escaped ``${`` (OmegaConf returns it as the literal text)."""
    _walk_strings(cfg, lambda s: escape_text(s.replace(PLACEHOLDER, "${")) if PLACEHOLDER in s else None)


def yaml_safe(obj: object) -> object:
    """A resolved container ready to be dumped as YAML that a later compose reads back literally."""
    if isinstance(obj, str):
        return escape_text(obj) if "${" in obj else obj
    if isinstance(obj, dict):
        return {k: yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [yaml_safe(v) for v in obj]
    return obj
