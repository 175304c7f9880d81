"""CLERF as the paper trains it: clockwise rotation augmentation (image and label), the
paper's pixel augmentations, stage-2 early stopping that restores the best MLP, and the
paper's Euler decomposition for the per-angle metrics."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

import hpelib.rotation as hr
from hpelib.callbacks import HPEModelCheckpoint
from hpelib.checkpoint_io import read_checkpoint
from hpelib.data.transforms import RandomInPlaneRotation, build_augmentation
from hpelib.methods.clerf import (
    CLERF,
    CLERFPaperAugmentation,
    CLERFSupervised,
    PoseEarlyStopping,
    SharedGeometricAugmentation,
)


def _dot_image(b: int, size: int, x: int, y: int) -> torch.Tensor:
    image = torch.zeros(b, 3, size, size)
    image[:, :, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    return image


def _centroid(image: torch.Tensor) -> torch.Tensor:
    """(B, 2) intensity-weighted (x, y) of the first channel."""
    w = image[:, 0]
    ys, xs = torch.meshgrid(torch.arange(w.shape[1]), torch.arange(w.shape[2]), indexing="ij")
    total = w.sum(dim=(1, 2))
    return torch.stack([(w * xs).sum(dim=(1, 2)) / total, (w * ys).sum(dim=(1, 2)) / total], dim=1)


# ----------------------------------------------------------------------------- rotation
def test_clerf_rotation_turns_the_image_clockwise_as_displayed_and_the_label_follows():
    """A dot right of the centre moves DOWN (y grows, y axis down) by the drawn angle in
    0-90 degrees, and the label is ``Rz(angle) @ R`` with the same angle: in hpelib's frame
    (x right, y down, z into the scene) a clockwise turn as displayed is a positive rotation
    about z (eq. 1's left multiplication)."""
    b, size, r = 64, 63, 20
    c = (size - 1) / 2
    image = _dot_image(b, size, int(c) + r, int(c))
    labels = hr.random_rotation(b, generator=torch.Generator().manual_seed(0))
    aug = SharedGeometricAugmentation(
        "rotate", rotation_p=1.0, generator=torch.Generator().manual_seed(1)
    )
    out = aug(
        {
            "image": image,
            "rotation": labels,
            "positive": {"image": image.clone(), "rotation": labels.clone()},
        }
    )
    delta = out["rotation"] @ labels.transpose(1, 2)  # = Rz(angle)
    angle = torch.atan2(delta[:, 1, 0], delta[:, 0, 0])
    assert (delta - hr.rotation_z(angle)).abs().max() < 1e-5
    assert (angle >= 0).all() and (angle <= math.pi / 2 + 1e-6).all() and angle.max() > 1.0  # 0-90
    expected = torch.stack([c + r * torch.cos(angle), c + r * torch.sin(angle)], dim=1)  # y down
    got = _centroid(out["image"])
    assert (got - expected).abs().max() < 1.0
    assert (got[:, 1] >= c - 0.5).all()  # never above the centre row: never counter-clockwise
    assert torch.equal(out["image"], out["positive"]["image"])


def test_symmetric_rotation_is_the_named_alternative():
    labels = hr.random_rotation(256, generator=torch.Generator().manual_seed(0))
    aug = SharedGeometricAugmentation(
        "rotate", rotation_p=1.0, rotation="symmetric", generator=torch.Generator().manual_seed(2)
    )
    out = aug({"image": torch.rand(256, 3, 8, 8), "rotation": labels})
    delta = out["rotation"] @ labels.transpose(1, 2)
    phi = torch.atan2(delta[:, 1, 0], delta[:, 0, 0])
    assert phi.min() < -1.0 and phi.max() > 1.0 and phi.abs().max() <= math.pi / 2 + 1e-6
    with pytest.raises(ValueError, match="rotation='ccw'"):
        SharedGeometricAugmentation("rotate", rotation="ccw")
    with pytest.raises(ValueError, match="clockwise=True needs symmetric=False"):
        RandomInPlaneRotation(clockwise=True)


def test_datamodule_clerf_pipeline_rotates_clockwise():
    rotation = build_augmentation("clerf")[0].transforms[0]
    assert isinstance(rotation, RandomInPlaneRotation)
    assert (rotation.p, rotation.max_degrees, rotation.symmetric, rotation.clockwise) == (
        0.5,
        90.0,
        False,
        True,
    )


# ----------------------------------------------------------------------------- pixel augmentations
def test_paper_pixel_augmentation_keeps_labels_and_crops_the_centre():
    """Centre crop alone (every random step off): a dot at half the distance from the
    centre lands at the full distance (zoom 1 / center_crop); the rotation is unchanged."""
    size, c = 65, 32
    image = _dot_image(2, size, c + 10, c)
    labels = hr.random_rotation(2, generator=torch.Generator().manual_seed(0))
    crop = CLERFPaperAugmentation(
        translate_p=0.0, scale_p=0.0, sharpness_p=0.0, jitter_p=0.0, center_crop=0.5
    )
    out = crop({"image": image, "rotation": labels})
    assert torch.equal(out["rotation"], labels)
    assert (_centroid(out["image"]) - torch.tensor([c + 20.0, c])).abs().max() < 0.5
    full = CLERFPaperAugmentation(translate_p=1.0, scale_p=1.0, sharpness_p=1.0, jitter_p=1.0,
                                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    batch = {"image": torch.rand(4, 3, 32, 32), "rotation": hr.random_rotation(4)}
    out = full(batch)
    assert out["image"].shape == (4, 3, 32, 32) and torch.equal(out["rotation"], batch["rotation"])
    assert not torch.allclose(out["image"], batch["image"])
    with pytest.raises(ValueError, match="center_crop"):
        CLERFPaperAugmentation(center_crop=0.0)


# ----------------------------------------------------------------------------- early stopping
class _Scripted(L.LightningModule):
    """Stage 1 before ``switch``, then stage 2; logs a scripted ``val/geodesic`` per epoch and
    records the head's weights at each validation."""

    def __init__(self, values: list[float], switch: int) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.head = nn.Linear(2, 2)
        self.values, self.switch = values, switch
        self.heads: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def stage(self) -> int:
        return 1 if self.current_epoch < self.switch else 2

    def training_step(self, batch, batch_idx):
        return self.model.head(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/geodesic", self.values[self.current_epoch])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.heads[self.current_epoch] = {
                k: v.clone() for k, v in self.model.head.state_dict().items()
            }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4
    )


@pytest.mark.parametrize(
    ("values", "stop_epoch", "best_epoch"),
    [
        # Stage 1 (epochs 0-2) worsens for longer than the patience: no stop there.
        ([5.0, 6.0, 7.0, 4.0, 2.0, 3.0, 3.5, 1.0, 1.0, 1.0], 6, 4),
        # Never patient enough to stop: the last epoch restores the best head.
        ([5.0, 6.0, 7.0, 4.0, 2.0, 3.0, 1.5, 1.8], 7, 6),
    ],
)
def test_pose_early_stopping_acts_in_stage_2_only_and_restores_the_best_head(
    tmp_path, values, stop_epoch, best_epoch
):
    module = _Scripted(values, switch=3)
    ckpt = HPEModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = L.Trainer(
        max_epochs=len(values), accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[PoseEarlyStopping(patience=2), ckpt], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, _loader(), _loader())
    assert trainer.current_epoch == stop_epoch + 1  # epochs run: 0 .. stop_epoch
    assert set(module.heads) == set(range(stop_epoch + 1))
    best = module.heads[best_epoch]
    assert not torch.equal(best["weight"], module.heads[stop_epoch]["weight"])
    assert all(torch.equal(best[k], v) for k, v in module.model.head.state_dict().items())
    saved = read_checkpoint(tmp_path / "last.ckpt", what="test")["state_dict"]
    assert torch.equal(saved["model.head.weight"], best["weight"])  # last.ckpt holds the best head


def test_stage2_patience_adds_the_lightning_callback_and_the_paper_euler_order():
    module = CLERF(backbone="test_resnet", embedding_dim=8, stage2_patience=4)
    (callback,) = module.configure_callbacks()
    assert isinstance(callback, PoseEarlyStopping) and callback.patience == 4
    assert callback.monitor == "val/geodesic" and callback.stage == 2
    assert CLERF(backbone="test_resnet", embedding_dim=8).configure_callbacks() == []
    assert (
        module.euler_convention == "clerf"
        and CLERFSupervised(backbone="test_resnet").euler_convention == "clerf"
    )
    assert (
        CLERF(backbone="test_resnet", embedding_dim=8, euler_convention="300wlp").euler_convention
        == "300wlp"
    )
    with pytest.raises(ValueError, match="patience"):
        PoseEarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mining distance"):
        CLERF(backbone="test_resnet", mining_distance="manhattan")
