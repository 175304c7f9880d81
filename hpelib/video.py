"""Head poses on video: per-frame prediction, annotation and a per-frame table.

* :func:`predict_frames`: any iterable of ``(H, W, 3)`` uint8 RGB frames (no extra
  dependency); faces from given per-frame boxes, a detector, or the whole frame.
* :func:`predict_video`: video files and webcams through OpenCV (``pip install
  "hpelib[video]"``), writing an annotated video and a CSV.
* :func:`read_boxes_csv`: per-frame face boxes from a CSV (``frame, x0, y0, x1, y1``; several
  rows per frame for several faces).

Example (see ``examples/predict_video.py`` for the command line)::

    import hpelib
    from hpelib.video import predict_video

    predictor = hpelib.load("runs/sixd/checkpoints/last.ckpt")
    table = predict_video(predictor, "clip.mp4", "clip_axes.mp4", "clip_poses.csv",
                          detector="mediapipe", crop_rule="6drepnet")

A checkpoint path works in place of the predictor (loaded by :func:`load_predictor`, i.e.
:func:`hpelib.load`: the checkpoint's own input size, normalisation and crop record, never a
config's), and ``crop_rule=None`` takes the detector crop that matches the checkpoint's
evaluation data (:attr:`hpelib.predict.Predictor.detection_crop_rule`).
"""

from __future__ import annotations

import importlib
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from hpelib.predict import DetectorArg, PosePrediction, Predictor, annotate, load

if TYPE_CHECKING:
    from hpelib.data.datasets.base import CropRule

__all__ = [
    "VIDEO_EXTRA",
    "FrameResult",
    "frames_table",
    "iter_video_frames",
    "load_predictor",
    "predict_frames",
    "predict_video",
    "read_boxes_csv",
    "require_cv2",
]

#: What to install for :func:`predict_video`.
VIDEO_EXTRA = 'pip install "hpelib[video]"'
_BOX_COLUMNS = ("x0", "y0", "x1", "y1")


def require_cv2() -> Any:
    """Import OpenCV, or raise ``ImportError`` naming the ``video`` extra."""
    try:
        return importlib.import_module("cv2")
    except ImportError as err:
        raise ImportError(f"video input/output needs OpenCV: {VIDEO_EXTRA}") from err


def load_predictor(
    predictor: Predictor | str | Path, device: str = "cpu", box_margin: float = 0.0
) -> Predictor:
    """``predictor`` itself, or :func:`hpelib.load` of a checkpoint path (its own
    preprocessing and Euler convention; ``device`` and ``box_margin`` as there)."""
    if isinstance(predictor, Predictor):
        return predictor
    if isinstance(predictor, str | Path):
        return load(predictor, device=device, box_margin=box_margin)
    raise TypeError(
        f"expected a Predictor (hpelib.load) or a checkpoint path, got {type(predictor).__name__}"
    )


@dataclass
class FrameResult:
    """One processed frame.

    Attributes:
        index: frame number (0-based).
        frame: ``(H, W, 3)`` uint8 RGB frame, annotated when asked.
        prediction: the ``N >= 0`` faces of the frame (``boxes`` set unless whole-frame).
    """

    index: int
    frame: np.ndarray
    prediction: PosePrediction


def read_boxes_csv(path: str | Path) -> dict[int, np.ndarray]:
    """``{frame: (N, 4) boxes}`` from a CSV with columns ``frame, x0, y0, x1, y1`` (image
    pixels); a frame may have several rows (faces) or none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes CSV {str(path)!r} does not exist")
    table = pd.read_csv(path)
    missing = [c for c in ("frame", *_BOX_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(
            f"boxes CSV {str(path)!r} lacks column(s) {missing} (need frame, x0, y0, x1, y1)"
        )
    return {
        int(frame): group.loc[:, list(_BOX_COLUMNS)].to_numpy(np.float32)
        for frame, group in table.groupby("frame", sort=True)
    }


def predict_frames(
    predictor: Predictor | str | Path,
    frames: Iterable[np.ndarray],
    boxes: Mapping[int, Any] | None = None,
    detector: DetectorArg | None = None,
    crop_rule: str | CropRule | None = None,
    annotate_frames: bool = True,
) -> Iterator[FrameResult]:
    """Predict the head poses of a stream of frames, lazily (one frame in memory at a time).

    Args:
        predictor: from :func:`hpelib.load`, or a checkpoint path (:func:`load_predictor`).
        frames: ``(H, W, 3)`` uint8 RGB arrays (or anything the predictor accepts).
        boxes: ``{frame index: (N, 4) face boxes}`` (the predictor's ``boxes``: enlarged by
            ``box_margin`` and made square); frames absent from it have no face.
        detector: ``"mediapipe"`` or a callable (see :meth:`Predictor.predict_faces`); every
            face found is predicted, crops made with ``crop_rule``.
        crop_rule: detector box -> training crop (:mod:`hpelib.detect`); ``None``: the
            checkpoint's (:attr:`hpelib.predict.Predictor.detection_crop_rule`).
        annotate_frames: draw boxes and axes on the returned frames.

    Without ``boxes`` and ``detector`` the whole frame is the face crop.
    """
    if boxes is not None and detector is not None:
        raise ValueError("give boxes or a detector, not both")
    predictor = load_predictor(predictor)
    for index, frame in enumerate(frames):
        if detector is not None:
            pred = predictor.predict_faces(frame, detector, crop_rule)
        elif boxes is not None:
            face_boxes = np.asarray(boxes.get(index, np.zeros((0, 4))), np.float32).reshape(-1, 4)
            pred = (
                predictor.predict([frame] * len(face_boxes), boxes=face_boxes)
                if len(face_boxes)
                else PosePrediction.empty(predictor.names, predictor.convention)
            )
        else:
            pred = predictor.predict(frame)
        out = annotate(frame, pred) if annotate_frames and len(pred) else frame
        yield FrameResult(index, np.asarray(out), pred)


def frames_table(results: Iterable[FrameResult], fps: float | None = None) -> pd.DataFrame:
    """One row per face (``frame, time_s, face``, box, angles, matrix); a frame without a
    face gets one row with ``face = -1`` and NaN values, so every frame is listed."""
    rows = []
    for result in results:
        rows.append(_frame_rows(result, fps))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _frame_rows(result: FrameResult, fps: float | None) -> pd.DataFrame:
    pred = result.prediction
    if pred.boxes is None:  # whole-frame prediction: the frame is the box
        h, w = result.frame.shape[:2]
        pred = PosePrediction(
            pred.rotation, pred.euler_deg, pred.names, pred.convention,
            boxes=torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(len(pred), 4),
        )  # fmt: skip
    table = pred.to_dataframe()
    faces = list(range(len(table)))
    if table.empty:
        table = table.reindex([0])
        faces = [-1]
    table.insert(0, "face", faces)
    table.insert(0, "time_s", np.nan if not fps else result.index / fps)
    table.insert(0, "frame", result.index)
    return table


def _parse_source(source: str | int | Path) -> str | int:
    """A webcam index (``0`` or ``"0"``) or a video path."""
    if isinstance(source, int):
        return source
    text = str(source)
    if text.isdigit():
        return int(text)
    if not Path(text).is_file():
        raise FileNotFoundError(f"video {text!r} does not exist")
    return text


def iter_video_frames(
    source: str | int | Path, max_frames: int | None = None
) -> tuple[Generator[np.ndarray, None, None], float]:
    """Open a video file or webcam (index) with OpenCV.

    Returns:
        a generator of ``(H, W, 3)`` uint8 RGB frames (the capture is released when it ends
        or is closed) and the frame rate (30 when the source does not tell, as webcams often
        do not).
    """
    cv2 = require_cv2()
    src = _parse_source(source)
    capture = cv2.VideoCapture(src)
    if not capture.isOpened():
        raise OSError(f"OpenCV cannot open {'webcam' if isinstance(src, int) else 'video'} {src!r}")
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0

    def frames() -> Generator[np.ndarray, None, None]:
        try:
            count = 0
            while max_frames is None or count < max_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                count += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR
        finally:
            capture.release()

    return frames(), fps


def _open_writer(cv2: Any, path: Path, fps: float, size: tuple[int, int]) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mp4v for .mp4/.m4v/.mov (the codec OpenCV's bundled FFmpeg always has), MJPG otherwise.
    fourcc = "mp4v" if path.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise OSError(
            f"OpenCV cannot write {str(path)!r} with codec {fourcc} (try a .avi or .mp4 name)"
        )
    return writer


def _check_not_inputs(outputs: list[str | Path | None], inputs: list[str | Path]) -> None:
    """An output file that is one of the inputs (video, boxes CSV, checkpoint) is an error:
    writing it would destroy the input."""
    for out in outputs:
        if out is None or not Path(out).exists():
            continue
        for given in inputs:
            if Path(given).exists() and Path(out).samefile(given):
                raise ValueError(f"output {str(out)!r} would overwrite the input {str(given)!r}")


def predict_video(
    predictor: Predictor | str | Path,
    source: str | int | Path,
    output_video: str | Path | None = None,
    output_csv: str | Path | None = None,
    boxes: Mapping[int, Any] | str | Path | None = None,
    detector: DetectorArg | None = None,
    crop_rule: str | CropRule | None = None,
    max_frames: int | None = None,
) -> pd.DataFrame:
    """Predict head poses on every frame of a video file or webcam.

    Args:
        predictor: from :func:`hpelib.load`, or a checkpoint path (:func:`load_predictor`).
        source: video path, or webcam index (``0``).
        output_video: annotated video (boxes + axes); ``.mp4`` (mp4v) or ``.avi`` (MJPG).
        output_csv: per-frame table (see :func:`frames_table`).
        boxes: per-frame face boxes, a mapping or a CSV path (:func:`read_boxes_csv`).
        detector, crop_rule: see :func:`predict_frames`.
        max_frames: stop after this many frames (a webcam runs until then or Ctrl-C).

    Returns:
        the per-frame table.
    """
    cv2 = require_cv2()
    inputs = [p for p in (source, boxes, predictor) if isinstance(p, str | Path)]
    _check_not_inputs([output_video, output_csv], inputs)
    predictor = load_predictor(predictor)
    if isinstance(boxes, str | Path):
        boxes = read_boxes_csv(boxes)
    frames, fps = iter_video_frames(source, max_frames)
    writer = None
    tables = []
    try:
        for result in predict_frames(
            predictor, frames, boxes, detector, crop_rule, annotate_frames=output_video is not None
        ):
            tables.append(_frame_rows(result, fps))
            if output_video is not None:
                if writer is None:  # sized from the first frame (webcams may not report it)
                    h, w = result.frame.shape[:2]
                    writer = _open_writer(cv2, Path(output_video), fps, (w, h))
                writer.write(cv2.cvtColor(np.ascontiguousarray(result.frame), cv2.COLOR_RGB2BGR))
    except KeyboardInterrupt:  # a webcam run ends with Ctrl-C: keep what was done
        pass
    finally:
        if writer is not None:
            writer.release()
        frames.close()  # releases the capture
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if output_csv is not None:
        Path(output_csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(output_csv, index=False)
    return table
