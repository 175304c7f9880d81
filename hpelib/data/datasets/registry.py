"""Name -> dataset class registry, so configs can say ``{"name": "aflw2000", "root": ...}``.

Other modules add their datasets with the :func:`register_dataset` decorator (or by
assigning into :data:`DATASETS`); names are case-insensitive and ``-`` equals ``_``.
The synthetic generators (:mod:`hpelib.data.synthetic`) are registered here instead: the
registry imports them, never the reverse, so the two packages depend one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch.utils.data import Dataset

from hpelib.data.synthetic.datasets import (
    SyntheticAnchorPositives,
    SyntheticHeads,
    SyntheticPairs,
)

__all__ = ["DATASETS", "build_dataset", "dataset_class", "register_dataset", "normalize_name"]

#: Registered dataset factories (classes) by normalised name; aliases share the class.
DATASETS: dict[str, Callable[..., Dataset]] = {}

T = TypeVar("T", bound=Callable[..., Dataset])


def normalize_name(name: str) -> str:
    """``"300W-LP"`` -> ``"300w_lp"``: lower case, ``-`` and spaces as ``_``."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def register_dataset(*names: str) -> Callable[[T], T]:
    """Class decorator registering a dataset under one or more names.

    Re-registering a name with a different class raises ``ValueError`` (two datasets silently
    shadowing each other would be a config bug that is very hard to see).
    """
    if not names:
        raise ValueError("register_dataset needs at least one name")

    def decorator(cls: T) -> T:
        for name in names:
            key = normalize_name(name)
            old = DATASETS.get(key)
            if (
                old is not None
                and old is not cls
                and getattr(old, "__qualname__", None) != getattr(cls, "__qualname__", None)
            ):
                raise ValueError(f"dataset name {name!r} is already registered to {old!r}")
            DATASETS[key] = cls
        return cls

    return decorator


def dataset_class(name: str) -> Callable[..., Dataset]:
    """The dataset class (factory) registered as ``name``.

    Raises ``ValueError`` listing the known names when ``name`` is not registered.
    """
    # The loader modules register themselves on import.
    import hpelib.data.datasets  # noqa: F401

    key = normalize_name(name)
    if key not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset name {name!r}; known: {known}")
    return DATASETS[key]


def build_dataset(name: str, **kwargs: Any) -> Dataset:
    """Instantiate the dataset registered as ``name`` with ``kwargs``.

    Raises ``ValueError`` listing the known names when ``name`` is not registered.
    """
    return dataset_class(name)(**kwargs)


# The synthetic generators (18 ms to import once torch is loaded: eager, so that DATASETS
# always lists them).
register_dataset("synthetic", "synthetic_heads")(SyntheticHeads)
register_dataset("synthetic_pairs")(SyntheticPairs)
register_dataset("synthetic_anchor_positives")(SyntheticAnchorPositives)
