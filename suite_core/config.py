"""Compose ``hydra_conf/`` with Hydra's compose API and turn its errors into one-line messages.

The compose API (not ``@hydra.main``) keeps control of the working directory, logging and
error text, and lets host commands and entrypoint apps share one code path. Two-level config:
the submit side writes each job's resolved config into its job folder; the app reads it back
with ``config_dir=<jobdir>, config_name=config``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from suite_core import CONF_DIR, REPO_ROOT
from suite_core.arch import host_arch
from suite_core.errors import UserError

# Node values: what only the compute node knows. A job's config.yaml (written by submit) keeps them
# as ``${node:NAME}``; the node sets the variables below before anything reads that file
# (slurm/lib/common.sh, suite_node: the one rule, documented in docs/slurm.md "Node values").
NODE_VALUES = {"local_root": "CONTAINERS_NODE_LOCAL_ROOT", "deadline": "CONTAINERS_DEADLINE"}
_NODE_TOKENS = False
SHELL_OPEN, SHELL_CLOSE = "\x01", "\x02"  # shell_expressions(): "${" and "}" once converted

_GROUP_OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>[A-Za-z_][\w-]*)=(?P<value>[^\[\]{},]*)$")


def groups(config_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """Config groups and their options, read from the tree (the one source of truth)."""
    out: dict[str, list[str]] = {}
    for sub in sorted(p for p in config_dir.iterdir() if p.is_dir()):
        out[sub.name] = sorted(p.stem for p in sub.glob("*.yaml"))
    return out


def _check_group_overrides(overrides: Sequence[str], config_dir: Path) -> None:
    """Refuse ``cluster=nope`` before Hydra does, with the list of what exists."""
    known = groups(config_dir)
    for ov in overrides:
        m = _GROUP_OVERRIDE.match(ov)
        if not m or m["group"] not in known or m["group"] == "local":
            continue
        value = m["value"]
        if value == "":
            raise UserError(f"override '{ov}' has no value", where="command line",
                            fix=f"write {m['group']}=<one of: {', '.join(known[m['group']])}>")
        if value == "null" or value in known[m["group"]]:
            continue
        noun = "app" if m["group"] == "app" else m["group"]
        raise UserError(
            f"unknown {noun} '{value}'", where=f"{config_dir.name}/{m['group']}/",
            fix=f"choose one of: {', '.join(known[m['group']]) or '(none defined)'}")


def _default_overrides(overrides: Sequence[str]) -> list[str]:
    """Pick the cluster from $CONTAINERS_CLUSTER unless the command line chose one."""
    chosen = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    extra: list[str] = []
    env_cluster = os.environ.get("CONTAINERS_CLUSTER")
    if env_cluster and "cluster" not in chosen:
        extra.append(f"cluster={env_cluster}")
    return extra


# In memory (submit's compose), a node value is a marker no user text contains; written out, it is
# the token ${node:NAME} (node_markers_to_tokens), which the node resolves with its own values.
NODE_MARK = re.compile("\x03node:([a-z_]+)\x04")


def node_token(name: str) -> str:
    """The in-memory stand-in for ``${node:name}`` while submit composes."""
    return f"\x03node:{name}\x04"


def node_markers_to_tokens(obj: Any) -> Any:
    """Markers -> ``${node:NAME}`` in every string of a plain container (what a job's YAML holds)."""
    if isinstance(obj, str):
        return NODE_MARK.sub(lambda m: "${node:" + m[1] + "}", obj) if "\x03" in obj else obj
    if isinstance(obj, dict):
        return {k: node_markers_to_tokens(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [node_markers_to_tokens(v) for v in obj]
    return obj


def _node_value(name: str, _root_: Any = None) -> str | None:
    if name not in NODE_VALUES:
        raise UserError(f"unknown node value '${{node:{name}}}'",
                        fix=f"use one of: {', '.join(NODE_VALUES)}")
    if _NODE_TOKENS:
        return node_token(name)
    value = os.environ.get(NODE_VALUES[name], "")
    if name == "local_root" and not value:
        # not started by exec.sh (a step rerun by hand): the same rule, from the config's profile
        cl = _root_.get("cluster") if _root_ is not None else None
        if cl is not None and cl.get("node_local_default"):
            return _node_root(str(cl.node_local_default), cl.get("node_local_job_var"))
        raise UserError(f"this config needs the node-local root (${{node:{name}}}) and "
                        f"{NODE_VALUES[name]} is not set",
                        fix="run the step through its exec.sh on a compute node (it sets the node values)")
    return value or None


def _node_root(default: str, job_var: str | None) -> str:
    """The node-local root, by the rule slurm/lib/common.sh (suite_node) applies in jobs:
    $CONTAINERS_NODE_LOCAL, else the folder named by $<job_var> (Slurm's per-job disk), else default."""
    if _NODE_TOKENS:
        return node_token("local_root")
    return os.environ.get("CONTAINERS_NODE_LOCAL") or (os.environ.get(job_var or "") if job_var else "") \
        or str(default)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    for name, fn in (("node", _node_value), ("node_root", _node_root), ("basename", os.path.basename)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=False)


@contextlib.contextmanager
def shell_expressions() -> Iterator[None]:
    """Compose into bash: ``${oc.env:X,d}`` -> ``${X:-d}`` and the node rule -> ``${NODE_LOCAL}``.

    How slurm/lib/profiles.sh is generated, so bash on a node applies the same defaults as
    hydra_conf without Python (containers.jobdir.profiles_sh).
    """
    from omegaconf import OmegaConf
    from omegaconf.resolvers import oc

    # \x01 / \x02 stand for "${" and "}" until the caller converts them: a resolved "${X:-d}"
    # would be read as an interpolation again. See SHELL_OPEN/SHELL_CLOSE.
    def env(key: str, default: Any = None) -> str:
        return f"{SHELL_OPEN}{key}:-{'' if default is None else default}{SHELL_CLOSE}"

    _register_resolvers()
    OmegaConf.register_new_resolver("oc.env", env, replace=True, use_cache=False)
    OmegaConf.register_new_resolver("node_root", lambda d, v: f"{SHELL_OPEN}NODE_LOCAL{SHELL_CLOSE}",
                                    replace=True, use_cache=False)
    try:
        yield
    finally:
        OmegaConf.register_new_resolver("oc.env", oc.env, replace=True, use_cache=False)
        OmegaConf.register_new_resolver("node_root", _node_root, replace=True, use_cache=False)


@contextlib.contextmanager
def node_tokens() -> Iterator[None]:
    """Compose for another machine: node values stay ``${node:...}`` tokens in the result."""
    global _NODE_TOKENS
    old, _NODE_TOKENS = _NODE_TOKENS, True
    try:
        yield
    finally:
        _NODE_TOKENS = old


def compose(overrides: Sequence[str] = (), *, config_dir: Path | None = None,
            config_name: str = "config", resolve: bool = True, trusted: Sequence[str] = ()) -> Any:
    """Return the composed (and by default resolved) DictConfig.

    ``overrides`` are user data: ``${`` in their values stays text (suite_core.secrets).
    ``trusted`` overrides come from the config tree itself (a pipeline step's ``overrides``, e.g.
    ``deadline=${node:deadline}``) and keep their interpolations; they are applied last.
    Raises UserError for an unknown group option, a malformed override, a missing config
    file or a mandatory (``???``) value left unset.
    """
    _register_resolvers()
    config_dir = Path(config_dir or CONF_DIR).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise UserError(f"config file {config_name}.yaml not found", where=str(config_dir),
                        fix="pass the job folder that holds config.yaml")
    if not (config_dir / "cluster").is_dir():  # a job folder's resolved config: nothing to compose
        return _load_resolved_config(config_dir / f"{config_name}.yaml", [*overrides, *trusted], resolve)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    overrides = [*_default_overrides(overrides), *overrides]
    _check_group_overrides(overrides, config_dir)
    from suite_core.secrets import protect_overrides, restore_literals, shield_literals

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = hydra_compose(config_name=config_name,
                                overrides=[*protect_overrides(overrides), *trusted])
    except OverrideParseException:
        raise UserError(f"malformed override '{_first_malformed([*overrides, *trusted])}'",
                        where="command line",
                        fix="write key=value (a list as key=[a,b]; quote spaces)") from None
    except MissingConfigException as exc:
        raise UserError(str(exc).splitlines()[0], where=str(config_dir),
                        fix="check the names under hydra_conf/") from None
    except (HydraException, OmegaConfBaseException) as exc:
        msg = str(exc).splitlines()[0]
        if "Could not override" in msg or "Key '" in msg:
            raise UserError(msg, where="command line",
                            fix="use an existing key, or prefix a new one with +") from None
        raise UserError(msg, where=str(config_dir)) from None
    shield_literals(cfg)  # user values and job-YAML literals stay text through resolve (no ${oc.env:...})
    if resolve:
        _fill_runtime_values(cfg)
        try:
            OmegaConf.resolve(cfg)
            _check_missing(cfg)
        except MissingMandatoryValue as exc:
            key = getattr(exc, "full_key", "?")
            raise UserError(f"config value '{key}' is mandatory (???) and unset",
                            fix=f"pass {key}=... or set it in hydra_conf/local/default.yaml") from None
        except OmegaConfBaseException as exc:
            raise (_nested_user_error(exc)
                   or UserError(f"config does not resolve: {str(exc).splitlines()[0]}",
                                fix="check the interpolations and environment variables named")) from None
    restore_literals(cfg)
    return cfg


def _load_resolved_config(path: Path, overrides: Sequence[str], resolve: bool) -> Any:
    """A job folder's config.yaml plus ``key=value`` overrides, without Hydra.

    The file is already composed (submit wrote it), so only OmegaConf is needed: Hydra's import and
    compose cost ~0.5-1 s of every step's start. ``+``/``++`` prefixes add keys, ``~key`` deletes;
    values are read as YAML (lists ``[a,b]``, ``null``, numbers), as Hydra reads them.
    """
    import yaml
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from suite_core.secrets import restore_literals, shield_literals, yaml_safe

    try:
        cfg = OmegaConf.load(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}",
                        fix="pass the job folder submit wrote") from None
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise UserError(f"{path} is not a config: {str(exc).splitlines()[0]}",
                        fix="resubmit to rewrite the job folder") from None
    for ov in overrides:
        key, eq, raw = ov.partition("=")
        key = key.lstrip("+")
        try:
            if key.startswith("~"):
                parent_key, _, leaf = key[1:].rpartition(".")
                parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
                if parent is not None and leaf in parent:
                    with open_dict(parent):
                        del parent[leaf]
                continue
            if not eq or not re.fullmatch(r"[A-Za-z_][\w.-]*", key):
                raise ValueError(ov)
            value = yaml_safe(yaml.safe_load(raw) if raw.strip() else "")  # user values stay literal
            with open_dict(cfg):
                OmegaConf.update(cfg, key, value, force_add=True)
        except (ValueError, yaml.YAMLError, OmegaConfBaseException):
            raise UserError(f"malformed override '{ov}'", where="command line",
                            fix="write key=value (a list as key=[a,b]; quote spaces)") from None
    shield_literals(cfg)  # escaped ${ from the job's YAML stays text through resolve
    if resolve:
        try:
            OmegaConf.resolve(cfg)
            _check_missing(cfg)
        except OmegaConfBaseException as exc:
            nested = _nested_user_error(exc)
            if nested is not None:
                raise nested from None
            key = getattr(exc, "full_key", "?")
            if "Missing mandatory value" in str(exc):
                raise UserError(f"config value '{key}' is mandatory (???) and unset",
                                fix=f"pass {key}=...") from None
            raise UserError(f"config does not resolve: {str(exc).splitlines()[0]}",
                            fix="check the interpolations and environment variables named") from None
    restore_literals(cfg)
    return cfg


def load_resolved(path: Path) -> Any:
    """A YAML file written for a node (``${node:...}`` tokens), resolved with this node's values."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _register_resolvers()
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}",
                        fix="pass the job folder submit wrote") from None
    except OmegaConfBaseException as exc:
        raise (_nested_user_error(exc)
               or UserError(f"{path} does not resolve: {str(exc).splitlines()[0]}",
                            fix="resubmit to rewrite the job folder")) from None


def _nested_user_error(exc: BaseException) -> UserError | None:
    """The UserError one of our resolvers raised inside OmegaConf, which wraps it: its own line wins."""
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, UserError) else None


def _first_malformed(overrides: Sequence[str]) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for ov in overrides:
        try:
            parser.parse_overrides([ov])
        except Exception:
            return ov
    return " ".join(overrides)


def _fill_runtime_values(cfg: Any) -> None:
    """Values only known at run time: 'native' arch and a relative repo path."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cl = cfg.get("cluster")
        if cl is not None:
            for key in ("login_arch", "compute_arch"):
                if cl.get(key) == "native":
                    cl[key] = host_arch()
        paths = cfg.get("paths")
        if paths is not None and paths.get("repo") in (".", None, ""):
            paths["repo"] = str(REPO_ROOT)


def _check_missing(cfg: Any) -> None:
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def to_yaml(cfg: Any) -> str:
    """Resolved YAML that composes back to the same values (literal ``${`` kept escaped), secrets masked."""
    from omegaconf import OmegaConf

    from suite_core.secrets import mask, yaml_safe

    plain = node_markers_to_tokens(yaml_safe(OmegaConf.to_container(cfg, resolve=True)))
    return mask(OmegaConf.to_yaml(OmegaConf.create(plain)))
