"""Identity pairs: never two identities, deterministic per (seed, epoch, index), DDP sharding."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset

from hpelib.data.pairs import (
    IdentityPairs,
    IdentityPairSampler,
    PairEpochCallback,
    dataset_identities,
    set_pairs_epoch,
)
from hpelib.data.sample import collate_samples
from tests.toy import AxisGlyphDataset


class LabelOnly(Dataset):
    """Items with a given identity list and tiny images (no identity attribute: forces a scan)."""

    def __init__(self, identities: list[int]) -> None:
        self.ids = identities

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.full((3, 4, 4), i % 256, dtype=torch.uint8),
            "rotation": torch.eye(3),
            "identity": torch.tensor(self.ids[i]),
            "index": torch.tensor(i),
        }


IDS = [0, 0, 0, 1, 1, 2, -1, 3, 3, 3, 3, 4, 1, 5, 5]  # 2 and 4 are singletons, -1 unknown


def test_pairs_never_mix_identities_and_never_self():
    pairs = IdentityPairs(LabelOnly(IDS), seed=3)
    assert len(pairs) == 12  # 15 - singletons {2, 4} - unknown
    for epoch in range(5):
        pairs.set_epoch(epoch)
        for i in range(len(pairs)):
            item = pairs[i]
            a, p = int(item["index"]), int(item["partner"]["index"])
            assert a != p
            assert int(item["identity"]) == int(item["partner"]["identity"]) == IDS[a] == IDS[p] >= 0


def test_singletons_self_and_allow_self():
    pairs = IdentityPairs(LabelOnly(IDS), singletons="self")
    assert len(pairs) == 14  # only the unknown item is left out
    singles = [i for i in range(len(pairs)) if IDS[pairs.anchors[i]] in (2, 4)]
    assert len(singles) == 2
    for i in singles:
        a, p = pairs.pair(i)
        assert a == p
    free = IdentityPairs(LabelOnly(IDS), allow_self=True)
    seen_self = any(a == p for e in range(20) for a, p in (free.pair(i, e) for i in range(len(free))))
    assert seen_self
    with pytest.raises(ValueError, match="singletons"):
        IdentityPairs(LabelOnly(IDS), singletons="keep")


def test_partner_is_deterministic_and_changes_with_epoch_and_seed():
    a = IdentityPairs(LabelOnly(IDS), seed=1)
    b = IdentityPairs(LabelOnly(IDS), seed=1)
    c = IdentityPairs(LabelOnly(IDS), seed=2)
    table = lambda d, e: [d.pair(i, e)[1] for i in range(len(d))]  # noqa: E731
    assert table(a, 0) == table(b, 0)
    assert table(a, 7) == table(b, 7)
    assert any(table(a, e) != table(a, 0) for e in range(1, 4))
    assert table(a, 0) != table(c, 0)
    # dataset[i] follows set_epoch; dataset[(i, epoch)] ignores it.
    a.set_epoch(5)
    assert int(a[3]["partner"]["index"]) == a.pair(3, 5)[1]
    assert int(a[(3, 0)]["partner"]["index"]) == a.pair(3, 0)[1]


def test_partner_choice_covers_the_group_uniformly():
    ids = [0] * 5
    pairs = IdentityPairs(LabelOnly(ids), seed=0)
    counts = torch.zeros(5)
    for e in range(400):
        counts[pairs.pair(0, e)[1]] += 1
    assert counts[0] == 0
    assert (counts[1:] > 60).all(), counts  # expected 100 each


def test_identities_from_attribute_concat_subset_and_errors():
    toy = AxisGlyphDataset(16, 8, seed=0, identities=3)
    assert torch.equal(dataset_identities(toy), toy.identity)
    cat = ConcatDataset([toy, LabelOnly([7, 7])])
    # The second part's ids are shifted past the first part's largest id.
    shift = int(toy.identity.max()) + 1
    assert dataset_identities(cat).tolist() == toy.identity.tolist() + [7 + shift, 7 + shift]
    sub = Subset(toy, [3, 1])
    assert dataset_identities(sub).tolist() == [int(toy.identity[3]), int(toy.identity[1])]
    with pytest.raises(ValueError, match="no identity with at least 2"):
        IdentityPairs(LabelOnly([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="identities has 2 entries"):
        IdentityPairs(LabelOnly([0, 0, 0]), identities=[0, 0])
    with pytest.raises(IndexError):
        IdentityPairs(LabelOnly([0, 0])).pair(2)


def test_explicit_identities_override_items():
    pairs = IdentityPairs(LabelOnly([0, 1, 2, 3]), identities=[5, 5, 6, 6])
    for i in range(4):
        a, p = pairs.pair(i)
        assert {a, p} in ({0, 1}, {2, 3})


def test_dataset_spec_is_built():
    spec = {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 12, "image_size": 8}}
    pairs = IdentityPairs(spec)
    assert isinstance(pairs.dataset, AxisGlyphDataset)
    assert len(pairs) > 0


def test_collate_gives_nested_partner_batch():
    pairs = IdentityPairs(AxisGlyphDataset(32, 8, seed=0, identities=4))
    batch = next(iter(DataLoader(pairs, batch_size=6, collate_fn=collate_samples)))
    assert batch["image"].shape == batch["partner"]["image"].shape == (6, 3, 8, 8)
    assert torch.equal(batch["identity"], batch["partner"]["identity"])
    assert batch["partner"]["rotation"].shape == (6, 3, 3)


@pytest.mark.parametrize("drop_last", [False, True])
def test_pair_sampler_shards_without_overlap(drop_last):
    ids = [i // 3 for i in range(30)] + [9]  # 31 anchors: not divisible by 4 replicas
    pairs = IdentityPairs(LabelOnly(ids), seed=0)
    world = 4
    shards = []
    for rank in range(world):
        sampler = IdentityPairSampler(pairs, num_replicas=world, rank=rank, seed=11, drop_last=drop_last)
        sampler.set_epoch(2)
        keys = list(sampler)
        assert all(epoch == 2 for _, epoch in keys)
        shards.append([i for i, _ in keys])
        assert len(keys) == len(sampler)
    assert len({len(s) for s in shards}) == 1
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(flat) == len(set(flat)) == 28  # no index on two ranks
    else:
        assert set(flat) == set(range(31))  # everything covered; only DistributedSampler's padding repeats
        assert len(flat) == 32 and len(set(flat)) == 31
    # Ranks agree on every pair: partner depends on (seed, epoch, index) only.
    for shard in shards:
        for i in shard:
            a, p = pairs[(i, 2)]["index"], pairs[(i, 2)]["partner"]["index"]
            assert ids[int(a)] == ids[int(p)] and int(a) != int(p)
            assert (int(a), int(p)) == pairs.pair(i, 2)


def test_pair_sampler_reshuffles_per_epoch_and_defaults_to_one_replica():
    pairs = IdentityPairs(LabelOnly([i // 2 for i in range(20)]))
    sampler = pairs.sampler(seed=0)
    assert sampler.num_replicas == 1 and sampler.rank == 0
    e0 = list(sampler)
    sampler.set_epoch(1)
    e1 = list(sampler)
    assert sorted(i for i, _ in e0) == sorted(i for i, _ in e1) == list(range(20))
    assert [i for i, _ in e0] != [i for i, _ in e1]
    with pytest.raises(TypeError, match="IdentityPairs"):
        IdentityPairSampler(LabelOnly([0, 0]))  # type: ignore[arg-type]


def test_lightning_style_distributed_sampler_shards_pairs():
    """What Lightning does under DDP with the default loaders: a DistributedSampler over the
    wrapper's indices. Ranks get disjoint anchors and compute the same pairs."""
    ids = [i // 4 for i in range(40)]
    pairs = IdentityPairs(LabelOnly(ids), seed=5)
    pairs.set_epoch(3)
    seen: list[tuple[int, int]] = []
    for rank in range(2):
        sampler = DistributedSampler(pairs, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(3)
        loader = DataLoader(pairs, batch_size=5, sampler=sampler, collate_fn=collate_samples)
        for batch in loader:
            assert torch.equal(batch["identity"], batch["partner"]["identity"])
            seen += list(zip(batch["index"].tolist(), batch["partner"]["index"].tolist(), strict=True))
    anchors = [a for a, _ in seen]
    assert sorted(anchors) == list(range(40))
    assert seen == [pairs.pair(pairs.anchors.index(a), 3) for a, _ in seen]


def test_epoch_reaches_dataloader_workers():
    """The epoch is in shared memory: a worker process sees set_epoch from the main process."""
    pairs = IdentityPairs(LabelOnly([i // 5 for i in range(10)]), seed=0)
    loader = DataLoader(pairs, batch_size=10, num_workers=1, persistent_workers=True, collate_fn=collate_samples)
    for epoch in (0, 4):
        pairs.set_epoch(epoch)
        batch = next(iter(loader))
        expected = [pairs.pair(i, epoch)[1] for i in range(10)]
        assert batch["partner"]["index"].tolist() == expected


def test_set_pairs_epoch_walks_loaders_and_callback():
    p1 = IdentityPairs(LabelOnly([0, 0]))
    p2 = IdentityPairs(LabelOnly([1, 1]))
    loaders = {"a": DataLoader(ConcatDataset([p1, LabelOnly([0])])), "b": [DataLoader(Subset(p2, [0]))]}
    assert set_pairs_epoch(loaders, 9) == 2
    assert p1.epoch == p2.epoch == 9

    class FakeTrainer:
        train_dataloader = DataLoader(p1)
        current_epoch = 4

    PairEpochCallback().on_train_epoch_start(FakeTrainer(), None)  # type: ignore[arg-type]
    assert p1.epoch == 4


def test_identities_from_identity_of_method():
    class WithIdentityOf(LabelOnly):
        def identity_of(self, indices: torch.Tensor) -> torch.Tensor:
            return indices // 2

    ds = WithIdentityOf([-1] * 6)  # the items say "unknown": the method must win, without a scan
    assert dataset_identities(ds).tolist() == [0, 0, 1, 1, 2, 2]


# ----------------------------------------------------------------- concatenated datasets
def test_concat_parts_never_share_an_identity():
    """Two parts that both number their people from 0 are different people: ids are offset
    per part (by the previous parts' largest id + 1) and unknown stays unknown."""
    a, b, c = LabelOnly([0, 0, 1, 1, -1]), LabelOnly([0, 0, 1, 1, 2, 2]), LabelOnly([-1, -1])
    d = LabelOnly([0, 0])
    cat = ConcatDataset([a, b, c, d])
    ids = dataset_identities(cat)
    assert ids.tolist() == [0, 0, 1, 1, -1, 2, 2, 3, 3, 4, 4, -1, -1, 5, 5]
    part = torch.tensor([0] * 5 + [1] * 6 + [2] * 2 + [3] * 2)
    pairs = IdentityPairs(cat, seed=1)
    assert len(pairs) == 12
    for epoch in range(3):
        for i in range(len(pairs)):
            x, y = pairs.pair(i, epoch)
            assert part[x] == part[y] and ids[x] == ids[y] >= 0
    # A Subset of the concatenation keeps the offsets.
    sub = Subset(cat, [0, 5, 13])
    assert dataset_identities(sub).tolist() == [0, 2, 5]


def test_concat_of_two_synthetic_sets_pairs_one_person():
    """The reported case: two SyntheticHeads sets (ids from 0 each) concatenated."""
    from hpelib.data.synthetic import SyntheticHeads

    parts = [
        SyntheticHeads(num_samples=64, image_size=16, seed=s, num_identities=8, images_per_identity=4, cache="none")
        for s in (0, 1)
    ]
    cat = ConcatDataset(parts)
    pairs = IdentityPairs(cat, seed=0)
    crossing = sum((a < 64) != (p < 64) for a, p in (pairs.pair(i) for i in range(len(pairs))))
    assert len(pairs) == 128 and crossing == 0


# ------------------------------------------------------- identities from the label index
def _count_image_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import PIL.Image

    opened: list[str] = []
    real_open = PIL.Image.open

    def counting_open(fp, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    return opened


def test_identities_of_file_datasets_decode_no_image(tmp_path, monkeypatch):
    """300W-LP/AFLW2000 identities come from the label index: building IdentityPairs opens
    no image (it used to decode every item, 122k images on 300W-LP, on every DDP rank)."""
    from hpelib.data.datasets import AFLW2000, Pose300WLP
    from tests.data.writers import write_3ddfa

    root = tmp_path / "300W_LP"
    for person in ("AFW_111", "AFW_222", "AFW_333"):
        for k in range(3):
            write_3ddfa(root / "AFW", f"{person}_{k}", (0.1 * k, -0.2, 0.05))
    ds = Pose300WLP(root, subsets=["AFW"], flipped=False, image_size=16, cache=None)
    aflw_root = tmp_path / "AFLW2000"
    for i in range(4):
        write_3ddfa(aflw_root, f"image{i:05d}", (0.1, 0.2, -0.1))
    aflw = AFLW2000(aflw_root, image_size=16, cache=None)

    opened = _count_image_opens(monkeypatch)
    pairs = IdentityPairs(ds, seed=0)
    aflw_ids = dataset_identities(aflw)
    cat_ids = dataset_identities(ConcatDataset([aflw, ds]))
    assert opened == []
    persons = [p.rsplit("_", 1)[0] for p in ds.index["label_file"]]
    assert len(pairs) == 9
    for i in range(len(pairs)):
        a, p = pairs.pair(i)
        assert a != p and persons[a] == persons[p]
    assert aflw_ids.tolist() == [-1] * 4  # AFLW2000 has no identities, and says so
    assert cat_ids.tolist() == [-1] * 4 + pairs.identities.tolist()
    # The counter does see the loaders' image reads.
    _ = ds[0]
    assert len(opened) == 1
