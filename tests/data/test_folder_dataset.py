"""ImageFolderDataset: unlabelled images for prediction, cropped exactly as hpelib.load's
predictor crops a whole image; clear errors for an empty folder and a corrupt file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.datasets import DatasetError, ImageFolderDataset, build_dataset
from hpelib.data.sample import collate_samples, mask_key
from hpelib.predict import Predictor


def _image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_items_are_the_predictors_whole_image_crops(tmp_path):
    paths = [_image(tmp_path / "b.png", 48, 40, 1), _image(tmp_path / "a.jpg", 32, 32, 2),
             _image(tmp_path / "c.PNG", 20, 64, 3)]  # fmt: skip
    dataset = build_dataset("folder", root=tmp_path, image_size=32)
    assert isinstance(dataset, ImageFolderDataset)
    assert [dataset.image_path(i).name for i in range(len(dataset))] == ["a.jpg", "b.png", "c.PNG"]
    predictor = Predictor(nn.Identity(), image_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    expected = predictor.preprocess([str(p) for p in sorted(paths, key=lambda p: p.name)])
    got = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    assert got.dtype == torch.float32 and got.shape == (3, 3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_items_carry_no_label_and_batch_as_unlabelled(tmp_path):
    for i in range(3):
        _image(tmp_path / f"{i}.png", 24, 24, i)
    dataset = ImageFolderDataset(tmp_path, image_size=16)
    batch = collate_samples([dataset[i] for i in range(3)])
    assert not batch[mask_key("rotation")].any()
    assert batch["index"].tolist() == [0, 1, 2]
    dm = HPEDataModule(predict={"name": "image_folder", "root": str(tmp_path), "image_size": 16})
    dm.setup("predict")
    prepared = dm.prepare_images(next(iter(dm.predict_dataloader())), train=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(prepared["image"], (batch["image"] - mean) / std)


def test_hidden_files_other_suffixes_and_sub_folders(tmp_path):
    _image(tmp_path / "face.png", 8, 8)
    _image(tmp_path / "sub" / "deep.png", 8, 8)
    (tmp_path / "._face.png").write_bytes(b"\x00\x05macOS resource fork")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in ImageFolderDataset(tmp_path, 8).paths] == ["face.png"]
    assert [p.name for p in ImageFolderDataset(tmp_path, 8, recursive=True).paths] == ["face.png", "deep.png"]


def test_empty_or_missing_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(DatasetError, match=r"no image files .* in .*empty"):
        ImageFolderDataset(tmp_path / "empty", 32)
    with pytest.raises(DatasetError, match=r"missing does not exist"):
        ImageFolderDataset(tmp_path / "missing", 32)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        ImageFolderDataset(tmp_path / "empty", 0)


def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path):
    _image(tmp_path / "good.png", 8, 8)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    dataset = ImageFolderDataset(tmp_path, 8)
    assert dataset[1]["image"].shape == (3, 8, 8)
    with pytest.raises(DatasetError, match=r"cannot decode image .*broken\.jpg"):
        dataset[0]
