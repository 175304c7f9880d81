"""Train-time crop jitter is redrawn every epoch, reproducibly from (seed, epoch), through the
datamodule's train loader: in the main process, in (persistent) DataLoader workers, on every
DDP rank alike and after a resume from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler

from hpelib.data.datamodule import EpochDataLoader, HPEDataModule, set_dataset_epoch
from hpelib.data.datasets import AFLW2000
from tests.data.writers import pt2d, write_3ddfa

N = 12  # items in the written AFLW2000-format folder


@pytest.fixture
def aflw_root(tmp_path: Path) -> Path:
    """12 items in AFLW2000's true file format (.jpg + .mat with Pose_Para, pt2d, roi)."""
    root = tmp_path / "aflw"
    for i in range(N):
        write_3ddfa(
            root, f"image{i:05d}", (0.1, 0.02 * i, -0.05),
            pt2d=pt2d(14 + i % 3, 16 + i % 4, 46 - i % 2, 50 - i % 3),
        )  # fmt: skip
    return root


def _dataset(root: Path, seed: int = 0) -> AFLW2000:
    return AFLW2000(root, image_size=16, train=True, seed=seed, cache=False)


def _module(root: Path, num_workers: int = 0, seed: int = 0, batch_size: int = 4) -> HPEDataModule:
    dm = HPEDataModule(
        train=_dataset(root, seed), batch_size=batch_size, num_workers=num_workers,
        normalize="none",
    )  # fmt: skip
    dm.setup("fit")
    return dm


def _boxes(loader) -> dict[int, tuple[float, ...]]:
    """{item index: its face box in crop pixels}: the box moves when the crop moves."""
    out = {}
    for batch in loader:
        for i, box in zip(batch["index"].tolist(), batch["box"], strict=True):
            out[i] = tuple(box.tolist())
    return out


def _expected(root: Path, epoch: int, seed: int = 0) -> dict[int, tuple[float, ...]]:
    ds = _dataset(root, seed)
    ds.set_epoch(epoch)
    return {i: tuple(ds[i]["box"].tolist()) for i in range(len(ds))}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_redraws_crop_jitter_every_epoch(aflw_root: Path, num_workers: int) -> None:
    dm = _module(aflw_root, num_workers)
    loader = dm.train_dataloader()
    assert isinstance(loader, EpochDataLoader)
    if num_workers:
        assert loader.persistent_workers  # workers keep their dataset copy across epochs
    epochs = [_boxes(loader) for _ in range(3)]
    assert all(len(e) == N for e in epochs)
    # Every epoch draws a new crop for every item ...
    for a, b in zip(epochs, epochs[1:], strict=False):
        assert all(a[i] != b[i] for i in range(N))
    # ... and the crop is a function of (seed, epoch): the same as a fresh dataset's.
    for k, seen in enumerate(epochs):
        assert seen == _expected(aflw_root, k)
    # A second run with the same seed repeats it; another seed does not.
    assert _boxes(_module(aflw_root, num_workers).train_dataloader()) == epochs[0]
    other = _boxes(_module(aflw_root, num_workers, seed=1).train_dataloader())
    assert all(other[i] != epochs[0][i] for i in range(N))


def test_sampler_set_epoch_and_trainer_epoch_reach_the_dataset(aflw_root: Path) -> None:
    dm = _module(aflw_root)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(4)  # what Lightning does at each epoch start
    assert _boxes(loader) == _expected(aflw_root, 4)
    # With a trainer attached, its epoch (restored on resume) decides.
    dm.trainer = SimpleNamespace(current_epoch=6)
    loader.sampler.set_epoch(0)
    assert _boxes(loader) == _expected(aflw_root, 6)
    assert dm.train_dataset.epoch == 6


def test_ddp_ranks_use_the_same_epoch(aflw_root: Path) -> None:
    """Lightning re-creates the train loader with a DistributedSampler per rank: the class and
    the epoch mechanism survive, and both ranks crop with the same epoch."""
    dm = _module(aflw_root, batch_size=2)  # 6 items per rank, no incomplete batch dropped
    with _replace_dunder_methods(DataLoader, "dataset"):  # as Lightning requests loaders
        loader = dm.train_dataloader()
    expected = _expected(aflw_root, 3)
    seen: dict[int, tuple[float, ...]] = {}
    for rank in range(2):
        sampler = DistributedSampler(dm.train_dataset, num_replicas=2, rank=rank, seed=0)
        ddp_loader = _update_dataloader(loader, sampler)
        assert isinstance(ddp_loader, EpochDataLoader)
        sampler.set_epoch(3)
        part = _boxes(ddp_loader)
        assert part and not set(part) & set(seen)
        seen.update(part)
    assert seen == expected


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, dict[int, tuple[float, ...]]] = {}

    def training_step(self, batch, batch_idx):
        epoch = self.seen.setdefault(self.current_epoch, {})
        for i, box in zip(batch["index"].tolist(), batch["box"], strict=True):
            epoch[i] = tuple(box.tolist())
        return (self.w - 1).pow(2).sum() + 0 * batch["image"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, callbacks=()) -> L.Trainer:
    return L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
    )  # fmt: skip


def test_fit_with_workers_and_resume_follow_the_trainer_epoch(
    aflw_root: Path, tmp_path: Path
) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    full = _Recorder()
    _trainer(tmp_path / "a", [ckpt]).fit(full, _module(aflw_root, num_workers=2))
    assert sorted(full.seen) == [0, 1, 2]
    for k in range(3):
        assert full.seen[k] == _expected(aflw_root, k)  # workers saw the trainer's epoch
    # Resume after epoch 1: epoch 2's crops are the uninterrupted run's.
    resumed = _Recorder()
    _trainer(tmp_path / "b").fit(
        resumed, _module(aflw_root, num_workers=2), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
    )
    assert sorted(resumed.seen) == [2]
    assert resumed.seen[2] == full.seen[2]


def test_set_dataset_epoch_walks_wrappers(aflw_root: Path) -> None:
    a, b = _dataset(aflw_root), _dataset(aflw_root, seed=1)
    concat = torch.utils.data.ConcatDataset([a, torch.utils.data.Subset(b, [0, 1])])
    assert set_dataset_epoch(concat, 9) == 2
    assert a.epoch == b.epoch == 9
