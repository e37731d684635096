"""Turn a pipeline (``hydra_conf/pipeline/<name>.yaml``) into chained ``sbatch`` calls.

Two-level configuration, as NeMo's launcher does it: this side composes everything once and
writes, per job, ``<run_dir>/jobs/<job>/`` (see containers.jobdir): each step's resolved
``config.yaml`` and ``exec.sh`` (the exact container command), ``job.env``, the models to stage,
and ``cmd.log`` (the exact sbatch command line). The node runs that folder with bash and
Apptainer only (slurm/lib/common.sh, ``suite_run_job``); the plain sbatch scripts reach the same
code path by running ``submit --here`` inside the image at job start.

Rules that come from clusters' policies and users' bad days: GPU jobs ask ``--gres=gpu:<type>:N``
(never ``--gpus``) in a GPU partition; CPU jobs never ask for a GPU nor land in a GPU partition;
every dependency is ``afterok`` with ``--kill-on-invalid-dep=yes`` (else dependents of a failed
job pend forever); submission never waits for jobs; a failure midway cancels what was submitted.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers import REPO_ROOT
from containers.pipeline_spec import DEFAULT_SCRIPT, JobSpec, StageSpec
from suite_core.errors import UserError

FAKE_ID_BASE = 1000
# The roots the user chose on the login node: they must reach the job unchanged.
USER_ROOTS = ("CONTAINERS_SCRATCH", "CONTAINERS_SHARED_ROOT", "CONTAINERS_NODE_LOCAL", "CONTAINERS_IMAGES",
              "CONTAINERS_MODELS", "CONTAINERS_RUNTIME", "CONTAINERS_ACCOUNT")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Step:
    app: str
    image: str
    overrides: list[str]
    gpu: bool
    dir: Path


@dataclass
class Job:
    name: str
    gpu: bool
    partition_key: str
    partition: str
    gres: str | None
    cpus_per_task: int | None
    mem: str | None
    time: str | None
    nodes: int | None
    array: str | None
    after: list[str]
    script: Path
    steps: list[Step]
    stage: list[StageSpec]
    sbatch_args: list[str]
    dir: Path
    array_manifest: str | None = None
    gpu_guard: str | None = None
    argv: list[str] = field(default_factory=list)
    job_id: str | None = None


@dataclass
class Plan:
    pipeline: str
    mode: str
    cluster: str
    account: str | None
    run_dir: Path
    jobs: list[Job]
    exports: dict[str, str]
    step_overrides: list[str] = field(default_factory=list)  # what every step's config composes with
    here: bool = False  # run in this allocation (the plain sbatch scripts), no sbatch

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)


def split_args(args: Sequence[str]) -> tuple[str | None, str | None, list[str]]:
    """Pull ``mode=`` and ``gpu=`` out of the overrides (they are submit options, not config)."""
    mode = gpu = None
    rest = []
    for a in args:
        key, eq, val = a.partition("=")
        if eq and key == "mode":
            mode = val
        elif eq and key == "gpu":
            gpu = val
        else:
            rest.append(a)
    return mode, gpu, rest


# Keys of the base config (hydra_conf/config.yaml and its groups): they shape the pipeline and every step.
SHARED_ROOTS = frozenset({"cluster", "paths", "image", "app", "runtime", "run_dir", "device",
                          "device_fallback", "image_sif", "local"})


def route_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split overrides into (pipeline composition, step composition).

    ``pipeline.*`` shapes only the pipeline; base keys (``cluster=``, ``paths.*``, ...) both; any
    other key is an app setting (``input_dir=/scans``) and goes to the steps only, force-added
    (``++``) because not every step's app declares it (fusion has no input_dir).
    """
    pipe, steps = [], []
    for ov in overrides:
        key = ov.partition("=")[0]
        root = key.lstrip("+~").split(".")[0].split("@")[0]
        if root == "pipeline":
            pipe.append(ov)
        elif root in SHARED_ROOTS:
            pipe.append(ov)
            steps.append(ov)
        else:
            steps.append(ov if ov.startswith(("+", "~")) else f"++{ov}")
    return pipe, steps


def _timestamp_dir(base: Path) -> Path:
    from suite_core.rundir import unique_dir  # mkdir, not exists(): two submits in one second differ

    return unique_dir(base, _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def dependency_order(after: Mapping[str, Sequence[str]], *, noun: str, where: str) -> list[str]:
    """Names in an order where each comes after its ``after`` entries; a cycle is one line naming it."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, chain: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            loop = [*chain[chain.index(n):], n]
            raise UserError(f"{noun} depend on each other in a cycle: {' -> '.join(loop)}", where=where,
                            fix="remove one of these 'after' entries")
        state[n] = 1
        for dep in after[n]:
            visit(str(dep), [*chain, n])
        state[n] = 2
        order.append(n)

    for n in after:
        visit(n, [])
    return order


def _toposort(jobs: dict[str, JobSpec], pipeline: str) -> list[str]:
    return dependency_order({n: list(j.after) for n, j in jobs.items()}, noun="jobs",
                            where=f"hydra_conf/pipeline/{pipeline}.yaml")


def build_plan(
    pipeline: str,
    args: Sequence[str],
    *,
    mode: str | None = None,
    gpu: str | None = None,
    only: Sequence[str] = (),
    run_dir: str | None = None,
    compose: Callable[..., Any] | None = None,
    here: bool = False,
) -> Plan:
    """Compose the pipeline for a cluster and validate every job; writes nothing.

    ``here``: plan jobs to run in the current allocation (``submit --here``, what the plain
    sbatch scripts call inside the image); no scheduler is needed.
    """
    from omegaconf import OmegaConf

    from containers import pipeline_spec

    if compose is None:
        from suite_core.config import compose
    m2, g2, overrides = split_args(args)
    mode, gpu = mode or m2, gpu or g2
    if gpu == "split":
        mode, gpu = mode or "split", None
    if gpu:
        overrides.append(f"cluster.gpu.type={gpu}")
    pipe_overrides, step_overrides = route_overrides(overrides)
    cfg = compose([f"+pipeline={pipeline}", *pipe_overrides])
    cl = cfg.cluster
    where = f"hydra_conf/pipeline/{pipeline}.yaml"
    if str(cl.get("scheduler")) != "slurm" and not here:
        raise UserError(
            f"cluster '{cl.name}' has no Slurm scheduler",
            where="hydra_conf/cluster/",
            fix="pass cluster=torch or cluster=dgx_spark (or set CONTAINERS_CLUSTER)",
        )
    parts = OmegaConf.to_container(cl.partitions, resolve=True) or {}
    if gpu and (gpu not in parts or not parts[gpu].get("gpu")):
        have = [k for k, v in parts.items() if v.get("gpu")]
        raise UserError(
            f"cluster '{cl.name}' has no GPU partition of type '{gpu}'",
            where=f"hydra_conf/cluster/{cl.name}.yaml",
            fix=f"use gpu={' or gpu='.join([*have, 'split'] if len(have) > 1 else have)}",
        )
    spec = pipeline_spec.load(cfg.pipeline, where)
    modes = spec.modes
    mode = mode or str(spec.default_mode or next(iter(modes), ""))
    if mode not in modes:
        raise UserError(
            f"pipeline '{pipeline}' has no mode '{mode}'",
            where=where,
            fix=f"choose mode={' or mode='.join(modes) or '(none defined)'}",
        )
    jobs_spec = modes[mode]
    if not jobs_spec:
        raise UserError(f"mode '{mode}' of pipeline '{pipeline}' has no jobs", where=where, fix="add jobs")
    for name, job in jobs_spec.items():
        if not _NAME.match(name):
            raise UserError(
                f"job name '{name}' is not a plain name", where=where, fix="use letters, digits, _ . -"
            )
        for dep in job.after:
            if dep not in jobs_spec:
                raise UserError(
                    f"job '{name}' runs after '{dep}', which mode '{mode}' does not define",
                    where=where,
                    fix=f"use one of: {', '.join(jobs_spec)}",
                )
    for o in only:
        if o not in jobs_spec:
            raise UserError(
                f"unknown stage '{o}' in pipeline '{pipeline}' (mode {mode})",
                where=where,
                fix=f"choose among: {', '.join(jobs_spec)}",
            )
    order = [n for n in _toposort(jobs_spec, pipeline) if not only or n in only]
    runs = Path(str(cfg.paths.runs))
    given = run_dir or next(
        (ov.split("=", 1)[1] for ov in overrides if ov.lstrip("+").startswith("run_dir=")), None)
    rd = Path(given).absolute() if given else _timestamp_dir(runs / pipeline)
    account = cl.get("account")
    account = None if account in (None, "", "null") else str(account)
    jobs = [_job(name, jobs_spec[name], parts, cl, rd, where, only, here) for name in order]
    exports = {"CONTAINERS_REPO": str(REPO_ROOT), "CONTAINERS_CLUSTER": str(cl.name)}
    exports.update({k: os.environ[k] for k in sorted(USER_ROOTS) if k in os.environ})
    return Plan(pipeline, mode, str(cl.name), account, rd, jobs, exports, step_overrides, here)


def _job(
    name: str,
    job: JobSpec,
    parts: dict[str, Any],
    cl: Any,
    rd: Path,
    where: str,
    only: Sequence[str],
    here: bool = False,
) -> Job:
    from suite_core.apps import discover

    gpu_default = cl.gpu.type if cl.get("gpu") else None
    key = str(job.partition or (gpu_default if job.gpu else "cpu"))
    if key not in parts:
        if not here:
            raise UserError(
                f"job '{name}' asks for partition '{key}', which cluster '{cl.name}' lacks",
                where=f"{where} (cluster {cl.name}: {', '.join(parts) or 'no partitions'})",
                fix=f"use one of: {', '.join(parts)}",
            )
        parts = {**parts, key: {"name": key, "gpu": bool(job.gpu), "gres_type": None}}
    part = parts[key]
    gpu = bool(part.get("gpu", False) if job.gpu is None else job.gpu)
    if not gpu and part.get("gpu"):
        raise UserError(
            f"CPU job '{name}' would land in GPU partition '{part['name']}' ({key})",
            where=where,
            fix="put CPU work on partition: cpu, or set gpu: true for this job",
        )
    if not gpu and job.gpus:
        raise UserError(
            f"CPU job '{name}' asks for {job.gpus} GPU(s)",
            where=where,
            fix="remove gpus, or set gpu: true and a GPU partition",
        )
    if gpu and not part.get("gpu"):
        raise UserError(
            f"GPU job '{name}' is on partition '{part['name']}' ({key}), which has no GPUs",
            where=where,
            fix=f"use a GPU partition: {', '.join(k for k, v in parts.items() if v.get('gpu'))}",
        )
    gres = None
    if gpu:
        n = int(job.gpus if job.gpus is not None else (cl.gpu.count or 1))
        if n < 1:
            raise UserError(f"GPU job '{name}' asks for {n} GPUs", where=where, fix="set gpus: 1 or more")
        gres = f"gpu:{part['gres_type']}:{n}" if part.get("gres_type") else f"gpu:{n}"
    apps = discover()
    jd = rd / "jobs" / name
    for st in job.steps:
        if st.app not in apps:
            raise UserError(
                f"unknown app '{st.app}' in job '{name}'",
                where=where,
                fix=f"choose one of: {', '.join(apps)}",
            )
    steps = [
        Step(st.app, st.image, list(st.overrides), gpu, jd / "steps" / f"{i:02d}-{st.app}")
        for i, st in enumerate(job.steps, 1)
    ]
    if not steps:
        raise UserError(f"job '{name}' has no steps", where=where, fix="add steps: - {app: ..., image: ...}")
    script = REPO_ROOT / job.sbatch
    if not script.is_file():
        raise UserError(
            f"job '{name}' uses batch script {job.sbatch}, which does not exist",
            where=where,
            fix=f"use {DEFAULT_SCRIPT} or add the script under slurm/",
        )
    if not gpu:
        _refuse_gpu_directives(name, script, where)
    return Job(
        name=name,
        gpu=gpu,
        partition_key=key,
        partition=str(part["name"]),
        gres=gres,
        cpus_per_task=job.cpus_per_task,
        mem=job.mem,
        time=job.time,
        nodes=job.nodes,
        array=job.array,
        after=[a for a in job.after if not only or a in only],
        script=script,
        steps=steps,
        stage=list(job.stage),
        sbatch_args=list(job.sbatch_args),
        dir=jd,
        array_manifest=job.array_manifest,
        gpu_guard=job.gpu_guard.value if job.gpu_guard else None,
    )


# GPU requests in a script's directives; a --partition directive is harmless (submit's own
# --partition on the command line overrides it), so partitions are not judged by name here.
_GPU_DIRECTIVE = re.compile(r"^#SBATCH\s+(--gres|--gpus\S*|-G|--gpu-\S+)\b(.*)$")


def _refuse_gpu_directives(name: str, script: Path, where: str) -> None:
    """A script's own ``#SBATCH --gres`` cannot be undone from the command line: refuse it for CPU jobs."""
    for ln in script.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _GPU_DIRECTIVE.match(ln.strip())
        if m and not m[2].strip().lstrip("=").startswith("none"):
            raise UserError(
                f"CPU job '{name}' uses {script.name}, whose '{ln.strip()}' asks for a GPU",
                where=where,
                fix="use a script without GPU #SBATCH lines for CPU jobs "
                "(slurm/run_stage.sbatch); GPU requests come from the cluster profile",
            )
        if not ln.startswith("#") and ln.strip():
            break  # sbatch stops reading directives at the first command


def _check_export(value: str) -> str:
    if "," in value:
        raise UserError(
            f"'{value}' contains ',', which sbatch --export cannot carry", fix="rename or move the folder"
        )
    return value


def sbatch_argv(plan: Plan, job: Job, ids: dict[str, str], *, test_only: bool = False) -> list[str]:
    """The exact sbatch command for ``job``; ``ids`` maps already-submitted job names to ids."""
    argv = [
        "sbatch",
        "--test-only" if test_only else "--parsable",
        f"--job-name={plan.pipeline}.{job.name}",
        f"--partition={job.partition}",
    ]
    if plan.account:
        argv.append(f"--account={plan.account}")
    if job.gres:
        argv.append(f"--gres={job.gres}")
    if job.nodes:
        argv.append(f"--nodes={job.nodes}")
    if job.cpus_per_task:
        argv.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.mem:
        argv.append(f"--mem={job.mem}")
    if job.time:
        argv.append(f"--time={job.time}")
    array = job.array
    if job.array_manifest and array is None:
        n = len(_manifest_items(Path(job.array_manifest)))
        array = f"0-{n - 1}"
    if array is not None:
        argv.append(f"--array={array}")
    if job.after and not test_only:
        argv.append("--dependency=afterok:" + ":".join(ids[a] for a in job.after))
    argv.append("--kill-on-invalid-dep=yes")
    out = job.dir / ("slurm-%A_%a.out" if array is not None else "slurm-%j.out")
    argv.append(f"--output={out}")
    exports = {
        **plan.exports,
        "CONTAINERS_GPU_STAGE": "1" if job.gpu else "0",
        "CONTAINERS_JOB_DIR": str(job.dir),
    }
    if job.gpu_guard:
        exports["CONTAINERS_GPU_GUARD"] = str(job.gpu_guard)
    if job.array_manifest:
        exports["CONTAINERS_ARRAY_MANIFEST"] = str(job.array_manifest)
    argv.append("--export=ALL," + ",".join(f"{k}={_check_export(v)}" for k, v in exports.items()))
    argv += job.sbatch_args
    argv += [str(job.script), str(job.dir)]
    return argv


def _manifest_items(path: Path) -> list[str]:
    try:
        items = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(
            f"array manifest {path} cannot be read: {exc.strerror}",
            fix="write one item per line, or set array: instead",
        ) from None
    if not items:
        raise UserError(f"array manifest {path} is empty", fix="list one item per line")
    return items


def write_job_files(plan: Plan, compose: Callable[..., Any] | None = None) -> None:
    """Compose each step once, in node-token mode, and write the job folders (containers.jobdir)."""
    from suite_core.config import node_tokens

    if compose is None:
        from suite_core.config import compose
    base = plan.step_overrides
    with node_tokens():  # node values stay ${node:...} tokens, read back on the node
        for job in plan.jobs:
            _write_job(plan, job, base, compose)


def _write_job(plan: Plan, job: Job, base: list[str], compose: Callable[..., Any]) -> None:
    from omegaconf import open_dict

    from containers import jobdir
    from containers.launch import cache_env
    from suite_core.atomic import write_text
    from suite_core.config import node_token, to_yaml

    cfgs, images = [], {}
    for st in job.steps:
        cfg = compose([f"app={st.app}", f"image={st.image}", *base, f"run_dir={plan.run_dir}"],
                      trusted=st.overrides)  # the pipeline's own overrides keep ${...}
        from entrypoints.framework import validate_settings  # bad values fail here, not in the job

        validate_settings(st.app, cfg)
        with open_dict(cfg):
            cfg.job_name = job.name
            cfg.report_path = str(st.dir / "run_report.json")
            cfg.setdefault("array_item", None)
            cfg.setdefault("stage", job.name)
        cfgs.append(cfg)
        images.setdefault(st.image, cfg.image)
    first = cfgs[0]
    node_local = str(first.paths.node_local)
    fixed = None if node_local == node_token("local_root") else node_local
    stage_rows = jobdir.model_stage_list(cfgs, job.stage, node_local)
    for i, (st, cfg) in enumerate(zip(job.steps, cfgs, strict=True), 1):
        write_text(st.dir / "config.yaml", to_yaml(cfg))
        title = (f"{plan.pipeline}, job {job.name}, step {i}: {st.app} in image {st.image} "
                 f"({'GPU' if st.gpu else 'CPU'})")
        argv = ["python", "-m", "entrypoints", st.app, "--config-path", str(st.dir),
                "--config-name", "config"]
        write_text(st.dir / "exec.sh", jobdir.step_script(
            cfg, title=title, job_dir=job.dir, image=st.image, gpu=st.gpu, argv=argv))
    write_text(job.dir / "stage.yaml", _yaml({"stage": stage_rows}))
    write_text(job.dir / "stage.sh", jobdir.step_script(
        first, title=f"{plan.pipeline}, job {job.name}: stage the models its steps read "
        f"(in {job.steps[0].image})",
        job_dir=job.dir, image=job.steps[0].image, gpu=False,
        argv=["python", "-m", "containers", "stage", "--job", str(job.dir)],
        extra_ro=[r["src"] for r in stage_rows], extra_rw=[str(first.paths.staged_models),
                                                          *(r["dst"] for r in stage_rows)]))
    mkdirs = [str(first.paths.staged_images), str(first.paths.staged_models), *cache_env(first).values()]
    shared = [str(first.paths.images)]
    write_text(job.dir / "job.env", jobdir.job_env(
        job=job, plan=plan, base=first, images=images, node_fixed=fixed, mkdirs=mkdirs,
        staged=[p for r in stage_rows for p in (r["src"], f"{r['dst']}/{os.path.basename(r['src'])}")],
        shared=shared, steps=[st.dir.name for st in job.steps]))
    write_text(job.dir / "steps.tsv", "".join(
        "\t".join([str(i), st.app, st.image, "gpu" if st.gpu else "cpu", str(st.dir)]) + "\n"
        for i, st in enumerate(job.steps, 1)))


def _yaml(obj: Any) -> str:
    """Plain data as a job's YAML: user text stays literal, node values become ${node:...} tokens."""
    from omegaconf import OmegaConf

    from suite_core.config import node_markers_to_tokens
    from suite_core.secrets import yaml_safe

    return OmegaConf.to_yaml(OmegaConf.create(node_markers_to_tokens(yaml_safe(obj))))


def submit(plan: Plan, *, dry_run: bool = False) -> dict[str, str]:
    """Submit every job in dependency order; return name -> job id (fake ids in a dry run)."""
    from suite_core.atomic import write_json, write_text
    from suite_core.runner import quote, run, which

    if not dry_run and not which("sbatch"):
        raise UserError(
            "no 'sbatch' on PATH",
            where=f"cluster {plan.cluster}",
            fix="submit from a login node (module load slurm), or add --dry-run to render only",
        )
    ids: dict[str, str] = {}
    for n, job in enumerate(plan.jobs, 1):
        job.argv = sbatch_argv(plan, job, ids)
        cmd = quote(job.argv)
        if dry_run:
            ids[job.name] = str(FAKE_ID_BASE + n)
        else:
            res = run(job.argv, cwd=REPO_ROOT, check=False, timeout=120, what="sbatch")
            jid = res.stdout.strip().split(";")[0] if res.returncode == 0 else ""
            if not jid.isdigit():
                said = " ".join(ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip())
                cancelled = _cancel(list(ids.values()))
                raise UserError(
                    f"sbatch refused job '{job.name}': {said or f'exit code {res.returncode}'}"
                    + (
                        f"; cancelled the jobs already submitted ({', '.join(cancelled)})"
                        if cancelled
                        else ""
                    ),
                    where=f"{plan.run_dir}/jobs/{job.name}/cmd.log",
                    fix="correct the account/partition/resources in the cluster profile or pipeline",
                )
            ids[job.name] = jid
        job.job_id = ids[job.name]
        # what a continuation resubmits (suite_run_job, exit 75): the same job without its dependencies
        again = [a for a in job.argv[1:] if not a.startswith(("--parsable", "--dependency=", "--array="))]
        write_text(job.dir / "sbatch.args", "".join(f"{a}\n" for a in again))
        write_text(
            job.dir / "cmd.log",
            f"# {'dry run, fake job id' if dry_run else 'job id'} {ids[job.name]}\n"
            f"cd {quote([str(REPO_ROOT)])} && {cmd}\n",
        )
    write_json(
        plan.run_dir / ("submission.dry-run.json" if dry_run else "submission.json"),
        {
            "pipeline": plan.pipeline,
            "mode": plan.mode,
            "cluster": plan.cluster,
            "dry_run": dry_run,
            "jobs": [
                {
                    "name": j.name,
                    "job_id": j.job_id,
                    "partition": j.partition,
                    "gres": j.gres,
                    "after": j.after,
                    "array": j.array,
                    "argv": j.argv,
                }
                for j in plan.jobs
            ],
        },
    )
    return ids


def _cancel(ids: list[str]) -> list[str]:
    from suite_core.runner import run

    if ids:
        run(["scancel", *ids], check=False, timeout=60, what="scancel")
    return ids


def report_preflight(results: list[tuple[str, bool, str]], what: str) -> int:
    """Print Slurm's verdict per job; 1 (with one error line naming ``what``) if it would refuse any."""
    import sys

    bad = 0
    for name, ok, said in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {name}: {said}")
        bad += not ok
    sys.stdout.flush()
    if bad:
        print(f"error: Slurm would refuse {bad} of {len(results)} job(s) of {what}; "
              "fix: see Slurm's message above (account, partition, GPU type, limits)", file=sys.stderr)
        return 1
    return 0


def preflight(plan: Plan) -> list[tuple[str, bool, str]]:
    """``sbatch --test-only`` for every job: Slurm's own verdict, without submitting anything."""
    from suite_core.runner import run, which

    if not which("sbatch"):
        raise UserError(
            "no 'sbatch' on PATH",
            where=f"cluster {plan.cluster}",
            fix="run preflight on a login node (module load slurm)",
        )
    out = []
    for job in plan.jobs:
        argv = sbatch_argv(plan, job, {}, test_only=True)
        res = run(argv, cwd=REPO_ROOT, check=False, timeout=60, what="sbatch --test-only")
        said = " ".join(ln.strip() for ln in (res.stderr + res.stdout).splitlines() if ln.strip())
        out.append((job.name, res.returncode == 0, said))
    return out


def watch_hint(plan: Plan, ids: dict[str, str]) -> str:
    joined = ",".join(ids.values())
    return "\n".join(
        [
            f"watch:  squeue -j {joined}",
            f"        sacct -j {joined} --format=JobID,JobName%30,Partition,State,Elapsed,ExitCode",
            f"logs:   tail -f {plan.run_dir}/jobs/*/slurm-*.out",
            f"cancel: scancel {' '.join(ids.values())}",
        ]
    )
