"""PoseGallery: a test run writes the picture into its run folder, with the axes drawn the
right way and never over an existing file; hpelib.viz's comparison drawing and grid."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

import hpelib.rotation as hr
from hpelib.callbacks import PoseGallery
from hpelib.callbacks.pose_gallery import evenly_spaced
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic import SyntheticHeads
from hpelib.methods import SixD
from hpelib.viz import (
    AXIS_COLORS,
    TRUTH_ALPHA,
    TRUTH_LIGHTEN,
    GalleryRow,
    draw_pose_comparison,
    pose_gallery,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sixd.yaml"


def _roll(degrees: float) -> torch.Tensor:
    zero = torch.tensor(0.0)
    return hr.rotation_from_euler_300wlp(zero, zero, torch.tensor(math.radians(degrees)))


def _is_axis_colour(pixel: np.ndarray, axis: int, pale: bool = False) -> bool:
    """Whether ``pixel`` is the colour of ``axis`` (0 red, 1 green, 2 blue): saturated (the
    prediction), or pale and blended over black (the truth band)."""
    expected = np.asarray(AXIS_COLORS[axis], float)
    if pale:
        expected = TRUTH_ALPHA * (expected + TRUTH_LIGHTEN * (255 - expected))
    return bool(np.abs(pixel.astype(float) - expected).max() <= 3)


# ------------------------------------------------------------------------------ drawing
def test_identity_axes_point_right_and_up():
    """Identity pose (frontal, upright): red (x) right of centre, green (up) above it."""
    image = np.zeros((101, 101, 3), np.uint8)
    out = draw_pose_comparison(image, torch.eye(3), torch.eye(3), center=(50, 50), size=40)
    assert _is_axis_colour(out[50, 75], 0)  # right of centre: the predicted red line
    assert _is_axis_colour(out[25, 50], 1)  # above centre: green
    assert not out[50, 5:40].any() and not out[60:, 50].any()  # nothing left or below
    assert not image.any()  # the input is not modified


def test_truth_band_and_prediction_line_are_told_apart():
    """Prediction = identity, truth rolled 90 degrees clockwise: the thin opaque red line goes
    right, the wide pale red band down (the roll turns the head's x axis to image down), and
    the truth's green (up) band now lies under the predicted red line."""
    image = np.zeros((101, 101, 3), np.uint8)
    out = draw_pose_comparison(image, torch.eye(3), _roll(90), center=(50, 50), size=40, width=3)
    assert _is_axis_colour(out[50, 75], 0)  # prediction: opaque red, 3 px wide, to the right
    assert np.abs(out[52, 75].astype(int) - 20).max() <= 3  # its dark outline
    assert _is_axis_colour(out[54, 75], 1, pale=True)  # the truth's green band around it
    assert _is_axis_colour(out[75, 50], 0, pale=True)  # truth: pale red band downwards
    assert _is_axis_colour(out[75, 46], 0, pale=True)  # ... 9 px wide
    assert not out[75, 44].any()


def test_pose_gallery_size_and_rows():
    n, cell, pad = 3, 64, 8
    rows = [
        GalleryRow("a", torch.rand(n, 3, 32, 32), torch.eye(3).expand(n, 3, 3), _roll(30).expand(n, 3, 3)),
        GalleryRow("b", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.eye(3).expand(2, 3, 3),
                   torch.eye(3).expand(2, 3, 3), centers=torch.full((2, 2), 16.0)),
    ]  # fmt: skip
    picture = pose_gallery(rows, cell_size=cell, title="t", pad=pad)
    line_h = 22
    header = pad + line_h + 2 * line_h + pad
    assert picture.size == (900, header + 2 * (line_h + cell + pad))  # at least 900 wide
    wide = pose_gallery(rows[:1], cell_size=400, pad=pad)
    assert wide.size == (pad + n * (400 + pad), pad + 2 * line_h + pad + line_h + 400 + pad)
    with pytest.raises(ValueError, match=r"predicted must be \(3, 3, 3\)"):
        GalleryRow("bad", torch.rand(3, 3, 32, 32), torch.eye(3).expand(2, 3, 3), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match="at least one row"):
        pose_gallery([])


def test_evenly_spaced():
    assert evenly_spaced(512, 8) == [0, 73, 146, 219, 292, 365, 438, 511]
    assert evenly_spaced(5, 8) == [0, 1, 2, 3, 4]
    assert evenly_spaced(None, 3) == [0, 1, 2]


def test_pose_gallery_rejects_paths_as_filename():
    with pytest.raises(ValueError, match="plain file name"):
        PoseGallery(filename="../x.png")
    with pytest.raises(ValueError, match="num_images"):
        PoseGallery(num_images=0)


# ------------------------------------------------------------------------------ in a test run
def _data(size: int = 32) -> HPEDataModule:
    def heads(n: int, split: str, preset: str = "full_range") -> SyntheticHeads:
        return SyntheticHeads(n, size, preset=preset, split=split, seed=0)

    return HPEDataModule(
        train=heads(32, "train"),
        test={"full_range": heads(20, "test"), "frontal": heads(12, "test", "frontal")},
        batch_size=8,
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[SixD, HPEDataModule, Path]:
    root = tmp_path_factory.mktemp("gallery")
    L.seed_everything(0)
    model, data = SixD(backbone="test_resnet", pretrained=False), _data()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, data)
    return model, data, root


def _test(model: SixD, data: HPEDataModule, root: Path, gallery: PoseGallery) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", logger=CSVLogger(root, name="logs"), callbacks=[gallery],
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.test(model, data, verbose=False)
    return trainer


def test_test_run_writes_the_picture_into_its_run_folder(fitted):
    model, data, root = fitted
    gallery = PoseGallery(num_images=4, cell_size=48)
    trainer = _test(model, data, root, gallery)
    assert gallery.path == Path(trainer.log_dir) / "pose_gallery.png"
    assert gallery.path.parent == root / "logs" / "version_0"
    with Image.open(gallery.path) as picture:
        # 4 heads per set, 2 sets: 900 px wide (the minimum), header + 2 rows of 48-px cells.
        assert picture.size == (900, 8 + 3 * 22 + 8 + 2 * (22 + 48 + 8))
        assert picture.mode == "RGB"
    # A second test run gets its own version folder: the first picture stays.
    first = gallery.path.read_bytes()
    second = _test(model, data, root, PoseGallery(num_images=4, cell_size=48))
    assert Path(second.log_dir).name == "version_1"
    assert (root / "logs" / "version_0" / "pose_gallery.png").read_bytes() == first


def test_an_existing_file_is_not_overwritten(fitted, tmp_path):
    model, data, _ = fitted
    folder = tmp_path / "logs" / "version_0"
    folder.mkdir(parents=True)
    mine = folder / "pose_gallery.png"
    mine.write_bytes(b"the user's own file")
    gallery = PoseGallery(num_images=2, cell_size=48)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[gallery], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
    )  # fmt: skip
    trainer.test(model, data, verbose=False)
    assert mine.read_bytes() == b"the user's own file"
    assert gallery.path == folder / "pose_gallery-v1.png" and gallery.path.is_file()


def test_picked_heads_are_spread_and_match_their_labels(fitted, tmp_path):
    """The drawn truth is the label of the picked head (first and last of the set)."""
    model, data, _ = fitted
    gallery = PoseGallery(num_images=3, cell_size=48)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[gallery], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.test(model, data, verbose=False)
    full_range = gallery._sets[0]
    assert full_range.wanted == [0, 10, 19]  # 20 heads, batches of 8: three batches
    row = full_range.row()
    expected = torch.stack([data.test_datasets[0][i]["rotation"] for i in (0, 10, 19)])
    torch.testing.assert_close(row.true, expected)
    assert row.images.shape == (3, 3, 32, 32) and 0 <= row.images.min() and row.images.max() <= 1
    # The normalisation is undone: the drawn image is the dataset's image.
    torch.testing.assert_close(
        (row.images[0] * 255).round().to(torch.uint8), data.test_datasets[0][0]["image"], atol=1, rtol=0
    )
    assert row.label == "full_range: 3 of 20 test heads, evenly spaced"


def _tiny_example(tmp: Path) -> Path:
    """examples/sixd.yaml shrunk to seconds: 32-px heads, a few of each, 2 steps, everything
    written under ``tmp``."""
    config = yaml.safe_load(EXAMPLE.read_text())
    data = config["data"]
    for spec in [data["train"], data["val"], *data["test"].values()]:
        spec["init_args"].update(num_samples=16, image_size=32)
    data["batch_size"] = 8
    trainer = config["trainer"]
    trainer["callbacks"] = [c for c in trainer["callbacks"] if "ProgressBar" not in c["class_path"]]
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp / "checkpoints")
        if callback["class_path"].endswith("PoseGallery"):
            callback["init_args"]["cell_size"] = 48
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(tmp)
    trainer.update(
        max_steps=2, accelerator="cpu", default_root_dir=str(tmp), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    path = tmp / "sixd_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_example_config_fit_then_test_writes_the_picture(tmp_path, monkeypatch):
    """The README's main job, shrunk: `hpelib fit` then `hpelib test --ckpt_path last` with
    examples/sixd.yaml leaves the picture in the test run's folder; the config's training is
    bounded by time (at most 5 minutes) with the learning rate following it."""
    from hpelib.cli import build_cli

    config = yaml.safe_load(EXAMPLE.read_text())
    names = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert {"hpelib.callbacks.TimeBudgetLR", "lightning.pytorch.callbacks.LearningRateMonitor"} <= set(names)
    days, hours, minutes, seconds = (int(p) for p in config["trainer"]["max_time"].split(":"))
    assert 0 < ((days * 24 + hours) * 60 + minutes) * 60 + seconds <= 300
    assert set(config["data"]["test"]) == {"synthetic_full_range", "synthetic_frontal"}

    monkeypatch.setattr(sys, "argv", ["hpelib"])  # build_cli's args, not pytest's
    tiny = _tiny_example(tmp_path)
    build_cli(["fit", "--config", str(tiny)])
    cli = build_cli(["test", "--config", str(tiny), "--ckpt_path", "last"])
    (gallery,) = [c for c in cli.trainer.callbacks if isinstance(c, PoseGallery)]
    assert gallery.path == tmp_path / "logs" / "version_1" / "pose_gallery.png"  # fit: version_0
    with Image.open(gallery.path) as picture:
        # 8 heads in each of the two test sets: 8 cells of 48 px (900 px, the minimum width).
        assert picture.size == (900, 8 + 3 * 22 + 8 + 2 * (22 + 48 + 8))
