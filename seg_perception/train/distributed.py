"""Process-group setup for ``torchrun`` and the deterministic batch schedule.

``torchrun --nproc-per-node N -m seg_perception.train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` then joins the group
(NCCL on CUDA, gloo on CPU) and picks the device. Without those variables it is a single process.

Batches are a pure function of ``(seed, stage, iteration, rank)`` (:func:`batch_keys`): each
epoch is a seeded permutation of the dataset, split into global batches of
``batch_size * world_size`` of which rank ``r`` takes slice ``r``; every sample carries its own
augmentation seed. So resuming at iteration ``i`` continues with exactly the batches a straight
run would have used, with any number of data-loader workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "BatchKeySampler",
    "DistInfo",
    "all_reduce_mean",
    "any_flag",
    "barrier",
    "batch_keys",
    "cleanup_distributed",
    "gather_objects",
    "init_distributed",
    "iterations_per_epoch",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"run.device is {pref!r} but CUDA is not available")
        index = int(pref.split(":", 1)[1]) if ":" in pref else local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if pref != "cpu":
        raise ValueError(f"run.device must be auto, cpu or cuda[:N], got {pref!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if the environment names one; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


def gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if dist.is_available() and dist.is_initialized():
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def iterations_per_epoch(dataset_len: int, batch_size: int, world_size: int) -> int:
    """Whole global batches per epoch (at least 1: a tiny dataset is repeated to fill one)."""
    return max(1, dataset_len // (batch_size * world_size))


def _epoch_order(n: int, needed: int, seed: int, stage: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + stage * 10_007 + epoch) % (2**63))
    reps = -(-needed // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:needed]


def batch_keys(
    iteration: int,
    *,
    dataset_len: int,
    batch_size: int,
    seed: int,
    stage: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> list[tuple[int, tuple[int, ...]]]:
    """This rank's ``[(index, augmentation_seed), ...]`` for ``iteration`` of a stage (0-based)."""
    ipe = iterations_per_epoch(dataset_len, batch_size, world_size)
    epoch, pos = divmod(iteration, ipe)
    order = _epoch_order(dataset_len, ipe * batch_size * world_size, seed, stage, epoch)
    start = (pos * world_size + rank) * batch_size
    idx = order[start : start + batch_size].tolist()
    return [(int(i), (seed, stage, iteration, rank, j)) for j, i in enumerate(idx)]


class BatchKeySampler(torch.utils.data.Sampler[list[tuple[int, tuple[int, ...]]]]):
    """Batch sampler over stage iterations ``[start, stop)`` yielding :func:`batch_keys`."""

    def __init__(
        self,
        *,
        start: int,
        stop: int,
        dataset_len: int,
        batch_size: int,
        seed: int,
        stage: int,
        rank: int,
        world_size: int,
    ) -> None:
        self.start, self.stop = start, stop
        self.kw = {
            "dataset_len": dataset_len,
            "batch_size": batch_size,
            "seed": seed,
            "stage": stage,
            "rank": rank,
            "world_size": world_size,
        }

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
        for it in range(self.start, self.stop):
            yield batch_keys(it, **self.kw)  # type: ignore[arg-type]
