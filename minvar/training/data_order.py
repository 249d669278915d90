"""A resumable data order: which images every step of every process trains on, as a pure function of the step.

Exact resume rests on one idea: everything random in a training step is a pure function of (seed, step). The
batch at step s is a slice of a seeded per-epoch permutation, and the label-dropout mask is drawn from a generator
seeded with (seed, step). A run stopped at step s and resumed computes the same steps s, s+1, ... as a run that
never stopped, and `torchrun` with N processes sees the same global batches as one process.
Official counterpart: `utils/data_sampler.py` (DistInfiniteBatchSampler).

Shape legend: B local batch, G global batch (B × world size), N dataset size.
"""
from __future__ import annotations

from typing import Iterator, List

import torch

from minvar.training.distributed import Distributed


def global_batch_indices(step: int, global_batch: int, dataset_size: int, seed: int) -> List[int]:
    """Dataset indices of the global batch at `step`: consecutive slices of a stream of seeded permutations.

    Epoch e is `randperm(N)` under seed (seed, e); the stream is their concatenation, so batches cross epoch
    boundaries seamlessly and every image is seen once per epoch. A pure function of the step: resume-exact.
    """
    start = step * global_batch
    indices: List[int] = []
    while len(indices) < global_batch:
        epoch, offset = divmod(start + len(indices), dataset_size)
        order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.extend(order[offset:offset + global_batch - len(indices)].tolist())
    return indices


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps start..end-1, this process's slice of the global batch as (index, epoch) pairs.

    The epoch travels with the index so that augmentations seeded by (seed, index, epoch) are reproducible in any
    DataLoader worker (see `EpochIndexed`).
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 distributed: Distributed):
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start_step, self.end_step, self.distributed = start_step, end_step, distributed

    def __len__(self) -> int:
        return max(self.end_step - self.start_step, 0)

    def __iter__(self) -> Iterator[list]:
        world, rank, B = self.distributed.world_size, self.distributed.rank, self.batch_size
        for step in range(self.start_step, self.end_step):
            indices = global_batch_indices(step, B * world, self.dataset_size, self.seed)
            epoch = step * B * world // self.dataset_size
            yield [(i, epoch) for i in indices[rank * B:(rank + 1) * B]]


class EpochIndexed(torch.utils.data.Dataset):
    """Wraps a dataset so that it can be indexed by (index, epoch): it sets the epoch before reading."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, epoch = item
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def make_loader(dataset, batch_size: int, seed: int, start_step: int, end_step: int, distributed: Distributed,
                workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader that yields exactly the batches of steps start_step..end_step-1 of this process."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, end_step, distributed)
    return torch.utils.data.DataLoader(EpochIndexed(dataset), batch_sampler=sampler, num_workers=workers,
                                       persistent_workers=workers > 0)


def step_generator(seed: int, step: int, device) -> torch.Generator:
    """A generator for the randomness of one step (label dropout), identical in every process and on resume."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
