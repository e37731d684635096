"""The example's tiny torch models and data tensors (imported only by the GPU stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from suite_core.errors import UserError


def build(kind: str, d: int, k: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d, k)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k))
    raise UserError(f"model '{kind}' is unknown", where="exp_train settings",
                    fix="use model=linear or model=mlp")


def tensors(data: dict[str, Any], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([data["features"][i] for i in idx], dtype=torch.float32)
    y = torch.tensor([data["labels"][i] for i in idx], dtype=torch.long)
    return x, y


def pick_device(cfg: Any, local_rank: int = 0) -> tuple[torch.device, Any]:
    """cuda:LOCAL_RANK when usable (else the CPU, with the reason for the run report)."""
    from entrypoints.framework import select_device

    def probe() -> tuple[bool, str]:
        if torch.cuda.is_available():
            return True, ""
        return False, f"torch {torch.__version__} sees no CUDA device"

    dev = select_device(str(cfg.get("device", "auto")), str(cfg.get("device_fallback", "cpu")), probe)
    if dev.used.startswith("cuda"):
        dev.used = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return torch.device(dev.used), dev


def load(train_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    import json

    meta = json.loads((train_dir / "metrics.json").read_text(encoding="utf-8"))
    model = build(meta["model"], meta["features"], meta["classes"], meta["hidden"])
    model.load_state_dict(torch.load(train_dir / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, meta


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    return float((logits.argmax(1) == y).float().mean().item()), float(loss)
