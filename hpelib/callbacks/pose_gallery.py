"""A picture of test heads with their predicted and true axes, written on ``hpelib test``.

Metrics say how far off a model is on average; a picture says how: whether the errors are a
few heads turned around or all heads slightly off, and whether the model learnt anything at
all. :class:`PoseGallery` takes ``num_images`` heads spread evenly over each labelled test
set, runs the model on them and draws a grid (one row per test set) with
:func:`hpelib.viz.pose_gallery`: the true axes as wide pale bands, the predicted axes as thin
outlined lines, each head's geodesic error, and a legend naming the axis colours. The PNG
goes into the run folder of the test (``trainer.log_dir``, e.g.
``runs/sixd/logs/version_3/pose_gallery.png``), never over an existing file, and its path is
printed; a TensorBoard logger also gets it as an image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from hpelib.checkpoint_io import atomic_write
from hpelib.data.sample import mask_key
from hpelib.viz import GalleryRow, pose_gallery

__all__ = ["PoseGallery", "evenly_spaced"]


def evenly_spaced(total: int | None, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (first and last included);
    ``range(count)`` when ``total`` is unknown (an iterable dataset)."""
    if total is None:
        return list(range(count))
    if total <= count:
        return list(range(total))
    return sorted({round(float(i)) for i in np.linspace(0, total - 1, count)})


class _Picked:
    """The heads picked from one test set, batch by batch: images in ``[0, 1]``
    (``(k, 3, H, W)`` chunks), predicted and true rotations (``(k, 3, 3)``), head centres
    (``(k, 2)``; ``None`` once a batch has none)."""

    def __init__(self, name: str, total: int | None, wanted: list[int]) -> None:
        self.name, self.total, self.wanted = name, total, wanted
        self.seen = 0  # items of this set already passed
        self.images: list[Tensor] = []
        self.predicted: list[Tensor] = []
        self.true: list[Tensor] = []
        self.centers: list[Tensor] | None = []

    def row(self) -> GalleryRow:
        images = torch.cat(self.images)
        n = images.shape[0]
        of = (
            f"{n} of {self.total} test heads, evenly spaced"
            if self.total
            else f"the first {n} test heads"
        )
        return GalleryRow(
            label=f"{self.name}: {of}",
            images=images,
            predicted=torch.cat(self.predicted),
            true=torch.cat(self.true),
            centers=torch.cat(self.centers) if self.centers else None,
        )


class PoseGallery(Callback):
    """On ``trainer.test`` (``hpelib test``), draw ``num_images`` heads of every labelled test
    set with their predicted and true axes and save the grid as a PNG in the run folder.

    Args:
        num_images: heads per test set, spread evenly over the set (at most 64).
        filename: name of the PNG (a plain file name: it is written into the run folder,
            ``trainer.log_dir``, or ``trainer.default_root_dir`` without a logger). An
            existing file of that name is never replaced: ``pose_gallery-v1.png`` and so on.
        cell_size: side of each drawn head in pixels (the images are resized to it).

    Attributes:
        path: where the last picture was written (``None`` before).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: hpelib.callbacks.PoseGallery
              init_args: {num_images: 8}
    """

    def __init__(
        self, num_images: int = 8, filename: str = "pose_gallery.png", cell_size: int = 160
    ) -> None:
        if not 1 <= num_images <= 64:
            raise ValueError(f"PoseGallery num_images={num_images} must be in 1..64")
        if Path(filename).name != filename or not filename.lower().endswith(".png"):
            raise ValueError(
                f"PoseGallery filename={filename!r} must be a plain file name ending in .png "
                "(it is written into the run folder)"
            )
        if cell_size < 32:
            raise ValueError(f"PoseGallery cell_size={cell_size} must be at least 32 pixels")
        self.num_images, self.filename, self.cell_size = num_images, filename, cell_size
        self.path: Path | None = None
        self._sets: list[_Picked] = []

    # ---------------------------------------------------------------- hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.test_dataloaders
        loaders = list(loaders) if isinstance(loaders, Sequence) else [loaders]
        names = list(getattr(trainer.datamodule, "test_names", None) or [])
        if len(names) != len(loaders):
            names = [f"set{i}" for i in range(len(loaders))] if len(loaders) > 1 else ["test"]
        self._sets = []
        for name, loader in zip(names, loaders, strict=True):
            total = _length(getattr(loader, "dataset", None))
            self._sets.append(_Picked(name, total, evenly_spaced(total, self.num_images)))

    @torch.no_grad()
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not (trainer.is_global_zero and isinstance(batch, dict) and "image" in batch):
            return
        picked = self._sets[dataloader_idx]
        n = int(batch["image"].shape[0])
        start, picked.seen = picked.seen, picked.seen + n
        positions = [i - start for i in picked.wanted if start <= i < start + n]
        if "rotation" in batch and mask_key("rotation") in batch:
            labelled = batch[mask_key("rotation")].bool().tolist()
            positions = [p for p in positions if labelled[p]]  # no truth to draw for the others
        if not positions or "rotation" not in batch:
            return
        index = torch.tensor(positions, device=batch["image"].device)
        # test_step returns nothing, so the picked heads are run again (a handful of images).
        predicted = pl_module(batch["image"][index])["rotation"]
        picked.images.append(_displayable(batch["image"][index], trainer).cpu())
        picked.predicted.append(predicted.float().cpu())
        picked.true.append(batch["rotation"][index].float().cpu())
        if picked.centers is not None and "head_center" in batch:
            picked.centers.append(batch["head_center"][index].float().cpu())
        else:
            picked.centers = None  # one head without a centre: draw all from image centres

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = [s.row() for s in self._sets if s.images]
        if not rows:
            rank_zero_warn("PoseGallery: no labelled test heads, no picture written")
            return
        title = f"hpelib test: {type(pl_module).__name__}"
        if trainer.ckpt_path:
            title += f", {_shown_path(trainer.ckpt_path)}"
        picture = pose_gallery(rows, cell_size=self.cell_size, title=title)
        self.path = _free_path(_run_folder(trainer) / self.filename)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        atomic_write(self.path, buffer.getbuffer())
        rank_zero_info(
            f"PoseGallery: test heads with predicted and true axes written to {self.path}"
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    "test/pose_gallery", np.asarray(picture), trainer.global_step, dataformats="HWC"
                )


def _shown_path(path: str | Path) -> str:
    """``path`` relative to the working folder where it lies inside it (the picture shows
    ``runs/sixd/checkpoints/last.ckpt``, not the user's home folder), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an iterable dataset (or none)
        return None


def _displayable(images: Tensor, trainer: L.Trainer) -> Tensor:
    """``(N, 3, H, W)`` in ``[0, 1]`` from the model's input: the datamodule's normalisation
    undone where it says what it was, otherwise each image stretched to ``[0, 1]``."""
    images = images.float()
    preprocessing = getattr(trainer.datamodule, "preprocessing", None)
    if callable(preprocessing):
        info = preprocessing()
        mean = torch.tensor(info["mean"], device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(info["std"], device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-6)


def _run_folder(trainer: L.Trainer) -> Path:
    """The test run's own folder: the first logger's version folder (a new one per run),
    else the trainer's root folder."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def _free_path(path: Path) -> Path:
    """``path``, or ``name-v1.png``, ``name-v2.png``, ... where ``path`` exists: whatever
    is already there (a user's file, an earlier picture) is left alone."""
    candidate, version = path, 0
    while candidate.exists() or candidate.is_symlink():
        version += 1
        candidate = path.with_name(f"{path.stem}-v{version}{path.suffix}")
    return candidate
