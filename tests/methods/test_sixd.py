"""6D baseline: model, loss, learning on a toy task, and the base module plumbing."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

import hpelib.rotation as hr
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods import SixD, SixDNet
from hpelib.methods.sixd import SIXD_LOSSES
from hpelib.nn import BackboneNotFoundError
from tests.toy import AxisGlyphDataset


def test_sixdnet_outputs_rotations():
    net = SixDNet("test_resnet")
    r = net(torch.randn(3, 3, 32, 32))
    assert r.shape == (3, 3, 3)
    assert hr.is_rotation_matrix(r).all()


def test_loss_zero_at_label_and_gradients_finite():
    module = SixD(backbone="test_resnet")
    batch = {"image": torch.randn(4, 3, 32, 32), "rotation": hr.random_rotation(4)}
    outputs = module(batch["image"])
    loss, parts = module.compute_loss(outputs, {**batch, "rotation": outputs["rotation"].detach()})
    assert float(loss.detach()) == 0.0
    loss, parts = module.compute_loss(outputs, batch)
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert set(parts) == {"geodesic_loss"}


def test_chordal_loss_option_and_unknown_loss_error():
    module = SixD(backbone="test_resnet", loss="chordal")
    pred = hr.rotation_z(torch.tensor([math.pi / 2, 0.0]))
    loss, parts = module.compute_loss({"rotation": pred}, {"rotation": torch.eye(3).expand(2, 3, 3)})
    assert set(parts) == {"chordal_loss"}
    assert float(loss) == pytest.approx(2.0)  # (4 (1 - cos 90deg) + 0) / 2
    assert SIXD_LOSSES == ("chordal", "geodesic", "raw_mse")
    with pytest.raises(ValueError, match="unknown SixD loss 'l2'.*raw_mse"):
        SixD(backbone="test_resnet", loss="l2")


@pytest.mark.parametrize(("representation", "size"), [("6d", 6), ("9d", 9)])
def test_raw_mse_loss_reads_the_raw_output(representation, size):
    module = SixD(backbone="test_resnet", loss="raw_mse", representation=representation)
    outputs = module(torch.randn(3, 3, 32, 32))
    raw = outputs["rotation_raw"]
    assert raw.shape == (3, size)
    to_rotation = hr.rotation_from_6d if size == 6 else hr.rotation_from_9d
    to_raw = hr.rotation_to_6d if size == 6 else hr.rotation_to_9d
    assert torch.allclose(outputs["rotation"], to_rotation(raw))
    assert hr.is_rotation_matrix(outputs["rotation"], atol=1e-5).all()
    target = hr.random_rotation(3)
    loss, parts = module.compute_loss(outputs, {"rotation": target})
    assert set(parts) == {"raw_mse_loss"}
    expected = (raw - to_raw(target)).square().sum(-1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # The label scaled by 2: the same rotation after Gram-Schmidt/SVD, yet not the
    # regression target, so the loss (unlike geodesic/chordal) is positive: |label|^2.
    scaled = {"rotation_raw": 2 * to_raw(target), "rotation": target}
    loss, _ = module.compute_loss(scaled, {"rotation": target})
    assert float(loss) == pytest.approx(size / 3, rel=1e-5)  # 2 or 3 unit columns
    loss, _ = module.compute_loss({"rotation_raw": to_raw(target)}, {"rotation": target})
    assert float(loss) == 0.0
    # The training step computes only the raw output, and the same loss from it.
    batch = {"image": torch.randn(3, 3, 32, 32), "rotation": target}
    module.eval()  # BatchNorm in eval: both passes see the same network
    train_outputs = module.training_forward(batch)
    assert set(train_outputs) == {"rotation_raw"}
    assert torch.allclose(
        module.compute_loss(train_outputs, batch)[0], module.compute_loss(module(batch["image"]), batch)[0]
    )


def test_representation_is_saved_and_rebuilt(tmp_path):
    module = SixD(backbone="test_resnet", representation="9d", loss="raw_mse")
    assert module.model.head.linear.out_features == 9
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = SixD.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.model.head.representation == "9d"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(images)["rotation"], module.eval()(images)["rotation"])
    with pytest.raises(ValueError, match="unknown rotation representation 'quat'.*6d.*9d"):
        SixD(backbone="test_resnet", representation="quat")


def test_head_orthonormalises_in_float32_under_bf16_autocast():
    net = SixDNet("test_resnet").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        r = net(torch.randn(2, 3, 32, 32))
    assert r.dtype == torch.float32
    assert hr.is_rotation_matrix(r, atol=1e-5).all()


def test_loss_masks_samples_without_label():
    module = SixD(backbone="test_resnet")
    outputs = {"rotation": hr.random_rotation(2)}
    target = outputs["rotation"].clone()
    target[1] = hr.random_rotation(1)[0]
    loss, _ = module.compute_loss(
        outputs, {"rotation": target, "has_rotation": torch.tensor([True, False])}
    )
    assert float(loss) < 1e-6


def test_unknown_backbone_error_names_it():
    with pytest.raises(BackboneNotFoundError, match="resnet_18.*Did you mean"):
        SixD(backbone="resnet_18")


def test_sixd_learns_toy_poses_and_reports_metrics(tmp_path):
    """A few epochs on the axis-glyph toy data bring the geodesic error well below chance."""
    L.seed_everything(0)
    dm = HPEDataModule(
        train=AxisGlyphDataset(512, 32, seed=0),
        val=AxisGlyphDataset(64, 32, seed=1),
        test={
            "toy": AxisGlyphDataset(128, 32, seed=2),
            "toy_copy": AxisGlyphDataset(32, 32, seed=3),
        },
        predict=AxisGlyphDataset(16, 32, seed=4),
        batch_size=32,
        normalize="none",
    )
    module = SixD(backbone="test_resnet", optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer = L.Trainer(
        max_epochs=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, dm)
    results = trainer.test(module, dm, verbose=False)
    assert len(results) == 2
    toy = results[0]
    assert set(k for k in toy if k.startswith("test/toy/")) >= {
        "test/toy/yaw_mae",
        "test/toy/pitch_mae",
        "test/toy/roll_mae",
        "test/toy/mae",
        "test/toy/geodesic",
    }
    # Chance for uniform rotations is ~126 degrees.
    assert toy["test/toy/geodesic"] < 60.0, toy
    preds = trainer.predict(module, datamodule=dm)
    assert preds[0]["rotation"].shape[1:] == (3, 3) and preds[0]["euler_deg"].shape[1:] == (3,)


def test_scheduler_is_configured():
    module = SixD(
        backbone="test_resnet",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1),
        scheduler_interval="step",
    )
    conf = module.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "step"
    with pytest.raises(ValueError, match="scheduler_interval"):
        SixD(backbone="test_resnet", scheduler_interval="batch")


def test_channels_last_converts_weights_and_keeps_outputs():
    torch.manual_seed(0)
    plain = SixD(backbone="test_resnet").eval()
    fast = SixD(backbone="test_resnet", channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast.setup("fit")
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, got = plain(images)["rotation"], fast(images)["rotation"]
    assert torch.allclose(got, expected, atol=1e-5)
