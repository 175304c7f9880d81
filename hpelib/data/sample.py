"""The one place where hpelib's sample and batch keys are defined.

A dataset item is a ``dict`` on the CPU:

=====================  ===================  ==================================================
key                    shape / dtype        meaning
=====================  ===================  ==================================================
``image``              (3, S, S) uint8      RGB face crop, already cropped and resized
``rotation``           (3, 3) float32       label in hpelib's internal convention
                                            (:mod:`hpelib.rotation`)
``box``                (4,) float32         face box (x0, y0, x1, y1) in crop pixels
``landmarks_2d``       (68, 2) float32      landmarks in crop pixels (MultiPIE-68 order)
``landmarks_visible``  (68,) bool           per-landmark visibility
``landmarks_3d``       (68, 3) float32      3D landmarks in camera axes (x right, y down,
                                            z into the scene) in crop pixels, x/y on the
                                            image (AFLW2000's ``pt3d_68`` role), z relative
                                            to the head centre (depth 0 = the point that
                                            ``head_center`` projects), in every loader
``head_center``        (2,) float32         projected head centre in crop pixels
``head_size``          () float32           full head size (2 x the head radius) in crop
                                            pixels
``head_box``           (4,) float32         head silhouette box (x0, y0, x1, y1), crop pixels
``shape_params``       (P,) float32         parameters of a deformable face model
``identity``           () int64             person id, ``-1`` when unknown
``occluded``           () bool              the face is (synthetically) occluded
``occlusion_fraction`` () float32           share of the face covered by occluders
``index``              () int64             index of the item in its dataset
=====================  ===================  ==================================================

Optional keys come with a boolean mask ``has_<key>`` (shape ``()``) in the batch, produced by
:func:`collate_samples`, so that mixed datasets (some without landmarks, say) batch together
and losses can be masked per sample. ``image`` and ``rotation`` are required; a dataset
without a pose label (a prediction-only folder) sets ``has_rotation = False`` explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["OPTIONAL_FIELDS", "REQUIRED_FIELDS", "FieldSpec", "collate_samples", "mask_key"]


@dataclass(frozen=True)
class FieldSpec:
    """Shape (``-1`` = taken from the first sample that has it) and dtype of an optional key."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: float = 0.0


REQUIRED_FIELDS: tuple[str, ...] = ("image", "rotation")

OPTIONAL_FIELDS: dict[str, FieldSpec] = {
    "box": FieldSpec((4,), torch.float32),
    "landmarks_2d": FieldSpec((68, 2), torch.float32),
    "landmarks_visible": FieldSpec((68,), torch.bool),
    "landmarks_3d": FieldSpec((68, 3), torch.float32),
    "head_center": FieldSpec((2,), torch.float32),
    "head_size": FieldSpec((), torch.float32),
    "head_box": FieldSpec((4,), torch.float32),
    "shape_params": FieldSpec((-1,), torch.float32),
    "identity": FieldSpec((), torch.int64, fill=-1),
    "occluded": FieldSpec((), torch.bool),
    "occlusion_fraction": FieldSpec((), torch.float32),
    "index": FieldSpec((), torch.int64, fill=-1),
}


def mask_key(key: str) -> str:
    """Name of the per-sample mask of an optional key: ``box`` -> ``has_box``."""
    return f"has_{key}"


def _fill(spec: FieldSpec, shape: tuple[int, ...]) -> Tensor:
    return torch.full(shape, spec.fill, dtype=spec.dtype)


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts into a batch dict with ``has_<key>`` masks.

    Required keys must be in every sample. An optional key present in some samples is filled
    with its spec's default where missing and masked out. Unknown tensor keys are stacked if
    every sample has them; a nested sample dict (e.g. the partner of a pair) becomes a nested
    batch; other values (strings, ...) become lists.
    """
    if not samples:
        raise ValueError("collate_samples got an empty list of samples")
    batch: dict[str, Any] = {}
    for key in REQUIRED_FIELDS:
        missing = [i for i, s in enumerate(samples) if key not in s]
        if missing:
            raise KeyError(f"samples {missing[:5]} have no required key {key!r}")
        batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    batch["rotation"] = batch["rotation"].float()
    batch[mask_key("rotation")] = torch.tensor(
        [bool(s.get(mask_key("rotation"), True)) for s in samples]
    )

    for key, spec in OPTIONAL_FIELDS.items():
        present = [key in s and s[key] is not None for s in samples]
        if not any(present):
            continue
        first = next(torch.as_tensor(s[key]) for s, p in zip(samples, present, strict=True) if p)
        shape = tuple(first.shape) if -1 in spec.shape else spec.shape
        values = [
            torch.as_tensor(s[key]).to(spec.dtype) if p else _fill(spec, shape)
            for s, p in zip(samples, present, strict=True)
        ]
        batch[key] = torch.stack(values)
        batch[mask_key(key)] = torch.tensor(present)

    known = set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS) | {mask_key("rotation")}
    for key in samples[0]:
        if key in known:
            continue
        values = [s.get(key) for s in samples]
        if all(isinstance(v, dict) and "image" in v for v in values):
            # A nested sample (the second image of a pair, a positive): a sub-batch.
            batch[key] = collate_samples(values)
        elif all(isinstance(v, Tensor) for v in values) and len({v.shape for v in values}) == 1:
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
