"""exp_prep (CPU, per seed): a seeded train/validation/test split of the shared dataset.

Writes ``split.json`` with the row indices of each part and the dataset it indexes.
"""

from __future__ import annotations

import random
from typing import Any

from entrypoints.experiment.common import log, open_stage, read_json, write_json, writing
from suite_core.errors import UserError


def run(cfg: Any, run: Any) -> int:
    stage = open_stage(cfg)
    src = stage.input_dir("setup") / "dataset.json"
    data = read_json(src, "dataset", stage)
    n = len(data["labels"])
    val_f, test_f = float(cfg.val_fraction), float(cfg.test_fraction)
    if not (0 < val_f < 1 and 0 < test_f < 1 and val_f + test_f < 1):
        raise UserError(f"val_fraction={val_f} and test_fraction={test_f} leave no training data",
                        where=f"stage {stage.name}", fix="keep both in (0, 1) with a sum below 1")
    idx = list(range(n))
    random.Random(int(cfg.seed)).shuffle(idx)
    n_val, n_test = max(1, round(n * val_f)), max(1, round(n * test_f))
    parts = {"val": idx[:n_val], "test": idx[n_val:n_val + n_test], "train": idx[n_val + n_test:]}
    with writing(stage, run) as out:
        write_json(out / "split.json", {"seed": int(cfg.seed), "dataset": str(src), **parts}, run)
    log(stage.name, f"seed {cfg.seed}: train {len(parts['train'])}, val {n_val}, test {n_test}")
    return 0
