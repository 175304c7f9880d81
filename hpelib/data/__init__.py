"""Datasets, transforms and the datamodule. Batch keys: :mod:`hpelib.data.sample`."""

from hpelib.data.sample import OPTIONAL_FIELDS, REQUIRED_FIELDS, collate_samples, mask_key

__all__ = ["OPTIONAL_FIELDS", "REQUIRED_FIELDS", "collate_samples", "mask_key"]
