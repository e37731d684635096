"""Experiment pipelines: a DAG of stages, swept over seeds, submitted at once, resumed after a fix.

The status quo waited for each job in a loop on the login node and kept partition, time and
paths in a Python config plus eight job scripts. Here a pipeline with ``kind: experiment``
(``hydra_conf/pipeline/<name>.yaml``, schema :class:`ExperimentSpec`) is validated whole, expanded
into one chain per seed that shares the seed-independent stages (``per_seed: false``; such a
stage after per-seed stages waits for every seed: an aggregation), and submitted with
``afterok`` + ``--kill-on-invalid-dep=yes`` in one go by ``python -m containers submit <name>``.

Every stage instance has a fingerprint: its settings, the fingerprints of the stages it reads,
the facts of its external input files and its code version (:mod:`suite_core.markers`). The stage
writes it into its completion flag, last, on success. ``resume=<run dir>`` recomputes the
fingerprints and resubmits only instances whose flag is missing or different, plus everything
after them. A resume with other settings than the run dir was made with is refused (outputs made
with two settings would mix in one folder); resources (time, memory, partition) may change.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers import CONF_DIR, REPO_ROOT
from suite_core.errors import UserError

KIND = "experiment"
COMPLETE = "_complete.json"
STATE = "experiment.json"
DDP_SCRIPT = "slurm/ddp.sbatch"
STAGE_SCRIPT = "slurm/run_stage.sbatch"
# Keys of an app config that are bookkeeping, not settings that change what the stage makes.
NOT_SETTINGS = frozenset({"app_name", "app_module", "app_summary", "external_inputs"})
_KIND_LINE = re.compile(r"^kind:\s*['\"]?(\w+)['\"]?\s*(#.*)?$", re.M)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


# --------------------------------------------------------------------------- schema
@dataclass
class DDPSpec:
    """A stage that trains on several nodes (containers/ddp.py has the rules)."""

    launcher: str | None = None        # srun (one task per GPU) | torchrun (one per node); cluster default
    num_workers: int | None = None     # loader workers per rank; default: the stage config's num_workers
    worker_rss: str = "2G"             # declared or measured RSS of one loader worker
    rank_rss: str = "4G"               # RSS of one training process
    nproc_per_node: int | None = None  # torchrun ranks per node where nodes have no GPUs


@dataclass
class StageSpec:
    app: str = "???"                   # an app from hydra_conf/app/
    image: str = "???"                 # an image from hydra_conf/image/
    gpu: bool = False
    partition: str | None = None       # a key of cluster.partitions; default cluster.gpu.type or cpu
    gpus: int = 1                      # per node, GPU stages only
    nodes: int = 1
    ntasks_per_node: int | None = None  # DDP stages; default: one per GPU (srun) or 1 (torchrun)
    cpus_per_task: int = 1
    mem: str | None = None             # per node, as sbatch --mem
    time: str = "01:00:00"
    after: list[str] = field(default_factory=list)
    per_seed: bool = True              # false: one instance shared by every seed
    settings: dict[str, Any] = field(default_factory=dict)  # merged over the app's config
    ddp: DDPSpec | None = None
    gpu_guard: str | None = None


@dataclass
class ExperimentSpec:
    name: str = "???"
    kind: str = KIND
    seeds: list[int] = field(default_factory=lambda: [1])
    stages: dict[str, StageSpec] = field(default_factory=dict)


@dataclass
class Instance:
    """One stage for one seed (or the shared one): a Slurm job."""

    name: str
    stage: str
    seed: int | None
    spec: StageSpec
    deps: list[str]
    out_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    input_files: list[str] = field(default_factory=list)
    code: str = ""
    fingerprint: str = ""
    cfg: Any = None


@dataclass
class Experiment:
    pipeline: str
    cluster: Any
    seeds: list[int]
    spec: ExperimentSpec
    instances: dict[str, Instance]   # topological order
    run_dir: Path
    step_overrides: list[str]
    resumed: bool = False
    overrides: list[str] = field(default_factory=list)  # as given (a resume reuses them)
    gpu: str | None = None
    complete: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- shared with the stages
def instance_fingerprint(settings: Mapping[str, Any], upstream: Mapping[str, str],
                         input_files: Sequence[str], code: str) -> str:
    """The one definition of a stage instance's fingerprint (submit side and stage side)."""
    from suite_core.markers import fingerprint

    return fingerprint({"settings": dict(settings), "upstream": dict(sorted(upstream.items()))},
                       list(input_files), code)


def settings_of(cfg: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: cfg.get(k) for k in sorted(keys)}


def input_files_of(cfg: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    return [str(cfg.get(k)) for k in keys if cfg.get(k) not in (None, "")]


# --------------------------------------------------------------------------- entry points
def is_experiment(pipeline: str) -> bool:
    """Whether ``hydra_conf/pipeline/<pipeline>.yaml`` declares ``kind: experiment`` (no YAML import)."""
    path = CONF_DIR / "pipeline" / f"{pipeline}.yaml"
    try:
        m = _KIND_LINE.search(path.read_text(encoding="utf-8"))
    except OSError:
        return False
    return bool(m) and m[1] == KIND


def cli(args: Any, *, preflight: bool = False) -> int:
    """``python -m containers submit|preflight <experiment>``: plan, check, write, submit, report."""
    if getattr(args, "only", ""):
        raise UserError("--only does not apply to experiment pipelines", where="python -m containers submit",
                        fix="resume=RUN_DIR resubmits exactly the stages that are not complete")
    if getattr(args, "input_dir", None) or getattr(args, "recursive", False):
        raise UserError("--input-dir/--recursive do not apply to experiment pipelines",
                        where="python -m containers submit",
                        fix="pass the stage's input setting, e.g. data_file=/data/points.csv")
    exp = plan(args.pipeline, list(args.overrides), run_dir=getattr(args, "run_dir", None),
               create=not preflight)
    for w in exp.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if preflight:
        return _preflight(exp)
    dry = bool(getattr(args, "dry_run", False))
    return _submit(exp, dry_run=dry)


def split_args(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Pull the experiment options (``seeds=``, ``resume=``, ``gpu=``) out of the overrides."""
    opts: dict[str, str] = {}
    rest: list[str] = []
    for a in args:
        key, eq, val = a.partition("=")
        if eq and key in ("seeds", "resume", "gpu"):
            opts[key] = val
        else:
            rest.append(a)
    return opts, rest


def parse_seeds(text: str, where: str) -> list[int]:
    import yaml

    try:
        value = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError:
        value = None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UserError(f"seeds={text} is not a list of integers", where=where, fix="write seeds=[1,2,3]")
    return value


# --------------------------------------------------------------------------- planning
def plan(pipeline: str, args: Sequence[str], *, run_dir: str | None = None,
         create: bool = True) -> Experiment:
    """Compose, validate and expand the experiment; decide what to submit.

    Writes nothing but a new run dir (``create``; made with mkdir so two submissions never share it).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from containers.submit import route_overrides
    from suite_core.config import compose, node_tokens

    where = f"hydra_conf/pipeline/{pipeline}.yaml"
    opts, overrides = split_args(args)
    stored: dict[str, Any] = {}
    if opts.get("resume"):  # the run's own overrides and seeds first; what is given now goes on top
        stored = _read_state(Path(opts["resume"]).expanduser().absolute())
        overrides = [*(str(o) for o in stored.get("overrides") or []), *overrides]
        if "seeds" not in opts and stored.get("seeds"):
            opts["seeds"] = json.dumps(stored["seeds"])
        if "gpu" not in opts and stored.get("gpu"):
            opts["gpu"] = str(stored["gpu"])
    given = list(overrides)
    if opts.get("gpu"):
        overrides.append(f"cluster.gpu.type={opts['gpu']}")
    pipe_overrides, step_overrides = route_overrides(overrides)
    # Any schema key may be set whether or not the YAML spells it out; typos fail the schema below.
    pipe_overrides = [f"++{o}" if o.startswith("pipeline.") else o for o in pipe_overrides]
    with node_tokens():  # node values stay ${node:...} in the jobs' configs (docs/slurm.md "Node values")
        cfg = compose([f"+pipeline={pipeline}", *pipe_overrides])
    try:
        spec_cfg = OmegaConf.merge(OmegaConf.structured(ExperimentSpec), cfg.pipeline)
        spec: ExperimentSpec = OmegaConf.to_object(spec_cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise UserError(f"experiment pipeline does not fit the schema: {str(exc).splitlines()[0]}"
                        + (f" (at {key})" if key else ""), where=where,
                        fix="see containers/experiment.py ExperimentSpec for the keys and types") from None
    seeds = parse_seeds(opts["seeds"], "seeds=") if "seeds" in opts else list(spec.seeds)
    if not seeds:
        raise UserError("the seed list is empty: no chain would run",
                        where="seeds=" if "seeds" in opts else where,
                        fix="give at least one seed, e.g. seeds=[1,2,3]")
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise UserError(f"seed(s) {dup} appear twice", where="seeds=", fix="list each seed once")
    cl = cfg.cluster
    if str(cl.get("scheduler")) != "slurm":
        raise UserError(f"cluster '{cl.name}' has no Slurm scheduler", where="hydra_conf/cluster/",
                        fix="pass cluster=torch or cluster=dgx_spark (or set CONTAINERS_CLUSTER)")
    order = _check_dag(spec, where)
    _check_names(spec, where)
    warnings = _check_resources(cl, spec, where)
    with node_tokens():
        composed = _compose_apps(spec, cfg, step_overrides, where)
    resume = opts.get("resume")
    if resume is not None and not resume:
        raise UserError("resume= names no run directory", where="command line", fix="resume=<run dir>")
    created = None
    if resume:
        rd = Path(resume).expanduser().absolute()
        if not rd.is_dir():
            raise UserError(f"run directory {resume} does not exist", where="resume=",
                            fix="pass the run dir that submit printed")
    elif run_dir:
        rd = Path(run_dir).expanduser().absolute()
        if (rd / STATE).exists():
            raise UserError(f"run directory {rd} already holds an experiment", where="--run-dir",
                            fix=f"resume it with resume={rd}, or choose a new --run-dir")
    else:
        from suite_core.rundir import unique_dir

        parent, stamp = Path(str(cfg.paths.runs)) / pipeline, _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        rd = created = unique_dir(parent, stamp) if create else parent / stamp
    exp = Experiment(pipeline, cl, seeds, spec, {}, rd, step_overrides, resumed=bool(resume),
                     warnings=warnings,
                     overrides=given, gpu=opts.get("gpu"))
    try:
        _expand(exp, order)
        _stage_configs(exp, composed)
        _check_memory(exp, where)
        for inst in exp.instances.values():
            upstream = {d: exp.instances[d].fingerprint for d in inst.deps}
            inst.fingerprint = instance_fingerprint(inst.settings, upstream, inst.input_files, inst.code)
            exp.warnings += [f"stage {inst.name} reads {f}, which does not exist yet"
                             for f in inst.input_files if not Path(f).exists()]
        if exp.resumed:
            _resume_filter(exp)
    except UserError:
        if created is not None and create:  # leave no empty run dir (nor an empty <runs>/<pipeline>) behind
            with contextlib.suppress(OSError):
                created.rmdir()
                created.parent.rmdir()
        raise
    return exp


def _check_dag(spec: ExperimentSpec, where: str) -> list[str]:
    """Stage names, unknown dependencies and cycles; returns the stages in dependency order."""
    if not spec.stages:
        raise UserError("the experiment has no stages", where=where, fix="add stages: {NAME: {app, image}}")
    for name, st in spec.stages.items():
        if not _NAME.match(name):
            raise UserError(f"stage name '{name}' is not a plain name", where=where,
                            fix="use letters, digits, _ and -, starting with a letter")
        for dep in st.after:
            if dep not in spec.stages:
                raise UserError(f"stage '{name}' runs after '{dep}', which the experiment does not define",
                                where=where, fix=f"use one of: {', '.join(spec.stages)}")
    from containers.submit import dependency_order

    return dependency_order({n: list(st.after) for n, st in spec.stages.items()}, noun="stages", where=where)


def _instance_name(stage: str, seed: int | None) -> str:
    return stage if seed is None else f"{stage}.s{seed}"


def _expand(exp: Experiment, order: list[str]) -> None:
    """One instance per seed for per-seed stages, one for shared ones; dependencies per seed."""
    outputs = exp.run_dir / "outputs"
    for stage in order:
        st = exp.spec.stages[stage]
        seeds: list[int | None] = list(exp.seeds) if st.per_seed else [None]
        for seed in seeds:
            deps: list[str] = []
            for dep in st.after:
                dst = exp.spec.stages[dep]
                if not dst.per_seed:
                    deps.append(_instance_name(dep, None))
                elif seed is not None:
                    deps.append(_instance_name(dep, seed))
                else:  # a shared stage after a per-seed one waits for every seed
                    deps += [_instance_name(dep, s) for s in exp.seeds]
            out = outputs / stage if seed is None else outputs / f"seed{seed}" / stage
            name = _instance_name(stage, seed)
            exp.instances[name] = Instance(name, stage, seed, st, deps, out)


def _check_names(spec: ExperimentSpec, where: str) -> None:
    """Apps and images exist (before a run dir is made)."""
    from suite_core.apps import discover
    from suite_core.config import groups

    apps = discover()
    images = groups().get("image", [])
    for stage, st in spec.stages.items():
        if st.app not in apps:
            raise UserError(f"stage '{stage}' names unknown app '{st.app}'", where=where,
                            fix=f"choose one of: {', '.join(apps)}")
        if st.image not in images:
            raise UserError(f"stage '{stage}' names unknown image '{st.image}'", where=where,
                            fix=f"choose one of: {', '.join(images)}")


def _check_resources(cl: Any, spec: ExperimentSpec, where: str) -> list[str]:
    """Partitions, GPU/CPU placement and DDP shapes, before anything is written; returns warnings."""
    from omegaconf import OmegaConf

    from containers.ddp import Shape, check_shape, cluster_ddp

    warnings: list[str] = []
    parts = OmegaConf.to_container(cl.partitions, resolve=True) or {}
    gpu_default = cl.gpu.type if cl.get("gpu") else None
    ddp_cfg = cluster_ddp(cl)
    for stage, st in spec.stages.items():
        key = st.partition or (gpu_default if st.gpu else "cpu")
        if key not in parts:
            raise UserError(f"stage '{stage}' asks for partition '{key}', which cluster '{cl.name}' lacks",
                            where=where, fix=f"use one of: {', '.join(parts) or '(none defined)'}")
        part = parts[key]
        if st.gpu and not part.get("gpu"):
            have = [k for k, v in parts.items() if v.get("gpu")]
            raise UserError(f"GPU stage '{stage}' is on partition '{part['name']}' ({key}), "
                            "which has no GPUs",
                            where=where, fix=f"use a GPU partition: {', '.join(have) or '(none)'}, "
                            "or set gpu: false")
        if not st.gpu and part.get("gpu"):
            raise UserError(f"CPU stage '{stage}' would land in GPU partition '{part['name']}' ({key})",
                            where=where, fix="put CPU work on partition: cpu, or set gpu: true")
        if st.gpu and st.gpus < 1:
            raise UserError(f"GPU stage '{stage}' asks for {st.gpus} GPUs", where=where,
                            fix="set gpus: 1 or more")
        if st.ddp is None and (st.nodes != 1 or (st.ntasks_per_node or 1) != 1):
            raise UserError(f"stage '{stage}' asks for {st.nodes} node(s) x {st.ntasks_per_node} task(s) "
                            "without a ddp: block, so only one process would run", where=where,
                            fix="add ddp: {launcher: srun} to the stage, or drop nodes/ntasks_per_node")
        if st.ddp is not None:
            launcher = st.ddp.launcher or str(ddp_cfg.get("launcher", "srun"))
            st.ddp.launcher = launcher
            gpus = st.gpus if st.gpu else 0
            if st.ntasks_per_node is None:
                st.ntasks_per_node = 1 if launcher == "torchrun" else max(gpus, 1)
            shape = Shape(nodes=st.nodes, ntasks_per_node=st.ntasks_per_node, gpus_per_node=gpus,
                          cpus_per_task=st.cpus_per_task, launcher=launcher, mem_per_node=st.mem,
                          procs_per_node=st.ddp.nproc_per_node)
            warnings += check_shape(shape, where=f"{where} stage {stage}")
    return warnings


def _check_memory(exp: Experiment, where: str) -> None:
    """The memory preflight of DDP stages, with the loader workers the stage's config will use."""

    from containers.ddp import Loader, Shape, cluster_ddp, memory_check

    ddp_cfg = cluster_ddp(exp.cluster)
    seen: set[str] = set()
    for inst in exp.instances.values():
        st = inst.spec
        if st.ddp is None or inst.stage in seen:
            continue
        seen.add(inst.stage)
        workers = st.ddp.num_workers
        if workers is None:
            workers = int(inst.cfg.get("num_workers") or 0)
        shape = Shape(nodes=st.nodes, ntasks_per_node=st.ntasks_per_node or 1,
                      gpus_per_node=st.gpus if st.gpu else 0, cpus_per_task=st.cpus_per_task,
                      launcher=str(st.ddp.launcher), mem_per_node=st.mem,
                      procs_per_node=st.ddp.nproc_per_node)
        verdict = memory_check(shape, Loader(workers, st.ddp.worker_rss, st.ddp.rank_rss),
                               reserve=float(ddp_cfg.get("mem_reserve", 0.1)))
        exp.warnings += [f"stage {inst.stage}: {w}" for w in verdict.warnings]
        if not verdict.ok:
            raise UserError(f"stage '{inst.stage}' would run out of memory: {verdict.line}", where=where)


def _compose_apps(spec: ExperimentSpec, base: Any, step_overrides: Sequence[str],
                  where: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Each (app, image) config once, resolved; stage settings must be keys the app has."""
    from omegaconf import OmegaConf

    plain: dict[str, Any] = OmegaConf.to_container(base, resolve=True)  # type: ignore[assignment]
    plain.pop("pipeline", None)
    composed: dict[tuple[str, str], dict[str, Any]] = {}
    for stage, st in spec.stages.items():
        key = (st.app, st.image)
        if key not in composed:
            composed[key] = app_config(plain, st.app, st.image, step_overrides)
        unknown = sorted(str(k) for k in st.settings if str(k) not in composed[key])
        if unknown:
            raise UserError(f"stage '{stage}' sets {', '.join(unknown)}, which app {st.app} does not have",
                            where=where, fix=f"see python -m entrypoints {st.app} --help for its settings")
    return composed


def app_config(base: Mapping[str, Any], app: str, image: str,
               step_overrides: Sequence[str]) -> dict[str, Any]:
    """What ``compose([app=APP, image=IMAGE, *step_overrides])`` gives, without composing again.

    A Hydra composition costs ~0.1-0.2 s of CPU, and submitting a 24-job experiment in under 2 s
    leaves no room for one per app. ``base`` (composed once and resolved: cluster, paths) gets the
    app's and the image's YAML merged in and the app-setting overrides applied. That equals Hydra's
    result only when the app file has no defaults list and shares no top-level key with the base or
    the local overrides (then merge order cannot matter); otherwise Hydra composes, as before.
    """
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from containers.submit import SHARED_ROOTS
    from suite_core.apps import APP_DIR
    from suite_core.config import compose

    def hydra() -> dict[str, Any]:
        cfg = compose([f"app={app}", f"image={image}", *step_overrides])
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

    app_file = APP_DIR / f"{app}.yaml"
    if not app_file.read_text(encoding="utf-8").startswith("# @package _global_"):
        return hydra()
    own = yaml.safe_load(app_file.read_text(encoding="utf-8")) or {}
    img = yaml.safe_load((CONF_DIR / "image" / f"{image}.yaml").read_text(encoding="utf-8")) or {}
    local = CONF_DIR / "local" / "default.yaml"
    local_keys = set(yaml.safe_load(local.read_text(encoding="utf-8")) or {}) if local.is_file() else set()
    if "defaults" in own or "defaults" in img or set(own) & (set(base) | local_keys) or "image" in local_keys:
        return hydra()
    cfg = OmegaConf.create({**base, **own, "image": img})
    try:
        for ov in OverridesParser.create().parse_overrides(list(step_overrides)):
            root = ov.key_or_group.split(".")[0]
            if root in SHARED_ROOTS:
                continue  # in the base already
            if ov.is_delete() or ov.package is not None:
                return hydra()
            OmegaConf.update(cfg, ov.key_or_group, ov.value(), force_add=True)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "?")
        raise UserError(f"config value '{key}' is mandatory (???) and unset",
                        fix=f"pass {key}=... or set it in hydra_conf/local/default.yaml") from None
    except OmegaConfBaseException as exc:
        raise UserError(f"config of app {app} does not resolve: {str(exc).splitlines()[0]}",
                        fix="check the overrides and interpolations named") from None


def _deep_update(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    """OmegaConf's merge on plain dicts: mappings merge key by key, everything else replaces."""
    import copy

    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def _stage_configs(exp: Experiment, composed: Mapping[tuple[str, str], dict[str, Any]]) -> None:
    """Each stage's app config, specialised per seed, with what its fingerprint is made of."""
    import copy

    import yaml

    from suite_core.apps import APP_DIR
    from suite_core.markers import code_version

    app_keys: dict[str, list[str]] = {}
    codes: dict[tuple[str, ...], str] = {}
    for inst in exp.instances.values():
        st = inst.spec
        if st.app not in app_keys:
            own = yaml.safe_load((APP_DIR / f"{st.app}.yaml").read_text(encoding="utf-8")) or {}
            app_keys[st.app] = [str(k) for k in own if str(k) not in NOT_SETTINGS]
        cfg = dict(composed[(st.app, st.image)])  # shallow: only top-level keys and settings change
        for k in st.settings:
            if isinstance(cfg.get(k), dict):
                cfg[k] = copy.deepcopy(cfg[k])
        # a stage's own settings beat a plain key=value given for every stage (the more specific
        # wins); pipeline.stages.NAME.settings.KEY=VALUE targets one stage
        _deep_update(cfg, st.settings)
        keys = sorted({*app_keys[st.app], *(str(k) for k in st.settings)})
        if inst.seed is not None:
            cfg["seed"] = inst.seed
            keys = sorted({*keys, "seed"})
        in_keys = [str(k) for k in cfg.get("external_inputs") or []]
        modules = (str(cfg["app_module"]), "entrypoints.experiment.common")
        cfg.update(run_dir=str(exp.run_dir), stage=inst.stage, job_name=inst.name)
        cfg["exp"] = {
            "pipeline": exp.pipeline, "instance": inst.name, "seed": inst.seed, "out_dir": str(inst.out_dir),
            "inputs": [{"name": d, "dir": str(exp.instances[d].out_dir)} for d in inst.deps],
            "settings_keys": keys, "input_keys": in_keys, "code_modules": list(modules),
        }
        inst.settings = settings_of(cfg, keys)
        inst.input_files = input_files_of(cfg, in_keys)
        if modules not in codes:
            codes[modules] = code_version(*modules)
        inst.code = codes[modules]
        inst.cfg = cfg


def _resume_filter(exp: Experiment) -> None:
    """Keep only instances without a valid flag and everything after them; refuse other settings."""
    from suite_core.markers import is_done

    state = _read_state(exp.run_dir)
    if state.get("pipeline") != exp.pipeline:
        raise UserError(f"run directory {exp.run_dir} holds experiment '{state.get('pipeline')}', "
                        f"not '{exp.pipeline}'", where="resume=",
                        fix=f"python -m containers submit {state.get('pipeline')} resume={exp.run_dir}")
    before = {k: v for k, v in (state.get("settings") or {}).items()}
    now = {name: inst.settings for name, inst in exp.instances.items()}
    if before != now:
        raise UserError(f"run directory {exp.run_dir} was made with other settings: "
                        f"{_first_difference(before, now)}",
                        where="resume=", fix="resume with the settings it was made with (see its "
                        f"{STATE}), or submit these settings to a new run dir")
    _refuse_active(state, exp.run_dir)
    todo: set[str] = set()
    for name, inst in exp.instances.items():  # topological order: parents first
        if any(d in todo for d in inst.deps) or not is_done(inst.out_dir / COMPLETE, inst.fingerprint):
            todo.add(name)
    exp.complete = [n for n in exp.instances if n not in todo]
    exp.instances = {n: i for n, i in exp.instances.items() if n in todo}


def _first_difference(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    gone = sorted(set(before) - set(now))
    new = sorted(set(now) - set(before))
    if gone or new:
        return (f"stage instances {', '.join(gone) or '-'} there, {', '.join(new) or '-'} now "
                "(other seeds or stages)")
    for name in before:
        a, b = before[name], now[name]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"{name}: {key} = {json.dumps(a.get(key))} there, {json.dumps(b.get(key))} now"
    return "(unknown)"


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not an experiment run directory (no {STATE})", where="resume=",
                        fix="pass the run dir that submit printed") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}", where="resume=",
                        fix="pass the run dir that submit printed") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not an experiment record", where="resume=",
                        fix="pass the run dir that submit printed")
    return data


def _refuse_active(state: Mapping[str, Any], run_dir: Path) -> None:
    """A resume while earlier jobs still queue or run would run two copies of a stage."""
    from suite_core.runner import run, which

    ids = {str(i) for sub in state.get("submissions") or [] for i in (sub.get("jobs") or {}).values()}
    if not ids or not which("squeue"):
        return
    res = run(["squeue", "--me", "-h", "-o", "%i %T"], check=False, timeout=60, what="squeue")
    active = sorted(ln.split()[0] for ln in res.stdout.splitlines() if ln.split() and ln.split()[0] in ids)
    if active:
        raise UserError(f"job(s) {', '.join(active)} of this run are still queued or running",
                        where=str(run_dir),
                        fix=f"wait for them, or scancel {' '.join(active)}, then resume")


# --------------------------------------------------------------------------- writing and submitting
def _to_plan(exp: Experiment) -> Any:
    """The experiment as the Slurm layer's Plan: one Job per instance (containers.submit does sbatch)."""
    from omegaconf import OmegaConf

    from containers.submit import USER_ROOTS, Job, Plan, Step

    cl = exp.cluster
    parts = OmegaConf.to_container(cl.partitions, resolve=True) or {}
    gpu_default = cl.gpu.type if cl.get("gpu") else None
    account = cl.get("account")
    account = None if account in (None, "", "null") else str(account)
    jobs = []
    for inst in exp.instances.values():
        st = inst.spec
        key = st.partition or (gpu_default if st.gpu else "cpu")
        part = parts[key]
        gres = None
        if st.gpu:
            gres = f"gpu:{part['gres_type']}:{st.gpus}" if part.get("gres_type") else f"gpu:{st.gpus}"
        jd = exp.run_dir / "jobs" / inst.name
        step = Step(st.app, st.image, [], st.gpu, jd / "steps" / f"01-{st.app}")
        sbatch_args = []
        if st.ddp is not None:
            sbatch_args.append(f"--ntasks-per-node={st.ntasks_per_node}")
        jobs.append(Job(
            name=inst.name, gpu=st.gpu, partition_key=key, partition=str(part["name"]), gres=gres,
            cpus_per_task=st.cpus_per_task, mem=st.mem, time=st.time,
            nodes=st.nodes if st.ddp is not None else None, array=None,
            after=[d for d in inst.deps if d in exp.instances], script=REPO_ROOT / (
                DDP_SCRIPT if st.ddp is not None else STAGE_SCRIPT),
            steps=[step], stage=[], sbatch_args=sbatch_args, dir=jd, gpu_guard=st.gpu_guard))
    exports = {"CONTAINERS_REPO": str(REPO_ROOT), "CONTAINERS_CLUSTER": str(cl.name)}
    exports.update({k: os.environ[k] for k in sorted(USER_ROOTS) if k in os.environ})
    return Plan(exp.pipeline, KIND, str(cl.name), account, exp.run_dir, jobs, exports, exp.step_overrides)


def _write(path: Path, text: str) -> None:
    """Temp name then rename (never half-written), without an fsync per file: these files are read
    back by jobs that start after submission, through the same filesystem (NFS close-to-open), and
    100 fsyncs took ~1 s of a 24-job submission. Completion flags keep suite_core.atomic's fsync."""
    from suite_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_job_files(exp: Experiment, plan: Any) -> None:
    """Each job's folder as containers.submit writes one (containers.jobdir): the step's resolved
    config (plus its fingerprint inputs), its exec.sh (the container command) and job.env, so the
    node runs it with bash and Apptainer only (suite_run_job; slurm/ddp.sbatch for DDP stages)."""
    import yaml
    from omegaconf import OmegaConf

    from containers import jobdir
    from suite_core.config import node_markers_to_tokens, node_token
    from suite_core.env import cache_env

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    write_text = _write

    for job in plan.jobs:
        inst = exp.instances[job.name]
        step = job.steps[0]
        cfg = dict(inst.cfg)
        cfg["report_path"] = str(step.dir / "run_report.json")
        if inst.spec.ddp is not None:  # one report per rank: RANK is known only when the rank starts
            cfg["report_path"] = f"{step.dir}/run_report.rank${{oc.env:RANK,0}}.json"
        write_text(step.dir / "config.yaml",
                   yaml.dump(node_markers_to_tokens(cfg), Dumper=dumper, sort_keys=False, allow_unicode=True))
        oc = OmegaConf.create({k: v for k, v in cfg.items() if k != "report_path"})
        title = (f"experiment {exp.pipeline}, stage {inst.name}: {step.app} in image {step.image} "
                 f"({'GPU' if step.gpu else 'CPU'})")
        argv = ["python", "-m", "entrypoints", step.app, "--config-path", str(step.dir),
                "--config-name", "config"]
        write_text(step.dir / "exec.sh", jobdir.step_script(
            oc, title=title, job_dir=job.dir, image=step.image, gpu=step.gpu, argv=argv,
            extra_ro=inst.input_files, extra_rw=[str(exp.run_dir)]))
        node_local = str(oc.paths.node_local)
        write_text(job.dir / "job.env", jobdir.job_env(
            job=job, plan=plan, base=oc, images={step.image: oc.image},
            node_fixed=None if node_local == node_token("local_root") else node_local,
            mkdirs=[str(oc.paths.staged_images), str(oc.paths.staged_models), *cache_env(oc).values()],
            shared=[str(oc.paths.images)], steps=[step.dir.name]))
        write_text(job.dir / "steps.tsv",
                   "\t".join(["1", step.app, step.image, "gpu" if step.gpu else "cpu", str(step.dir)]) + "\n")
        if inst.spec.ddp is not None:
            d = inst.spec.ddp
            lines = [f"launcher={d.launcher}", f"nproc_per_node={d.nproc_per_node or ''}"]
            write_text(job.dir / "ddp.conf", "\n".join(lines) + "\n")


def _state_doc(exp: Experiment, old: Mapping[str, Any] | None) -> dict[str, Any]:
    all_settings = dict((old or {}).get("settings") or {})
    fps = dict((old or {}).get("fingerprints") or {})
    for name, inst in exp.instances.items():
        all_settings[name] = inst.settings
        fps[name] = inst.fingerprint
    return {"pipeline": exp.pipeline, "kind": KIND, "seeds": exp.seeds, "cluster": str(exp.cluster.name),
            "overrides": exp.overrides, "gpu": exp.gpu,
            "settings": all_settings, "fingerprints": fps,
            "submissions": list((old or {}).get("submissions") or [])}


def _submit(exp: Experiment, *, dry_run: bool) -> int:
    from containers.submit import submit, watch_hint
    from suite_core.atomic import write_json
    from suite_core.rundir import writer_lock
    from suite_core.runner import quote

    if exp.resumed and not exp.instances:
        print(f"nothing to resubmit: all {len(exp.complete)} stage instances of {exp.run_dir} are complete")
        return 0
    old = _read_state(exp.run_dir) if exp.resumed else None
    with writer_lock(exp.run_dir):
        plan = _to_plan(exp)
        write_job_files(exp, plan)
        ids = submit(plan, dry_run=dry_run)
        doc = _state_doc(exp, old)
        doc["submissions"].append({"at": _dt.datetime.now().isoformat(timespec="seconds"),
                                   "resume": exp.resumed, "dry_run": dry_run, "jobs": ids,
                                   "complete": exp.complete})
        write_json(exp.run_dir / (STATE if not dry_run else "experiment.dry-run.json"), doc)
    head = ("dry run (fake job ids, nothing submitted)" if dry_run
            else "resubmitted" if exp.resumed else "submitted")
    print(f"{head}: experiment {exp.pipeline}, seeds {exp.seeds}, cluster {plan.cluster}, "
          f"{len(plan.jobs)} job(s)")
    print(f"run dir: {exp.run_dir}")
    if exp.resumed:
        print(f"complete (kept): {', '.join(exp.complete) or '-'}")
    w = max(len(j.name) for j in plan.jobs)
    for j in plan.jobs:
        res = j.gres or "cpu"
        if j.nodes:
            res += f" x {j.nodes} nodes"
        dep = f"  after {','.join(j.after)}" if j.after else ""
        print(f"  {j.name.ljust(w)}  {ids[j.name]:>8}  {j.partition:<14} {res}{dep}")
        if dry_run:
            print(f"    {quote(j.argv)}")
    if not dry_run:
        print(watch_hint(plan, ids))
        print(f"resume: python -m containers submit {exp.pipeline} resume={exp.run_dir}  (after a fix; "
              "it reuses this run's settings and reruns only stages without a valid completion flag)")
    return 0


def _preflight(exp: Experiment) -> int:
    from containers.submit import preflight, report_preflight

    return report_preflight(preflight(_to_plan(exp)), f"experiment {exp.pipeline}")
