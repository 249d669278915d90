"""`torchrun` support: joining the process group, one device per process, DDP wrapping and a clean exit.

Under `torchrun` every process trains on its slice of the same global batch (minvar.training.data_order), DDP
averages the gradients, and only rank 0 writes files. Without `torchrun` (WORLD_SIZE unset) everything here is a
no-op, so the scripts read the same with one process or many.
Official counterpart: `utils/arg_util.py` and `dist.py` (process-group setup).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0  # this process's index among all processes
    world_size: int = 1  # number of processes (GPUs) in the run
    local_rank: int = 0  # index on this node, selects the GPU

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes logs, grids and checkpoints."""
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Join the process group when launched by `torchrun` (it sets WORLD_SIZE), otherwise run alone.

    NCCL on CUDA, gloo on CPU (so two CPU processes can test DDP on a laptop).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    info = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    return info


def end_distributed(distributed: Distributed) -> None:
    """Leave the process group so that every process exits cleanly; call it after dropping the DDP wrappers.

    The order matters. `destroy_process_group` only unregisters the group: a DistributedDataParallel wrapper still
    holds it (for its gradient reducer), so while a wrapper lives, the gloo/NCCL backend and its worker threads
    survive until the interpreter shuts down, and are then destroyed while Python is half torn down, which can
    abort the process ("terminate called without an active exception", SIGABRT; seen on rank 1 of a 2-process
    CPU run). So the scripts `del` their wrappers and loaders first; here the barrier makes every process wait for
    rank 0's final grid and checkpoint, a garbage collection frees what the wrappers left in reference cycles, and
    only then is the group destroyed, while the interpreter is fully alive.
    """
    if distributed.world_size <= 1:
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def resolve_device(name: str, distributed: Distributed) -> torch.device:
    """'auto' picks CUDA when present; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name == "cuda" and distributed.world_size > 1:
        name = f"cuda:{distributed.local_rank}"
    return torch.device(name)


def wrap_ddp(model: torch.nn.Module, distributed: Distributed, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` under torchrun (gradients averaged over processes), else the model."""
    if distributed.world_size <= 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_mean(value: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    """Average a logged number over processes (gradients are averaged by DDP itself)."""
    if distributed.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= distributed.world_size
    return value


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model
