"""k-means centroid initialisation and stage switching: k-means itself, the cross-rank
gather, the callback on real embeddings inside a Trainer, and resuming from checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hpelib.callbacks import KMeansCentroidInit, StageSwitch, gather_embeddings, kmeans
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.lechpe import LECHPE
from tests.toy import AxisGlyphDataset


def test_kmeans_recovers_separated_blobs_deterministically():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([m + torch.randn(40, 2, generator=g) for m in means])
    centers, labels, inertia = kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    order = torch.cdist(means, centers).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(centers[order], means, atol=0.5, rtol=0)
    for j in range(3):  # Lloyd fixed point: each centre is the mean of its points
        torch.testing.assert_close(centers[j], x[labels == j].mean(0))
    again, _, _ = kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, centers)
    assert float(inertia) == pytest.approx(float(((x - centers[labels]) ** 2).sum()), rel=1e-5)
    with pytest.raises(ValueError, match="k <= N"):
        kmeans(x[:2], 3)


def test_kmeans_handles_duplicate_points():
    x = torch.zeros(10, 4)
    x[5:] = 1.0
    centers, labels, inertia = kmeans(x, 3)
    assert torch.isfinite(centers).all() and float(inertia) == 0.0


def test_gather_embeddings_uneven_ranks():
    """Two simulated ranks holding 3 and 5 embeddings: everyone gets all 8, in rank order."""
    rank0, rank1 = torch.randn(3, 4), torch.randn(5, 4)
    calls: list[tuple[int, ...]] = []

    def fake_all_gather(t: torch.Tensor) -> torch.Tensor:
        # What the other rank would contribute for the same call, padded like rank 0's.
        calls.append(tuple(t.shape))
        if t.ndim == 1:
            return torch.stack([t, torch.tensor([5])])
        return torch.stack([t, rank1[: t.shape[0]]])

    out = gather_embeddings(rank0, fake_all_gather, world_size=2)
    torch.testing.assert_close(out, torch.cat([rank0, rank1]))
    assert calls == [(1,), (5, 4)]
    assert gather_embeddings(rank0, fake_all_gather, world_size=1) is rank0


class _Recorder(L.Callback):
    """Runs after KMeansCentroidInit at the same hook: embeds the whole training set itself."""

    def __init__(self, dataset: AxisGlyphDataset) -> None:
        self.dataset = dataset
        self.embeddings: list[torch.Tensor] = []
        self.centroids: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if pl_module.centroids_initialized and not self.centroids:
            pl_module.eval()
            with torch.no_grad():
                images = self.dataset.images.float() / 255.0
                self.embeddings.append(pl_module.embed(images))
            pl_module.train()
            self.centroids.append(pl_module.centroids.detach().clone())


class _CountingInit(KMeansCentroidInit):
    calls = 0

    def initialize(self, trainer, pl_module):
        type(self).calls += 1
        return super().initialize(trainer, pl_module)


def _dm(dataset) -> HPEDataModule:
    return HPEDataModule(train=dataset, val=AxisGlyphDataset(16, 32, seed=5), batch_size=16, normalize="none")


def _trainer(tmp_path, epochs: int, callbacks: list, checkpointing: bool = True) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks,
        enable_checkpointing=checkpointing,
        limit_val_batches=1, num_sanity_val_steps=0,
    )


def test_callback_sets_centroids_from_real_embeddings(tmp_path):
    L.seed_everything(0)
    dataset = AxisGlyphDataset(64, 32, seed=0)  # 64 = 4 full batches: drop_last drops nothing
    module = LECHPE(backbone="test_resnet", num_clusters=4, stage=2)
    recorder = _Recorder(dataset)
    trainer = _trainer(tmp_path, 1, [KMeansCentroidInit(n_init=2), recorder], checkpointing=False)
    trainer.fit(module, _dm(dataset))
    emb, centroids = recorder.embeddings[0], recorder.centroids[0]
    assert emb.shape == (64, module.centroids.shape[1])
    # Every centroid is the mean of the real embeddings closest to it (a k-means solution
    # on exactly these embeddings), and no worse than a fresh k-means of them.
    labels = torch.cdist(emb, centroids).argmin(1)
    assert len(labels.unique()) == 4
    for j in range(4):
        torch.testing.assert_close(centroids[j], emb[labels == j].mean(0), atol=1e-4, rtol=1e-4)
    inertia = ((emb - centroids[labels]) ** 2).sum()
    _, _, reference = kmeans(emb, 4, n_init=5, generator=torch.Generator().manual_seed(3))
    assert float(inertia) <= 1.05 * float(reference)
    torch.testing.assert_close(module.target_centroids, centroids)


def test_stage_switch_and_kmeans_resume_from_checkpoints(tmp_path):
    L.seed_everything(0)
    dataset = AxisGlyphDataset(32, 32, seed=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, save_last=True)
    _CountingInit.calls = 0
    module = LECHPE(backbone="test_resnet", num_clusters=3)
    trainer = _trainer(tmp_path, 2, [StageSwitch(epochs=[1]), _CountingInit(n_init=1), ckpt])
    trainer.fit(module, _dm(dataset))
    assert module.stage == 2 and module.centroids_initialized and _CountingInit.calls == 1

    files = sorted((tmp_path / "ckpt").glob("epoch=*.ckpt"))
    assert [f.name.split("-")[0] for f in files] == ["epoch=0", "epoch=1"]
    first = LECHPE.load_from_checkpoint(files[0])
    assert first.stage == 1 and not first.centroids_initialized
    last = LECHPE.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert last.stage == 2 and last.centroids_initialized
    torch.testing.assert_close(last.centroids, module.centroids)

    # Resume at the end of stage 1: the switch and k-means happen once, in epoch 1.
    _CountingInit.calls = 0
    resumed = LECHPE(backbone="test_resnet", num_clusters=3)
    trainer = _trainer(tmp_path, 2, [StageSwitch(epochs=[1]), _CountingInit(n_init=1)], checkpointing=False)
    trainer.fit(resumed, _dm(dataset), ckpt_path=files[0])
    assert resumed.stage == 2 and resumed.centroids_initialized and _CountingInit.calls == 1

    # Resume inside stage 2: the stored flag prevents a second k-means.
    _CountingInit.calls = 0
    resumed = LECHPE(backbone="test_resnet", num_clusters=3)
    trainer = _trainer(tmp_path, 3, [StageSwitch(epochs=[1]), _CountingInit(n_init=1)], checkpointing=False)
    trainer.fit(resumed, _dm(dataset), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.stage == 2 and _CountingInit.calls == 0


def test_stage_switch_schedule_and_errors():
    switch = StageSwitch(epochs=[2, 5], stages=[2, 3])
    assert [switch.stage_for_epoch(e) for e in range(7)] == [1, 1, 2, 2, 2, 3, 3]
    assert StageSwitch(epochs=3).stage_for_epoch(3) == 2
    with pytest.raises(ValueError, match="strictly increasing"):
        StageSwitch(epochs=[3, 3])
    with pytest.raises(ValueError, match="2 epochs but 1 stages"):
        StageSwitch(epochs=[1, 2], stages=[2])


def test_kmeans_init_must_follow_stage_switch(tmp_path):
    module = LECHPE(backbone="test_resnet", num_clusters=3)
    trainer = _trainer(tmp_path, 1, [KMeansCentroidInit(), StageSwitch(epochs=[1])], checkpointing=False)
    with pytest.raises(ValueError, match="after StageSwitch"):
        trainer.fit(module, _dm(AxisGlyphDataset(16, 32)))


def test_target_centroids_refresh_every_n_steps():
    module = LECHPE(backbone="test_resnet", num_clusters=3, stage=2, target_update_interval=3)
    module.init_centroids(torch.randn(3, module.centroids.shape[1]))
    frozen = module.target_centroids.clone()
    with torch.no_grad():
        module.centroids.add_(1.0)
    step = {"value": 1}
    type(module).global_step = property(lambda self: step["value"])  # type: ignore[assignment]
    try:
        module.on_train_batch_start(None, 0)
        torch.testing.assert_close(module.target_centroids, frozen)
        step["value"] = 3
        module.on_train_batch_start(None, 0)
        torch.testing.assert_close(module.target_centroids, module.centroids.detach())
    finally:
        del type(module).global_step


def test_kmeans_runs_kornia_and_leaves_the_global_rng_alone(monkeypatch):
    """Lloyd's iterations are kornia's KMeans (started from our k-means++ seeds); the global
    RNG it draws from is seeded from ``generator`` and restored, so results are
    reproducible and the training's random stream does not move."""
    import kornia.contrib

    starts: list[torch.Tensor] = []
    original = kornia.contrib.KMeans.fit

    def spy(self, x):
        starts.append(self.cluster_centers.clone())
        return original(self, x)

    monkeypatch.setattr(kornia.contrib.KMeans, "fit", spy)
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = kmeans(x, 4, n_init=2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(3), expected_next)  # global stream untouched
    assert len(starts) == 2 and all(s.shape == (4, 5) for s in starts)
    assert all(bool((s[:, None] == x[None]).all(-1).any(1).all()) for s in starts)  # data points
    torch.manual_seed(999)  # a different global state must not change the result
    second = kmeans(x, 4, n_init=2, generator=torch.Generator().manual_seed(7))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
