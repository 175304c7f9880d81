"""hpelib.video and examples/predict_video.py: per-frame prediction (no extras), the OpenCV
video path (skipped without ``pip install "hpelib[video]"``) and the missing-extra messages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import hpelib
from hpelib.video import frames_table, predict_frames, read_boxes_csv, require_cv2
from tests.test_predict import checkpoint  # noqa: F401  # the tiny trained SixD fixture
from tests.toy import AxisGlyphDataset

ROOT = Path(__file__).resolve().parents[1]


def _frames(n: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` 96 px frames with a 32 px glyph face at rows 40:72, columns 20:52."""
    ds = AxisGlyphDataset(n, 32, seed=3)
    frames = []
    for i in range(n):
        frame = np.zeros((96, 96, 3), np.uint8)
        frame[40:72, 20:52] = ds[i]["image"].permute(1, 2, 0).numpy()
        frames.append(frame)
    return frames, np.array([[20, 40, 51, 71]], np.float32)


def _example_module():
    spec = importlib.util.spec_from_file_location(
        "predict_video", ROOT / "examples" / "predict_video.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_frames_with_boxes_detector_and_whole_frames(checkpoint):  # noqa: F811
    predictor = hpelib.load(checkpoint)
    frames, box = _frames(4)
    boxes = {0: box, 2: np.concatenate([box, box])}  # frame 1 and 3: no face
    results = list(predict_frames(predictor, frames, boxes=boxes))
    assert [len(r.prediction) for r in results] == [1, 0, 2, 0]
    direct = predictor.predict(frames[0], boxes=box)
    assert torch.allclose(results[0].prediction.rotation, direct.rotation, atol=1e-5)
    assert (results[0].frame != frames[0]).any()  # annotated
    assert np.array_equal(results[1].frame, frames[1])  # no face: untouched

    def detector(image: np.ndarray) -> np.ndarray:
        return np.array([[20, 40, 52, 72]], np.float32)

    found = list(predict_frames(predictor, frames[:2], detector=detector, crop_rule="detector"))
    assert [len(r.prediction) for r in found] == [1, 1]
    whole = list(predict_frames(predictor, frames[:2], annotate_frames=False))
    assert whole[0].prediction.boxes is None and np.array_equal(whole[0].frame, frames[0])
    with pytest.raises(ValueError, match="boxes or a detector"):
        next(predict_frames(predictor, frames, boxes=boxes, detector=detector))

    table = frames_table(results, fps=10.0)
    assert list(table["frame"]) == [0, 1, 2, 2, 3] and list(table["face"]) == [0, -1, 0, 1, -1]
    assert table["yaw_deg"].isna().tolist() == [False, True, False, False, True]
    assert np.allclose(table["time_s"], [0.0, 0.1, 0.2, 0.2, 0.3])
    assert frames_table(whole).loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [0, 0, 96, 96]


def test_read_boxes_csv(tmp_path):
    path = tmp_path / "boxes.csv"
    pd.DataFrame(
        {"frame": [0, 2, 2], "x0": [1, 2, 3], "y0": [1, 2, 3], "x1": [9, 9, 9], "y1": [9, 9, 9]}
    ).to_csv(path, index=False)
    boxes = read_boxes_csv(path)
    assert sorted(boxes) == [0, 2] and boxes[2].shape == (2, 4) and boxes[0][0, 0] == 1
    pd.DataFrame({"frame": [0], "x0": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['y0', 'x1', 'y1'\]"):
        read_boxes_csv(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_boxes_csv(tmp_path / "nope.csv")


def test_missing_opencv_names_the_extra(monkeypatch, checkpoint, tmp_path):  # noqa: F811
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(ImportError, match=r'pip install "hpelib\[video\]"'):
        require_cv2()
    with pytest.raises(ImportError, match=r"hpelib\[video\]"):
        hpelib.video.predict_video(hpelib.load(checkpoint), "clip.mp4")
    example = _example_module()
    with pytest.raises(SystemExit, match=r'pip install "hpelib\[video\]"'):
        example.main(["--checkpoint", checkpoint, "--source", str(tmp_path / "clip.mp4")])


# ------------------------------------------------------------------------ OpenCV (extra)
def _write_video(cv2, path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (96, 96))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_predict_video_writes_video_and_csv(checkpoint, tmp_path):  # noqa: F811
    cv2 = pytest.importorskip("cv2", reason='pip install "hpelib[video]"')
    frames, box = _frames(5)
    source = tmp_path / "clip.avi"
    _write_video(cv2, source, frames)
    boxes_csv = tmp_path / "boxes.csv"
    pd.DataFrame(
        [
            {"frame": i, "x0": box[0, 0], "y0": box[0, 1], "x1": box[0, 2], "y1": box[0, 3]}
            for i in (0, 1, 3)
        ]
    ).to_csv(boxes_csv, index=False)

    table = hpelib.video.predict_video(
        hpelib.load(checkpoint), source, tmp_path / "out" / "axes.mp4", tmp_path / "poses.csv",
        boxes=boxes_csv, max_frames=4,
    )  # fmt: skip
    assert list(table["frame"]) == [0, 1, 2, 3] and list(table["face"]) == [0, 0, -1, 0]
    assert np.allclose(table["time_s"], [0.0, 0.1, 0.2, 0.3])
    assert len(pd.read_csv(tmp_path / "poses.csv")) == 4
    capture = cv2.VideoCapture(str(tmp_path / "out" / "axes.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (96, 96, 3)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        hpelib.video.predict_video(hpelib.load(checkpoint), tmp_path / "missing.mp4")


def test_example_script_end_to_end(checkpoint, tmp_path, capsys):  # noqa: F811
    cv2 = pytest.importorskip("cv2", reason='pip install "hpelib[video]"')
    frames, box = _frames(3)
    source = tmp_path / "clip.avi"
    _write_video(cv2, source, frames)
    out = tmp_path / "axes.avi"
    code = _example_module().main(
        ["--checkpoint", checkpoint, "--source", str(source), "--output", str(out)]
    )
    assert code == 0 and out.is_file()
    table = pd.read_csv(tmp_path / "axes.csv")  # default CSV next to the video
    assert list(table["frame"]) == [0, 1, 2] and "yaw_deg" in table.columns
    assert "3 frames, 3 faces" in capsys.readouterr().out
