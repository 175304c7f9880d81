"""Optional face detector and the detector-box -> training-crop conversion.

* :func:`detect_faces` / :class:`FaceDetector`: MediaPipe's BlazeFace (short-range model),
  ``pip install "hpelib[detect]"``. The model is the ``.tflite`` file bundled inside the
  ``mediapipe==0.10.14`` wheel (found in the installed package, never downloaded; later
  mediapipe releases ship no model file, hence the pin). Works offline, on the CPU.
* :func:`crop_boxes_from_detections`: turns detector boxes into the crop box the model saw
  in training. Needs no extra dependency.

Why the crop matters: a pose network only sees the crop, and it has learnt the framing of
its training crops (how much forehead, chin and background, where the face sits). Feeding it
a different framing (a tight detector box where training used a box enlarged by 20-40 %, or
the reverse) is a known cause of large errors, especially on yaw and pitch. The datasets'
crop rules (:mod:`hpelib.data.datasets.base`) start from a *landmark* box; a detector box
is a different box (BlazeFace's is square, reaches the forehead and is wider than the landmark
box of a turned head). So the conversion first estimates the landmark box from the detector
box, then applies the *same* crop rule as the data loaders:

* ``"6drepnet"`` / ``"hopenet"`` (300W-LP/AFLW2000 models): the evaluation-time rule
  :func:`~hpelib.data.datasets.base.crop_rule_6drepnet` (``k = 0.2``, margins
  ``2k, 2k, 2k, 0.6k``), on the landmark box estimated from the detector box;
* ``"tight"``: the estimated landmark box itself (tables whose box is a landmark box);
* ``"synthetic"``: the framing of :class:`~hpelib.data.synthetic.SyntheticHeads` (the
  quick-start configs): a square around the whole head, head height about 0.55 of the side;
* ``"detector"``: the detector box as is (models trained on this detector's crops);
* a callable with the :data:`~hpelib.data.datasets.base.CropRule` signature, applied to the
  estimated landmark box like a dataset's crop rule.

The BlazeFace -> landmark box and BlazeFace -> synthetic frame constants below were measured
with the short-range model (see their comments); another detector needs its own calibration
(or ``crop_rule="detector"`` / a callable).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpelib._images import _to_uint8_hwc
from hpelib.data.datasets.base import CropRule, crop_rule_6drepnet, crop_rule_tight

__all__ = [
    "BLAZEFACE_LANDMARK_BOX",
    "BLAZEFACE_SYNTHETIC_FRAME",
    "CROP_RULE_NAMES",
    "DETECT_EXTRA",
    "Detector",
    "FaceDetector",
    "bundled_model_path",
    "crop_boxes_from_detections",
    "detect_faces",
    "import_mediapipe",
    "landmark_boxes_from_detections",
    "mediapipe_unavailable_reason",
]

#: What to install for :func:`detect_faces` and the Face Mesh baseline (the mediapipe wheel
#: bundles their models).
DETECT_EXTRA = 'pip install "hpelib[detect]"'
_MEDIAPIPE_VERSION = "0.10.14"
_MODEL_FILE = "face_detection_short_range.tflite"

#: Landmark box (x0, y0, x1, y1) relative to the BlazeFace box centre, in BlazeFace box sides.
#: Medians over the 976 faces BlazeFace finds in the 979 filtered AFLW2000-dev images,
#: against the ``pt2d`` landmark box that the AFLW2000/300W-LP loaders feed to their crop rule
#: (landmark box 0.85 x 0.90 of the detector box, centre 0.05 sides lower; x kept symmetric).
BLAZEFACE_LANDMARK_BOX: tuple[float, float, float, float] = (-0.43, -0.39, 0.43, 0.50)

#: SyntheticHeads framing from a BlazeFace box: (side, dx, dy) in BlazeFace box sides, the
#: square training frame being centred at the box centre + (dx, dy). Medians over 203
#: frontal-preset renders (160 px, padded) in which BlazeFace found the head.
BLAZEFACE_SYNTHETIC_FRAME: tuple[float, float, float] = (2.71, 0.0, -0.14)

#: Named rules of :func:`crop_boxes_from_detections`.
CROP_RULE_NAMES: tuple[str, ...] = ("6drepnet", "hopenet", "tight", "synthetic", "detector")


# ----------------------------------------------------------------------- crop conversion
def _as_boxes(boxes: Any) -> np.ndarray:
    b = np.asarray(
        boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64
    )
    if b.size == 0:
        return b.reshape(0, 4)
    if b.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4) x0, y0, x1, y1, got shape {b.shape}")
    return b.reshape(-1, 4)


def landmark_boxes_from_detections(
    boxes: Any, calibration: tuple[float, float, float, float] = BLAZEFACE_LANDMARK_BOX
) -> np.ndarray:
    """Detector boxes ``(N, 4)`` (x0, y0, x1, y1, pixels) -> the estimated landmark boxes
    ``(N, 4)``, the input of the datasets' crop rules (``calibration``: see
    :data:`BLAZEFACE_LANDMARK_BOX`)."""
    b = _as_boxes(boxes)
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    c = np.asarray(calibration, dtype=np.float64)
    return np.stack([cx + c[0] * side, cy + c[1] * side, cx + c[2] * side, cy + c[3] * side], -1)


def crop_boxes_from_detections(
    boxes: Any,
    rule: str | CropRule = "6drepnet",
    image_wh: tuple[int, int] | None = None,
) -> np.ndarray:
    """Detector boxes ``(N, 4)`` -> crop boxes ``(N, 4)`` with the training crop rule.

    Args:
        boxes: BlazeFace boxes (x0, y0, x1, y1) in image pixels.
        rule: a name in :data:`CROP_RULE_NAMES` (see the module docstring) or a dataset
            crop rule callable.
        image_wh: image (width, height), passed to callable rules.

    Returns:
        ``(N, 4)`` float64 crop boxes in the datasets' convention (pixel edges, the box
        ``[x0, x1) x [y0, y1)`` is cut and resized to the network input, aspect ratio not
        kept), which :meth:`hpelib.predict.Predictor.predict` takes as ``crop_boxes``.
        Named rules are truncated to integers as the loaders' PIL crop does.
    """
    b = _as_boxes(boxes)
    wh = image_wh or (0, 0)
    if isinstance(rule, str):
        name = rule.lower()
        if name == "detector":
            return b.copy()
        if name == "synthetic":
            size, dx, dy = BLAZEFACE_SYNTHETIC_FRAME
            side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
            cx = (b[:, 0] + b[:, 2]) / 2 + dx * side
            cy = (b[:, 1] + b[:, 3]) / 2 + dy * side
            half = size * side / 2
            return np.trunc(np.stack([cx - half, cy - half, cx + half, cy + half], -1))
        named: dict[str, CropRule] = {
            "6drepnet": crop_rule_6drepnet, "hopenet": crop_rule_6drepnet, "tight": crop_rule_tight,
        }  # fmt: skip
        if name not in named:
            raise ValueError(
                f"unknown crop rule {rule!r}; use one of {CROP_RULE_NAMES} or a callable"
            )
        fn: CropRule = named[name]
    elif callable(rule):
        fn = rule
    else:
        raise TypeError(f"rule must be a name or a callable, got {type(rule).__name__}")
    landmarks = landmark_boxes_from_detections(b)
    # rng=None: the rules' deterministic evaluation-time variant (no train-time jitter).
    crops = [np.asarray(fn(box, wh, None), dtype=np.float64) for box in landmarks]
    out = np.stack(crops) if crops else np.zeros((0, 4))
    return np.trunc(out) if isinstance(rule, str) else out


# ----------------------------------------------------------------------------- detector
def mediapipe_unavailable_reason() -> str | None:
    """Why MediaPipe cannot run here (``None``: it can): not installed, or a protobuf too new
    for mediapipe 0.10.14, which needs ``protobuf<5`` (onnx 1.23 and tensorboard 2.21 need
    ``>=6.31``, so installing them after mediapipe upgrades protobuf under it and mediapipe
    then fails deep inside its own import)."""
    try:
        importlib.import_module("mediapipe")
    except ImportError:
        return f"MediaPipe {_MEDIAPIPE_VERSION} is not installed: {DETECT_EXTRA}"
    from google.protobuf import __version__ as protobuf_version

    if int(protobuf_version.split(".")[0]) >= 5:
        return (
            f"mediapipe {_MEDIAPIPE_VERSION} needs protobuf<5, but protobuf {protobuf_version} "
            "is installed (onnx 1.23 and tensorboard 2.21 pull protobuf>=6.31): install both in "
            'one command, e.g. pip install "hpelib[dev,detect]" (pip then picks onnx 1.22, '
            "tensorboard 2.20, protobuf 4.25)"
        )
    return None


def import_mediapipe(purpose: str) -> Any:
    """The ``mediapipe`` module, or an :class:`ImportError` saying why ``purpose`` (e.g. "the
    face detector") cannot run (:func:`mediapipe_unavailable_reason`)."""
    # MediaPipe's C++ logging is chatty (one line per graph); keep warnings and errors only,
    # unless the user chose a level.
    os.environ.setdefault("GLOG_minloglevel", "2")
    reason = mediapipe_unavailable_reason()
    if reason is not None:
        raise ImportError(f"{purpose} cannot run: {reason}")
    return importlib.import_module("mediapipe")


def bundled_model_path() -> Path:
    """Path of the BlazeFace short-range ``.tflite`` inside the installed mediapipe package."""
    mp = import_mediapipe("the face detector")
    root = Path(mp.__file__).parent
    path = root / "modules" / "face_detection" / _MODEL_FILE
    if path.is_file():
        return path
    found = sorted(root.rglob(_MODEL_FILE))
    if found:
        return found[0]
    raise FileNotFoundError(
        f"mediapipe {getattr(mp, '__version__', '?')} ships no {_MODEL_FILE} (releases after "
        f"{_MEDIAPIPE_VERSION} dropped the bundled models): {DETECT_EXTRA}, or pass "
        "model_path= a local BlazeFace short-range .tflite file"
    )


class FaceDetector:
    """MediaPipe BlazeFace (short range: faces within about 2 m of the camera).

    Args:
        min_confidence: detections scoring below are dropped.
        model_path: a BlazeFace ``.tflite``; default: the one bundled in mediapipe.

    Use as a context manager or call :meth:`close` to free the graph.
    """

    def __init__(self, min_confidence: float = 0.5, model_path: str | Path | None = None) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self._mp = import_mediapipe("the face detector")
        from mediapipe.tasks.python import BaseOptions, vision

        path = Path(model_path) if model_path is not None else bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"face detector model {str(path)!r} does not exist")
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            min_detection_confidence=float(min_confidence),
        )
        self._detector = vision.FaceDetector.create_from_options(options)
        self.model_path = path

    def detect(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """Faces in one image (path, PIL, ``(H, W, 3)`` array or ``(3, H, W)`` tensor).

        Returns:
            ``boxes (N, 4)`` float32 (x0, y0, x1, y1, image pixels, pixel edges) and
            ``scores (N,)``, most confident first.
        """
        array = _to_uint8_hwc(image)
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=array)
        found = self._detector.detect(mp_image).detections
        boxes = np.array(
            [[d.bounding_box.origin_x, d.bounding_box.origin_y,
              d.bounding_box.origin_x + d.bounding_box.width,
              d.bounding_box.origin_y + d.bounding_box.height] for d in found],
            dtype=np.float32,
        ).reshape(-1, 4)  # fmt: skip
        scores = np.array(
            [d.categories[0].score if d.categories else 0.0 for d in found], np.float32
        )
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order]

    def __call__(self, image: Any) -> np.ndarray:
        """``(N, 4)`` boxes, most confident first (see :meth:`detect`)."""
        return self.detect(image)[0]

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.lru_cache(maxsize=4)
def _shared_detector(min_confidence: float) -> FaceDetector:
    # Building the MediaPipe graph costs ~50 ms: reuse it across calls (video frames).
    return FaceDetector(min_confidence)


def detect_faces(image: Any, min_confidence: float = 0.5) -> np.ndarray:
    """Face boxes ``(N, 4)`` float32 (x0, y0, x1, y1, image pixels), most confident first,
    found by MediaPipe's bundled BlazeFace model. ``image``: path, PIL image, ``(H, W, 3)``
    uint8 array or ``(3, H, W)`` tensor. Raises ``ImportError`` naming the ``detect`` extra
    when mediapipe is not installed. Convert the boxes with :func:`crop_boxes_from_detections`
    before cropping for a pose model."""
    return _shared_detector(float(min_confidence))(image)


#: A face detector as the predictor takes it: ``(H, W, 3)`` uint8 RGB -> ``(N, 4)`` boxes.
Detector = Callable[[np.ndarray], Any]
