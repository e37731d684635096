"""exp_eval (GPU, per seed, after both trainings): test accuracy and loss of every trained model.

Writes ``eval.json``: per training stage its model folder, test accuracy and loss, plus the split
and dataset they were measured on (the attack stages read their models from here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entrypoints.experiment.common import log, open_stage, read_json, write_json, writing


def run(cfg: Any, run: Any) -> int:
    from entrypoints.experiment.model import accuracy, load, pick_device, tensors

    stage = open_stage(cfg)
    device, dev = pick_device(cfg)
    run.set_device(dev)
    models: dict[str, Any] = {}
    split_path = None
    for name, d in sorted(stage.inputs.items()):
        net, meta = load(d)
        split_path = meta["split"]
        split = read_json(Path(split_path), "split", stage)
        data = read_json(Path(split["dataset"]), "dataset", stage)
        x, y = tensors(data, split["test"])
        acc, loss = accuracy(net.to(device), x.to(device), y.to(device))
        models[name.split(".s")[0]] = {"dir": str(d), "model": meta["model"], "test_accuracy": acc,
                                       "test_loss": loss}
        log(stage.name, f"{name}: test accuracy {acc:.3f}, loss {loss:.3f}")
    with writing(stage, run) as out:
        write_json(out / "eval.json", {"seed": stage.seed, "split": split_path, "models": models}, run)
    return 0
