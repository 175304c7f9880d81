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
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
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
    assert torch.allclose(
        predictor.predict(Image.fromarray(array)).rotation[0], pred.rotation[1], atol=1e-5
    )


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


# ----------------------------------------------------------------- crop boxes and detectors
def _canvas_with_face(seed: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A 32 px glyph ``face`` pasted at rows 40:72, columns 20:52 of a black 96 px canvas."""
    face = AxisGlyphDataset(1, 32, seed=seed)[0]["image"]
    canvas = torch.zeros(3, 96, 96, dtype=torch.uint8)
    canvas[:, 40:72, 20:52] = face
    return canvas, face


def test_crop_boxes_follow_the_loaders_pixel_edge_convention(checkpoint):
    # A dataset crop box [x0, x1) x [y0, y1) of the input size is a plain pixel copy.
    predictor = hpelib.load(checkpoint)
    canvas, face = _canvas_with_face()
    crop = predictor.preprocess(canvas, crop_boxes=[[20, 40, 52, 72]])
    assert torch.allclose(crop, predictor.preprocess(face), atol=1e-5)
    # Twice the input size: output pixel j samples source 2j + 0.5 (between two pixels).
    big = torch.nn.functional.interpolate(face[None].float(), scale_factor=2, mode="nearest")[0]
    down = predictor.preprocess(big.to(torch.uint8), crop_boxes=[[0, 0, 64, 64]])
    assert torch.allclose(down, predictor.preprocess(face), atol=1e-5)
    with pytest.raises(ValueError, match="boxes or crop_boxes, not both"):
        predictor.preprocess(canvas, boxes=[[0, 0, 1, 1]], crop_boxes=[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="2 crop_boxes for 1 images"):
        predictor.preprocess(canvas, crop_boxes=[[0, 0, 1, 1], [0, 0, 1, 1]])


def test_predict_with_a_detector_uses_the_largest_face(checkpoint):
    predictor = hpelib.load(checkpoint)
    canvas, face = _canvas_with_face()
    seen = []

    def detector(image: np.ndarray) -> np.ndarray:
        seen.append((image.dtype, image.shape))
        # A small face scored higher than the subject (a bystander): the subject is used.
        return np.array([[0, 0, 10, 10], [20, 40, 52, 72]], dtype=np.float32)

    pred = predictor.predict([canvas, canvas], detector=detector, crop_rule="detector")
    assert seen == [(np.uint8, (96, 96, 3))] * 2  # detectors get (H, W, 3) uint8 RGB
    assert torch.allclose(
        pred.rotation, predictor.predict(face).rotation.expand(2, 3, 3), atol=1e-4
    )
    assert pred.boxes.tolist() == [[20, 40, 52, 72]] * 2
    table = pred.to_dataframe()
    assert list(table.columns[:4]) == ["x0", "y0", "x1", "y1"] and len(table) == 2
    with pytest.raises(ValueError, match=r"no face found in image\(s\) \[0\]"):
        predictor.predict(canvas, detector=lambda image: np.zeros((0, 4)))
    with pytest.raises(ValueError, match="detector or boxes"):
        predictor.predict(canvas, boxes=[[0, 0, 9, 9]], detector=detector)
    with pytest.raises(ValueError, match="'mediapipe' or a callable"):
        predictor.predict(canvas, detector="haar")


def test_predict_faces_returns_every_face_and_handles_none(checkpoint):
    predictor = hpelib.load(checkpoint)
    canvas, face = _canvas_with_face()
    canvas[:, 0:32, 60:92] = face
    boxes = np.array([[20, 40, 52, 72], [60, 0, 92, 32]], dtype=np.float32)
    pred = predictor.predict_faces(canvas, detector=lambda image: boxes, crop_rule="detector")
    assert len(pred) == 2 and torch.allclose(pred.rotation[0], pred.rotation[1], atol=1e-4)
    assert torch.equal(pred.boxes, torch.from_numpy(boxes))
    none = predictor.predict_faces(canvas, detector=lambda image: [])
    assert len(none) == 0 and none.boxes.shape == (0, 4)
    assert len(none.to_dataframe()) == 0 and "yaw_deg" in none.to_dataframe().columns
    drawn = hpelib.predict.annotate(canvas, pred)
    assert drawn.shape == canvas.shape and (drawn != canvas).any()


def test_predict_folder_with_a_detector_keeps_faceless_images(checkpoint, tmp_path):
    predictor = hpelib.load(checkpoint)
    canvas, _ = _canvas_with_face()
    folder = tmp_path / "faces"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(folder / name)
    calls = iter([[[20, 40, 52, 72]], [], [[20, 40, 52, 72]]])  # b.png: no face

    table = predictor.predict_folder(
        folder,
        tmp_path / "out.csv",
        tmp_path / "drawn",
        detector=lambda image: next(calls),
        crop_rule="detector",
    )
    assert list(table["path"]) == ["a.png", "b.png", "c.png"]
    assert table["yaw_deg"].isna().tolist() == [False, True, False]
    assert table.loc[0, "x0"] == 20 and np.isnan(table.loc[1, "x0"])
    assert len(pd.read_csv(tmp_path / "out.csv")) == 3
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "b.png", "c.png"]
