"""Training batch sampler (determinism, resume, grouping, ranks) and the inference sampler."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from restransfer.data.samplers import InferenceSampler, TrainingBatchSampler, aspect_ratio_groups


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def _reference_batches(n, batch_size, groups, seed, rank, world_size, count):
    """Sequential bucket algorithm the sampler must match: one element at a time, epoch after epoch."""
    buckets, out, epoch = {}, [], 0
    while len(out) < count:
        perm = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)
        for idx in perm[rank::world_size]:
            b = buckets.setdefault(int(groups[idx]), [])
            b.append(int(idx))
            if len(b) == batch_size:
                out.append(list(b))
                b.clear()
        epoch += 1
    return out[:count]


@pytest.mark.parametrize("world_size,rank", [(1, 0), (3, 2)])
def test_grouped_batches_match_the_sequential_bucket_algorithm(world_size, rank):
    groups = aspect_ratio_groups(np.random.default_rng(1).uniform(0.5, 2.0, size=37))
    s = TrainingBatchSampler(37, 4, group_ids=groups, seed=5, rank=rank, world_size=world_size)
    got = [[i for i, _ in b] for b in _take(s, 60)]
    assert got == _reference_batches(37, 4, groups, 5, rank, world_size, 60)
    assert all(len({groups[i] for i in b}) == 1 for b in got)


def test_same_seed_same_batches_other_seed_other_batches():
    a = _take(TrainingBatchSampler(50, 3, seed=1), 40)
    assert a == _take(TrainingBatchSampler(50, 3, seed=1), 40)
    assert a != _take(TrainingBatchSampler(50, 3, seed=2), 40)
    seeds = [s for b in a for _, s in b]
    assert len(set(seeds)) == len(seeds)  # every sample gets its own augmentation seed


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("start", [1, 16, 17, 45])
def test_resuming_at_an_iteration_continues_the_same_sequence(grouped, start):
    groups = aspect_ratio_groups(np.random.default_rng(0).uniform(0.5, 2.0, size=33)) if grouped else None
    full = _take(TrainingBatchSampler(33, 2, group_ids=groups, seed=7, rank=1, world_size=2), start + 20)
    resumed = _take(TrainingBatchSampler(33, 2, group_ids=groups, seed=7, rank=1, world_size=2, start_iter=start), 20)
    assert resumed == full[start:]


def test_ranks_see_disjoint_images_within_an_epoch():
    n, ws, bs = 48, 4, 3
    per_rank = n // ws // bs  # batches per rank and epoch
    shards = [
        {i for b in _take(TrainingBatchSampler(n, bs, seed=0, rank=r, world_size=ws), per_rank) for i, _ in b}
        for r in range(ws)
    ]
    assert all(len(s) == n // ws for s in shards)
    assert set().union(*shards) == set(range(n))


def test_each_epoch_is_a_permutation_without_grouping():
    batches = _take(TrainingBatchSampler(20, 5, seed=3), 8)
    first, second = [[i for b in batches[k : k + 4] for i, _ in b] for k in (0, 4)]
    assert sorted(first) == list(range(20)) and sorted(second) == list(range(20)) and first != second


def test_invalid_arguments():
    with pytest.raises(ValueError, match="rank 2"):
        TrainingBatchSampler(10, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than"):
        TrainingBatchSampler(1, 2, world_size=2)
    with pytest.raises(ValueError, match="group_ids"):
        TrainingBatchSampler(10, 2, group_ids=[0, 1])


@pytest.mark.parametrize("size,world_size", [(10, 3), (2, 4), (9, 3), (0, 2)])
def test_inference_shards_are_contiguous_and_cover_the_dataset_once(size, world_size):
    shards = [list(InferenceSampler(size, r, world_size)) for r in range(world_size)]
    assert sum(shards, []) == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(InferenceSampler(size, r, world_size)) for r in range(world_size)] == list(map(len, shards))
