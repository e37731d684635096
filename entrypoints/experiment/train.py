"""exp_train (GPU, per seed): a tiny classifier trained for a few steps, on one rank or many (DDP).

Under ``slurm/ddp.sbatch`` every srun task is one rank: ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and
``MASTER_ADDR``/``MASTER_PORT`` come from the template (``containers/ddp.py``), the process group
is NCCL on GPUs and gloo on the CPU, and each rank trains on its shard with DistributedDataParallel.
A rank started without ``srun`` stops with one line instead of waiting for the others. Every rank
logs when rendezvous started and when its first step ended (the benchmark reads these lines);
after training the ranks check with all-reduces that they are all there and hold equal weights.
Rank 0 writes ``model.pt``, ``metrics.json`` and the completion flag.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import resource
import time
from pathlib import Path
from typing import Any

from entrypoints.experiment.common import log, open_stage, read_json, write_json, writing
from suite_core.errors import UserError


def _dist_env() -> tuple[int, int, int]:
    from containers.ddp import launched_without_srun

    why = launched_without_srun(os.environ) if "WORLD_SIZE" not in os.environ else None
    if why:
        raise UserError(why, where="exp_train",
                        fix="launch with srun (slurm/ddp.sbatch does), one task per GPU")
    world = int(os.environ.get("WORLD_SIZE", 1))
    return world, int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def run(cfg: Any, run: Any) -> int:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from entrypoints.experiment.model import accuracy, build, pick_device, tensors

    stage = open_stage(cfg)
    world, rank, local_rank = _dist_env()
    device, dev = pick_device(cfg, local_rank)
    run.set_device(dev)
    split = read_json(stage.input_dir("prep") / "split.json", "split", stage)
    data = read_json(Path(split["dataset"]), "dataset", stage)
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    x_tr, y_tr = tensors(data, split["train"])
    x_val, y_val = tensors(data, split["val"])
    d, k = x_tr.shape[1], int(data["classes"])
    model = build(str(cfg.model), d, k, int(cfg.hidden)).to(device)
    who = f"rank {rank}/{world}"
    t_rdzv = time.time()
    backend = str(cfg.backend)
    if world > 1:
        backend = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
        log(stage.name, f"{who} rendezvous start t={t_rdzv:.3f} at {os.environ.get('MASTER_ADDR')}:"
            f"{os.environ.get('MASTER_PORT')} backend {backend}")
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=float(cfg.rendezvous_timeout_s)))
        log(stage.name, f"{who} joined t={time.time():.3f} after {time.time() - t_rdzv:.3f} s")
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    sampler = DistributedSampler(TensorDataset(x_tr, y_tr), num_replicas=world, rank=rank, seed=seed,
                                 shuffle=True, drop_last=False)
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=int(cfg.batch_size), sampler=sampler,
                        num_workers=int(cfg.num_workers))
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg.lr))
    losses: list[float] = []
    step, epoch, t_first = 0, 0, None
    out = stage.out_dir
    ctx = writing(stage, run) if rank == 0 else contextlib.nullcontext(out)
    with ctx, run.step("train", world_size=world, backend=backend if world > 1 else None):
        while step < int(cfg.steps):
            sampler.set_epoch(epoch)
            for xb, yb in loader:
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xb.to(device)), yb.to(device))
                loss.backward()
                opt.step()
                losses.append(float(loss.item()))
                step += 1
                if t_first is None:
                    t_first = time.time()
                    log(stage.name, f"{who} first step done t={t_first:.3f} "
                        f"rendezvous-to-first-step {t_first - t_rdzv:.3f} s")
                if step >= int(cfg.steps):
                    break
            epoch += 1
        checks: dict[str, Any] = {}
        if world > 1:
            ranks = torch.tensor([float(rank + 1)])
            dist.all_reduce(ranks)
            vec = torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu()
            hi, lo = vec.clone(), vec.clone()
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            checks = {"all_reduce_sum": float(ranks.item()), "expected_sum": world * (world + 1) / 2,
                      "param_max_diff": float((hi - lo).abs().max().item())}
            log(stage.name, f"{who} all-reduce sum {checks['all_reduce_sum']:.0f} (expected "
                f"{checks['expected_sum']:.0f}), weights differ across ranks by "
                f"{checks['param_max_diff']:.2e}")
            if checks["all_reduce_sum"] != checks["expected_sum"] or checks["param_max_diff"] > 1e-6:
                raise RuntimeError(f"DDP check failed: {checks}")
        kb = 1024 * 1024  # ru_maxrss is in KB on Linux
        memory = {"rank_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb,
                  "loader_worker_max_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb
                  if int(cfg.num_workers) else None}
        run.report["memory"] = memory
        if rank == 0:
            net = model.module if world > 1 else model
            net = net.cpu()
            val_acc, val_loss = accuracy(net, x_val, y_val)
            from suite_core.atomic import atomic_path

            with atomic_path(out / "model.pt") as tmp:
                torch.save(net.state_dict(), tmp)
            run.output(out / "model.pt")
            write_json(out / "metrics.json", {
                "model": str(cfg.model), "hidden": int(cfg.hidden), "features": d, "classes": k,
                "seed": seed, "steps": step, "lr": float(cfg.lr), "world_size": world,
                "backend": backend if world > 1 else None, "device": str(device),
                "first_loss": losses[0], "final_loss": losses[-1], "val_accuracy": val_acc,
                "val_loss": val_loss, "split": str(stage.input_dir("prep") / "split.json"),
                "rendezvous_to_first_step_s": (t_first or t_rdzv) - t_rdzv, "ddp_checks": checks,
                "memory": memory}, run)
            log(stage.name, f"{step} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                f"val accuracy {val_acc:.3f}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0
