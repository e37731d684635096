"""exp_aggregate (CPU, after every seed): mean and spread of each model's metrics across seeds.

Reads every seed's attack results (each carries the clean test accuracy from the evaluation) and
writes ``summary.json`` and ``summary.tsv`` (model, metric, mean, std, n, per-seed values).
"""

from __future__ import annotations

import math
from typing import Any

from entrypoints.experiment.common import log, open_stage, read_json, write_json, writing
from suite_core.atomic import write_text


def run(cfg: Any, run: Any) -> int:
    stage = open_stage(cfg)
    values: dict[tuple[str, str], dict[str, float]] = {}
    for attack in cfg.attacks:
        for seed, d in sorted(stage.input_dirs(str(attack)).items(), key=lambda kv: kv[0] or 0):
            res = read_json(d / "attack.json", "attack result", stage)
            for model, metrics in res["models"].items():
                for metric, v in metrics.items():
                    values.setdefault((model, metric), {})[str(seed)] = float(v)
    rows = []
    for (model, metric), per_seed in sorted(values.items()):
        xs = list(per_seed.values())
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        rows.append({"model": model, "metric": metric, "mean": mean, "std": std, "n": len(xs),
                     "seeds": per_seed})
    with writing(stage, run) as out:
        write_json(out / "summary.json", {"rows": rows}, run)
        lines = ["model\tmetric\tmean\tstd\tn\tper_seed"]
        lines += [f"{r['model']}\t{r['metric']}\t{r['mean']:.4f}\t{r['std']:.4f}\t{r['n']}\t"
                  + ",".join(f"{s}:{v:.4f}" for s, v in r["seeds"].items()) for r in rows]
        write_text(out / "summary.tsv", "\n".join(lines) + "\n")
        run.output(out / "summary.tsv")
    log(stage.name, f"{len(rows)} metric rows over seeds {sorted({s for r in rows for s in r['seeds']})}")
    return 0
