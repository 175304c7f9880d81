"""Predictor safety: outputs never overwrite inputs, one unreadable file never stops a folder,
results are written as they come, and invalid input is a one-line error, not a wrong pose."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hpelib.methods import SixD
from hpelib.predict import Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(SixD(backbone="test_resnet"), image_size=32)


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _good_folder(folder: Path, n: int = 3) -> list[str]:
    """``n`` readable images, alternately PNG and JPEG."""
    folder.mkdir()
    names = [f"f{i}.{'png' if i % 2 == 0 else 'jpg'}" for i in range(n)]
    for i, name in enumerate(names):
        _image(i).save(folder / name)
    return names


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every entry's bytes (a symlink: its target text, not followed)."""
    out = {}
    for entry in os.scandir(folder):
        path = Path(entry.path)
        if path.is_symlink():
            out[entry.name] = "-> " + os.readlink(path)
        elif path.is_file():
            out[entry.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def no_inference(monkeypatch):
    def fail(self, inputs, batch_size):
        raise AssertionError("inference ran before the output paths were checked")

    monkeypatch.setattr(Predictor, "_run", fail)


# ----------------------------------------------------------------- outputs never overwrite inputs
@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_annotated_dir_on_the_input_folder_is_refused_before_inference(
    predictor, tmp_path, no_inference, spelling
):
    folder = tmp_path / "faces"
    _good_folder(folder)
    before = _fingerprint(folder)
    out = {
        "same": folder,
        "dotted": tmp_path / "faces" / ".." / "faces" / ".",
        "symlink": tmp_path / "link_to_faces",
    }[spelling]
    if spelling == "symlink":
        out.symlink_to(folder, target_is_directory=True)
    with pytest.raises(
        ValueError, match=r"annotated_dir .* would overwrite 3 input image\(s\) of .*faces"
    ):
        predictor.predict_folder(folder, tmp_path / "poses.csv", annotated_dir=out)
    assert _fingerprint(folder) == before
    assert not (tmp_path / "poses.csv").exists()


def test_annotated_files_linked_to_inputs_are_refused(predictor, tmp_path, no_inference):
    # Another folder whose planned output names are a hard link / a symlink to an input.
    folder = tmp_path / "faces"
    _good_folder(folder)
    before = _fingerprint(folder)
    for kind in ("hard", "soft"):
        out = tmp_path / f"out_{kind}"
        out.mkdir()
        if kind == "hard":
            os.link(folder / "f0.png", out / "f0.png")
        else:
            (out / "f1.jpg").symlink_to(folder / "f1.jpg")
        with pytest.raises(ValueError, match="would overwrite 1 input image"):
            predictor.predict_folder(folder, annotated_dir=out)
    assert _fingerprint(folder) == before


def test_output_csv_on_an_input_or_a_directory_is_refused(predictor, tmp_path, no_inference):
    folder = tmp_path / "faces"
    _good_folder(folder)
    before = _fingerprint(folder)
    with pytest.raises(ValueError, match=r"output_csv .*f0\.png.* is the input image"):
        predictor.predict_folder(folder, folder / "f0.png")
    link = tmp_path / "poses.csv"
    link.symlink_to(folder / "f1.jpg")
    with pytest.raises(ValueError, match=r"output_csv .*poses\.csv.* is the input image .*f1\.jpg"):
        predictor.predict_folder(folder, link)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"output_csv .*out.* is a directory"):
        predictor.predict_folder(folder, tmp_path / "out")
    with pytest.raises(ValueError, match="also an annotated image path"):
        predictor.predict_folder(folder, tmp_path / "drawn" / "f0.png", tmp_path / "drawn")
    with pytest.raises(FileNotFoundError, match="folder of output_csv .*missing"):
        predictor.predict_folder(folder, tmp_path / "missing" / "poses.csv")
    assert _fingerprint(folder) == before


# ----------------------------------------------------------- one unreadable file never aborts
def _folder_with_bad_files(folder: Path) -> None:
    _good_folder(folder, 3)  # f0.png, f1.jpg, f2.png
    jpeg = io.BytesIO()
    _image(9).save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "._f1.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (folder / "broken.png").symlink_to(folder / "gone.png")
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    (folder / "sub.jpg").mkdir()  # a folder with an image suffix is not listed


def test_unreadable_files_are_reported_not_fatal(predictor, tmp_path, caplog):
    folder = tmp_path / "faces"
    _folder_with_bad_files(folder)
    with caplog.at_level(logging.WARNING, logger="hpelib"):
        table = predictor.predict_folder(
            folder, tmp_path / "poses.csv", tmp_path / "drawn", batch_size=2
        )
    names = ["._f1.jpg", "broken.png", "f0.png", "f1.jpg", "f2.png", "loop_a.jpg", "loop_b.jpg", "truncated.jpg"]  # fmt: skip
    assert list(table["path"]) == names
    errors = dict(zip(table["path"], table["error"], strict=True))
    assert {n for n, e in errors.items() if e == ""} == {"f0.png", "f1.jpg", "f2.png"}
    assert "cannot decode" in errors["._f1.jpg"] and "cannot decode" in errors["truncated.jpg"]
    assert "broken symlink" in errors["broken.png"]
    assert "symlink loop" in errors["loop_a.jpg"] and "symlink loop" in errors["loop_b.jpg"]
    good = table["error"] == ""
    assert table.loc[good, "yaw_deg"].notna().all() and table.loc[~good, "yaw_deg"].isna().all()
    # Good rows are exactly what predict gives on those files.
    direct = predictor.predict([folder / n for n in ("f0.png", "f1.jpg", "f2.png")])
    assert np.allclose(table.loc[good, "yaw_deg"], direct.euler_deg[:, 1].numpy(), atol=1e-4)
    csv = pd.read_csv(tmp_path / "poses.csv", keep_default_na=False, na_values=[""])
    assert list(csv["path"]) == names and list(csv.columns) == list(table.columns)
    assert csv["error"].isna().tolist() == good.tolist()
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["f0.png", "f1.jpg", "f2.png"]
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("hpelib")]
    assert len(warnings) == 1 and "5 of 8 images could not be read" in warnings[0]
    assert "poses.csv" in warnings[0]


def test_unreadable_files_with_a_detector(predictor, tmp_path):
    folder = tmp_path / "faces"
    _folder_with_bad_files(folder)
    table = predictor.predict_folder(
        folder, detector=lambda image: [[0, 0, 20, 20]], crop_rule="detector", batch_size=3
    )
    good = table["error"] == ""
    assert good.sum() == 3 and table.loc[good, "x0"].eq(0).all()
    assert table.loc[~good, ["x0", "yaw_deg"]].isna().all().all()


# ------------------------------------------------------------------ results written as they come
def test_interrupted_run_keeps_the_finished_rows(predictor, tmp_path, monkeypatch):
    folder = tmp_path / "faces"
    names = _good_folder(folder, 5)
    full = predictor.predict_folder(folder, tmp_path / "full.csv", batch_size=2)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full.csv", keep_default_na=False), full, check_dtype=False
    )
    run, calls = Predictor._run, []

    def crash_on_second_chunk(self, inputs, batch_size):
        calls.append(len(inputs))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return run(self, inputs, batch_size)

    monkeypatch.setattr(Predictor, "_run", crash_on_second_chunk)
    with pytest.raises(RuntimeError, match="interrupted"):
        predictor.predict_folder(folder, tmp_path / "poses.csv", batch_size=2)
    kept = pd.read_csv(tmp_path / "poses.csv", keep_default_na=False)
    assert list(kept["path"]) == names[:2]
    assert np.allclose(kept["yaw_deg"], full["yaw_deg"][:2])


# -------------------------------------------------------------------------- input validation
def test_float_images_outside_0_1_are_refused(predictor):
    image = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match=r"image 0 must be uint8 0-255 or float in \[0, 1\], got float32 values in \[0, 255\]"):  # fmt: skip
        predictor.predict(torch.cat([image[:2] * 255, torch.full((1, 32, 32), 255.0)]).floor())
    with pytest.raises(ValueError, match=r"image 1 .* got float64 values in \[-0\.5"):
        predictor.predict([np.zeros((32, 32, 3)), np.full((32, 32, 3), -0.5)])
    with pytest.raises(ValueError, match="got int64 values"):
        predictor.predict(torch.full((3, 32, 32), 200, dtype=torch.int64))
    # Rounding just outside [0, 1] is accepted, as before.
    nudged = (image * 1.0005).clamp(max=1.0005)
    assert torch.isfinite(predictor.predict(nudged).euler_deg).all()


def test_nan_or_inf_images_are_refused(predictor):
    for bad in (float("nan"), float("inf")):
        image = torch.rand(2, 3, 32, 32)
        image[1, 0, 3, 4] = bad
        with pytest.raises(ValueError, match="image 1 contains NaN or inf"):
            predictor.predict(image)


@pytest.mark.parametrize("what", ["boxes", "crop_boxes"])
def test_bad_boxes_are_refused(predictor, what):
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)

    def run(second: list[float]):
        return predictor.predict(images, **{what: [[0, 0, 16, 16], second]})

    for box, problem in (
        ([5, 5, 5, 20], "has zero area"),
        ([5, 20, 20, 10], "has zero area"),
        ([float("nan"), 0, 10, 10], "is not finite"),
        ([40, 0, 60, 10], r"lies entirely outside image 1 \(32 x 32 pixels\)"),
        ([-20, -20, 0, 0], "lies entirely outside image 1"),
    ):
        with pytest.raises(ValueError, match=rf"{what}\[1\] = \[.*\] {problem}"):
            run(box)
    # Partly outside: zero padding, as before.
    assert len(run([-8, -8, 8, 8])) == 2


def test_empty_input_and_bad_batch_size(predictor, tmp_path):
    for empty in ([], (), torch.zeros(0, 3, 32, 32)):
        with pytest.raises(ValueError, match="no images given"):
            predictor.predict(empty)
    with pytest.raises(ValueError, match="no images given"):
        predictor.predict([], detector=lambda image: [[0, 0, 9, 9]])
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    folder = tmp_path / "faces"
    _good_folder(folder, 1)
    for size in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {size}"):
            predictor.predict(image, batch_size=size)
        with pytest.raises(ValueError, match="batch_size must be a positive"):
            predictor.predict_faces(image, detector=lambda im: [[0, 0, 9, 9]], batch_size=size)
        with pytest.raises(ValueError, match="batch_size must be a positive"):
            predictor.predict_folder(folder, batch_size=size)
    with pytest.raises(TypeError, match="batch_size must be an int, got float"):
        predictor.predict(image, batch_size=2.0)
    # A frame without a face is still an empty prediction, not an error.
    assert len(predictor.predict_faces(image, detector=lambda im: [])) == 0
