"""The schema of ``hydra_conf/pipeline/<name>.yaml`` as Hydra structured configs (dataclasses).

OmegaConf checks every key and type against these classes (an unknown key, ``gpus: two`` or a
step without an app is refused with the key's full path), so ``submit`` keeps only the rules a
type cannot say (partitions, GPU routing, dependencies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from suite_core.errors import UserError

DEFAULT_SCRIPT = "slurm/run_stage.sbatch"


class GpuGuard(str, Enum):
    error = "error"
    warn = "warn"
    off = "off"


@dataclass
class StageSpec:
    """A file or folder copied to node-local disk before the job's first step."""

    src: str = MISSING
    dst: str = "models"          # relative: under the node-local root
    checksum: bool = False


@dataclass
class StepSpec:
    app: str = MISSING
    image: str = MISSING
    overrides: list[str] = field(default_factory=list)


@dataclass
class JobSpec:
    steps: list[StepSpec] = MISSING
    gpu: bool | None = None          # default: the partition's gpu flag
    partition: str | None = None     # a key of cluster.partitions
    gpus: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None
    nodes: int | None = None
    after: list[str] = field(default_factory=list)
    array: str | None = None
    array_manifest: str | None = None
    sbatch: str = DEFAULT_SCRIPT
    sbatch_args: list[str] = field(default_factory=list)
    gpu_guard: GpuGuard | None = None
    stage: list[StageSpec] = field(default_factory=list)


@dataclass
class PipelineSpec:
    name: str = MISSING
    modes: dict[str, Any] = MISSING     # mode -> job name -> JobSpec (checked per job by load)
    default_mode: str | None = None


def _typed(schema: type, node: Any, prefix: str, where: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as exc:
        key = ".".join(k for k in (prefix, getattr(exc, "full_key", None) or "") if k)
        msg = str(exc).splitlines()[0]
        if "not in" in msg and "Key '" in msg:
            raise UserError(f"pipeline key '{key}' is not a known setting", where=where,
                            fix=f"use only: {', '.join(schema.__dataclass_fields__)}") from None
        if "missing mandatory value" in msg.lower():
            raise UserError(f"pipeline key '{key}' is required and missing", where=where,
                            fix="write steps: - {app: NAME, image: IMAGE}") from None
        raise UserError(f"pipeline key '{key}': {msg}", where=where,
                        fix="see the schema in containers/pipeline_spec.py (docs/slurm.md)") from None


def _escape(value: Any) -> Any:
    """Keep a literal ``${...}`` literal (a step override meant for the step's own composition)."""
    from suite_core.secrets import yaml_safe

    return yaml_safe(value)


def load(node: Any, where: str) -> PipelineSpec:
    """Validate a composed (resolved) ``pipeline`` node; a mismatch is one line naming the key."""
    from omegaconf import OmegaConf

    raw = _escape(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else node
    spec = _typed(PipelineSpec, raw, "", where)
    modes: dict[str, dict[str, JobSpec]] = {}
    for mode, jobs in (spec.modes or {}).items():
        if not isinstance(jobs, dict):
            raise UserError(f"pipeline key 'modes.{mode}' must map job names to jobs", where=where,
                            fix="write modes: {MODE: {JOB: {steps: [...]}}}")
        modes[mode] = {name: _typed(JobSpec, _escape(job or {}), f"modes.{mode}.{name}", where)
                       for name, job in jobs.items()}
    spec.modes = modes
    return spec
