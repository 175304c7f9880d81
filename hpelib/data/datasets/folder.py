"""``ImageFolderDataset``: the images of a folder, without labels, for ``hpelib predict``.

Each item is the WHOLE image resized to ``image_size``, exactly the crop that
``hpelib.load(ckpt).predict(path)`` makes when it is given no boxes (already-cropped faces),
so ``hpelib predict`` on a folder and the Python predictor give the same poses. A config
names it as a dataset spec::

    data:
      predict: {name: folder, root: /path/to/faces, image_size: 64}

The items carry no pose: ``rotation`` is a placeholder identity with ``has_rotation = False``
(see :mod:`hpelib.data.sample`), so the folder can be predicted but not trained or tested on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from hpelib.data.datasets.base import DatasetError, decode_image
from hpelib.data.datasets.registry import register_dataset
from hpelib.data.sample import mask_key
from hpelib.rotation import ImageWarp

__all__ = ["FOLDER_IMAGE_SUFFIXES", "ImageFolderDataset", "list_image_files", "whole_image_crop"]

#: Image file suffixes the folder dataset reads (those of :func:`hpelib.load`'s predictor).
FOLDER_IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_image_files(
    root: Path, suffixes: Sequence[str] = FOLDER_IMAGE_SUFFIXES, recursive: bool = False
) -> list[Path]:
    """Sorted image files of ``root`` (sub-folders too when ``recursive``). Hidden files are
    left out: ``._name.jpg`` files that macOS leaves on shared drives are not images."""
    wanted = {s.lower() for s in suffixes}
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p for p in found
        if p.suffix.lower() in wanted and not p.name.startswith(".") and not p.is_dir()
    )  # fmt: skip


def whole_image_crop(image: Tensor, size: int) -> Tensor:
    """``(3, H, W)`` float image in [0, 1] -> ``(3, size, size)``: the whole image resized as
    :meth:`hpelib.predict.Predictor.preprocess` does with no boxes (the box through the
    corner pixel centres, bilinear warp)."""
    h, w = image.shape[-2:]
    box = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]])
    warp = ImageWarp.crop_resize(box, size)
    return kornia.geometry.transform.warp_affine(
        image[None], warp.affine, (size, size), align_corners=True
    )[0]


@register_dataset("folder", "image_folder")
class ImageFolderDataset(Dataset):
    """Unlabelled images of a folder (prediction only).

    Args:
        root: the folder.
        image_size: side of the network input; must be the training crop size of the
            checkpoint that predicts.
        recursive: also read the images in sub-folders.
        suffixes: file suffixes taken as images (case-insensitive).

    Items: ``image`` ``(3, S, S)`` float32 in [0, 1] (the predictor's crop, not rounded to
    uint8, so both paths agree; the datamodule accepts float images), ``rotation`` ``(3, 3)``
    identity placeholder with ``has_rotation = False``, ``index`` ``()`` int64.

    Raises:
        DatasetError: the folder does not exist or holds no image (naming the folder), or an
            image cannot be decoded (naming the file, when the item is read).
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int,
        recursive: bool = False,
        suffixes: Sequence[str] = FOLDER_IMAGE_SUFFIXES,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"folder {self.root}: image_size must be a positive int, got {image_size!r}")
        self.image_size = int(image_size)
        if not self.root.is_dir():
            raise DatasetError(f"folder: {self.root} does not exist or is not a folder")
        self.paths = list_image_files(self.root, suffixes, recursive)
        if not self.paths:
            where = " or its sub-folders" if recursive else ""
            raise DatasetError(
                f"folder: no image files ({', '.join(suffixes)}) in {self.root}{where}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, i: int) -> Path:
        """Path of item ``i``'s image file."""
        return self.paths[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for folder {self.root} of {len(self)} images")
        pil = decode_image(self.paths[i])  # DatasetError naming the file when corrupt
        image = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
        return {
            "image": whole_image_crop(image.float() / 255.0, self.image_size).contiguous(),
            "rotation": torch.eye(3),
            mask_key("rotation"): False,
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def __repr__(self) -> str:
        return f"ImageFolderDataset(n={len(self)}, root={self.root}, image_size={self.image_size})"
