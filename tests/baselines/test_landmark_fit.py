"""The no-training landmark baseline (hpelib.baselines.landmark_fit): the rigid fit and the
canonical shape everywhere; Face Mesh on real AFLW2000-dev faces and the ``hpelib evaluate``
row where mediapipe 0.10.14 runs (``pip install "hpelib[detect]"``, protobuf < 5)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import roma
import torch
import yaml

from hpelib.baselines.landmark_fit import (
    FaceMeshPosePredictor,
    canonical_face_shape,
    facemesh_dataset_rotations,
    normalize_points,
    rigid_fit_rotation,
)
from hpelib.detect import mediapipe_unavailable_reason
from hpelib.rotation import geodesic_distance

AFLW_DEV = "data/AFLW2000-dev"


# ----------------------------------------------------------------------------- everywhere
def test_rigid_fit_recovers_known_rotations_from_the_canonical_points():
    g = torch.Generator().manual_seed(0)
    canonical = canonical_face_shape()
    truth = roma.random_rotmat(16, dtype=torch.float64, generator=g)
    scale = 50 + 100 * torch.rand(16, 1, 1, dtype=torch.float64, generator=g)
    shift = 300 * torch.rand(16, 1, 3, dtype=torch.float64, generator=g)
    noise = 0.01 * torch.randn(16, *canonical.shape, dtype=torch.float64, generator=g)
    # Observed landmarks in pixels: the canonical face rotated (head -> camera), scaled, moved.
    points = scale * (canonical @ truth.transpose(-1, -2) + noise) + shift
    fitted = rigid_fit_rotation(points, canonical)
    assert torch.allclose(torch.det(fitted), torch.ones(16, dtype=torch.float64))
    assert torch.rad2deg(geodesic_distance(fitted, truth)).max() < 0.5
    # The transposed (camera -> head) rotation is the classic sign slip: it must not match.
    assert torch.rad2deg(geodesic_distance(fitted.transpose(-1, -2), truth)).mean() > 20


def test_rigid_fit_checks_its_shapes():
    with pytest.raises(ValueError, match=r"\(B, K, 3\)"):
        rigid_fit_rotation(torch.zeros(468, 3), canonical_face_shape())
    with pytest.raises(ValueError, match="canonical must be"):
        rigid_fit_rotation(torch.zeros(2, 10, 3), canonical_face_shape())


def test_canonical_shape_is_an_upright_frontal_face_in_hpelib_axes():
    shape = canonical_face_shape()
    assert shape.shape == (468, 3)
    assert torch.allclose(shape, normalize_points(shape), atol=1e-4)  # centred, unit RMS
    nose, forehead, chin = shape[1], shape[10], shape[152]
    right_eye, left_eye = shape[33], shape[263]  # the subject's right eye is on image left
    assert nose[2] < -0.4  # z into the scene: the nose tip is nearest the camera
    assert forehead[1] < -1.0 < 1.0 < chin[1]  # y down
    assert right_eye[0] < -0.5 and left_eye[0] > 0.5  # x right
    assert abs(right_eye[0] + left_eye[0]) < 0.05 and abs(right_eye[1] - left_eye[1]) < 0.05


def test_missing_mediapipe_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    assert "hpelib[detect]" in mediapipe_unavailable_reason()
    with pytest.raises(ImportError, match=r'pip install "hpelib\[detect\]"'):
        FaceMeshPosePredictor()


def test_evaluate_needs_checkpoints_or_baselines_and_knows_facemesh(tmp_path):
    from hpelib.cli import tool_parser
    from hpelib.evaluate import main as evaluate_main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"test": {"name": "aflw2000", "root": "x"}}}))
    with pytest.raises(SystemExit, match="--ckpt and/or --baselines"):
        evaluate_main(["--config", str(config), "--output", str(tmp_path / "out")])
    args = tool_parser("evaluate").parse_args(["--config", str(config), "--baselines", "facemesh"])
    assert args.baselines == ["facemesh"] and args.ckpt is None
    with pytest.raises(SystemExit):
        tool_parser("evaluate").parse_args(["--config", str(config), "--baselines", "dlib"])


def test_evaluate_baseline_without_mediapipe_stops_before_any_work(tmp_path, monkeypatch):
    from hpelib.evaluate import main as evaluate_main

    monkeypatch.setitem(sys.modules, "mediapipe", None)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"test": {"name": "aflw2000", "root": "x"}}}))
    with pytest.raises(SystemExit, match=r"baseline 'facemesh' cannot run.*hpelib\[detect\]"):
        evaluate_main(["--config", str(config), "--baselines", "facemesh", "--output", str(tmp_path)])
    assert not (tmp_path / "results.csv").exists()


# ----------------------------------------------------------------------------- real faces
@pytest.fixture
def facemesh():
    reason = mediapipe_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def aflw_dev(shared_dir: Path) -> Path:
    root = shared_dir / AFLW_DEV
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


def test_real_faces_detection_rate_and_error(facemesh, aflw_dev):
    from hpelib.data.datasets import AFLW2000
    from hpelib.metrics import pose_errors

    dataset = AFLW2000(aflw_dev, image_size=64, cache="none")
    indices = range(50)
    rotations, found = facemesh_dataset_rotations(dataset, indices)
    labels = torch.stack([dataset[i]["rotation"] for i in indices])
    # Measured on these 50 faces: 47 found, MAE 3.4, geodesic 6.6 degrees; the full 979-face
    # figures are in docs/baselines.md. A sign or axis slip gives tens of degrees.
    assert found.float().mean() >= 0.85
    errors = pose_errors(rotations[found], labels[found], "300wlp")
    assert float(errors["mae"].mean()) < 6.0
    assert float(errors["geodesic"].mean()) < 10.0
    # Misses come back frontal, so the all-faces score is "misses as frontal".
    assert torch.equal(rotations[~found], torch.eye(3).expand(int((~found).sum()), 3, 3))


def test_predictor_reports_misses_and_takes_boxes(facemesh, aflw_dev):
    from hpelib.data.datasets import AFLW2000

    dataset = AFLW2000(aflw_dev, image_size=64, cache="none")
    image = dataset.load_image(0)
    crop = dataset.crop_box(0, image.size)
    blank = np.zeros((200, 200, 3), np.uint8)
    predictor = FaceMeshPosePredictor()
    pred = predictor.predict([dataset.image_path(0), blank])
    assert pred.found.tolist() == [True, False]
    assert torch.isnan(pred.rotation[1]).all() and torch.isnan(pred.euler_deg[1]).all()
    assert pred.outputs["landmarks"].shape == (2, 468, 3)
    # The same face through its crop box: landmarks in the input image's pixels, same pose.
    cropped = predictor.predict(image, crop_boxes=[crop])
    shift = (cropped.outputs["landmarks"][0] - pred.outputs["landmarks"][0]).abs().mean()
    assert float(shift) < 5.0
    assert math.degrees(geodesic_distance(cropped.rotation, pred.rotation[:1]).item()) < 5.0
    frame = predictor.predict(image, boxes=[crop]).to_dataframe()
    assert list(frame.columns[:4]) == ["x0", "y0", "x1", "y1"] and bool(frame["found"][0])
    predictor.close()


def test_evaluate_row_through_the_cli(facemesh, aflw_dev, tmp_path):
    from hpelib.cli import main

    subset = tmp_path / "aflw"
    subset.mkdir()
    for mat in sorted(aflw_dev.glob("*.mat"))[:6]:
        for path in (mat, mat.with_suffix(".jpg")):
            (subset / path.name).symlink_to(path)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"data": {"test": {"aflw": {"name": "aflw2000", "root": str(subset)}}}}))
    out = tmp_path / "out"
    main(["evaluate", "--config", str(config), "--baselines", "facemesh", "--output", str(out)])
    table = __import__("pandas").read_csv(out / "results.csv")
    assert table["checkpoint"].tolist() == ["facemesh (misses frontal)", "facemesh (found only)"]
    assert table["test_set"].tolist() == ["aflw", "aflw"]
    every, found = table.to_dict("records")
    assert every["n"] == 6 and 1 <= found["n"] <= 6
    assert every["detected"] == found["detected"] == pytest.approx(found["n"] / 6)
    assert found["mae"] < 15 and every["geodesic"] >= 0
    assert (out / "error_cdf.png").is_file() and "facemesh (found only)" in (out / "results.md").read_text()
