"""TwoStreamBatchSampler under several processes: which ranks and batch sizes are accepted, and
how a global batch is cut into the ranks' shards (fast, hand-computed; the DDP runs that use it
are in test_distributed.py)."""

from __future__ import annotations

import pytest

from semicml.data.sampler import TwoStreamBatchSampler

KW = dict(n_labeled=40, n_unlabeled=30, seed=7, start=2, stop=5)


@pytest.mark.parametrize("rank,world,lab,unl", [(2, 2, 4, 2), (-1, 2, 4, 2), (0, 2, 4, 3), (1, 2, 3, 2),
                                               (3, 3, 6, 3), (0, 0, 4, 2)])
def test_a_rank_outside_the_world_or_an_indivisible_stream_is_refused(rank, world, lab, unl):
    with pytest.raises(ValueError) as err:
        TwoStreamBatchSampler(**KW, labeled_batch=lab, unlabeled_batch=unl, rank=rank, world_size=world)
    assert str(err.value) == (f"rank {rank} of {world}: labelled ({lab}) and unlabelled ({unl}) batches "
                              "must be divisible by the world size")


@pytest.mark.parametrize("rank,world", [(0, 1), (0, 2), (1, 2), (2, 3), (0, 3)])
def test_every_rank_inside_the_world_with_divisible_streams_is_accepted(rank, world):
    s = TwoStreamBatchSampler(**KW, labeled_batch=6, unlabeled_batch=6, rank=rank, world_size=world)
    assert (s.rank, s.world_size) == (rank, world)


def test_shards_of_three_ranks_are_contiguous_pieces_of_each_stream():
    kw = dict(**KW, labeled_batch=6, unlabeled_batch=3, labeled_foreground=[0, 5, 9], foreground_fraction=0.5)
    one = TwoStreamBatchSampler(**kw)
    shards = [TwoStreamBatchSampler(**kw, rank=r, world_size=3) for r in range(3)]
    for k in range(2, 5):
        batch = one.batch(k)
        assert one.shard(batch) is batch  # one process: the whole batch, as it is
        lab, unl = batch[:6], batch[6:]
        for r, s in enumerate(shards):
            # 2 labelled (positions 2r, 2r+1) then 1 unlabelled (position 6 + r)
            assert s.shard(batch) == lab[2 * r : 2 * r + 2] + unl[r : r + 1]
    assert [len(list(s)) for s in shards] == [3, 3, 3]
    assert list(shards[1]) == [shards[1].shard(one.batch(k)) for k in range(2, 5)]  # iteration yields the shards
