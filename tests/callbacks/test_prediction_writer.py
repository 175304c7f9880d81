"""PredictionWriter: one CSV of trainer.predict's outputs (angles, rotation matrix, the
method's extra outputs flattened), file names from the dataset, never over an input image or
an existing file, and one merged file under 2-process DDP."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from hpelib.callbacks import PredictionWriter
from hpelib.callbacks.prediction_writer import prediction_columns
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.datasets import ImageFolderDataset
from hpelib.methods import SixD
from hpelib.rotation import random_rotation, rotation_to_euler
from tests.distributed.launch import run_module
from tests.toy import AxisGlyphDataset


def _faces(folder: Path, n: int = 5, size: int = 32) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(AxisGlyphDataset(n, size, seed=4).images):
        paths.append(folder / f"img_{i:02d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def _predict(tmp_path: Path, dataset, writer: PredictionWriter) -> tuple[SixD, L.Trainer]:
    torch.manual_seed(0)
    model = SixD(backbone="test_resnet", pretrained=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path / "run"), callbacks=[writer],
    )  # fmt: skip
    dm = HPEDataModule(predict=dataset, eval_batch_size=2, normalize="symmetric")
    trainer.predict(model, datamodule=dm, return_predictions=False)
    return model, trainer


def test_prediction_columns_name_angles_matrix_and_flattened_extras():
    rotation = random_rotation(2, generator=torch.Generator().manual_seed(0))
    prediction = {
        "rotation": rotation,
        "euler_deg": rotation_to_euler(rotation, "300wlp", degrees=True),
        "index": torch.tensor([4, 5]),
        "rotation_cov": torch.arange(18.0).reshape(2, 3, 3),
        "rotation_uncertainty": torch.tensor([0.5, 0.25]),
        "loss": torch.tensor(1.0),  # one value per batch: not a column
    }
    columns = prediction_columns(prediction, "300wlp")
    assert list(columns)[:12] == [
        "pitch_deg", "yaw_deg", "roll_deg", *(f"r{i}{j}" for i in range(3) for j in range(3)),
    ]  # fmt: skip
    assert list(columns)[12:] == [*(f"rotation_cov_{i}_{j}" for i in range(3) for j in range(3)), "rotation_uncertainty"]
    np.testing.assert_allclose(columns["rotation_cov_1_2"], [5.0, 14.0])
    np.testing.assert_allclose(columns["r21"], rotation[:, 2, 1].numpy(), rtol=1e-6)
    assert "pitch_deg" in prediction_columns(prediction, "300wlp", extra_outputs=False)
    assert len(prediction_columns(prediction, "300wlp", extra_outputs=False)) == 12
    assert list(prediction_columns(prediction, "300wlp", ["rotation_uncertainty"]))[-1] == "rotation_uncertainty"
    assert list(prediction_columns(prediction, "clerf"))[:3] == ["yaw_deg", "pitch_deg", "roll_deg"]
    with pytest.raises(KeyError, match="no \\['covariance'\\]"):
        prediction_columns(prediction, "300wlp", ["covariance"])


def test_folder_predictions_are_written_in_dataset_order_with_file_names(tmp_path):
    paths = _faces(tmp_path / "faces")
    writer = PredictionWriter()
    model, _ = _predict(tmp_path, ImageFolderDataset(tmp_path / "faces", 32), writer)
    assert writer.path == tmp_path / "run" / "predictions.csv"
    table = pd.read_csv(writer.path)
    assert list(table["file"]) == [str(p) for p in paths]
    assert list(table["index"]) == list(range(5))
    # The rows are the model's outputs on the folder's images.
    images = torch.stack([ImageFolderDataset(tmp_path / "faces", 32)[i]["image"] for i in range(5)])
    with torch.no_grad():
        expected = model.eval()((images - 0.5) / 0.5)["rotation"].reshape(5, 9)
    got = table[[f"r{i}{j}" for i in range(3) for j in range(3)]].to_numpy()
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert not list((tmp_path / "run").glob("*.part"))  # the rank file is merged and removed


def test_a_dataset_without_paths_gets_its_index_as_file(tmp_path):
    writer = PredictionWriter(output=tmp_path / "out" / "poses.csv")
    _predict(tmp_path, AxisGlyphDataset(3, 32), writer)
    table = pd.read_csv(tmp_path / "out" / "poses.csv")
    assert list(table["file"]) == [0, 1, 2] == list(table["index"])


def test_never_overwrites_an_input_image_or_an_existing_file(tmp_path):
    paths = _faces(tmp_path / "faces", n=2)
    image_bytes = paths[0].read_bytes()
    dataset = ImageFolderDataset(tmp_path / "faces", 32)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="is the input image"):
            _predict(tmp_path, dataset, PredictionWriter(output=paths[0], overwrite=overwrite))
    assert paths[0].read_bytes() == image_bytes
    existing = tmp_path / "mine.csv"
    existing.write_text("my own table\n")
    with pytest.raises(ValueError, match="exists; pass overwrite: true"):
        _predict(tmp_path, dataset, PredictionWriter(output=existing))
    assert existing.read_text() == "my own table\n"
    _predict(tmp_path, dataset, PredictionWriter(output=existing, overwrite=True))
    assert len(pd.read_csv(existing)) == 2
    # The default name never replaces an earlier run's file.
    first = PredictionWriter()
    _predict(tmp_path, dataset, first)
    second = PredictionWriter()
    _predict(tmp_path, dataset, second)
    assert (first.path.name, second.path.name) == ("predictions.csv", "predictions_1.csv")


def test_ddp_two_processes_write_one_merged_csv(tmp_path):
    # 7 images on 2 ranks: the DistributedSampler pads to 8, the merge drops the repeat.
    paths = _faces(tmp_path / "faces", n=7)
    tables = {}
    for devices in (1, 2):
        run = tmp_path / f"run{devices}"
        config = {
            "seed_everything": 0,
            "trainer": {"accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
                        "default_root_dir": str(run), "logger": False, "enable_progress_bar": False},
            "model": {"class_path": "hpelib.methods.SixD", "init_args": {"backbone": "test_resnet"}},
            "data": {"predict": {"name": "folder", "root": str(tmp_path / "faces"), "image_size": 32},
                     "eval_batch_size": 2},
        }  # fmt: skip
        path = tmp_path / f"config{devices}.yaml"
        path.write_text(yaml.safe_dump(config))
        run_module("hpelib.cli", ["predict", "--config", str(path), "--allow_untrained", "true"], tmp_path, timeout=600)
        tables[devices] = pd.read_csv(run / "predictions.csv")
        assert not list(run.glob("*.part"))
    assert list(tables[2]["file"]) == [str(p) for p in paths]
    pd.testing.assert_frame_equal(tables[1], tables[2], atol=1e-5)
