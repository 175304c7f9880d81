"""Train/validation splits of one dataset, as a dataset spec a config can name.

:class:`SplitDataset` holds the ``part`` (``"train"`` or ``"val"``) of a seeded split of
``dataset``: the same ``(dataset, fraction, seed, by)`` always gives the same two disjoint
parts, so a config names the training part under ``data.train`` and the validation part
under ``data.val``::

    train:
      class_path: hpelib.data.splits.SplitDataset
      init_args: {dataset: {name: 300w_lp, root: data/300W_LP}, fraction: 0.8, part: train}
    val:
      class_path: hpelib.data.splits.SplitDataset
      init_args: {dataset: {name: 300w_lp, root: data/300W_LP}, fraction: 0.8, part: val}

Splitting by identity (``by="auto"`` where the dataset exposes identities) keeps every
person on one side: 300W-LP synthesises many views of each face, so a random image split
would put views of the same face in both parts and the validation error would be that of
faces already seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "FOLD_PARTS",
    "SPLIT_MODES",
    "SPLIT_PARTS",
    "FoldDataset",
    "SplitDataset",
    "kfold_indices",
    "split_indices",
]

#: The two parts of a split.
SPLIT_PARTS: tuple[str, ...] = ("train", "val")
#: ``"identity"``: whole identities per part (unknown ones split by image); ``"image"``: a
#: random image split; ``"auto"``: by identity where any identity is known, else by image.
SPLIT_MODES: tuple[str, ...] = ("auto", "identity", "image")
#: The two parts of a k-fold split: every fold but one, and that one.
FOLD_PARTS: tuple[str, ...] = ("train", "test")


def split_indices(
    identities: Tensor, fraction: float, seed: int = 0, by: str = "identity"
) -> tuple[Tensor, Tensor]:
    """Seeded split of ``N`` items into ``(train, val)`` sorted index tensors.

    Args:
        identities: ``(N,)`` int64 identity per item, ``-1`` unknown.
        fraction: share of the items in the training part, in ``(0, 1)``.
        seed: split seed.
        by: ``"identity"`` (identities shuffled and taken whole until the training part holds
            ``round(fraction * N)`` items or just more; items of unknown identity split by
            image) or ``"image"`` (items shuffled, the first ``round(fraction * N)`` train);
            each part keeps at least one item (one identity) where there are two.

    Returns:
        ``(train (N_train,), val (N - N_train,))`` int64 indices, disjoint, covering ``0..N-1``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction={fraction} must be in (0, 1)")
    if by not in ("identity", "image"):
        raise ValueError(f"split by={by!r} is not 'identity' or 'image'")
    ids = torch.as_tensor(identities, dtype=torch.int64).reshape(-1)
    n = ids.numel()
    g = torch.Generator().manual_seed(int(seed))
    # Both parts non-empty whenever there are two items.
    target = min(max(round(fraction * n), 1), n - 1)
    if by == "image":
        order = torch.randperm(n, generator=g)
        return order[:target].sort().values, order[target:].sort().values
    known = ids >= 0
    # Each unknown item is its own group; known items group by identity.
    group = torch.where(known, ids, -1 - torch.arange(n))
    groups, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    order = torch.randperm(groups.numel(), generator=g)
    sizes = counts[order]
    # A group is taken while the training part holds fewer than `target` items before it.
    taken = torch.cumsum(sizes, 0) - sizes < target
    if bool(taken.all()) and taken.numel() > 1:
        taken[-1] = False  # never an empty validation part
    in_train = torch.zeros(groups.numel(), dtype=torch.bool)
    in_train[order[taken]] = True
    train_item = in_train[inverse]
    return train_item.nonzero()[:, 0], (~train_item).nonzero()[:, 0]


class _IndexedSubset(Dataset):
    """Items ``dataset[indices[i]]`` (torch's ``Subset`` would hand the wrapped dataset 0-d
    tensors instead of ints)."""

    dataset: Dataset
    indices: Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[index])]


class SplitDataset(_IndexedSubset):
    """One part of a seeded train/validation split of ``dataset`` (see the module docstring).

    Args:
        dataset: a dataset, or a spec the datamodule understands (``{"name": ..., "root":
            ...}`` or ``{"class_path": ..., "init_args": ...}``).
        fraction: share of the items in the ``"train"`` part (0.8: an 80/20 split).
        part: ``"train"`` or ``"val"``.
        seed: split seed (the same for both parts of one split).
        by: one of :data:`SPLIT_MODES`. Identities come from
            :func:`hpelib.data.pairs.dataset_identities` (label index for the file loaders and
            the synthetic heads; other datasets are read once).

    Items are the wrapped dataset's; ``identities`` (the parts' identities), ``indices``
    (positions in ``dataset``) and ``name`` are exposed.
    """

    def __init__(
        self,
        dataset: Dataset | Mapping[str, Any],
        fraction: float = 0.8,
        part: str = "train",
        seed: int = 0,
        by: str = "auto",
    ) -> None:
        from hpelib.data.datamodule import build_dataset_from_spec
        from hpelib.data.pairs import dataset_identities

        if part not in SPLIT_PARTS:
            raise ValueError(f"split part={part!r} is not one of {SPLIT_PARTS}")
        if by not in SPLIT_MODES:
            raise ValueError(f"split by={by!r} is not one of {SPLIT_MODES}")
        self.dataset = build_dataset_from_spec(dataset)
        n = len(self.dataset)  # type: ignore[arg-type]
        if n < 2:
            raise ValueError(f"SplitDataset needs at least 2 items to split, the dataset has {n}")
        if by == "image":
            ids = torch.full((n,), -1, dtype=torch.int64)
        else:
            ids = dataset_identities(self.dataset)
            if by == "identity" and not bool((ids >= 0).any()):
                raise ValueError(
                    f"SplitDataset by='identity': {type(self.dataset).__name__} exposes no "
                    "identities (use by='image' or by='auto')"
                )
        self.by = "identity" if bool((ids >= 0).any()) else "image"
        train, val = split_indices(ids, fraction, seed, self.by)
        self.part, self.fraction, self.seed = part, float(fraction), int(seed)
        self.indices = train if part == "train" else val
        self.identities = ids[self.indices]
        self.name = f"{getattr(self.dataset, 'name', type(self.dataset).__name__)}_{part}"


def kfold_indices(n: int, k: int = 5, seed: int = 0) -> list[Tensor]:
    """``k`` disjoint folds covering ``range(n)``: fold ``f`` holds the items at positions
    ``f, f + k, f + 2k, ...`` of a permutation seeded by ``seed``.

    Returns:
        ``k`` sorted int64 index tensors whose sizes differ by at most one; a function of
        ``(n, k, seed)`` only, so every run (and :class:`FoldDataset`) sees the same folds.
    """
    if not 2 <= k <= n:
        raise ValueError(f"k must be in [2, {n}] for {n} items, got {k}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return [order[f::k].sort().values for f in range(k)]


class FoldDataset(_IndexedSubset):
    """One part of a seeded k-fold split of ``dataset``: ``"test"`` = fold ``fold``,
    ``"train"`` = every other fold (:func:`kfold_indices`; items, not identities, are split,
    so use it on sets with one image per person such as AFLW2000).

    Args:
        dataset: a dataset, or a spec the datamodule understands.
        k: number of folds.
        fold: the held-out fold, in ``[0, k)``.
        part: ``"train"`` or ``"test"``.
        seed: seed of the fold assignment (the same for both parts).

    The train part is usually built from the dataset's train-time variant (crop jitter) and
    the test part from its evaluation variant: they hold the same items in the same order
    as long as both variants index the same files (as AFLW2000's do). ``indices`` (positions
    in ``dataset``) and ``name`` are exposed.
    """

    def __init__(
        self,
        dataset: Dataset | Mapping[str, Any],
        k: int = 5,
        fold: int = 0,
        part: str = "train",
        seed: int = 0,
    ) -> None:
        from hpelib.data.datamodule import build_dataset_from_spec

        if part not in FOLD_PARTS:
            raise ValueError(f"fold part={part!r} is not one of {FOLD_PARTS}")
        if not 0 <= fold < k:
            raise ValueError(f"fold={fold} must be in [0, {k - 1}] for k={k}")
        self.dataset = build_dataset_from_spec(dataset)
        folds = kfold_indices(len(self.dataset), k, seed)  # type: ignore[arg-type]
        if part == "test":
            self.indices = folds[fold]
        else:
            self.indices = torch.cat([f for g, f in enumerate(folds) if g != fold]).sort().values
        self.k, self.fold, self.part, self.seed = int(k), int(fold), part, int(seed)
        self.name = (
            f"{getattr(self.dataset, 'name', type(self.dataset).__name__)}_fold{fold}_{part}"
        )
