"""Lightning plugins of hpelib.

:class:`AtomicCheckpointIO` is installed by every :class:`~hpelib.methods.HPEModule` at
``setup`` (when the trainer uses Lightning's default checkpoint IO); pass it yourself with
``Trainer(plugins=[AtomicCheckpointIO()])`` for other modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from hpelib.checkpoint_io import (
    SAFE_GLOBALS,
    atomic_torch_save,
    read_checkpoint,
    trust_checkpoint_enabled,
)

__all__ = ["AtomicCheckpointIO"]


def _is_remote(path: Any) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, with atomic local writes and safe reads.

    * ``save_checkpoint``: :func:`atomic_torch_save` for local paths (remote URLs keep
      Lightning's writer);
    * ``load_checkpoint`` (resuming, ``--ckpt_path``): :func:`read_checkpoint`;
      ``weights_only=False`` from the trainer counts as trusting the file.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if _is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        # An explicit weights_only from the trainer wins over the trusted_checkpoints() block.
        trust = None if weights_only is None else not weights_only
        if _is_remote(path):
            safe = not trust_checkpoint_enabled(trust)
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return super().load_checkpoint(path, map_location, weights_only=safe)
        return read_checkpoint(
            str(path).removeprefix("file://"), trust_checkpoint=trust, map_location=map_location
        )
