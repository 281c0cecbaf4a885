"""torchrun / DDP set-up and the few collectives the training loops need.

Run any training stage under ``torchrun --nproc_per_node N e2essl <stage> ...`` (gloo on CPU,
NCCL on GPU; under SLURM, ``srun torchrun ...``). Each rank takes its shard of every global batch
(:func:`e2essl.data.sparse.shard`); only rank 0 writes files, checkpoints and MLflow records.
Without torchrun's environment everything runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Who this process is."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_setting: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank)


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum across ranks, differentiably (gradients flow back to every rank's contribution).

    Barlow Twins' cross-correlation and VICReg's statistics are sums over the global batch, so
    each rank adds its part here; a plain ``dist.all_reduce`` would cut the graph and leave the
    gradients 1/world too small.
    """
    if not d.enabled:
        return tensor
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        # Deprecated in favour of a private module (_functional_collectives); this one is public.
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(tensor, op=dist.ReduceOp.SUM)


def sum_scalar(value: float, d: Dist) -> float:
    """A number summed over ranks (no gradient): for logging totals."""
    if not d.enabled:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
