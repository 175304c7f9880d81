"""DDP sharding of training data without processes: two simulated ranks (num_replicas=2,
rank 0 and 1) get disjoint anchors with same-identity partners, through
:class:`IdentityPairSampler` and through the sampler Lightning injects into
:class:`HPEDataModule`'s loaders under DDP (plain ``DistributedSampler``, and
``DistributedSamplerWrapper`` around the weighted mix sampler)."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    WeightedRandomSampler,
)

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.pairs import IdentityPairs, IdentityPairSampler
from hpelib.data.sample import collate_samples


class Tagged(Dataset):
    """Tiny items whose ``index`` is unique across datasets (``offset + i``)."""

    def __init__(self, identities: list[int], offset: int = 0) -> None:
        self.identities, self.offset = identities, offset

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.zeros(3, 4, 4, dtype=torch.uint8),
            "rotation": torch.eye(3),
            "identity": torch.tensor(self.identities[i]),
            "index": torch.tensor(self.offset + i),
        }


def _check_pairs(batch: dict, pairs: IdentityPairs, epoch: int) -> None:
    assert torch.equal(batch["identity"], batch["partner"]["identity"])
    for a, p in zip(batch["index"].tolist(), batch["partner"]["index"].tolist(), strict=True):
        # The partner is a pure function of (seed, epoch, index): every rank computes the same.
        assert (a, p) == pairs.pair(pairs.anchors.index(a), epoch) and a != p


@pytest.mark.parametrize("drop_last", [False, True])
def test_identity_pair_sampler_two_ranks(drop_last):
    pairs = IdentityPairs(Tagged([i // 3 for i in range(33)]), seed=4)  # 33 anchors: odd
    for epoch in range(3):
        shards = []
        for rank in range(2):
            sampler = IdentityPairSampler(
                pairs, num_replicas=2, rank=rank, seed=7, drop_last=drop_last
            )
            sampler.set_epoch(epoch)  # what Lightning does at each epoch start
            loader = DataLoader(pairs, batch_size=4, sampler=sampler, collate_fn=collate_samples)
            shard = []
            for batch in loader:
                _check_pairs(batch, pairs, epoch)
                shard += batch["index"].tolist()
            shards.append(shard)
        s0, s1 = shards
        assert len(s0) == len(s1) == len(set(s0)) == len(set(s1))
        if drop_last:  # 16 each, no anchor on both ranks
            assert len(s0) == 16 and not set(s0) & set(s1)
        else:  # 17 each: DistributedSampler pads with the permutation's first index, once
            assert len(s0) == 17 and set(s0) | set(s1) == set(range(33))
            assert len(set(s0) & set(s1)) == 1
    # Lightning keeps a DistributedSampler it finds (no re-wrapping), so these shards stand.
    assert isinstance(sampler, DistributedSampler)


def _lightning_ddp_loader(dm: HPEDataModule, rank: int) -> DataLoader:
    """What Lightning's data connector does to the training loader on rank ``rank`` of 2:
    request it with DataLoader arguments recorded, inject its distributed sampler."""
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    sampler = _get_distributed_sampler(
        loader,
        _is_dataloader_shuffled(loader),
        overfit_batches=0,
        num_replicas=2,
        rank=rank,
        seed=0,
    )
    return _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)


def test_injected_distributed_sampler_shards_identity_pairs():
    """RankPose's default path: IdentityPairs in HPEDataModule, Lightning's DistributedSampler."""
    dm = HPEDataModule(
        train=IdentityPairs(Tagged([i // 4 for i in range(24)]), seed=1), batch_size=4
    )
    dm.setup("fit")
    pairs = dm.train_dataset
    for epoch in range(2):
        pairs.set_epoch(epoch)  # RankPose (or PairEpochCallback) at the epoch start
        shards = []
        for rank in range(2):
            loader = _lightning_ddp_loader(dm, rank)
            assert type(loader.sampler) is DistributedSampler and loader.drop_last
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            for batch in batches:
                _check_pairs(batch, pairs, epoch)
            shards.append(torch.cat([b["index"] for b in batches]).tolist())
        assert len(shards[0]) == len(shards[1]) == 12
        assert sorted(shards[0] + shards[1]) == list(range(24))


def test_injected_sampler_wrapper_shards_the_weighted_mix():
    """The weighted mix (samples_per_epoch) under DDP: each rank's datamodule draws the same
    weighted sequence (seeded sampler) and takes every other position of it."""

    def datamodule() -> HPEDataModule:  # one per rank, as each process builds its own
        dm = HPEDataModule(
            train=[Tagged([0] * 10), Tagged([1] * 6, offset=100)],
            samples_per_epoch=24,
            batch_size=4,
            seed=3,
        )
        dm.setup("fit")
        return dm

    reference = datamodule().train_dataloader()
    assert isinstance(reference.sampler, WeightedRandomSampler)
    draw = [reference.dataset[i]["index"].item() for i in reference.sampler]
    shards = []
    for rank in range(2):
        loader = _lightning_ddp_loader(datamodule(), rank)
        loader.sampler.set_epoch(0)
        shards.append(torch.cat([b["index"] for b in loader]).tolist())
    assert len(shards[0]) == len(shards[1]) == 12
    assert shards[0] == draw[0::2] and shards[1] == draw[1::2]  # disjoint positions of one draw
