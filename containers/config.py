"""Compose ``hydra_conf/`` with Hydra's compose API and turn its errors into one-line messages.

The compose API (not ``@hydra.main``) keeps control of the working directory, logging and
error text, and lets host commands and entrypoint apps share one code path. Two-level config:
the submit side writes each job's resolved config into its job folder; the app reads it back
with ``config_dir=<jobdir>, config_name=config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from containers import CONF_DIR, REPO_ROOT
from containers.arch import host_arch
from containers.errors import UserError

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


def compose(overrides: Sequence[str] = (), *, config_dir: Path | None = None,
            config_name: str = "config", resolve: bool = True) -> Any:
    """Return the composed (and by default resolved) DictConfig.

    Raises UserError for an unknown group option, a malformed override, a missing config
    file or a mandatory (``???``) value left unset.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    config_dir = Path(config_dir or CONF_DIR).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise UserError(f"config file {config_name}.yaml not found", where=str(config_dir),
                        fix="pass the job folder that holds config.yaml")
    if (config_dir / "cluster").is_dir():  # a job folder's resolved config has no groups to pick
        overrides = [*_default_overrides(overrides), *overrides]
        _check_group_overrides(overrides, config_dir)
    from containers.secrets import protect_overrides, restore_literals, shield_literals

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=protect_overrides(overrides))
    except OverrideParseException:
        raise UserError(f"malformed override '{_first_malformed(overrides)}'", where="command line",
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
            raise UserError(f"config does not resolve: {str(exc).splitlines()[0]}",
                            fix="check the interpolations and environment variables named") from None
    restore_literals(cfg)
    return cfg


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

    from containers.secrets import mask, yaml_safe

    return mask(OmegaConf.to_yaml(OmegaConf.create(yaml_safe(OmegaConf.to_container(cfg, resolve=True)))))
