"""hpelib.detect: detector box -> training crop (pure functions) and the MediaPipe detector
(skipped without ``pip install "hpelib[detect]"``)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hpelib.data.datasets.base import crop_rule_6drepnet
from hpelib.detect import (
    BLAZEFACE_LANDMARK_BOX,
    BLAZEFACE_SYNTHETIC_FRAME,
    crop_boxes_from_detections,
    landmark_boxes_from_detections,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = np.maximum(a[:2], b[:2])
    x1, y1 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return float(inter / (area - inter))


def _detection_for(landmark_box: np.ndarray) -> np.ndarray:
    """The BlazeFace box whose calibrated landmark box has the x extent and top of
    ``landmark_box`` (the calibration fixes the aspect ratio, so y1 may differ)."""
    c = np.asarray(BLAZEFACE_LANDMARK_BOX)
    side = (landmark_box[2] - landmark_box[0]) / (c[2] - c[0])
    cx = landmark_box[0] - c[0] * side
    cy = landmark_box[1] - c[1] * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


# ------------------------------------------------------------------ crop rules (no extras)
def test_landmark_box_from_a_detector_box():
    lm = landmark_boxes_from_detections([[100, 100, 200, 200]])
    assert np.allclose(lm, [[107, 111, 193, 200]])
    # Non-square boxes use their larger side; tensors are accepted.
    lm2 = landmark_boxes_from_detections(torch.tensor([[100.0, 120.0, 200.0, 180.0]]))
    assert np.allclose(lm2, [[107, 111, 193, 200]])
    assert landmark_boxes_from_detections(np.zeros((0, 4))).shape == (0, 4)


def test_6drepnet_rule_is_the_loaders_evaluation_crop():
    det = np.array([[100.0, 80.0, 220.0, 200.0], [10.0, 20.0, 40.0, 50.0]])
    crops = crop_boxes_from_detections(det, "6drepnet", (450, 450))
    for d, crop in zip(det, crops, strict=True):
        lm = landmark_boxes_from_detections(d[None])[0]
        # The same function the AFLW2000/300W-LP loaders call, eval variant, PIL's int().
        assert np.array_equal(crop, np.trunc(crop_rule_6drepnet(lm, (450, 450), None)))
    # The crop is much larger than the detector box: k = 0.2 margins of (2k, 2k, 2k, 0.6k).
    w, h = crops[0, 2] - crops[0, 0], crops[0, 3] - crops[0, 1]
    assert 1.6 < w / 120 < 1.8 and 1.3 < h / 120 < 1.5
    assert np.array_equal(crop_boxes_from_detections(det, "hopenet"), crops)


def test_other_named_rules_and_callables():
    det = np.array([[100.0, 100.0, 200.0, 200.0]])
    assert np.array_equal(crop_boxes_from_detections(det, "detector"), det)
    assert np.array_equal(crop_boxes_from_detections(det, "tight"), [[107, 111, 193, 200]])
    side, dx, dy = BLAZEFACE_SYNTHETIC_FRAME
    synth = crop_boxes_from_detections(det, "synthetic")[0]
    assert (
        abs((synth[2] - synth[0]) - side * 100) <= 1
        and abs((synth[3] - synth[1]) - side * 100) <= 1
    )
    assert abs((synth[1] + synth[3]) / 2 - (150 + dy * 100)) <= 1  # frame centred above the box
    seen = []

    def rule(box, image_wh, rng):
        seen.append((box.tolist(), image_wh, rng))
        return box + np.array([-1.0, -1.0, 1.0, 1.0])

    out = crop_boxes_from_detections(det, rule, (640, 480))
    assert seen == [([107.0, 111.0, 193.0, 200.0], (640, 480), None)]
    assert np.allclose(out, [[106, 110, 194, 201]])
    with pytest.raises(ValueError, match="unknown crop rule 'huge'"):
        crop_boxes_from_detections(det, "huge")
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        crop_boxes_from_detections(np.zeros((2, 3)))
    assert crop_boxes_from_detections(np.zeros((0, 4)), "6drepnet").shape == (0, 4)


def test_ideal_detections_reproduce_the_aflw2000_loader_crop(shared_dir):
    """A detection whose calibrated landmark box is the label box gives the loader's crop."""
    from hpelib.data.datasets import AFLW2000

    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = AFLW2000(root, image_size=64, cache=None)
    c = BLAZEFACE_LANDMARK_BOX
    aspect = (c[3] - c[1]) / (c[2] - c[0])  # the calibration's landmark box aspect ratio
    boxes = ds.index.loc[:, ["x0", "y0", "x1", "y1"]].to_numpy(np.float64)
    ratio = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0]) / aspect
    same_shape = np.flatnonzero(np.abs(ratio - 1) < 0.02)  # mostly frontal faces
    assert len(same_shape) >= 10
    for i in same_shape[:: max(1, len(same_shape) // 12)]:
        image_wh = Image.open(ds.image_path(i)).size
        truth = ds.crop_box(i, image_wh)
        crop = crop_boxes_from_detections(_detection_for(boxes[i])[None], "6drepnet", image_wh)[0]
        # Up to int() and the 2 % aspect ratio tolerance of the selection.
        assert np.abs(crop - truth).max() <= 1 + 0.02 * (truth[2] - truth[0]), (i, crop, truth)


def test_missing_mediapipe_names_the_extra(monkeypatch):
    import hpelib.detect as detect

    detect._shared_detector.cache_clear()
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(ImportError, match=r'pip install "hpelib\[detect\]"'):
        detect.detect_faces(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImportError, match="0.10.14"):
        detect.FaceDetector()
    detect._shared_detector.cache_clear()


# ----------------------------------------------------------------------- MediaPipe (extra)
@pytest.fixture(scope="module")
def mediapipe():
    return pytest.importorskip("mediapipe", reason='pip install "hpelib[detect]"')


def _synthetic_canvas(size: int = 160) -> tuple[np.ndarray, dict, tuple[int, int]]:
    """A frontal rendered head (its training frame) pasted in the middle of a grey canvas."""
    from hpelib.data.synthetic import SyntheticHeads

    sample = SyntheticHeads(1, size, preset=(0.0, 0.0, 0.0), split="test", seed=0, cache="none")[0]
    canvas = np.full((2 * size, 2 * size, 3), 128, np.uint8)
    offset = (size // 2, size // 3)
    canvas[offset[1] : offset[1] + size, offset[0] : offset[0] + size] = (
        sample["image"].permute(1, 2, 0).numpy()
    )
    return canvas, sample, offset


def test_bundled_model_is_found_inside_mediapipe(mediapipe):
    from hpelib.detect import bundled_model_path

    path = bundled_model_path()
    assert path.suffix == ".tflite" and path.is_file()
    assert str(path).startswith(str(__import__("pathlib").Path(mediapipe.__file__).parent))


def test_detector_finds_a_rendered_face_and_the_synthetic_frame(mediapipe):
    from hpelib.detect import FaceDetector, detect_faces

    canvas, sample, (ox, oy) = _synthetic_canvas()
    with FaceDetector(min_confidence=0.3) as detector:
        boxes, scores = detector.detect(canvas)
    assert len(boxes) >= 1 and scores[0] >= 0.3 and np.all(np.diff(scores) <= 0)
    face = sample["box"].numpy() + np.array([ox, oy, ox, oy])  # landmark box in the canvas
    assert _iou(boxes[0].astype(np.float64), face) > 0.3
    # The "synthetic" rule recovers the training frame (the pasted image) from the box.
    frame = crop_boxes_from_detections(boxes[:1], "synthetic")[0]
    assert _iou(frame, np.array([ox, oy, ox + 160, oy + 160], np.float64)) > 0.6
    # Same detections from every input kind, through the cached module-level detector.
    as_tensor = torch.from_numpy(canvas).permute(2, 0, 1)
    assert np.allclose(detect_faces(as_tensor, 0.3)[0], boxes[0], atol=1)
    assert np.allclose(detect_faces(Image.fromarray(canvas), 0.3)[0], boxes[0], atol=1)
    assert detect_faces(np.full((64, 64, 3), 128, np.uint8)).shape == (0, 4)


def test_calibrated_crops_match_the_aflw2000_crops(mediapipe, shared_dir):
    from hpelib.data.datasets import AFLW2000
    from hpelib.detect import detect_faces

    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = AFLW2000(root, image_size=64, cache=None)
    calibrated, raw = [], []
    for i in range(0, len(ds), 50):
        path = ds.image_path(i)
        truth = ds.crop_box(i, Image.open(path).size)
        boxes = detect_faces(path)
        if len(boxes) == 0:
            continue
        crop = crop_boxes_from_detections(boxes[:1], "6drepnet", Image.open(path).size)[0]
        calibrated.append(_iou(crop, truth))
        raw.append(_iou(boxes[0].astype(np.float64), truth))
    assert len(calibrated) >= 15
    # Measured on the dev half: median IoU 0.81 (calibrated) vs 0.45 (raw detector box).
    assert np.median(calibrated) > 0.7 and np.median(raw) < 0.6


def test_predict_with_mediapipe_end_to_end(mediapipe, tmp_path):
    import lightning as L

    import hpelib
    from hpelib.data.datamodule import HPEDataModule
    from hpelib.methods import SixD
    from tests.toy import AxisGlyphDataset

    L.seed_everything(0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(
        SixD(backbone="test_resnet"), HPEDataModule(train=AxisGlyphDataset(16, 32), batch_size=8)
    )
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    predictor = hpelib.load(tmp_path / "m.ckpt")
    canvas, _, _ = _synthetic_canvas()
    pred = predictor.predict(canvas, detector="mediapipe", crop_rule="synthetic")
    assert len(pred) == 1 and pred.boxes.shape == (1, 4)
    faces = predictor.predict_faces(canvas, detector="mediapipe")
    assert len(faces) >= 1 and torch.allclose(faces.boxes[0], pred.boxes[0])
