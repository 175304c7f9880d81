"""hpelib.load / Predictor on a checkpoint written by a real (tiny) training run."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import hpelib
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods import SixD
from tests.toy import AxisGlyphDataset


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("run")
    L.seed_everything(0)
    dm = HPEDataModule(train=AxisGlyphDataset(64, 32), batch_size=16, normalize="symmetric")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    trainer.fit(SixD(backbone="test_resnet"), dm)
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def test_load_restores_class_and_preprocessing(checkpoint):
    predictor = hpelib.load(checkpoint)
    assert isinstance(predictor.module, SixD)
    assert predictor.image_size == 32
    assert predictor.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_predict_matches_module_on_the_same_input(checkpoint):
    predictor = hpelib.load(checkpoint)
    ds = AxisGlyphDataset(4, 32, seed=5)
    images = torch.stack([ds[i]["image"] for i in range(4)])
    pred = predictor.predict(images)
    assert pred.rotation.shape == (4, 3, 3) and pred.euler_deg.shape == (4, 3)
    with torch.no_grad():
        direct = predictor.module((images.float() / 255 - 0.5) / 0.5)["rotation"]
    assert torch.allclose(pred.rotation, direct, atol=1e-4)
    single = predictor.predict(images[0])
    assert torch.allclose(single.rotation[0], pred.rotation[0], atol=1e-5)
    # numpy and PIL inputs of the same pixels give the same answer.
    array = images[1].permute(1, 2, 0).numpy()
    assert torch.allclose(predictor.predict(array).rotation[0], pred.rotation[1], atol=1e-5)
    assert torch.allclose(predictor.predict(Image.fromarray(array)).rotation[0], pred.rotation[1], atol=1e-5)


def test_boxes_crop_the_face(checkpoint):
    predictor = hpelib.load(checkpoint)
    ds = AxisGlyphDataset(1, 32, seed=6)
    face = ds[0]["image"]
    canvas = torch.zeros(3, 96, 96, dtype=torch.uint8)
    canvas[:, 40:72, 20:52] = face
    boxed = predictor.predict(canvas, boxes=[[20, 40, 51, 71]])
    direct = predictor.predict(face)
    assert torch.allclose(boxed.rotation, direct.rotation, atol=1e-4)
    with pytest.raises(ValueError, match="2 boxes for 1 images"):
        predictor.predict(canvas, boxes=[[0, 0, 1, 1], [0, 0, 1, 1]])


def test_predict_folder_writes_csv_and_annotations(checkpoint, tmp_path):
    predictor = hpelib.load(checkpoint)
    ds = AxisGlyphDataset(3, 32, seed=7)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(ds[i]["image"].permute(1, 2, 0).numpy()).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("not an image")
    table = predictor.predict_folder(folder, tmp_path / "out.csv", tmp_path / "annotated")
    assert list(table["path"]) == ["f0.png", "f1.png", "f2.png"]
    assert {"pitch_deg", "yaw_deg", "roll_deg", "r00", "r22"} <= set(table.columns)
    assert len(pd.read_csv(tmp_path / "out.csv")) == 3
    drawn = np.asarray(Image.open(tmp_path / "annotated" / "f0.png"))
    assert (drawn != ds[0]["image"].permute(1, 2, 0).numpy()).any()


def test_clear_errors(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        hpelib.load(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        hpelib.load(checkpoint).predict([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no images"):
        hpelib.load(checkpoint).predict_folder(empty)
