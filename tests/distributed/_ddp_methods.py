"""Script behind tests/distributed/test_ddp_methods.py: short 2-process CPU DDP fits of every
method, each rank saving what it saw to ``OUT/<name>_rank<r>.pt``.

Run as ``python -m tests.distributed._ddp_methods OUT NAME [NAME ...]`` (Lightning's launcher
starts rank 1 by re-running the same command line); names are the keys of :data:`FITS`.
Several Trainers in one script share one process group (saves interpreter starts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hpelib.callbacks import KMeansCentroidInit, StageSwitch
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.pairs import IdentityPairs
from hpelib.data.synthetic import SyntheticAnchorPositives, SyntheticHeads

#: The same-global-batch comparisons (test_ddp_methods): BatchNorm-free backbone (GroupNorm),
#: no augmentation, plain SGD (a gradient scale error would show; Adam would hide it).
EQUIV = {
    "sixd": dict(train=64, val=32, global_batch=16, epochs=2, lr=0.05),
    "clerf_stage1": dict(train=32, val=16, global_batch=8, epochs=1, lr=0.005),
}
EQUIV_BACKBONE = "test_efficientnet_gn"


def heads(n: int, split: str = "train", seed: int = 0, **kw: Any) -> SyntheticHeads:
    return SyntheticHeads(n, 32, preset="frontal", split=split, seed=seed, num_threads=1, **kw)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


def adam(lr: float = 3e-3):
    return lambda params: torch.optim.Adam(params, lr=lr)


class Record(L.Callback):
    """Per rank: local batch sizes, item indices and stage of every step; final weights."""

    def __init__(self, out: Path, name: str) -> None:
        self.out, self.name = out, name
        self.data: dict[str, Any] = {"steps": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = {"epoch": trainer.current_epoch, "size": int(batch["image"].shape[0])}
        if "index" in batch:
            step["index"] = batch["index"].cpu()
        for key in ("partner", "positive"):
            if isinstance(batch.get(key), dict):
                step[key] = int(batch[key]["image"].shape[0])
        if "partner" in batch:
            step["same_identity"] = bool(
                torch.equal(batch["identity"], batch["partner"]["identity"])
            )
        step["stage"] = int(getattr(pl_module, "stage", 1))
        self.data["steps"].append(step)

    def on_train_epoch_end(self, trainer, pl_module):
        encoder = getattr(getattr(pl_module, "model", None), "encoder", None)
        if encoder is not None:  # CLERF: the encoder must not move once frozen
            self.data.setdefault("encoder", []).append(flat_params(encoder))

    def on_train_end(self, trainer, pl_module):
        self.data.update(
            rank=trainer.global_rank, world_size=trainer.world_size, global_step=trainer.global_step,
            params=flat_params(pl_module),
            metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
        )  # fmt: skip
        torch.save(self.data, self.out / f"{self.name}_rank{trainer.global_rank}.pt")


class RecordingKMeansInit(KMeansCentroidInit):
    """KMeansCentroidInit that also keeps this rank's embeddings and item indices."""

    def collect(self, trainer, pl_module):
        local = super().collect(trainer, pl_module)
        loader = trainer.train_dataloader  # the same sharded loader, same epoch: same order
        self.indices = torch.cat([b["index"] for b in loader])
        self.local = local.cpu()
        return local


class SaveCentroids(L.Callback):
    """Listed after the k-means init: saves the centroids it set (once)."""

    def __init__(self, init: RecordingKMeansInit, out: Path) -> None:
        self.init, self.out, self.done = init, out, False

    def on_train_epoch_start(self, trainer, pl_module):
        if self.done or not pl_module.centroids_initialized:
            return
        self.done = True
        torch.save(
            {"centroids": pl_module.centroids.detach().cpu().clone(), "local": self.init.local,
             "indices": self.init.indices, "k": pl_module.num_clusters, "seed": self.init.seed,
             "n_init": self.init.n_init, "iterations": self.init.iterations, "tol": self.init.tol},
            self.out / f"lechpe_kmeans_rank{trainer.global_rank}.pt",
        )  # fmt: skip


class SpyContrastive(L.Callback):
    """Records every batch CLERF's miner/loss sees (after the cross-rank gather): its size,
    whether it is a training step, and, for the first training step, its rotation labels next
    to this rank's own (anchors and positives)."""

    def __init__(self, out: Path) -> None:
        self.out, self.calls, self.local, self.gathered = out, [], None, None

    def on_fit_start(self, trainer, pl_module):
        loss = pl_module.contrastive_loss
        original = loss.forward

        def spy(embeddings, rotations, valid=None):
            self.calls.append((bool(trainer.training), int(embeddings.shape[0])))
            if trainer.training and self.gathered is None:
                self.gathered = rotations.detach().cpu()
            return original(embeddings, rotations, valid)

        loss.forward = spy

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.local is None and "positive" in batch:
            self.local = torch.cat([batch["rotation"], batch["positive"]["rotation"]]).cpu()

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {"calls": self.calls, "local": self.local, "gathered": self.gathered},
            self.out / f"clerf_loss_rank{trainer.global_rank}.pt",
        )


def trainer(out: Path, name: str, epochs: int, callbacks: list, **kw: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=2, strategy=kw.pop("strategy", "ddp"), max_epochs=epochs,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out / name,
        callbacks=[*callbacks, Record(out, name)], **kw,
    )  # fmt: skip


def fit_opnet(out: Path) -> None:
    from hpelib.methods import OpNet

    # A weighted two-dataset mix: Lightning wraps the WeightedRandomSampler in a
    # DistributedSamplerWrapper under DDP (the path of examples/opnet.yaml).
    dm = HPEDataModule(
        train=[{"class_path": "hpelib.data.synthetic.SyntheticHeads", "weight": 2.0,
                "init_args": {"num_samples": 32, "image_size": 32, "preset": "frontal", "seed": 1, "num_threads": 1}},
               {"class_path": "hpelib.data.synthetic.SyntheticHeads", "weight": 1.0,
                "init_args": {"num_samples": 16, "image_size": 32, "preset": "full_range", "seed": 2, "num_threads": 1}}],
        samples_per_epoch=32, val=heads(16, "val", 3), batch_size=8, grayscale=True,
    )  # fmt: skip
    module = OpNet(backbone="test_resnet", num_shape_params=4, optimizer=adam())
    trainer(out, "opnet", 2, []).fit(module, dm)


def fit_rankpose(out: Path) -> None:
    from hpelib.methods import RankPose

    pairs = IdentityPairs(heads(48, num_identities=6, images_per_identity=4))
    dm = HPEDataModule(train=pairs, val=heads(16, "val", 3), batch_size=8)
    trainer(out, "rankpose", 2, []).fit(RankPose(backbone="test_resnet", optimizer=adam()), dm)


def fit_lechpe(out: Path) -> None:
    from hpelib.methods import LECHPE

    dm = HPEDataModule(train=heads(48, occlusion_prob=0.5), val=heads(16, "val", 3), batch_size=8)
    module = LECHPE(backbone="test_resnet", num_clusters=4, beta=10.0, optimizer=adam())
    init = RecordingKMeansInit(n_init=2, seed=3)
    callbacks = [StageSwitch(epochs=[1]), init, SaveCentroids(init, out)]
    trainer(out, "lechpe", 2, callbacks).fit(module, dm)


def fit_clerf(out: Path) -> None:
    from hpelib.methods import CLERF

    train = SyntheticAnchorPositives(32, image_size=32, preset="full_range", seed=0, num_threads=1)
    dm = HPEDataModule(train=train, val=heads(16, "val", 3), batch_size=8)
    module = CLERF(backbone="test_resnet", embedding_dim=16, head_lr=3e-3, optimizer=adam())
    trainer(out, "clerf", 2, [StageSwitch(epochs=[1]), SpyContrastive(out)]).fit(module, dm)


def equivalence_setup(name: str, world_size: int) -> tuple[L.LightningModule, dict[str, Any], int]:
    """Module, datamodule arguments (per-process batch: global batch / world size) and epochs
    of an :data:`EQUIV` run; seeded, so every call builds the same initial weights."""
    from hpelib.methods import CLERF, SixD

    cfg = EQUIV[name]
    L.seed_everything(0)
    sgd = lambda params: torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9)  # noqa: E731
    if name == "sixd":
        train: Any = heads(cfg["train"])
        module: L.LightningModule = SixD(backbone=EQUIV_BACKBONE, optimizer=sgd)
    else:
        train = SyntheticAnchorPositives(
            cfg["train"], image_size=32, preset="full_range", num_threads=1
        )
        module = CLERF(
            backbone=EQUIV_BACKBONE, embedding_dim=16, augmentation="none", optimizer=sgd
        )
    dm = dict(
        train=train, val=heads(cfg["val"], "val", 3), batch_size=cfg["global_batch"] // world_size
    )
    return module, dm, cfg["epochs"]


def fit_equivalence(out: Path, name: str, **kw: Any) -> None:
    module, dm, epochs = equivalence_setup(name, world_size=2)
    trainer(out, name, epochs, [], **kw).fit(module, HPEDataModule(**dm))


def fit_sixd(out: Path) -> None:
    fit_equivalence(out, "sixd")


def fit_clerf_stage1(out: Path) -> None:
    # A stage-1-only CLERF fit leaves the pose head unused: DDP needs unused-parameter
    # detection (StageSwitch turns it on in a staged fit; here there is none).
    fit_equivalence(out, "clerf_stage1", strategy="ddp_find_unused_parameters_true")


FITS = {
    "opnet": fit_opnet, "rankpose": fit_rankpose, "lechpe": fit_lechpe, "clerf": fit_clerf,
    "sixd": fit_sixd, "clerf_stage1": fit_clerf_stage1,
}  # fmt: skip


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out = Path(argv[0])
    for name in argv[1:]:
        L.seed_everything(0)
        FITS[name](out)


if __name__ == "__main__":
    main(sys.argv[1:])
