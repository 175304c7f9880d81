"""Expand a landmark-bearing dataset with out-of-plane views, on the fly or once to disk.

:class:`OutOfPlaneViews` wraps any dataset whose items carry ``landmarks_3d`` (AFLW2000,
300W-LP, a table with depth columns, ...). Item ``i`` is view ``i % m`` of source item
``i // m`` (``m = views_per_image + include_source``); view 0 is the source itself when
``include_source`` (rendered through the same path with a zero increment, so every item has
the same keys and box rule). The new poses come from a :class:`~.views.PoseIncrement` and a
generator seeded by ``(seed, epoch, source item, view)``: reproducible, different each epoch
when ``resample_each_epoch`` (the datamodule calls :meth:`set_epoch`).

To expand once to disk, write the wrapper with
:func:`hpelib.data.synthetic.write_table_dataset` and read it back with the table loader.

In a config (split the source first, so that no face's views land in both parts)::

    train:
      class_path: hpelib.data.synthesis.OutOfPlaneViews
      init_args:
        dataset: {name: aflw2000, root: /data/AFLW2000, image_size: 64, box_source: pt3d_68}
        views_per_image: 4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from hpelib.data.synthesis.mesh import MeshError
from hpelib.data.synthesis.views import (
    IncrementMode,
    PoseIncrement,
    SynthesisError,
    synthesize_view,
)

__all__ = ["OutOfPlaneViews"]


class OutOfPlaneViews(Dataset):
    """A dataset expanded by out-of-plane synthesis (module docstring).

    Args:
        dataset: the source dataset, or a spec the datamodule understands (``{"name": ...,
            "root": ...}`` or ``{"class_path": ..., "init_args": ...}``).
        views_per_image: new poses per source item.
        include_source: also yield each source item (as view 0).
        mode: ``"towards_profile"`` (the paper, 300W-LP) or ``"uniform"``
            (:class:`~.views.PoseIncrement`).
        max_yaw_deg: largest |yaw| of a new view (300W-LP: about 90).
        pitch_jitter_deg: pitch change of a new view, uniform in ``+-`` this.
        seed: seed of the pose draws.
        resample_each_epoch: draw new poses every epoch (:meth:`set_epoch`); ``False`` keeps
            the same views every epoch (an evaluation set, a dataset written to disk).
    """

    def __init__(
        self,
        dataset: Dataset | Mapping[str, Any],
        views_per_image: int = 4,
        include_source: bool = True,
        mode: IncrementMode = "towards_profile",
        max_yaw_deg: float = 90.0,
        pitch_jitter_deg: float = 10.0,
        seed: int = 0,
        resample_each_epoch: bool = True,
    ) -> None:
        from hpelib.data.datamodule import build_dataset_from_spec

        if views_per_image < 0 or (views_per_image == 0 and not include_source):
            raise ValueError(
                f"OutOfPlaneViews needs views_per_image >= 1 (or 0 with include_source), got "
                f"{views_per_image}"
            )
        self.dataset = build_dataset_from_spec(dataset)
        self.views_per_image = int(views_per_image)
        self.include_source = bool(include_source)
        self.increment = PoseIncrement(mode, float(max_yaw_deg), float(pitch_jitter_deg))
        self.seed = int(seed)
        self.resample_each_epoch = bool(resample_each_epoch)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        inner = getattr(self.dataset, "name", type(self.dataset).__name__)
        self.name = f"{inner}_outofplane"
        # Fail at construction (config time), not in a DataLoader worker, on a dataset
        # without 3D landmarks (e.g. 300W-LP, whose .mat files carry no pt3d_68).
        if len(self.dataset) == 0:  # type: ignore[arg-type]
            raise SynthesisError(f"OutOfPlaneViews: the source dataset {inner} is empty")
        first = self.dataset[0]
        if not isinstance(first, dict) or "landmarks_3d" not in first:
            keys = sorted(first) if isinstance(first, dict) else type(first).__name__
            raise SynthesisError(
                f"OutOfPlaneViews: items of {inner} have no 'landmarks_3d' (keys: {keys}); "
                "out-of-plane synthesis needs 3D landmarks (AFLW2000's pt3d_68, a table with "
                "lmz_* depth columns)"
            )

    @property
    def views(self) -> int:
        """Items per source item."""
        return self.views_per_image + int(self.include_source)

    def __len__(self) -> int:
        return len(self.dataset) * self.views  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's poses (shared with DataLoader workers, as the file loaders)."""
        self._epoch.fill_(int(epoch))

    def source_of(self, index: int) -> tuple[int, int]:
        """``(source item, view)`` of item ``index``."""
        return index // self.views, index % self.views

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} of length {len(self)}")
        source, view = self.source_of(index)
        sample = self.dataset[source]
        try:
            if self.include_source and view == 0:
                out = synthesize_view(sample)
            else:
                epoch = int(self._epoch) if self.resample_each_epoch else 0
                rng = np.random.default_rng([self.seed, epoch, source, view])
                rotation = torch.as_tensor(sample["rotation"]).float()
                out = synthesize_view(sample, target=self.increment.sample_target(rotation, rng))
        except (SynthesisError, MeshError) as err:
            raise SynthesisError(f"{self.name}: source item {source}: {err}") from None
        out["index"] = torch.tensor(index, dtype=torch.int64)  # this dataset's index
        return out

    def identity_of(self, indices: Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """``(N,)`` int64 identity of items ``indices``: that of their source item (``-1``
        unknown), looked up without rendering when the source dataset can."""
        from hpelib.data.pairs import dataset_identities

        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        src = idx // self.views
        inner = getattr(self.dataset, "identity_of", None)
        if callable(inner):
            return torch.as_tensor(inner(src), dtype=torch.int64)
        return dataset_identities(self.dataset)[src]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, dataset={type(self.dataset).__name__}, "
            f"views_per_image={self.views_per_image}, increment={self.increment})"
        )
