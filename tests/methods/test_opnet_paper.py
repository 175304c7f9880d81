"""OpNet paper options: the training mixture's sampling weights, the 50-coefficient face
model, the inf-norm gradient clip and the paper config's crop rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.opnet import OpNet, OpNetCrop
from hpelib.rotation import random_rotation

ROOT = Path(__file__).resolve().parents[2]


def _write_h5(path: Path, n: int) -> None:
    h5py = pytest.importorskip("h5py")
    from hpelib.rotation import opnet_quaternion_from_rotation

    rot = random_rotation(n, generator=torch.Generator().manual_seed(n)).double()
    with h5py.File(path, "w") as f:
        f["images"] = np.full((n, 40, 40), 90, np.uint8)
        f["quats"] = opnet_quaternion_from_rotation(rot).numpy()
        f["rois"] = np.tile([8.0, 8.0, 32.0, 32.0], (n, 1))
        f["shapeparams"] = np.zeros((n, 50), np.float16)


def test_mixture_config_draws_datasets_by_their_weights(tmp_path: Path):
    config = yaml.safe_load((ROOT / "examples" / "opnet_mixture.yaml").read_text())
    specs = config["data"]["train"]
    sizes = [5, 9, 3]  # dataset sizes must not change the mix
    for spec, n in zip(specs, sizes, strict=True):
        path = tmp_path / Path(spec["init_args"]["path"]).name
        _write_h5(path, n)
        spec["init_args"]["path"] = str(path)
        assert isinstance(spec["init_args"]["crop_rule"], dict)  # instantiated by the spec
    dm = HPEDataModule(
        train=specs, samples_per_epoch=config["data"]["samples_per_epoch"], batch_size=2
    )
    dm.setup("fit")
    assert isinstance(dm.train_dataset.datasets[0].crop_rule, OpNetCrop)
    weights = dm.train_dataloader().sampler.weights
    per_set = torch.stack([w.sum() for w in weights.split(sizes)])
    expected = torch.tensor([60000.0, 20000.0, 40000.0], dtype=per_set.dtype)
    torch.testing.assert_close(per_set / per_set.sum(), expected / expected.sum())
    assert len(dm.train_dataloader().sampler) == 10240


def test_fifty_coefficient_face_model_trains_its_shape_head(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "bfm_keypoints.npz"
    np.savez(
        path,
        mean=torch.randn(68, 3, generator=g).numpy(),
        basis=0.1 * torch.randn(50, 68, 3, generator=g).numpy(),
    )
    model = OpNet(backbone="test_resnet", keypoint_model=str(path), shape_target="label")
    assert model.model.keypoints.num_params == 50 and model.model.shape.out_features == 50
    b = 2
    batch = {
        "image": torch.rand(b, 3, 32, 32),
        "rotation": random_rotation(b, generator=g),
        "shape_params": torch.randn(b, 50, generator=g),
    }
    out = model(batch["image"])
    loss, parts = model.compute_loss(out, batch)
    assert "shape" in parts and "nll_shape" in parts
    loss.backward()
    grad = model.model.shape.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape_params"):
        bad = dict(batch, shape_params=torch.randn(b, 10))
        model.compute_loss(out, bad)


def test_grad_clip_max_abs_bounds_the_largest_gradient_entry():
    model = OpNet(backbone="test_resnet", grad_clip_max_abs=0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    model.configure_gradient_clipping(None)
    largest = max(float(p.grad.abs().max()) for p in model.parameters())
    assert largest == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(ValueError, match="grad_clip_max_abs"):
        OpNet(backbone="test_resnet", grad_clip_max_abs=0.0)


def test_paper_config_frames_train_and_test_with_the_opnet_roi():
    config = yaml.safe_load((ROOT / "examples" / "opnet_paper.yaml").read_text())
    data = config["data"]
    for spec in [data["train"], *data["test"].values()]:
        assert spec["init_args"]["crop_rule"]["class_path"] == "hpelib.methods.opnet.OpNetCrop"
        assert spec["init_args"]["image_size"] == 129
    assert data["augmentation"]["init_args"]["framing"] is False
    swa = [
        c
        for c in config["trainer"]["callbacks"]
        if c["class_path"].endswith("StochasticWeightAveraging")
    ]
    assert swa and swa[0]["init_args"]["device"] is None  # a torch.device does not serialise


@pytest.mark.slow  # a CLI subprocess (about 15 s on an idle 2-core machine)
def test_mixture_config_layers_on_the_paper_config(tmp_path: Path):
    from tests.paper_configs import run_hpelib

    examples = ROOT / "examples"
    result = run_hpelib(
        "fit", "--config", str(examples / "opnet_paper.yaml"), "--config", str(examples / "opnet_mixture.yaml"),
        "--print_config", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    train = printed["data"]["train"]
    assert [spec["weight"] for spec in train] == [60000, 20000, 40000]
    assert all(spec["class_path"].endswith("OpNetHDF5") for spec in train)
    assert printed["model"]["init_args"]["grad_clip_max_abs"] == 0.1
