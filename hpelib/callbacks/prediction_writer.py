"""``PredictionWriter``: the predictions of ``hpelib predict`` (``trainer.predict``) as one CSV.

One row per predicted image, in the order of the predict dataset:

=========================  ================================================================
column                     meaning
=========================  ================================================================
``index``                  position of the item in the predict dataset
``file``                   its image path when the dataset knows it (``image_path(i)``:
                           the file-based datasets, ``ImageFolderDataset``), else the index
``<angle>_deg``            Euler angles in degrees, in the method's ``euler_convention``,
                           named by :func:`hpelib.rotation.euler_names` (``pitch_deg``,
                           ``yaw_deg``, ``roll_deg`` for ``"300wlp"``), as
                           :meth:`hpelib.predict.PosePrediction.to_dataframe` names them
``r00 .. r22``             the rotation matrix (hpelib's internal convention), row-major
``<output>[_i[_j]]``       every other tensor of ``predict_step``'s output, flattened:
                           ``rotation_uncertainty``, ``rotation_cov_0_0 .. rotation_cov_2_2``
                           (OpNet), ``rotation_raw_0 .. _5`` (6D), ...
``dataloader``             which predict dataloader, only when there are several
=========================  ================================================================

Under DDP every rank appends its batches to its own part file beside the output
(``<output>.rank<r>.part``) and rank 0 merges them at the end. Why not gather to rank 0: the
part files stream to disk (memory stays flat however many images), need no collective on
ranks holding different numbers of rows, and an interrupted run keeps the rows written so
far. The merge sorts by ``index`` and drops the duplicates that Lightning's
``DistributedSampler`` pads the last batches with. The ranks must share the output folder
(one machine, or a shared filesystem).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from hpelib.checkpoint_io import atomic_write
from hpelib.rotation import euler_names

__all__ = ["PredictionWriter", "prediction_columns"]

#: ``predict_step`` keys written as their own columns (not as extra outputs).
_OWN_KEYS = ("rotation", "euler_deg", "index")
#: File name of the default output, in the trainer's ``default_root_dir``.
DEFAULT_NAME = "predictions.csv"


def _flat_columns(name: str, value: Tensor) -> dict[str, np.ndarray]:
    """``(B, *shape)`` tensor -> ``{name or name_i_j...: (B,) array}`` (row-major)."""
    array = value.detach().float().cpu().numpy()
    if array.ndim == 1:
        return {name: array}
    flat = array.reshape(array.shape[0], -1)
    indices = np.ndindex(*array.shape[1:])
    return {f"{name}_{'_'.join(map(str, idx))}": flat[:, k] for k, idx in enumerate(indices)}


def prediction_columns(
    prediction: dict[str, Any], convention: str, extra_outputs: bool | Sequence[str] = True
) -> dict[str, np.ndarray]:
    """One batch of ``predict_step`` output -> the CSV's pose columns (see the module
    docstring), ``(B,)`` arrays: angles ``<name>_deg`` from ``euler_deg`` ``(B, 3)``,
    ``r00 .. r22`` from ``rotation`` ``(B, 3, 3)``, then the chosen extra outputs (``True``:
    every other tensor with the batch as first dimension; ``False``: none; or those names)."""
    rotation = prediction["rotation"].detach().float().cpu().numpy().reshape(-1, 9)
    euler = prediction["euler_deg"].detach().float().cpu().numpy().reshape(-1, 3)
    columns: dict[str, np.ndarray] = {
        f"{n}_deg": euler[:, i] for i, n in enumerate(euler_names(convention))
    }
    columns |= {f"r{k // 3}{k % 3}": rotation[:, k] for k in range(9)}
    batch = rotation.shape[0]
    if extra_outputs is False:
        return columns
    if extra_outputs is True:
        names = [k for k in prediction if k not in _OWN_KEYS]
    else:
        names = list(extra_outputs)
        missing = [k for k in names if k not in prediction]
        if missing:
            raise KeyError(
                f"PredictionWriter(extra_outputs={names}): predict_step returned no "
                f"{missing}; it returns {sorted(prediction)}"
            )
    for name in names:
        value = prediction[name]
        # Per-batch scalars (a loss) or non-tensors have no per-image value.
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
            columns |= _flat_columns(name, value)
    return columns


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (resolved paths, or the same inode)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class PredictionWriter(BasePredictionWriter):
    """Write every prediction of ``trainer.predict`` to one CSV (columns: module docstring).

    ``hpelib predict`` adds one with the defaults when the config has no prediction writer
    of its own.

    Args:
        output: CSV path. ``None``: ``predictions.csv`` in the trainer's
            ``default_root_dir``, or ``predictions_1.csv``, ``predictions_2.csv``, ... when
            that file exists, so an earlier run's file is kept.
        overwrite: replace an existing ``output`` file; without it an existing ``output`` is an
            error before anything is predicted. An input image of the predict dataset is
            never overwritten.
        extra_outputs: the method's outputs beyond the rotation to write: ``True`` all of
            them, ``False`` none, or a list of ``predict_step`` keys.
    """

    def __init__(
        self,
        output: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        extra_outputs: bool | list[str] = True,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output = None if output is None else Path(output)
        self.overwrite = overwrite
        self.extra_outputs = extra_outputs
        #: The CSV written by the last ``trainer.predict`` (set on every rank).
        self.path: Path | None = None
        self._part: Path | None = None
        self._rows_written = 0
        self._loaders = 1

    # ------------------------------------------------------------------ output path
    def _default_output(self, trainer: Trainer) -> Path:
        folder = Path(trainer.default_root_dir)
        stem, suffix = Path(DEFAULT_NAME).stem, Path(DEFAULT_NAME).suffix
        path, n = folder / DEFAULT_NAME, 0
        while path.exists():
            n += 1
            path = folder / f"{stem}_{n}{suffix}"
        return path

    def _input_files(self, trainer: Trainer) -> list[Path]:
        paths = []
        for loader in self._dataloaders(trainer):
            dataset = getattr(loader, "dataset", None)
            if callable(getattr(dataset, "image_path", None)):
                paths += [Path(dataset.image_path(i)) for i in range(len(dataset))]
        return paths

    def _output_problem(self, trainer: Trainer, path: Path) -> str | None:
        """Why the CSV may not be written to ``path`` (checked before anything is
        predicted): it would replace an input image, or an existing file without
        ``overwrite``; ``None`` when it may."""
        if path.is_dir():
            return f"PredictionWriter: output {str(path)!r} is a folder, not a file name"
        clash = next((p for p in self._input_files(trainer) if _same_file(p, path)), None)
        if clash is not None:
            return (
                f"PredictionWriter: output {str(path)!r} is the input image {str(clash)!r} of "
                "the predict dataset; writing it would destroy the image. Choose another output."
            )
        if path.exists() and not self.overwrite:
            return (
                f"PredictionWriter: output {str(path)!r} exists; pass overwrite: true to replace "
                "it, or another output (output: null picks a free predictions_N.csv)"
            )
        return None

    @staticmethod
    def _dataloaders(trainer: Trainer) -> list[Any]:
        loaders = trainer.predict_dataloaders
        if loaders is None:
            return []
        return list(loaders) if isinstance(loaders, Sequence) else [loaders]

    # ------------------------------------------------------------------ hooks
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        choice: tuple[str, str | None] = ("", None)
        if trainer.is_global_zero:
            path = self.output if self.output is not None else self._default_output(trainer)
            choice = (str(path), self._output_problem(trainer, path))
        # Every rank writes beside the same output, rank 0's choice (a free default name),
        # and every rank stops on its verdict (one rank raising alone would hang the others).
        path_str, problem = trainer.strategy.broadcast(choice, src=0)
        if problem is not None:
            raise ValueError(problem)
        self.path = Path(path_str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._part = self.path.with_name(f"{self.path.name}.rank{trainer.global_rank}.part")
        self._part.unlink(missing_ok=True)  # ours, left by an interrupted run
        self._rows_written = 0
        self._loaders = max(1, len(self._dataloaders(trainer)))

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        convention = str(getattr(pl_module, "euler_convention", "300wlp"))
        columns = prediction_columns(prediction, convention, self.extra_outputs)
        n = len(next(iter(columns.values())))
        index = self._indices(prediction, batch_indices, n)
        dataset = getattr(self._dataloaders(trainer)[dataloader_idx], "dataset", None)
        frame = pd.DataFrame({"index": index, "file": self._files(dataset, index), **columns})
        if self._loaders > 1:
            frame.insert(0, "dataloader", dataloader_idx)
        assert self._part is not None
        frame.to_csv(self._part, mode="a", header=self._rows_written == 0, index=False)
        self._rows_written += n

    def _indices(
        self, prediction: dict[str, Any], batch_indices: Sequence[int] | None, n: int
    ) -> list[int]:
        """Dataset positions of the batch: Lightning's sampler indices (right under DDP),
        else the items' own ``index``, else the running count."""
        if batch_indices is not None and len(batch_indices) == n:
            return [int(i) for i in batch_indices]
        own = prediction.get("index")
        if isinstance(own, Tensor) and own.numel() == n:
            return [int(i) for i in own.reshape(-1).tolist()]
        return list(range(self._rows_written, self._rows_written + n))

    @staticmethod
    def _files(dataset: Any, index: list[int]) -> list[Any]:
        if callable(getattr(dataset, "image_path", None)):
            return [str(dataset.image_path(i)) for i in index]
        return list(index)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier("hpelib_prediction_writer")
        if trainer.is_global_zero:
            self._merge(trainer.world_size)
        trainer.strategy.barrier("hpelib_prediction_writer_merged")

    def _merge(self, world_size: int) -> None:
        """Rank 0: the ranks' part files -> the output CSV (atomically), parts removed."""
        assert self.path is not None
        parts = [self.path.with_name(f"{self.path.name}.rank{r}.part") for r in range(world_size)]
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            # A rank without a batch writes nothing; under DDP every rank has one, so a part
            # file rank 0 cannot see means the output folder is not shared by the machines.
            rank_zero_info(f"PredictionWriter: no rows from {', '.join(missing)}")
        frames = [pd.read_csv(p) for p in parts if p.is_file() and p.stat().st_size > 0]
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        keys = [k for k in ("dataloader", "index") if k in table.columns]
        if keys:
            # DistributedSampler pads the ranks to equal length with repeated items.
            table = table.drop_duplicates(keys).sort_values(keys, kind="stable")
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        atomic_write(self.path, buffer.getvalue().encode("utf-8"))
        for part in parts:
            part.unlink(missing_ok=True)
        rank_zero_info(f"hpelib predict: wrote {len(table)} predictions to {self.path}")
