"""SplitDataset / split_indices: disjoint seeded parts, whole identities per part."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from hpelib.data.splits import FoldDataset, SplitDataset, kfold_indices, split_indices


class _Items(Dataset):
    """Items ``{"index": i, "identity": ids[i]}``; identities as an attribute (no reads)."""

    def __init__(self, identities: list[int]) -> None:
        self.identities = torch.tensor(identities)

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.tensor(i), "identity": self.identities[i]}


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(-1, 8), min_size=2, max_size=60),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 3),
    by=st.sampled_from(["identity", "image"]),
)
def test_parts_are_disjoint_cover_everything_and_keep_identities_whole(ids, fraction, seed, by):
    ids_t = torch.tensor(ids)
    train, val = split_indices(ids_t, fraction, seed, by)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(ids)))
    assert train.numel() >= 1
    if by == "identity":
        known_train = set(ids_t[train][ids_t[train] >= 0].tolist())
        known_val = set(ids_t[val][ids_t[val] >= 0].tolist())
        assert not known_train & known_val
        if len(set(ids)) > 1 or -1 in ids:
            assert val.numel() >= 1
    else:
        assert train.numel() == min(max(round(fraction * len(ids)), 1), len(ids) - 1)


def test_identity_split_is_close_to_the_fraction_and_seeded():
    ids = torch.arange(100).repeat_interleave(30)  # 100 faces x 30 views, like 300W-LP
    train, val = split_indices(ids, 0.8, seed=0)
    assert abs(train.numel() / ids.numel() - 0.8) <= 30 / ids.numel()
    again, _ = split_indices(ids, 0.8, seed=0)
    other, _ = split_indices(ids, 0.8, seed=1)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_split_dataset_parts_from_one_spec():
    data = _Items([i // 3 for i in range(30)])
    train = SplitDataset(data, fraction=0.8, part="train", seed=2)
    val = SplitDataset(data, fraction=0.8, part="val", seed=2)
    assert train.by == "identity"
    seen_train = {int(train[i]["index"]) for i in range(len(train))}
    seen_val = {int(val[i]["index"]) for i in range(len(val))}
    assert seen_train.isdisjoint(seen_val) and len(seen_train | seen_val) == 30
    assert set(train.identities.tolist()).isdisjoint(val.identities.tolist())
    assert len(train) == 24


def test_split_dataset_by_image_and_from_a_registry_spec():
    spec = {
        "class_path": "hpelib.data.synthetic.SyntheticHeads",
        "init_args": {"num_samples": 10, "image_size": 32, "seed": 0},
    }
    part = SplitDataset(spec, fraction=0.5, part="val", by="image")
    assert len(part) == 5 and part.by == "image"
    assert part[0]["image"].shape == (3, 32, 32)


def test_bad_split_arguments_are_named():
    data = _Items([0, 1, 2, 3])
    with pytest.raises(ValueError, match="part"):
        SplitDataset(data, part="test")
    with pytest.raises(ValueError, match="fraction"):
        SplitDataset(data, fraction=1.0)
    with pytest.raises(ValueError, match="identities"):
        SplitDataset(_Items([-1, -1, -1]), by="identity")
    with pytest.raises(ValueError, match="at least 2"):
        SplitDataset(_Items([0]))


# ----------------------------------------------------------------------------- k folds
@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), k=st.integers(2, 10), seed=st.integers(0, 3))
def test_kfold_indices_disjoint_cover_balanced_and_seeded(n: int, k: int, seed: int) -> None:
    if k > n:
        with pytest.raises(ValueError, match="k must be"):
            kfold_indices(n, k, seed)
        return
    folds = kfold_indices(n, k, seed)
    assert len(folds) == k
    assert sorted(torch.cat(folds).tolist()) == list(range(n))  # every item, none twice
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(a, b) for a, b in zip(folds, kfold_indices(n, k, seed), strict=True))


def test_fold_dataset_parts_are_complementary() -> None:
    data = _Items(list(range(50)))
    for fold in range(5):
        test = FoldDataset(data, k=5, fold=fold, part="test", seed=3)
        train = FoldDataset(data, k=5, fold=fold, part="train", seed=3)
        got_test = {int(test[i]["index"]) for i in range(len(test))}
        got_train = {int(train[i]["index"]) for i in range(len(train))}
        assert got_test == set(kfold_indices(50, 5, 3)[fold].tolist())
        assert got_test.isdisjoint(got_train) and got_test | got_train == set(range(50))
    assert "fold2_test" in FoldDataset(data, k=5, fold=2, part="test").name
    with pytest.raises(ValueError, match="fold=5"):
        FoldDataset(data, k=5, fold=5)
    with pytest.raises(ValueError, match="part='val'"):
        FoldDataset(data, part="val")
