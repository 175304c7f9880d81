"""Same-identity image pairs for Siamese training (RankPose) over any dataset with identities.

:class:`IdentityPairs` wraps a dataset whose items carry an ``identity`` (see
:mod:`hpelib.data.sample`) and returns, for each anchor item, the anchor's sample dict with one
extra key (``"partner"`` by default) holding the sample dict of another item of the **same**
identity. :func:`hpelib.data.sample.collate_samples` turns that key into a nested sub-batch
(``batch["partner"]``) that :class:`~hpelib.data.datamodule.HPEDataModule` augments and
normalises like the main batch.

Pairs are a pure function of ``(seed, epoch, index)`` (a 64-bit hash, no global RNG), so:

* a run is reproducible and the partner of an item changes from epoch to epoch;
* any sampler that shards *indices* shards *pairs* without overlap: under DDP, Lightning wraps
  the training loader in a ``DistributedSampler`` whose ranks get disjoint index sets, hence
  disjoint anchors, and every rank computes the same partner for a given index;
* DataLoader workers agree with the main process: the epoch lives in a shared-memory tensor
  (set by :meth:`IdentityPairs.set_epoch`, e.g. from :class:`PairEpochCallback` or the
  RankPose module) so persistent workers see the new epoch too. :class:`IdentityPairSampler`
  instead sends ``(index, epoch)`` with every index, which needs no shared state at all.

Items whose identity is unknown (``-1``) are never anchors or partners. Identities with a
single item cannot form a pair: they are dropped (default) or paired with themselves
(``singletons="self"``, a pair with identical labels, which gives zero ranking loss).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset

__all__ = [
    "IdentityPairs",
    "IdentityPairSampler",
    "PairEpochCallback",
    "dataset_identities",
    "set_pairs_epoch",
]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64: a fast, well-mixed 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash(*values: int) -> int:
    h = 0x5851F42D4C957F2D
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h


def dataset_identities(dataset: Dataset) -> Tensor:
    """``(len(dataset),)`` int64 identity of every item, ``-1`` where unknown.

    Looked up without loading images where the dataset exposes them: an
    ``identity_of(indices (N,)) -> (N,)`` method (:class:`~hpelib.data.synthetic.SyntheticHeads`),
    an ``identities`` attribute (tensor or sequence, one entry per item), an ``identity``
    attribute of that length, the parts of a ``ConcatDataset`` or a ``Subset``; otherwise every item is read once
    and its ``"identity"`` key used (slow for rendered or decoded datasets: give
    ``identities=`` to :class:`IdentityPairs` or an ``identities`` attribute instead).
    The file-based loaders (:class:`~hpelib.data.datasets.base.IndexedPoseDataset`) answer
    ``identity_of`` from their label index, without decoding an image.

    Identities are per dataset: the parts of a ``ConcatDataset`` are offset (part ``k``'s
    ids are shifted by the previous parts' largest id + 1; ``-1`` stays unknown), so two
    parts that both number their people from 0 never pair different people.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if isinstance(dataset, ConcatDataset):
        # Each part numbers its people from 0: shift every part past the previous parts'
        # largest id so that equal raw ids of different parts stay different people.
        parts, offset = [], 0
        for d in dataset.datasets:
            ids = dataset_identities(d)
            known = ids >= 0
            parts.append(torch.where(known, ids + offset, ids))
            if bool(known.any()):
                offset = int(ids[known].max()) + offset + 1
        return torch.cat(parts) if n else torch.zeros(0, dtype=torch.int64)
    if isinstance(dataset, Subset):
        parent = dataset_identities(dataset.dataset)
        return parent[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    identity_of = getattr(dataset, "identity_of", None)
    if callable(identity_of):  # e.g. SyntheticHeads: ids from its seeds, no rendering
        return torch.as_tensor(identity_of(torch.arange(n)), dtype=torch.int64).reshape(-1)
    for attr in ("identities", "identity"):
        value = getattr(dataset, attr, None)
        if value is None or callable(value):
            continue
        ids = torch.as_tensor(value, dtype=torch.int64).reshape(-1)
        if ids.numel() == n:
            return ids
    ids = torch.full((n,), -1, dtype=torch.int64)
    for i in range(n):
        item = dataset[i]
        if "identity" in item and item["identity"] is not None and item.get("has_identity", True):
            ids[i] = int(torch.as_tensor(item["identity"]))
    return ids


class IdentityPairs(Dataset):
    """``item(index) = {**base[a], partner_key: base[p]}`` with ``identity(a) == identity(p)``.

    Args:
        dataset: the base dataset, or a dataset spec (``{"class_path": ..., "init_args": ...}``
            or ``{"name": ...}``, as in :class:`~hpelib.data.datamodule.HPEDataModule`), so a
            YAML config can wrap any dataset.
        identities: ``(len(dataset),)`` identity per item (``-1`` = unknown); default:
            :func:`dataset_identities`; ``"per_item"``: every item is its own identity (with
            ``singletons="self"``, a pair is two independently augmented views of one image,
            for sets with one image per person such as AFLW2000).
        seed: seed of the partner choice.
        partner_key: key of the partner sample in the returned dict.
        singletons: ``"drop"`` (identities with one item are not anchors) or ``"self"``
            (they are paired with themselves).
        allow_self: also allow the anchor itself as its partner when the identity has other
            items (the released RankPose code never does; default False).

    Indexing: ``dataset[i]`` (``0 <= i < len``) uses the epoch of :meth:`set_epoch`;
    ``dataset[(i, epoch)]`` (what :class:`IdentityPairSampler` yields) uses the given epoch.
    """

    def __init__(
        self,
        dataset: Dataset | Mapping[str, Any],
        identities: Sequence[int] | Tensor | Literal["per_item"] | None = None,
        seed: int = 0,
        partner_key: str = "partner",
        singletons: str = "drop",
        allow_self: bool = False,
    ) -> None:
        super().__init__()
        if singletons not in ("drop", "self"):
            raise ValueError(f"singletons must be 'drop' or 'self', got {singletons!r}")
        if not isinstance(dataset, Dataset):
            from hpelib.data.datamodule import build_dataset_from_spec

            dataset = build_dataset_from_spec(dataset)
        self.dataset = dataset
        if isinstance(identities, str):
            if identities != "per_item":
                raise ValueError(f"identities={identities!r}: give a sequence or 'per_item'")
            ids = torch.arange(len(dataset))  # type: ignore[arg-type]
        elif identities is None:
            ids = dataset_identities(dataset)
        else:
            ids = torch.as_tensor(identities, dtype=torch.int64).reshape(-1)
        if ids.numel() != len(dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"identities has {ids.numel()} entries but the dataset has {len(dataset)} items"  # type: ignore[arg-type]
            )
        self.identities = ids
        self.seed = int(seed)
        self.partner_key = partner_key
        self.singletons = singletons
        self.allow_self = allow_self

        groups: dict[int, list[int]] = {}
        for i, ident in enumerate(ids.tolist()):
            if ident >= 0:
                groups.setdefault(ident, []).append(i)
        min_size = 1 if singletons == "self" else 2
        self.groups: dict[int, list[int]] = {k: v for k, v in groups.items() if len(v) >= min_size}
        self.anchors: list[int] = sorted(i for members in self.groups.values() for i in members)
        if not self.anchors:
            raise ValueError(
                "IdentityPairs found no identity with at least "
                f"{min_size} items (identities known for {int((ids >= 0).sum())} of {ids.numel()} items)"
            )
        # Position of each anchor inside its identity group, for the "skip self" draw.
        self._position = {i: members.index(i) for members in self.groups.values() for i in members}
        # Shared memory: DataLoader workers (persistent ones included) read the epoch that the
        # main process sets, so the partner of an index agrees everywhere.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------------ epoch
    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by ``dataset[i]``; call it before each epoch's iterator is created."""
        self._epoch.fill_(int(epoch))

    # ------------------------------------------------------------------ pairs
    def __len__(self) -> int:
        return len(self.anchors)

    def pair(self, index: int, epoch: int | None = None) -> tuple[int, int]:
        """Base-dataset indices ``(anchor, partner)`` of item ``index`` at ``epoch``.

        A pure function of ``(seed, epoch, index)``: the partner is drawn uniformly among the
        other items of the anchor's identity (or all of them with ``allow_self``).
        """
        if not 0 <= index < len(self.anchors):
            raise IndexError(f"IdentityPairs index {index} out of range [0, {len(self.anchors)})")
        epoch = self.epoch if epoch is None else int(epoch)
        anchor = self.anchors[index]
        members = self.groups[int(self.identities[anchor])]
        h = _hash(self.seed, epoch, index)
        if len(members) == 1:
            return anchor, anchor
        if self.allow_self:
            return anchor, members[h % len(members)]
        k = h % (len(members) - 1)
        # Skip the anchor's own slot: uniform over the n - 1 others.
        k += k >= self._position[anchor]
        return anchor, members[k]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple | list):
            index, epoch = int(index[0]), int(index[1])
        else:
            index, epoch = int(index), None
        anchor, partner = self.pair(index, epoch)
        item = dict(self.dataset[anchor])
        item[self.partner_key] = dict(self.dataset[partner])
        return item

    def sampler(
        self,
        shuffle: bool = True,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> IdentityPairSampler:
        """An :class:`IdentityPairSampler` over this dataset (``seed`` defaults to its own)."""
        return IdentityPairSampler(
            self, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
            seed=self.seed if seed is None else seed, drop_last=drop_last,
        )


class IdentityPairSampler(DistributedSampler):
    """DDP-aware sampler of :class:`IdentityPairs` yielding ``(index, epoch)`` keys.

    Shards exactly like :class:`torch.utils.data.DistributedSampler` (each rank gets a
    disjoint slice of one permutation of ``seed + epoch``; padded or dropped to equal size),
    so its ranks never share an anchor. Carrying the epoch in every key keeps the partner
    choice right in DataLoader workers without shared state. Being a ``DistributedSampler``,
    Lightning neither replaces nor re-wraps it under DDP and calls its ``set_epoch`` each
    epoch. Outside a process group it defaults to one replica (``num_replicas=1, rank=0``).
    """

    def __init__(
        self,
        dataset: IdentityPairs,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(dataset, IdentityPairs):
            raise TypeError(f"IdentityPairSampler needs an IdentityPairs dataset, got {type(dataset).__name__}")
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = int(self.epoch)
        for index in super().__iter__():
            yield (int(index), epoch)


def set_pairs_epoch(obj: Any, epoch: int) -> int:
    """Call ``set_epoch(epoch)`` on every :class:`IdentityPairs` reachable from ``obj``.

    ``obj`` may be a dataset, a DataLoader, or a (nested) list/tuple/dict of them, e.g.
    ``trainer.train_dataloader``. Returns how many pair datasets were updated.
    """
    if isinstance(obj, IdentityPairs):
        obj.set_epoch(epoch)
        return 1
    if isinstance(obj, DataLoader):
        return set_pairs_epoch(obj.dataset, epoch)
    if isinstance(obj, ConcatDataset):
        return sum(set_pairs_epoch(d, epoch) for d in obj.datasets)
    if isinstance(obj, Subset):
        return set_pairs_epoch(obj.dataset, epoch)
    if isinstance(obj, Mapping):
        return sum(set_pairs_epoch(v, epoch) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(set_pairs_epoch(v, epoch) for v in obj)
    return 0


class PairEpochCallback(Callback):
    """Sets the epoch of the training :class:`IdentityPairs` at each epoch start.

    Needed by methods other than RankPose (which does it itself) when pairs are drawn with
    plain ``dataset[i]`` indexing (the default ``HPEDataModule`` loaders).
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        set_pairs_epoch(trainer.train_dataloader, trainer.current_epoch)
