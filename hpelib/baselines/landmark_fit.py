"""A no-training landmark baseline: MediaPipe Face Mesh landmarks + a rigid fit to a
canonical 3D face (the "landmarks" row of head pose papers: HopeNet's Dlib, FAN, 3DDFA).

* Landmarks: MediaPipe's Face Mesh (``mediapipe.solutions.face_mesh``, 468 points), whose
  models (BlazeFace + ``face_landmark.tflite``) are bundled in the ``mediapipe==0.10.14``
  wheel of the ``detect`` extra (``pip install "hpelib[detect]"``): used offline, never
  downloaded. MediaPipe is Apache-2.0.
* Points: Face Mesh gives ``x, y`` normalised by the image width and height and a relative
  depth ``z`` that MediaPipe documents as "roughly the same scale as x"; they are turned into
  pixels as ``(x * W, y * H, z * W)``. The axes are hpelib's internal ones (x right, y down,
  z into the scene), so the fitted rotation IS hpelib's internal rotation (head -> camera,
  ``I`` = upright frontal face): no sign flip anywhere.
* Rigid fit: Umeyama's similarity fit ``points ~ s R canonical + t`` on all 468 points
  (:func:`roma.rigid_points_registration`, scale included because the face's size in pixels
  is unknown); the weak-perspective model is enough at face distances.
* Canonical shape (:func:`canonical_face_shape`): the ``mediapipe`` wheel does NOT ship
  MediaPipe's ``canonical_face_model.obj`` (only the model files), and hpelib copies no
  data from outside. The shape is therefore derived by hpelib itself from the wheel's own
  Face Mesh model: Face Mesh run on 200 of hpelib's synthetic head renders
  (:class:`~hpelib.data.synthetic.SyntheticHeads`, weak-perspective camera, pitch/yaw/roll
  within +-20/30/15 degrees, seed 1), each landmark set centred, scaled to unit RMS radius
  and rotated back to frontal by its exact synthetic label, then averaged
  (:func:`derive_canonical_shape`, which regenerates the stored numbers in
  ``hpelib/baselines/_facemesh_shape.py``). Its frame is thus hpelib's synthetic head frame;
  no real-face label was used. On AFLW2000-dev its pitch comes out about 2 degrees above the
  AFLW2000 labels on average (a framing difference between the two head frames), see
  docs/baselines.md.

Faces Face Mesh does not find are reported by a ``found`` mask (their rotation is NaN in
:meth:`FaceMeshPosePredictor.predict`). Tables score the baseline twice: on the found faces
only, and on every face with the misses scored as the frontal pose (identity).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import roma
import torch
from PIL import Image
from torch import Tensor

from hpelib._images import _to_uint8_hwc
from hpelib.detect import import_mediapipe
from hpelib.predict import PosePrediction, _box_tensor, _check_inside, _items, _square_boxes
from hpelib.rotation import euler_names, rotation_to_euler

__all__ = [
    "FACEMESH_NUM_LANDMARKS",
    "FaceMeshLandmarker",
    "FaceMeshPosePredictor",
    "LandmarkPosePrediction",
    "canonical_face_shape",
    "derive_canonical_shape",
    "facemesh_dataset_rotations",
    "normalize_points",
    "rigid_fit_rotation",
]


#: Face Mesh points without the iris refinement.
FACEMESH_NUM_LANDMARKS = 468

#: The synthetic renders :func:`derive_canonical_shape` uses for the stored shape.
_DERIVATION = {"num_renders": 200, "seed": 1, "image_size": 192, "ranges": (20.0, 30.0, 15.0)}


# ----------------------------------------------------------------------------- geometry
def normalize_points(points: Tensor) -> Tensor:
    """``(..., K, 3)`` point sets, each centred on its centroid and scaled to unit RMS radius
    (``sqrt(mean |p|^2) = 1``), so shapes of faces of any size compare."""
    centred = points - points.mean(dim=-2, keepdim=True)
    radius = centred.square().sum(dim=-1).mean(dim=-1).sqrt()
    return centred / radius.clamp_min(torch.finfo(points.dtype).tiny)[..., None, None]


def rigid_fit_rotation(points: Tensor, canonical: Tensor, weights: Tensor | None = None) -> Tensor:
    """Rotation of the similarity transform that best maps ``canonical`` onto ``points``.

    Args:
        points: ``(B, K, 3)`` observed 3D landmarks (hpelib's camera axes: x right, y down,
            z into the scene; any unit, any origin).
        canonical: ``(K, 3)`` the same landmarks on the frontal face in head coordinates.
        weights: optional ``(B, K)`` or ``(K,)`` non-negative point weights.

    Returns:
        ``(B, 3, 3)`` rotations ``R`` (head -> camera, hpelib's internal convention) with
        ``points ~ s R canonical + t`` in the least-squares sense (Umeyama, via
        :func:`roma.rigid_points_registration` with ``compute_scaling=True``); always proper
        rotations (det +1).
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, K, 3), got {tuple(points.shape)}")
    if canonical.shape != points.shape[-2:]:
        raise ValueError(
            f"canonical must be ({points.shape[-2]}, 3) like points, got {tuple(canonical.shape)}"
        )
    dtype = torch.promote_types(points.dtype, torch.float32)
    x = normalize_points(canonical.to(points.device, dtype)).expand(len(points), -1, -1)
    y = normalize_points(points.to(dtype))
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=dtype, device=points.device)
        weights = weights.expand(len(points), -1)
    rotation, _, _ = roma.rigid_points_registration(x, y, weights=weights, compute_scaling=True)
    return rotation


@functools.lru_cache(maxsize=1)
def _stored_shape() -> Tensor:
    from hpelib.baselines._facemesh_shape import CANONICAL_SHAPE

    return torch.tensor(CANONICAL_SHAPE, dtype=torch.float64)


def canonical_face_shape() -> Tensor:
    """``(468, 3)`` float64 canonical Face Mesh shape in hpelib's head frame (x right, y
    down, z into the scene for a frontal face; centred, unit RMS radius). How it was made:
    module docstring and :func:`derive_canonical_shape`."""
    return _stored_shape().clone()


# ----------------------------------------------------------------------------- mediapipe
def _import_face_mesh() -> Any:
    import_mediapipe("the Face Mesh landmark baseline")
    from mediapipe.python.solutions import face_mesh

    return face_mesh


class FaceMeshLandmarker:
    """MediaPipe Face Mesh (static images, one face: the most confident BlazeFace face).

    Args:
        min_detection_confidence: BlazeFace score below which no face is reported.

    Use as a context manager or call :meth:`close` to free the graph.
    """

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        if not 0.0 <= min_detection_confidence <= 1.0:
            raise ValueError(
                f"min_detection_confidence must be in [0, 1], got {min_detection_confidence}"
            )
        face_mesh = _import_face_mesh()
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=1,
            refine_landmarks=False,
            min_detection_confidence=float(min_detection_confidence),
        )

    def __call__(self, image: Any) -> np.ndarray | None:
        """``(468, 3)`` float32 landmarks ``(x, y, z)`` in pixels of ``image`` (``z`` scaled
        by the width, as ``x``; larger ``z`` = farther), or ``None`` without a face."""
        array = _to_uint8_hwc(image)
        result = self._mesh.process(array)
        if not result.multi_face_landmarks:
            return None
        height, width = array.shape[:2]
        points = result.multi_face_landmarks[0].landmark
        return np.array([[p.x * width, p.y * height, p.z * width] for p in points], np.float32)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMeshLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- predictor
@dataclass
class LandmarkPosePrediction(PosePrediction):
    """:class:`~hpelib.predict.PosePrediction` plus ``found``: ``(B,)`` bool, whether Face
    Mesh found the face (``rotation`` and ``euler_deg`` are NaN where it did not), and
    ``outputs["landmarks"]``: ``(B, 468, 3)`` pixel landmarks of the input images (NaN for
    misses)."""

    found: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def to_dataframe(self) -> Any:
        """:meth:`PosePrediction.to_dataframe` plus a ``found`` column."""
        frame = super().to_dataframe()
        frame["found"] = self.found.tolist()
        return frame


def _crop(image: np.ndarray, box: Tensor) -> np.ndarray:
    """``(H, W, 3)`` uint8 image cut to ``box`` (pixel edges, integer-truncated like the
    loaders' PIL crop; outside parts black). Not resized: Face Mesh takes any size, and
    keeping the pixel aspect keeps the landmark geometry true."""
    patch = Image.fromarray(image).crop(tuple(int(v) for v in box))
    return np.ascontiguousarray(np.asarray(patch))


class FaceMeshPosePredictor:
    """Head pose from Face Mesh landmarks and a rigid fit, with :class:`hpelib.predict.Predictor`'s
    ``predict`` interface (no checkpoint, no training).

    Args:
        convention: Euler convention of the returned angles (:mod:`hpelib.rotation`).
        box_margin: enlargement of ``boxes`` per side, as a fraction of the box size.
        min_detection_confidence: Face Mesh's face detector threshold.
        canonical: ``(468, 3)`` frontal shape; default :func:`canonical_face_shape`.

    Example::

        from hpelib.baselines import FaceMeshPosePredictor
        pred = FaceMeshPosePredictor().predict(["a.jpg", "b.jpg"])
        pred.rotation[pred.found], pred.euler_deg, pred.found
    """

    def __init__(
        self,
        convention: str = "300wlp",
        box_margin: float = 0.0,
        min_detection_confidence: float = 0.5,
        canonical: Tensor | None = None,
    ) -> None:
        self.convention = convention
        self.names = euler_names(convention)
        self.box_margin = float(box_margin)
        self.canonical = canonical_face_shape() if canonical is None else torch.as_tensor(canonical)
        if tuple(self.canonical.shape) != (FACEMESH_NUM_LANDMARKS, 3):
            raise ValueError(
                f"canonical must be ({FACEMESH_NUM_LANDMARKS}, 3), got {tuple(self.canonical.shape)}"
            )
        self.landmarker = FaceMeshLandmarker(min_detection_confidence)

    def landmarks(
        self, images: Any, boxes: Any = None, crop_boxes: Any = None
    ) -> tuple[Tensor, Tensor]:
        """``(B, 468, 3)`` float32 landmarks in pixels of each input image (NaN where no face
        was found) and the ``(B,)`` found mask. ``boxes``/``crop_boxes``: as
        :meth:`predict`."""
        if boxes is not None and crop_boxes is not None:
            raise ValueError("give boxes or crop_boxes, not both")
        items = [_to_uint8_hwc(x, f"image {i}") for i, x in enumerate(_items(images))]
        cuts = self._cut_boxes(items, boxes, crop_boxes)
        out = torch.full((len(items), FACEMESH_NUM_LANDMARKS, 3), float("nan"))
        for i, image in enumerate(items):
            patch = image if cuts is None else _crop(image, cuts[i])
            points = self.landmarker(patch)
            if points is None:
                continue
            # Back to the input image's pixels (the crop is cut, not resized).
            offset = torch.zeros(3) if cuts is None else torch.tensor([*cuts[i, :2].trunc(), 0.0])
            out[i] = torch.from_numpy(points) + offset
        return out, torch.isfinite(out[:, 0, 0])

    def _cut_boxes(self, items: list[np.ndarray], boxes: Any, crop_boxes: Any) -> Tensor | None:
        given, what = (boxes, "boxes") if boxes is not None else (crop_boxes, "crop_boxes")
        cuts = _box_tensor(given, len(items), what)
        if cuts is None:
            return None
        if boxes is not None:
            cuts = _square_boxes(cuts, self.box_margin)
        for i, (image, box) in enumerate(zip(items, cuts, strict=True)):
            _check_inside(box, i, what, int(image.shape[1]), int(image.shape[0]))
        return cuts

    @torch.no_grad()
    def predict(
        self, images: Any, boxes: Any = None, crop_boxes: Any = None
    ) -> LandmarkPosePrediction:
        """Head pose of one image or a batch (paths, PIL images, ``(H, W, 3)`` uint8 arrays,
        ``(3, H, W)`` / ``(B, 3, H, W)`` tensors).

        Args:
            images: the inputs; without boxes Face Mesh looks for the face in the whole image.
            boxes: ``(B, 4)`` face boxes (x0, y0, x1, y1, pixels), enlarged by ``box_margin``
                and made square, then cut out (not resized) for Face Mesh.
            crop_boxes: ``(B, 4)`` exact cut boxes (a dataset's crop rule output).

        Returns:
            :class:`LandmarkPosePrediction`: ``rotation (B, 3, 3)`` internal convention,
            ``euler_deg (B, 3)``, ``found (B,)`` (NaN rows where not found), ``boxes`` = the
            given ``boxes``, ``outputs["landmarks"]``.
        """
        points, found = self.landmarks(images, boxes, crop_boxes)
        rotation = torch.full((len(points), 3, 3), float("nan"))
        if found.any():
            rotation[found] = rigid_fit_rotation(points[found].double(), self.canonical).float()
        euler = torch.full((len(points), 3), float("nan"))
        if found.any():
            euler[found] = torch.rad2deg(rotation_to_euler(rotation[found], self.convention))
        return LandmarkPosePrediction(
            rotation, euler, self.names, self.convention, outputs={"landmarks": points},
            boxes=None if boxes is None else _box_tensor(boxes, len(points), "boxes"), found=found,
        )  # fmt: skip

    def close(self) -> None:
        self.landmarker.close()


# ----------------------------------------------------------------------------- datasets
def _raw_item(dataset: Any, index: int) -> tuple[Any, int]:
    """The innermost dataset and item index behind split/fold/subset wrappers (``.dataset``
    + ``.indices``)."""
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        index = int(dataset.indices[index])
        dataset = dataset.dataset
    return dataset, index


def facemesh_dataset_rotations(
    dataset: Any,
    indices: Iterable[int] | None = None,
    predictor: FaceMeshPosePredictor | None = None,
) -> tuple[Tensor, Tensor]:
    """Face Mesh + rigid fit on dataset items, the call of evaluation tables.

    Each item is read at full resolution and cut to the dataset's own crop box (for
    file-based sets: ``load_image`` + ``crop_box``, e.g.
    :class:`~hpelib.data.datasets.AFLW2000`'s 6DRepNet test crop), not resized, so Face Mesh
    sees the face with its true pixel aspect (measured on AFLW2000-dev: 919 of 979 faces
    found, against 916 in the whole 450 px images and 831 in 256 px resized crops). Other
    datasets (synthetic renders, in-memory sets) give their item image as is. Split / fold
    wrappers (``.dataset`` + ``.indices``) are looked through.

    Args:
        dataset: an hpelib dataset (or a wrapper of one).
        indices: items to run (default: all).
        predictor: a predictor to reuse (default: a new one, closed at the end).

    Returns:
        ``(rotations (N, 3, 3) float32, found (N,) bool)`` in hpelib's internal convention;
        the faces Face Mesh misses get the frontal pose (identity), so the rotations score
        "misses as frontal" directly and ``rotations[found]`` the found faces only.
    """
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    own = predictor is None
    predictor = predictor or FaceMeshPosePredictor()
    rotations = torch.eye(3).repeat(len(indices), 1, 1)
    found = torch.zeros(len(indices), dtype=torch.bool)
    try:
        for k, index in enumerate(indices):
            inner, j = _raw_item(dataset, index)
            if hasattr(inner, "load_image") and hasattr(inner, "crop_box"):
                image = inner.load_image(j)
                pred = predictor.predict(image, crop_boxes=[inner.crop_box(j, image.size)])
            else:
                pred = predictor.predict(dataset[index]["image"])
            if bool(pred.found[0]):
                rotations[k], found[k] = pred.rotation[0], True
    finally:
        if own:
            predictor.close()
    return rotations, found


# ----------------------------------------------------------------------------- derivation
def derive_canonical_shape(
    num_renders: int = _DERIVATION["num_renders"],
    seed: int = _DERIVATION["seed"],
    image_size: int = _DERIVATION["image_size"],
    ranges: Sequence[float] = _DERIVATION["ranges"],
) -> tuple[Tensor, int]:
    """Rebuild the canonical shape from the wheel's Face Mesh model and hpelib's synthetic
    heads (the defaults made the stored :func:`canonical_face_shape`, reproduced to 5e-6; the
    200 renders took about 10 minutes on a busy 2-core machine).

    Each render's landmarks are normalised (:func:`normalize_points`), rotated back to the
    frontal pose by the render's exact label ``R`` (``R^T p``) and averaged; the mean is
    normalised again.

    Returns:
        ``((468, 3) float64 shape, number of renders Face Mesh found a face in)``.
    """
    from hpelib.data.synthetic import SyntheticHeads

    heads = SyntheticHeads(
        num_samples=num_renders, image_size=image_size, preset=tuple(float(r) for r in ranges),
        split="test", seed=seed, cache="none", supersample=2, camera="weak_perspective",
        num_threads=1,
    )  # fmt: skip
    frontal = []
    with FaceMeshLandmarker() as landmarker:
        for i in range(len(heads)):
            sample = heads[i]
            points = landmarker(sample["image"].permute(1, 2, 0).numpy())
            if points is None:
                continue
            p = normalize_points(torch.from_numpy(points).double())
            frontal.append(p @ sample["rotation"].double())  # rows: (R^T p)^T = p^T R
    if not frontal:
        raise RuntimeError("Face Mesh found no face in any synthetic render")
    return normalize_points(torch.stack(frontal).mean(dim=0)), len(frontal)


def _write_shape_module(shape: Tensor, path: str | os.PathLike[str], found: int) -> None:
    """Store ``shape`` as the Python literal :func:`canonical_face_shape` reads."""
    rows = "\n".join(f"    ({x:.5f}, {y:.5f}, {z:.5f})," for x, y, z in shape.tolist())
    text = (
        '"""Canonical Face Mesh shape in hpelib\'s head frame, generated by\n'
        "``hpelib.baselines.landmark_fit.derive_canonical_shape()`` (defaults: "
        f"{found} of {_DERIVATION['num_renders']} synthetic renders\n"
        "found). Do not edit by hand; see the docstring of hpelib.baselines.landmark_fit."
        '"""\n\n'
        f"CANONICAL_SHAPE: tuple[tuple[float, float, float], ...] = (\n{rows}\n)\n"
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
