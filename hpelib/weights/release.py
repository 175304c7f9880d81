"""What every converter shares: reading a released file, the crop rule of the releases'
test scripts, and writing an hpelib checkpoint in the form a trained one has.

A converted checkpoint holds what a checkpoint of ``hpelib fit`` holds for inference
(``state_dict``, ``hyper_parameters``, ``hpelib_class_path``, the ``hpelib_preprocessing``
record), so :func:`hpelib.load`, ``hpelib evaluate`` and ``hpelib export`` take it as they
take a trained one, plus ``hpelib_converted_from``: the release, its address, the file's
SHA-256, the form (train or deploy) and the convention of the release's own outputs. It has
no optimiser or loop state: it is a starting point or a model to use, not a run to resume.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hpelib.checkpoint_io import (
    PREPROCESSING_FIELDS,
    PREPROCESSING_KEY,
    atomic_torch_save,
    read_checkpoint,
)
from hpelib.specs import qualified_name

__all__ = [
    "CONVERTED_FROM_KEY",
    "ConversionError",
    "Release",
    "ResizeCenterCrop",
    "load_converted_weights",
    "release_state_dict",
    "write_converted_checkpoint",
]

#: Top-level key of the provenance record in a converted checkpoint.
CONVERTED_FROM_KEY = "hpelib_converted_from"


class ConversionError(ValueError):
    """A released file that the converter cannot map (wrong release, damaged, other
    architecture); the message names the file."""


@dataclass(frozen=True)
class Release:
    """A published model and what its use requires.

    Attributes:
        name: the ``--from`` name (``"6drepnet"``).
        title: paper / model name.
        url: where the weights are published.
        architecture: the network, in words.
        preprocessing: the ``hpelib_preprocessing`` record (every field of
            :data:`hpelib.checkpoint_io.PREPROCESSING_FIELDS`) that repeats the release's
            test-time input.
        reference_preprocessing: the release's own test transform, in words.
        output_convention: what the release's network outputs, and how hpelib maps it.
        published: published results, ``{test set: {metric: value}}`` (degrees).
    """

    name: str
    title: str
    url: str
    architecture: str
    preprocessing: Mapping[str, Any]
    reference_preprocessing: str
    output_convention: str
    published: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


class ResizeCenterCrop:
    """A crop rule (:data:`hpelib.data.datasets.base.CropRule`) for models tested with
    torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` after a dataset's own crop, as
    6DRepNet's and 6DRepNet360's test scripts do: the ``base`` rule's box, then its central
    square of side ``min(width, height) * crop / resize`` (what ``Resize`` of the shorter side
    to ``resize`` followed by a centred ``crop`` keeps). The loaders resize that square to the
    input size, which is ``crop``. Equal to the reference's pixels up to the rounding of its
    two integer resizes (under a pixel of the original image).

    In a dataset spec: ``crop_rule: {class_path: hpelib.weights.ResizeCenterCrop,
    init_args: {base: 6drepnet}}``.

    Args:
        base: a crop rule name of :data:`hpelib.data.datasets.base.CROP_RULES`
            (``"6drepnet"``: AFLW2000's reference crop; ``"full"``: the whole image, as for
            FSA-Net's pre-cropped BIWI).
        resize: ``Resize`` size of the reference transform.
        crop: ``CenterCrop`` size of the reference transform.
    """

    def __init__(self, base: str = "6drepnet", resize: int = 256, crop: int = 224) -> None:
        from hpelib.data.datasets.base import get_crop_rule

        if not 0 < crop <= resize:
            raise ValueError(
                f"ResizeCenterCrop needs 0 < crop <= resize, got crop={crop}, resize={resize}"
            )
        self.base, self.resize, self.crop = base, int(resize), int(crop)
        self._rule = get_crop_rule(base)

    def __call__(
        self, box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
    ) -> np.ndarray:
        """Face box ``(4,)`` -> crop box ``(4,)`` (x0, y0, x1, y1, image pixels)."""
        crop = np.asarray(self._rule(box, image_wh, rng), dtype=np.float64)
        if np.all(np.isfinite(crop)):
            crop = np.trunc(crop)  # the reference cuts its crop at int() (PIL) first
        x0, y0, x1, y1 = (float(v) for v in crop)
        half = 0.5 * min(x1 - x0, y1 - y0) * self.crop / self.resize
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float64)

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(base={self.base!r}, resize={self.resize}, crop={self.crop})"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def release_state_dict(
    path: str | os.PathLike[str], trust_checkpoint: bool | None = None
) -> dict[str, Tensor]:
    """The weights of a released ``.pth``: a state dict, or one under ``model_state_dict``
    / ``state_dict`` (training snapshots), with any ``module.`` prefix (DataParallel) removed.
    Read with :func:`hpelib.checkpoint_io.read_checkpoint` (no code runs from the file).

    Raises:
        ConversionError: the file holds no state dict of tensors.
    """
    ckpt = read_checkpoint(path, what="released weights", trust_checkpoint=trust_checkpoint)
    if isinstance(ckpt, Mapping):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(ckpt.get(key), Mapping):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, Mapping) or not ckpt:
        raise ConversionError(
            f"released weights {str(path)!r} hold no state dict (got {type(ckpt).__name__})"
        )
    weights = {str(k).removeprefix("module."): v for k, v in ckpt.items() if isinstance(v, Tensor)}
    if not weights:
        raise ConversionError(f"released weights {str(path)!r} hold no tensors")
    return weights


def load_converted_weights(
    module: torch.nn.Module, weights: Mapping[str, Tensor], source: str
) -> None:
    """``module.load_state_dict(weights)`` strictly, with a :class:`ConversionError` naming
    ``source`` and the first keys that differ (another release or architecture)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(
        f"{k}: {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(weights) & set(expected)
        if weights[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = [
            f"{what} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        raise ConversionError(f"{source} does not fit the architecture: " + "; ".join(parts))
    module.load_state_dict(weights, strict=True)


def write_converted_checkpoint(
    module: Any,
    release: Release,
    output: str | os.PathLike[str],
    source: str | os.PathLike[str],
    form: str,
) -> Path:
    """Write ``module`` (an :class:`~hpelib.methods.HPEModule` holding the converted
    weights) as an hpelib checkpoint at ``output``, atomically, with ``release``'s
    preprocessing record and the provenance record (:data:`CONVERTED_FROM_KEY`).

    Raises:
        ConversionError: ``output`` is the released file itself (it is never overwritten) or
            a folder.
    """
    import lightning

    output, source = Path(output), Path(source)
    if output.is_dir():
        raise ConversionError(f"output {str(output)!r} is a folder; give a file name (model.ckpt)")
    if output.exists() and os.path.samefile(output, source):
        raise ConversionError(
            f"output {str(output)!r} is the released file itself; give another name"
        )
    record = {key: release.preprocessing.get(key) for key in PREPROCESSING_FIELDS}
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "hparams_name": "kwargs",
        "hyper_parameters": dict(module.hparams),
        "hpelib_class_path": qualified_name(type(module)),
        PREPROCESSING_KEY: record,
        CONVERTED_FROM_KEY: {
            "release": release.name,
            "title": release.title,
            "url": release.url,
            "file": source.name,
            "sha256": _sha256(source),
            "form": form,
            "architecture": release.architecture,
            "reference_preprocessing": release.reference_preprocessing,
            "output_convention": release.output_convention,
        },
    }
    atomic_torch_save(checkpoint, output)
    return output
