"""Script behind tests/distributed/test_lechpe_ddp.py: a 2-process CPU DDP stage-2 fit of
LEC-HPE, each rank saving, per training step, its local soft cluster frequencies and the
frequencies its target distribution used, to ``OUT/lechpe_freq_rank<r>.pt``.

Run as ``python -m tests.distributed._lechpe_ddp OUT`` (Lightning's launcher starts rank 1
by re-running the same command line).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic import SyntheticHeads
from hpelib.methods import LECHPE


class RecordingLECHPE(LECHPE):
    """LECHPE recording ``(local f, f used)`` of every training step."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.records: list[tuple[Tensor, Tensor]] = []

    def _global_frequencies(self, q: Tensor) -> Tensor:
        used = super()._global_frequencies(q)
        if self.training:
            self.records.append((q.detach().sum(0).cpu(), used.detach().cpu()))
        return used


def main(out: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    train = SyntheticHeads(32, 32, preset="frontal", seed=0, num_threads=1, occlusion_prob=0.5)
    module = RecordingLECHPE(
        backbone="test_resnet", embedding_dim=8, num_clusters=3, stage=2,
        optimizer=lambda p: torch.optim.SGD(p, lr=1e-3),
    )  # fmt: skip
    # The same seeded centroids on both ranks (stage 2 from the first step, no k-means).
    module.init_centroids(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(module, HPEDataModule(train=train, batch_size=8))
    torch.save(
        {"rank": trainer.global_rank, "world_size": trainer.world_size, "records": module.records},
        out / f"lechpe_freq_rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
