"""Datasets, transforms and the datamodule. Batch keys: :mod:`hpelib.data.sample`.

* :class:`HPEDataModule` (:mod:`hpelib.data.datamodule`): one LightningDataModule for all.
* :func:`build_dataset` / ``DATASETS`` (:mod:`hpelib.data.datasets`): real datasets by name
  (``300w_lp``, ``aflw2000``, ``biwi``, ``biwi_npz``, ``opnet_h5``, ``table``) and the
  synthetic generator (``synthetic``, :mod:`hpelib.data.synthetic`).
* :mod:`hpelib.data.transforms`: batched label-consistent augmentation;
  :mod:`hpelib.data.variants`: SA/FA/occluded test sets; :mod:`hpelib.data.pairs`: identity pairs;
  :mod:`hpelib.data.splits`: seeded train/validation splits (:class:`SplitDataset`).
"""

from __future__ import annotations

from typing import Any

from hpelib.data.sample import OPTIONAL_FIELDS, REQUIRED_FIELDS, collate_samples, mask_key

__all__ = [
    "DATASETS",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "HPEDataModule",
    "SplitDataset",
    "build_dataset",
    "collate_samples",
    "mask_key",
]


def __getattr__(name: str) -> Any:
    # Lazy: the datamodule pulls in Lightning and the loaders pull in scipy/pandas.
    if name == "HPEDataModule":
        from hpelib.data.datamodule import HPEDataModule

        return HPEDataModule
    if name == "SplitDataset":
        from hpelib.data.splits import SplitDataset

        return SplitDataset
    if name in ("build_dataset", "DATASETS"):
        from hpelib.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'hpelib.data' has no attribute {name!r}")
