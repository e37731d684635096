"""exp_setup (CPU, shared by every seed): check the raw data and normalise it once.

Reads ``data_file`` (a CSV of numeric features and an integer ``label``), refuses a file with a
bad line (its number in the message), too few rows or a single class, and writes
``dataset.json``: the features standardised with the mean and standard deviation it records.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from entrypoints.experiment.common import log, open_stage, read_points, write_json, writing
from suite_core.errors import UserError


def run(cfg: Any, run: Any) -> int:
    stage = open_stage(cfg)
    path = Path(str(cfg.data_file))
    with run.step("read"):
        names, feats, labels = read_points(path, f"stage {stage.name}")
    if len(feats) < int(cfg.min_rows):
        raise UserError(f"{path} has {len(feats)} data rows, fewer than min_rows={cfg.min_rows}",
                        where=f"stage {stage.name}", fix="give more data, or lower min_rows")
    classes = sorted(set(labels))
    if len(classes) < 2 or classes != list(range(len(classes))):
        raise UserError(f"{path} has labels {classes}; a classifier needs 0..K-1 with K >= 2",
                        where=f"stage {stage.name}", fix="number the classes 0, 1, ...")
    d = len(names)
    mean = [sum(r[j] for r in feats) / len(feats) for j in range(d)]
    std = [math.sqrt(sum((r[j] - mean[j]) ** 2 for r in feats) / len(feats)) or 1.0 for j in range(d)]
    norm = [[(r[j] - mean[j]) / std[j] for j in range(d)] for r in feats]
    with writing(stage, run) as out:
        write_json(out / "dataset.json", {"source": str(path), "feature_names": names,
                                          "classes": len(classes), "mean": mean, "std": std,
                                          "features": norm, "labels": labels}, run)
    log(stage.name, f"{len(feats)} rows, {d} features, {len(classes)} classes")
    return 0
