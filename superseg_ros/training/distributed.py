"""Several processes training one model (DistributedDataParallel), started by torchrun.

    torchrun --nproc_per_node=2 -m superseg_ros.training.cli training/configs/cityscapes_4070ti.yaml

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process's environment; without them (a plain
`superseg-train`) everything here is a no-op for one process. Each process drives one GPU
(`cuda:LOCAL_RANK`, NCCL) or, on the CPU, shares the cores (gloo; for tests and smoke runs).

What the processes share and split (see trainer.Trainer):
- `batch_size` is per process; optimiser step s uses the items
  s*G .. s*G + G - 1 with G = batch_size * world_size * accumulate, micro-batch a of process r
  reading items s*G + (a*world_size + r)*batch_size + 0 .. batch_size - 1. Every item is still a
  function of (seed, index), so the batches do not depend on timing, and a run on W processes
  with batch B sees the same items per step as one process with batch W*B.
- Gradients are averaged over processes by DDP (and, for parameters outside the network such as
  learned loss weights, by `all_reduce_mean`), so every process holds the same weights.
- Only rank 0 writes: logs, TensorBoard, previews, checkpoints, validation, progress bar; the
  others wait at a barrier after each checkpoint. All ranks read `last.pt` to resume.
"""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple

import torch
import torch.distributed as dist

from ..config import ConfigError


class Context(NamedTuple):
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_context() -> Context:
    """World size, rank and local rank from torchrun's environment (1, 0, 0 without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers: {exc}") from exc
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad distributed environment: WORLD_SIZE={world}, RANK={rank}")
    return Context(world, rank, local)


def device_for(device: torch.device, ctx: Context) -> torch.device:
    """One GPU per process: cuda:LOCAL_RANK when the run is on CUDA."""
    if ctx.enabled and device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} "
                              "CUDA devices: use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


def setup(config: dict, device: torch.device) -> Context:
    """Join the process group (idempotent); returns the context (world 1 without torchrun)."""
    ctx = env_context()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    backend = config["distributed"]["backend"]
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend nccl needs CUDA; use gloo (or auto) on the CPU")
    timeout = datetime.timedelta(minutes=float(config["distributed"]["timeout_minutes"]))
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=timeout, **kwargs)
    return ctx


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """In place: the mean over processes."""
    if ctx.enabled:
        dist.all_reduce(tensor)
        tensor /= ctx.world
    return tensor


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """Rank 0's `flag` on every process (so they all leave a loop at the same step)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.broadcast(value, src=0)
    return bool(value.item())


def step_items(step: int, micro: int, batch: int, ctx: Context, accumulate: int) -> range:
    """The items micro-batch `micro` of process ctx.rank reads at optimiser step `step`."""
    per_step = batch * ctx.world * accumulate
    first = step * per_step + (micro * ctx.world + ctx.rank) * batch
    return range(first, first + batch)
