"""Batch samplers for the iteration-based trainer and for distributed inference, and the batch layout.

:func:`batch_layout` splits the images of one optimizer step over processes, images per forward pass and
gradient accumulation (:class:`BatchLayout`); the training loaders size their batches by it.

:class:`TrainingBatchSampler` yields an endless sequence of batches that is a pure function of
``(seed, rank, world_size, iteration)``: starting it at ``start_iter`` gives exactly the batches an
uninterrupted run saw from that iteration on, which is what makes resumed training bit-exact.

The stream behind it: "epoch" ``e`` is the permutation of all images drawn from
``SeedSequence([seed, e])`` (identical on every rank); rank ``r`` of ``world_size`` takes every
``world_size``-th element starting at ``r``, so ranks see disjoint images within an epoch. With
aspect-ratio grouping each image goes to the bucket of its group (landscape ``w >= h`` or portrait)
and a batch is emitted as soon as a bucket holds ``batch_size`` images; leftovers carry over into
the next epoch, as in detectron2's ``AspectRatioGroupedDataset``.

Every batch element is ``(dataset index, augmentation seed)``; the seed comes from
``(seed, rank, world_size, iteration, slot)``, so augmentation is reproducible too, whatever the
number of DataLoader workers.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Sampler

from ..errors import ConfigError, DataError

__all__ = ["TrainingBatchSampler", "InferenceSampler", "aspect_ratio_groups", "BatchLayout", "batch_layout"]

# Distinguishes the augmentation-seed stream from the permutation stream drawn from the same seed.
_AUGMENT_STREAM = 0x5EED


def aspect_ratio_groups(aspect_ratios: Sequence[float]) -> np.ndarray:
    """Group id per image: 0 for landscape or square (w / h >= 1), 1 for portrait. int64 (N,)."""
    return (np.asarray(aspect_ratios, dtype=np.float64) < 1.0).astype(np.int64)


class TrainingBatchSampler(Sampler):
    """Endless, resumable, rank-sharded batches, optionally grouped by aspect ratio.

    Args:
        num_samples: dataset length.
        batch_size: images per batch on this process.
        group_ids: int (N,) group of every image (see :func:`aspect_ratio_groups`); ``None``: no grouping.
        seed: run seed; the whole sequence is determined by it.
        rank, world_size: this process's shard.
        start_iter: index of the first batch to yield (the iteration a resumed run starts at).

    Iterating yields lists of ``batch_size`` ``(index, augmentation_seed)`` tuples forever.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        group_ids: Optional[Sequence[int]] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_samples < world_size:
            raise DataError(f"the dataset has {num_samples} images, fewer than the {world_size} processes")
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        groups = np.zeros(num_samples, dtype=np.int64) if group_ids is None else np.asarray(group_ids, np.int64)
        if groups.shape != (num_samples,):
            raise ValueError(f"group_ids has shape {groups.shape}, expected ({num_samples},)")
        self.group_ids = groups
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start_iter = int(start_iter)

    def _epoch_batches(self, epoch: int, pending: Dict[int, np.ndarray]) -> List[np.ndarray]:
        """The batches completed during ``epoch``, in order; updates the carried-over ``pending`` buckets."""
        perm = np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(self.num_samples)
        stream = perm[self.rank :: self.world_size]
        groups = self.group_ids[stream]
        done: List[Tuple[int, np.ndarray]] = []  # (stream position that completed the batch, batch)
        for g in np.union1d(np.unique(groups), np.fromiter(pending, dtype=np.int64)):
            positions = np.flatnonzero(groups == g)
            carried = pending.get(int(g), np.zeros(0, dtype=np.int64))
            members = np.concatenate([carried, stream[positions]])
            # Carried elements are older than anything in this epoch; they never complete a batch
            # alone (fewer than batch_size of them), so their position does not matter.
            when = np.concatenate([np.full(len(carried), -1), positions])
            n_full = len(members) // self.batch_size
            for j in range(n_full):
                done.append(
                    (int(when[(j + 1) * self.batch_size - 1]), members[j * self.batch_size : (j + 1) * self.batch_size])
                )
            pending[int(g)] = members[n_full * self.batch_size :]
        done.sort(key=lambda item: item[0])
        return [batch for _, batch in done]

    def index_batches(self, start_iter: int = 0) -> Iterator[np.ndarray]:
        """Endless int64 (batch_size,) index arrays from batch ``start_iter`` on (no augmentation seeds)."""
        pending: Dict[int, np.ndarray] = {}
        seen, epoch = 0, 0
        while True:
            batches = self._epoch_batches(epoch, pending)
            epoch += 1
            if seen + len(batches) <= start_iter:
                seen += len(batches)
                continue
            for batch in batches[max(0, start_iter - seen) :]:
                yield batch
            seen += len(batches)
            start_iter = seen

    def augmentation_seeds(self, iteration: int) -> List[int]:
        """The ``batch_size`` augmentation seeds (uint32 as int) of batch ``iteration``."""
        seq = np.random.SeedSequence([self.seed, _AUGMENT_STREAM, self.rank, self.world_size, iteration])
        return [int(s) for s in seq.generate_state(self.batch_size)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for iteration, batch in enumerate(self.index_batches(self.start_iter), start=self.start_iter):
            yield list(zip(batch.tolist(), self.augmentation_seeds(iteration)))


class InferenceSampler(Sampler):
    """Contiguous shard ``rank`` of ``range(size)`` among ``world_size`` processes, in order.

    Shards differ in length by at most one (the first ``size % world_size`` ranks hold one more);
    concatenating the shards of ranks 0..world_size-1 gives ``range(size)`` exactly once.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        base, extra = divmod(int(size), int(world_size))
        self.begin = rank * base + min(rank, extra)
        self.end = self.begin + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


class BatchLayout(NamedTuple):
    """How one optimizer step of ``total`` images is computed: ``processes`` x ``per_device`` images per
    forward/backward x ``accumulation`` micro-steps."""

    total: int
    processes: int
    per_device: int
    accumulation: int

    def describe(self) -> str:
        return (
            f"{self.total} images per step = {self.processes} process{'es' if self.processes > 1 else ''} x "
            f"{self.per_device} image{'s' if self.per_device > 1 else ''} x {self.accumulation} accumulation "
            f"step{'s' if self.accumulation > 1 else ''}"
        )


def batch_layout(ims_per_batch: int, ims_per_device: Optional[int], world_size: int) -> BatchLayout:
    """Split ``solver.ims_per_batch`` images per optimizer step over ``world_size`` processes of
    ``solver.ims_per_device`` images (at most ``ims_per_batch / world_size``, the default) and gradient
    accumulation.

    Raises:
        ConfigError: the numbers do not divide; the message names the three and a valid choice.
    """
    # ims_per_device is what one process may compute at once: with more processes than the config's
    # reference had, each computes its share of the step (ims_per_batch / processes) instead
    per_device = ims_per_batch // world_size
    if ims_per_device is not None:
        per_device = min(ims_per_device, per_device)
    if per_device < 1 or ims_per_batch % (world_size * per_device):
        divisors = [d for d in range(1, ims_per_batch + 1) if ims_per_batch % (world_size * d) == 0]
        if divisors:
            hint = f"set solver.ims_per_device to one of {', '.join(map(str, divisors))}"
        else:
            valid = [n for n in range(1, ims_per_batch + 1) if ims_per_batch % n == 0]
            hint = (
                f"run on a number of processes that divides it ({', '.join(map(str, valid))}) or set "
                f"solver.ims_per_batch to a multiple of {world_size}"
            )
        raise ConfigError(
            f"solver.ims_per_batch={ims_per_batch} images per step cannot be split into {world_size} "
            f"process(es) x solver.ims_per_device="
            f"{ims_per_device if ims_per_device is not None else 'auto'} images x whole accumulation "
            f"steps; {hint}"
        )
    return BatchLayout(ims_per_batch, world_size, per_device, ims_per_batch // (world_size * per_device))
