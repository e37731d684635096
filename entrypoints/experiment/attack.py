"""exp_attack (GPU, per seed, after the evaluation): how the trained models hold up.

``kind=fgsm``: accuracy under the fast gradient sign perturbation for each ``epsilons`` value.
``kind=shift``: accuracy on ``shift_file``, a second CSV with the training data's columns (a
shifted population), standardised with the training data's mean and deviation; a bad line stops
the stage with its number. Writes ``attack.json``: per model its clean and attacked accuracies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entrypoints.experiment.common import log, open_stage, read_json, read_points, write_json, writing
from suite_core.errors import UserError


def run(cfg: Any, run: Any) -> int:
    import torch

    from entrypoints.experiment.model import accuracy, load, pick_device, tensors

    stage = open_stage(cfg)
    kind = str(cfg.kind)
    if kind not in ("fgsm", "shift"):
        raise UserError(f"attack kind '{kind}' is unknown", where=f"stage {stage.name}",
                        fix="use kind=fgsm or kind=shift")
    if kind == "shift" and not cfg.get("shift_file"):
        raise UserError("kind=shift needs shift_file", where=f"stage {stage.name}",
                        fix="pass shift_file=<csv>")
    device, dev = pick_device(cfg)
    run.set_device(dev)
    ev = read_json(stage.input_dir("evaluate") / "eval.json", "evaluation", stage)
    split = read_json(Path(ev["split"]), "split", stage)
    data = read_json(Path(split["dataset"]), "dataset", stage)
    x, y = tensors(data, split["test"])
    if kind == "shift":
        _, feats, labels = read_points(Path(str(cfg.shift_file)), f"stage {stage.name}",
                                           columns=data["feature_names"])
        if not feats:
            raise UserError(f"{cfg.shift_file} has no data rows", where=f"stage {stage.name}", fix="add rows")
        x = torch.tensor([[(v - m) / s for v, m, s in zip(r, data["mean"], data["std"], strict=True)]
                          for r in feats], dtype=torch.float32)
        y = torch.tensor(labels, dtype=torch.long)
    results: dict[str, dict[str, float]] = {}
    with run.step(kind):
        for name, m in sorted(ev["models"].items()):
            net, _ = load(Path(m["dir"]))
            net = net.to(device)
            res = {"clean_accuracy": float(m["test_accuracy"])}
            if kind == "shift":
                res["shift_accuracy"], _ = accuracy(net, x.to(device), y.to(device))
            else:
                for eps in cfg.epsilons:
                    xa = x.clone().to(device).requires_grad_(True)
                    loss = torch.nn.functional.cross_entropy(net(xa), y.to(device))
                    (grad,) = torch.autograd.grad(loss, xa)
                    res[f"fgsm_{float(eps):g}"], _ = accuracy(net, (xa + float(eps) * grad.sign()).detach(),
                                                              y.to(device))
            results[name] = res
            log(stage.name, f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()))
    with writing(stage, run) as out:
        write_json(out / "attack.json", {"seed": stage.seed, "kind": kind, "models": results}, run)
    return 0
