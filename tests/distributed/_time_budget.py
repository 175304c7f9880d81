"""Script behind tests/distributed/test_time_budget_ddp.py: a 2-process CPU DDP fit with
:class:`hpelib.callbacks.TimeBudgetLR` whose clocks disagree (rank r's runs 1 + r seconds
per step), each rank saving the learning rates it stepped with to ``OUT/rank<r>.json``.

Run as ``python -m tests.distributed._time_budget OUT``; Lightning's launcher starts rank 1
by re-running the same command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from hpelib.callbacks import TimeBudgetLR


class SGDModel(BoringModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.layer.parameters(), lr=0.1)


class SkewedClock(L.Callback):
    """A fake clock that rank r advances by ``1 + r`` seconds after every step."""

    def __init__(self) -> None:
        self.now, self.rate = 0.0, 1.0

    def __call__(self) -> float:
        return self.now

    def setup(self, trainer, pl_module, stage) -> None:
        self.rate = 1.0 + trainer.global_rank

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.now += self.rate


class RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def main(out: Path) -> None:
    clock, record = SkewedClock(), RecordLR()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=100, limit_val_batches=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=out,
        callbacks=[clock, TimeBudgetLR(budget=10, clock=clock), record],
    )  # fmt: skip
    trainer.fit(SGDModel())
    path = out / f"rank{trainer.global_rank}.json"
    path.write_text(json.dumps({"lrs": record.lrs, "steps": trainer.global_step}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
