"""Benchmark of experiment pipelines and the DDP template on the private local Slurm (root only).

1. Submission of the 8-stage example experiment for 3 seeds: 24 jobs (every stage per seed) and 20
   jobs (setup and aggregate shared, as tinyexp.yaml has it), ``python -m containers submit`` from
   command start to return, side by side with a bash master script that makes the same 24 sbatch
   calls with the same afterok dependencies (the status quo without its waiting loop). Partitions
   are set DOWN meanwhile so no job runs and loads the machine; every job is cancelled after.
2. The 2-node x 2-rank gloo job of ``ddp_demo`` (srun: one task per GPU) and its torchrun variant,
   timed from their own logs: first ``rendezvous start`` to last ``first step done`` over the four
   ranks, and to the last ``joined`` (process group up).

    python bench/experiment.py [--repeat 3] [--no-ddp]       (make bench ARGS=experiment)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from suite_core.runner import quote, run  # noqa: E402

STAGES = ["setup", "prep", "train_linear", "train_mlp", "evaluate", "attack_fgsm", "attack_shift",
          "aggregate"]
AFTER = {"prep": ["setup"], "train_linear": ["prep"], "train_mlp": ["prep"],
         "evaluate": ["train_linear", "train_mlp"], "attack_fgsm": ["evaluate"], "attack_shift": ["evaluate"],
         "aggregate": ["attack_fgsm", "attack_shift"]}
# The peer: a master script's submission loop (bash, sbatch per job, afterok on the parents' ids).
PEER = r"""#!/usr/bin/env bash
set -euo pipefail
declare -A id
for seed in 1 2 3; do
  while read -r name part deps; do
    dep=""
    for d in ${deps//,/ }; do dep="$dep:${id[$d.$seed]}"; done
    id[$name.$seed]=$(sbatch --parsable -A suite_test -p "$part" --job-name="peer.$name.$seed" \
      ${dep:+--dependency=afterok${dep}} --kill-on-invalid-dep=yes --output=/dev/null --wrap=true)
  done <"$1"
done
echo "${id[@]}"
"""


def make_points(path: Path, n: int = 200) -> Path:
    rng = random.Random(0)
    rows = ["x1,x2,label"] + [f"{rng.gauss(2.0 * (i % 2), 1):.4f},{rng.gauss(-(i % 2), 1):.4f},{i % 2}"
                              for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _ids(stdout: str) -> list[str]:
    return [ln.split()[1] for ln in stdout.splitlines()
            if ln.startswith("  ") and len(ln.split()) > 2 and ln.split()[1].isdigit()]


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (the submit commands and their sbatch)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_submit(cluster, env: dict[str, str], work: Path, repeat: int) -> list[str]:
    data = make_points(work / "points.csv")
    base = [sys.executable, "-m", "containers", "submit", "tinyexp", "cluster=torch", "seeds=[1,2,3]",
            f"data_file={data}", f"shift_file={data}"]
    variants = {"24 jobs (every stage per seed)": ["pipeline.stages.setup.per_seed=true",
                                                   "pipeline.stages.aggregate.per_seed=true"],
                "20 jobs (setup, aggregate shared)": []}
    graph = work / "graph.txt"
    graph.write_text("".join(f"{s} {'cpu_short' if s in ('setup', 'prep', 'aggregate') else 'l40s_public'} "
                             f"{','.join(AFTER.get(s, []))}\n" for s in STAGES))
    peer = work / "master.sh"
    peer.write_text(PEER)
    parts = ("cpu_short", "l40s_public")
    for p in parts:
        run(["scontrol", "update", f"PartitionName={p}", "State=DOWN"], env=env, timeout=60)
    times: dict[str, list[float]] = {k: [] for k in [*variants, "bash master script, 24 sbatch"]}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    load = os.getloadavg()[0]
    counts: dict[str, int] = {}
    try:
        for _ in range(repeat):
            for name, extra in variants.items():
                t0, c0 = time.perf_counter(), _children_cpu()
                res = run([*base, *extra], env=env, cwd=REPO, timeout=300)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(_children_cpu() - c0)
                ids = _ids(res.stdout)
                counts[name] = len(ids)
                run(["scancel", *ids], env=env, check=False, timeout=60)
            t0, c0 = time.perf_counter(), _children_cpu()
            res = run(["bash", str(peer), str(graph)], env=env, cwd=work, timeout=300)
            times["bash master script, 24 sbatch"].append(time.perf_counter() - t0)
            cpu["bash master script, 24 sbatch"].append(_children_cpu() - c0)
            ids = res.stdout.split()
            counts["bash master script, 24 sbatch"] = len(ids)
            run(["scancel", *ids], env=env, check=False, timeout=60)
    finally:
        for p in parts:
            run(["scontrol", "update", f"PartitionName={p}", "State=UP"], env=env, check=False, timeout=60)
    peer_s = statistics.median(times["bash master script, 24 sbatch"])
    lines = [f"submission, 8-stage experiment x 3 seeds, command start to return (median of {repeat}; "
             f"load average {load:.1f} on {os.cpu_count()} CPUs when it started):"]
    for name, ts in times.items():
        ratio = "" if name.startswith("bash") else \
            f"   {statistics.median(ts) / peer_s:.2f} x the bash script"
        lines.append(f"  {name:<36} {counts[name]:>3} jobs  {statistics.median(ts):6.2f} s wall, "
                     f"{statistics.median(cpu[name]):.2f} s CPU  "
                     f"(runs: {', '.join(f'{t:.2f}' for t in ts)}){ratio}")
    lines.append("  (ours also composes the config once, validates the DAG, resources and memory, writes "
                 "every job's config, fingerprints and experiment.json; the bash script only calls sbatch)")
    return lines


_EVENT = re.compile(r"rank (\d+)/(\d+) (rendezvous start|joined|first step done) t=([\d.]+)")


def bench_ddp(cluster, env: dict[str, str], work: Path) -> list[str]:
    data = make_points(work / "ddp.csv", n=400)
    lines = ["", "2 nodes x 2 ranks gloo DDP (ddp_demo: 30 steps of a 2-layer MLP, 1 loader worker per "
             "rank), from the job's log:"]
    for launcher in ("srun", "torchrun"):
        res = run([sys.executable, "-m", "containers", "submit", "ddp_demo", "cluster=torch",
                   f"data_file={data}", f"pipeline.stages.train.ddp.launcher={launcher}",
                   "pipeline.stages.train.cpus_per_task=4"],
                  env=env, cwd=REPO, timeout=300)
        ids = _ids(res.stdout)
        rd = Path(next(ln.split(": ", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("run dir: ")))
        states = cluster.wait(ids, timeout=900, poll=0.5)
        log = next((rd / "jobs" / "train.s1").glob("slurm-*.out")).read_text()
        if any(s != ["COMPLETED"] for s in states.values()):
            lines.append(f"  {launcher}: job failed {states}; log tail: {log[-300:]!r}")
            continue
        ev: dict[str, dict[int, float]] = {}
        for m in _EVENT.finditer(log):
            ev.setdefault(m[3], {})[int(m[1])] = float(m[4])
        start, joined, first = ev["rendezvous start"], ev["joined"], ev["first step done"]
        per_rank = [first[r] - start[r] for r in sorted(start)]
        job = cluster.show_job(ids[-1])
        lines.append(f"  launcher {launcher:<8}: rendezvous start (first rank) -> all joined "
                     f"{max(joined.values()) - min(start.values()):.2f} s -> last first step "
                     f"{max(first.values()) - min(start.values()):.2f} s; per rank "
                     f"{', '.join(f'{x:.2f}' for x in per_rank)} s; ranks started over "
                     f"{max(start.values()) - min(start.values()):.2f} s; job {job.get('StartTime')} .. "
                     f"{job.get('EndTime')}")
    t0 = time.perf_counter()
    run([sys.executable, "-c", "import torch._dynamo"], timeout=600)
    dynamo = time.perf_counter() - t0
    lines.append(f"  (rendezvous itself is the 'all joined' part; joined -> first step is mostly DDP's lazy "
                 f"import of torch._dynamo in every rank: 'python -c \"import torch._dynamo\"' alone took "
                 f"{dynamo:.1f} s "
                 f"here just now; all 4 ranks share this machine's {os.cpu_count()} cores)")
    return lines


def main(out_dir: str | os.PathLike[str] = REPO / "bench" / "results", argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench/experiment.py", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-ddp", action="store_true", help="skip the DDP runs")
    a = ap.parse_args(argv if argv is not None else [])
    from tests.plugins.slurm_cluster import LocalSlurm, why_unavailable

    lines = [f"# bench/experiment.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()} "
             f"({platform.machine()}, {os.cpu_count()} CPUs), Python {platform.python_version()}",
             "# command: " + quote(["python", "bench/experiment.py", *argv] if argv
                                   else ["python", "-m", "bench", "experiment"])
             + "   (make bench ARGS=experiment)",
             ""]
    reason = why_unavailable()
    if reason:
        raise SystemExit(f"error: the local Slurm is unavailable: {reason}; "
                         "fix: run as root on Debian/Ubuntu")
    root = Path(tempfile.mkdtemp(prefix="bench-experiment-"))
    cluster = LocalSlurm(root / "cluster")
    env = {**cluster.env, "CONTAINERS_RUNTIME": "host", "CONTAINERS_GPU_GUARD": "warn",
           "PYTHONPATH": str(REPO),
           "CONTAINERS_ACCOUNT": "suite_test", "CONTAINERS_SCRATCH": str(root / "scratch"),
           "CONTAINERS_NODE_LOCAL": str(root / "nvme"), "CONTAINERS_SHARED_ROOT": str(root / "shared")}
    env.pop("CONTAINERS_CLUSTER", None)
    try:
        cluster.start()
        lines += bench_submit(cluster, env, root, a.repeat)
        if not a.no_ddp:
            lines += bench_ddp(cluster, env, root)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    from suite_core.atomic import write_text

    out = Path(out_dir) / "experiment.txt"
    write_text(out, text)
    print(text, end="")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(argv=sys.argv[1:])
