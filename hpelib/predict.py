"""Inference API: ``hpelib.load(checkpoint).predict(images)``.

The predictor repeats the preprocessing the model was trained with (input size,
normalisation, grayscale), read from the checkpoint's own record
(:func:`hpelib.checkpoint_io.checkpoint_preprocessing`; :attr:`Predictor.preprocessing` gives it
back as a JSON-able dict), never from a config, and accepts image paths, PIL images,
``(H, W, 3)`` uint8 arrays, and ``(3, H, W)`` / ``(B, 3, H, W)`` tensors (uint8, or float in
[0, 1]). The face crop is one of:

* nothing given: the whole image (already-cropped faces);
* ``boxes`` (x0, y0, x1, y1 in the image's pixels): each box, enlarged by ``box_margin`` on
  every side and made square, is cropped and resized;
* ``crop_boxes``: the exact crop boxes in the data loaders' convention (pixel edges, cut and
  resized without keeping the aspect ratio), e.g. a dataset's crop rule output;
* ``detector`` (``"mediapipe"`` or a callable): faces are detected and their boxes turned
  into the training crop by ``crop_rule`` (:func:`hpelib.detect.crop_boxes_from_detections`;
  the crop must match the training crops, see :mod:`hpelib.detect`); by default the rule
  that matches the checkpoint's evaluation crop (:attr:`Predictor.detection_crop_rule`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kornia
import numpy as np
import pandas as pd
import torch
from kornia.color import rgb_to_grayscale
from PIL import Image
from torch import Tensor

from hpelib._images import _read_image, _to_float_chw, _to_uint8_hwc
from hpelib.checkpoint_io import checkpoint_preprocessing, read_checkpoint
from hpelib.rotation import ImageWarp, euler_names, rotation_to_euler

if TYPE_CHECKING:
    from hpelib.data.datasets.base import CropRule

__all__ = [
    "IMAGE_SUFFIXES",
    "PosePrediction",
    "Predictor",
    "annotate",
    "load",
    "load_module",
    "load_with_preprocessing",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_log = logging.getLogger(__name__)


@dataclass
class PosePrediction:
    """Batched predictions.

    Attributes:
        rotation: ``(B, 3, 3)`` internal-convention rotations.
        euler_deg: ``(B, 3)`` angles in degrees, in the order of ``names``.
        names: angle names of ``convention``.
        convention: the Euler convention name.
        outputs: every tensor output of the method (e.g. OpNet's covariances), batched.
        boxes: ``(B, 4)`` face boxes (x0, y0, x1, y1, image pixels) the crops were made
            from (given ``boxes`` or detector boxes); ``None`` for whole images / crop boxes.
    """

    rotation: Tensor
    euler_deg: Tensor
    names: tuple[str, str, str]
    convention: str
    outputs: dict[str, Tensor] = field(default_factory=dict)
    boxes: Tensor | None = None

    def __len__(self) -> int:
        return int(self.rotation.shape[0])

    @classmethod
    def empty(cls, names: tuple[str, str, str], convention: str) -> PosePrediction:
        """No face (e.g. a frame where the detector found none); ``boxes`` is ``(0, 4)``."""
        return cls(
            torch.zeros(0, 3, 3), torch.zeros(0, 3), names, convention, boxes=torch.zeros(0, 4)
        )

    def to_dataframe(self) -> pd.DataFrame:
        """One row per image (or face): the box if any, the Euler angles and the row-major
        rotation matrix."""
        data: dict[str, list[float]] = {}
        if self.boxes is not None:
            data = {c: self.boxes[:, k].tolist() for k, c in enumerate(("x0", "y0", "x1", "y1"))}
        data |= {f"{n}_deg": self.euler_deg[:, i].tolist() for i, n in enumerate(self.names)}
        flat = self.rotation.reshape(-1, 9)
        for k in range(9):
            data[f"r{k // 3}{k % 3}"] = flat[:, k].tolist()
        return pd.DataFrame(data)


def _square_boxes(boxes: Tensor, margin: float) -> Tensor:
    """Enlarge ``(B, 4)`` boxes by ``margin`` of their size per side and make them square."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + 2 * margin)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=-1)


def _edge_boxes_to_centres(boxes: Tensor, size: int) -> Tensor:
    """Crop boxes in the loaders' convention (pixel edges: PIL cuts ``[x0, x1)`` and resizes
    to ``size``) -> the pixel-centre boxes of :meth:`ImageWarp.crop_resize` that sample the
    same points: output pixel ``j`` reads source ``x0 + (j + 0.5) * (x1 - x0) / size - 0.5``."""
    half_step = 0.5 * (boxes[:, 2:] - boxes[:, :2]) / size
    return torch.cat([boxes[:, :2] - 0.5 + half_step, boxes[:, 2:] - 0.5 - half_step], dim=-1)


def _fmt_box(box: Tensor) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def _box_tensor(boxes: Any, n: int, what: str) -> Tensor | None:
    """``(n, 4)`` float boxes; a NaN/inf or zero-area box (``x1 <= x0`` or ``y1 <= y0``) is
    an error naming its index: it would crop nothing and give a meaningless pose."""
    if boxes is None:
        return None
    if isinstance(boxes, Tensor):
        boxes = boxes.detach().cpu()
    out = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    if len(out) != n:
        raise ValueError(f"got {len(out)} {what} for {n} images")
    for i, box in enumerate(out):
        if not torch.isfinite(box).all():
            raise ValueError(f"{what}[{i}] = {_fmt_box(box)} is not finite")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(
                f"{what}[{i}] = {_fmt_box(box)} has zero area (needs x1 > x0 and y1 > y0)"
            )
    return out


def _check_inside(box: Tensor, i: int, what: str, width: int, height: int) -> None:
    """A box that misses the image entirely would crop only zero padding; a box partly
    outside is fine (padded with zeros, as the loaders' PIL crop)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(
            f"{what}[{i}] = {_fmt_box(box)} lies entirely outside image {i} "
            f"({width} x {height} pixels)"
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


def _items(images: Any) -> list[Any]:
    """One image or a batch -> a list; an empty batch is an error (no silent empty result)."""
    if isinstance(images, Tensor) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, list | tuple):
        items = list(images)
    else:
        return [images]
    if not items:
        raise ValueError(
            f"no images given (an empty {type(images).__name__}); pass at least one image"
        )
    return items


#: A face detector: ``(H, W, 3)`` uint8 RGB image -> ``(N, 4)`` boxes, most confident first.
DetectorArg = str | Callable[[np.ndarray], Any]


def _resolve_detector(detector: DetectorArg) -> Callable[[np.ndarray], Any]:
    if callable(detector):
        return detector
    if detector == "mediapipe":
        from hpelib.detect import detect_faces

        return detect_faces
    raise ValueError(
        f"detector must be 'mediapipe' or a callable image -> (N, 4) boxes, got {detector!r}"
    )


def _detect(image: Tensor, detector: Callable[[np.ndarray], Any]) -> np.ndarray:
    """``(N, 4)`` float boxes of the faces in a ``(3, H, W)`` float image."""

    boxes = detector(_to_uint8_hwc(image.cpu()))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _largest(boxes: np.ndarray) -> np.ndarray:
    """The ``(4,)`` box of largest area among ``(N, 4)``: the subject of a photo; background
    faces can score higher (a frontal bystander vs a turned subject)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[int(np.argmax(area))]


def _list_images(folder: Path) -> list[Path]:
    """The entries of ``folder`` with an image suffix, sorted, directories left out. Entries
    are not opened here: a broken link or symlink loop is listed, and reported when read."""
    paths = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                if entry.is_dir():
                    continue
            except OSError:  # a symlink loop on some systems: kept, reported when read
                pass
            paths.append(folder / entry.name)
    return sorted(paths)


def _identities(path: Path) -> set[Any]:
    """What ``path`` names or would name when written: its directory entry (folder
    resolved), its final target (symlinks followed) and, when it exists, ``(device,
    inode)`` (hard links, other spellings: the test of :func:`os.path.samefile`). Two paths
    sharing one of these are the same file."""
    found: set[Any] = {Path(os.path.abspath(path))}
    for resolve in (lambda: path.parent.resolve() / path.name, path.resolve):
        try:
            found.add(resolve())
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            pass
    try:
        st = path.stat()
        found.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    return found


def _check_folder_outputs(
    folder: Path,
    inputs: list[Path],
    output_csv: str | Path | None,
    annotated_dir: str | Path | None,
) -> tuple[Path | None, Path | None]:
    """Refuse, before any inference, outputs of :meth:`Predictor.predict_folder` that would
    overwrite an input image (or the CSV an annotated image); returns the two paths."""
    seen: dict[Any, Path] = {k: p for p in inputs for k in _identities(p)}
    out_dir = None if annotated_dir is None else Path(annotated_dir)
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"annotated_dir {str(out_dir)!r} is a file, not a folder")
        clashes = [
            (out_dir / p.name, hit)
            for p in inputs
            if (hit := next((seen[k] for k in _identities(out_dir / p.name) if k in seen), None))
        ]
        if clashes:
            target, source = clashes[0]
            raise ValueError(
                f"annotated_dir {str(out_dir)!r} would overwrite {len(clashes)} input image(s) "
                f"of {str(folder)!r} (e.g. {str(target)!r} is the input {str(source)!r}); "
                "choose another folder"
            )
    csv_path = None if output_csv is None else Path(output_csv)
    if csv_path is not None:
        if csv_path.is_dir():
            raise ValueError(f"output_csv {str(csv_path)!r} is a directory, not a file name")
        hit = next((seen[k] for k in _identities(csv_path) if k in seen), None)
        if hit is not None:
            raise ValueError(
                f"output_csv {str(csv_path)!r} is the input image {str(hit)!r}; writing it "
                "would destroy the image"
            )
        if out_dir is not None:
            planned = {k for p in inputs for k in _identities(out_dir / p.name)}
            if _identities(csv_path) & planned:
                raise ValueError(
                    f"output_csv {str(csv_path)!r} is also an annotated image path of "
                    f"annotated_dir {str(out_dir)!r}"
                )
        if not csv_path.parent.is_dir():
            raise FileNotFoundError(f"the folder of output_csv {str(csv_path)!r} does not exist")
    return csv_path, out_dir


def _read_chunk(paths: list[Path]) -> tuple[list[Tensor | None], list[str]]:
    """Read each file; an unreadable one gives ``None`` and its error message (``""`` for
    the others), so one bad file does not stop a folder."""
    images: list[Tensor | None] = []
    errors: list[str] = []
    for path in paths:
        try:
            images.append(_read_image(path))
            errors.append("")
        except (OSError, ValueError) as err:
            images.append(None)
            errors.append(str(err))
    return images, errors


def annotate(image: Any, prediction: PosePrediction, width: int = 2) -> Any:
    """Draw every face of ``prediction`` on ``image`` (PIL, ``(H, W, 3)`` array or
    ``(3, H, W)`` tensor; same type back): the box outline (when the prediction has boxes) and
    the head axes at the box centre, half the box side long (whole-image predictions: one set
    of axes at the image centre)."""
    from PIL import ImageDraw

    from hpelib.viz import _like, _to_pil, draw_axes

    pil = _to_pil(image)
    if prediction.boxes is None:
        for rot in prediction.rotation:
            pil = draw_axes(pil, rot, width=width)
        return _like(pil, image)
    for rot, box in zip(prediction.rotation, prediction.boxes, strict=True):
        x0, y0, x1, y1 = (float(v) for v in box)
        ImageDraw.Draw(pil).rectangle([x0, y0, x1, y1], outline=(255, 255, 255), width=1)
        center = ((x0 + x1) / 2, (y0 + y1) / 2)
        pil = draw_axes(pil, rot, center=center, size=max(x1 - x0, y1 - y0) / 2, width=width)
    return _like(pil, image)


class Predictor:
    """Runs a trained :class:`~hpelib.methods.HPEModule` on user images.

    Args:
        module: the trained method (put in eval mode here).
        image_size: side of the square network input.
        mean, std: per-channel normalisation of images in [0, 1].
        grayscale: convert to luminance repeated on 3 channels (as in training).
        device: where to run.
        convention: Euler convention of the returned angles.
        box_margin: enlargement of user boxes per side, as a fraction of the box size.
        data_crop: the crop of the training run's evaluation data, from the checkpoint's
            record (``dataset``, ``crop_rule``, ``box_source``; see
            :data:`hpelib.checkpoint_io.PREPROCESSING_FIELDS`); informative, and the source of
            :attr:`detection_crop_rule`.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        image_size: int,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        grayscale: bool = False,
        device: str | torch.device = "cpu",
        convention: str = "300wlp",
        box_margin: float = 0.0,
        data_crop: Mapping[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.grayscale = grayscale
        self.convention = convention
        self.names = euler_names(convention)
        self.box_margin = box_margin
        crop = dict(data_crop or {})
        self.data_crop = {k: crop.get(k) for k in ("dataset", "crop_rule", "box_source")}

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What this predictor does to an image before the network, as plain JSON values with
        the keys of the checkpoint's record (:data:`hpelib.checkpoint_io.PREPROCESSING_FIELDS`):
        ``image_size``, ``mean``, ``std``, ``grayscale``, ``dataset``, ``crop_rule``,
        ``box_source``, ``euler_convention`` (of the angles this predictor returns) and
        ``euler_output_convention`` (of Euler angles the network outputs itself, LEC-HPE;
        ``None`` otherwise). ``hpelib export`` writes it into the ONNX metadata."""
        return {
            "image_size": self.image_size,
            "mean": [float(v) for v in self.mean.flatten().tolist()],
            "std": [float(v) for v in self.std.flatten().tolist()],
            "grayscale": bool(self.grayscale),
            **self.data_crop,
            "euler_convention": self.convention,
            "euler_output_convention": getattr(self.module, "euler_output_convention", None),
        }

    @property
    def detection_crop_rule(self) -> str:
        """The :mod:`hpelib.detect` rule that frames detector boxes as the checkpoint's
        evaluation data was framed: ``"synthetic"`` for hpelib's synthetic heads, ``"tight"``
        for the ``tight`` rules, else ``"6drepnet"`` (300W-LP/AFLW2000; also when the
        checkpoint does not tell)."""
        dataset, rule = self.data_crop.get("dataset"), self.data_crop.get("crop_rule")
        if isinstance(dataset, str) and dataset.startswith("hpelib.data.synthetic."):
            return "synthetic"
        if isinstance(rule, str) and rule.lower() in ("tight", "tight_jitter"):
            return "tight"
        return "6drepnet"

    def preprocess(
        self,
        images: Any,
        boxes: Tensor | np.ndarray | None = None,
        crop_boxes: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """Images (see module docstring) -> normalised ``(B, 3, S, S)`` network input.

        ``boxes`` (B, 4): face boxes, enlarged by ``box_margin`` and made square;
        ``crop_boxes`` (B, 4): exact crops in the loaders' pixel-edge convention.
        """
        items = _items(images)
        box_tensor = _box_tensor(boxes, len(items), "boxes")
        crop_tensor = _box_tensor(crop_boxes, len(items), "crop_boxes")
        if box_tensor is not None and crop_tensor is not None:
            raise ValueError("give boxes or crop_boxes, not both")
        crops = []
        for i, item in enumerate(items):
            img = _to_float_chw(item, f"image {i}").to(self.device)
            h, w = img.shape[-2:]
            for given, what in ((box_tensor, "boxes"), (crop_tensor, "crop_boxes")):
                if given is not None:
                    _check_inside(given[i], i, what, int(w), int(h))
            if box_tensor is not None:
                box = _square_boxes(box_tensor[i : i + 1], self.box_margin)
            elif crop_tensor is not None:
                box = _edge_boxes_to_centres(crop_tensor[i : i + 1], self.image_size)
            else:
                box = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]])
            warp = ImageWarp.crop_resize(box.to(self.device), self.image_size)
            # Out-of-image parts are black (zero padding), as the loaders' PIL crop.
            crops.append(
                kornia.geometry.transform.warp_affine(
                    img[None], warp.affine, (self.image_size, self.image_size), align_corners=True
                )
            )
        batch = torch.cat(crops)
        if self.grayscale:
            batch = rgb_to_grayscale(batch).expand(-1, 3, -1, -1)
        return (batch - self.mean) / self.std

    def _run(self, inputs: Tensor, batch_size: int) -> PosePrediction:
        """Network on ``(B, 3, S, S)`` preprocessed inputs, in chunks of ``batch_size``."""
        if len(inputs) == 0:
            return PosePrediction.empty(self.names, self.convention)
        chunks: list[dict[str, Tensor]] = [
            self.module(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)
        ]
        outputs = {
            k: torch.cat([c[k] for c in chunks]).cpu()
            for k in chunks[0]
            if isinstance(chunks[0][k], Tensor)
            and chunks[0][k].shape[:1] == (min(batch_size, len(inputs)),)
        }
        rotation = outputs["rotation"]
        return PosePrediction(
            rotation=rotation,
            euler_deg=rotation_to_euler(rotation, self.convention, degrees=True),
            names=self.names,
            convention=self.convention,
            outputs=outputs,
        )

    @torch.no_grad()
    def predict(
        self,
        images: Any,
        boxes: Tensor | np.ndarray | None = None,
        batch_size: int = 32,
        *,
        crop_boxes: Tensor | np.ndarray | None = None,
        detector: DetectorArg | None = None,
        crop_rule: str | CropRule | None = None,
    ) -> PosePrediction:
        """Predict the pose of one image or a batch (paths, PIL, arrays, tensors).

        Args:
            images: one image or a batch (see the module docstring).
            boxes: ``(B, 4)`` face boxes (x0, y0, x1, y1), enlarged by ``box_margin``.
            batch_size: network batch size.
            crop_boxes: ``(B, 4)`` exact crop boxes (loaders' pixel-edge convention).
            detector: ``"mediapipe"`` (``pip install "hpelib[detect]"``) or a callable
                ``(H, W, 3) uint8 -> (N, 4) boxes``; each image's largest face is
                used (an image without a face is an error: see :meth:`predict_faces`).
            crop_rule: detector box -> crop rule (:func:`hpelib.detect.crop_boxes_from_detections`);
                ``"6drepnet"`` matches 300W-LP/AFLW2000 training, ``"synthetic"`` the
                SyntheticHeads framing; ``None``: the checkpoint's
                (:attr:`detection_crop_rule`).

        Returns:
            :class:`PosePrediction` with ``B`` rows (``boxes`` set from ``boxes`` or the detector).

        Input that would give a meaningless pose is a ``ValueError`` naming the image or box:
        float images outside [0, 1] (e.g. 0-255 floats) or with NaN/inf, an empty batch,
        boxes that are NaN, of zero area or entirely outside their image.
        """
        _check_batch_size(batch_size)
        if detector is None:
            pred = self._run(self.preprocess(images, boxes, crop_boxes), batch_size)
            if boxes is not None:
                pred.boxes = _box_tensor(boxes, len(pred), "boxes")
            return pred
        if boxes is not None or crop_boxes is not None:
            raise ValueError("give a detector or boxes/crop_boxes, not both")
        items = [_to_float_chw(x, f"image {i}") for i, x in enumerate(_items(images))]
        find = _resolve_detector(detector)
        faces = [_detect(img, find) for img in items]
        missing = [i for i, f in enumerate(faces) if len(f) == 0]
        if missing:
            raise ValueError(
                f"no face found in image(s) {missing[:10]} of {len(items)}; give boxes, or use "
                "predict_faces (any number of faces per image)"
            )
        det = np.stack([_largest(f) for f in faces])
        return self._predict_detections(items, det, crop_rule, batch_size)

    def _predict_detections(
        self,
        items: list[Tensor],
        det: np.ndarray,
        crop_rule: str | CropRule | None,
        batch_size: int,
    ) -> PosePrediction:
        """One detector box ``det[i]`` per image ``items[i]`` -> predictions with boxes."""
        from hpelib.detect import crop_boxes_from_detections

        if crop_rule is None:
            crop_rule = self.detection_crop_rule

        if not items:
            return PosePrediction.empty(self.names, self.convention)
        crops = np.concatenate(
            [crop_boxes_from_detections(d[None], crop_rule, (img.shape[-1], img.shape[-2]))
             for img, d in zip(items, det, strict=True)]
        )  # fmt: skip
        pred = self._run(self.preprocess(items, crop_boxes=crops), batch_size)
        pred.boxes = torch.as_tensor(det, dtype=torch.float32).reshape(-1, 4)
        return pred

    @torch.no_grad()
    def predict_faces(
        self,
        image: Any,
        detector: DetectorArg = "mediapipe",
        crop_rule: str | CropRule | None = None,
        batch_size: int = 32,
    ) -> PosePrediction:
        """Every face the detector finds in ONE image (a video frame): ``N >= 0`` rows, most
        confident first, ``boxes`` = the detector boxes. See :meth:`predict` for the
        arguments."""
        _check_batch_size(batch_size)
        img = _to_float_chw(image)
        det = _detect(img, _resolve_detector(detector))
        return self._predict_detections([img] * len(det), det, crop_rule, batch_size)

    @torch.no_grad()
    def predict_folder(
        self,
        folder: str | Path,
        output_csv: str | Path | None = None,
        annotated_dir: str | Path | None = None,
        batch_size: int = 32,
        detector: DetectorArg | None = None,
        crop_rule: str | CropRule | None = None,
    ) -> pd.DataFrame:
        """Predict every image in ``folder``; optionally write a CSV and annotated copies.

        With a ``detector`` each image's largest face is used and the table gets its
        box (``x0 .. y1``); images without a face get a row of NaN.

        The output paths are checked before any inference: an ``output_csv`` or annotated
        image that would overwrite an input image (same folder, symlinks, hard links) is an
        error. An unreadable file (truncated, not an image, broken symlink) does not stop
        the run: its row has NaN values and the reason in the ``error`` column (empty for
        the others), and a warning counts them at the end. The CSV gets each chunk's rows as
        soon as they are predicted, so an interrupted run keeps the finished ones.
        """
        _check_batch_size(batch_size)
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
        paths = _list_images(folder)
        if not paths:
            raise ValueError(
                f"image folder {str(folder)!r} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        csv_path, out_dir = _check_folder_outputs(folder, paths, output_csv, annotated_dir)
        find = None if detector is None else _resolve_detector(detector)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        frames = []
        failed = 0
        csv_file = None if csv_path is None else open(csv_path, "w", newline="", encoding="utf-8")
        try:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                images, errors = _read_chunk(chunk)
                failed += sum(map(bool, errors))
                ok = [i for i, img in enumerate(images) if img is not None]
                if find is None:
                    found = ok
                    pred = (
                        self._run(self.preprocess([images[i] for i in ok]), batch_size)
                        if ok
                        else PosePrediction(  # no box columns, as the other chunks
                            torch.zeros(0, 3, 3), torch.zeros(0, 3), self.names, self.convention
                        )
                    )
                else:
                    floats = {i: _to_float_chw(images[i], str(chunk[i])) for i in ok}
                    faces = {i: _detect(floats[i], find) for i in ok}
                    found = [i for i in ok if len(faces[i])]
                    det = (
                        np.stack([_largest(faces[i]) for i in found]) if found else np.zeros((0, 4))
                    )
                    pred = self._predict_detections(
                        [floats[i] for i in found], det, crop_rule, batch_size
                    )
                # Unreadable and faceless images keep their row, with NaN angles (and box).
                frame = pred.to_dataframe().set_axis(found).reindex(range(len(chunk)))
                frame.insert(0, "path", [p.name for p in chunk])
                frame["error"] = errors
                frames.append(frame)
                if csv_file is not None:
                    frame.to_csv(csv_file, header=start == 0, index=False)
                    csv_file.flush()
                if out_dir is not None:
                    for k in ok:
                        rgb = Image.fromarray(
                            np.ascontiguousarray(images[k].permute(1, 2, 0).numpy())
                        )
                        if k in found:
                            j = found.index(k)
                            one = PosePrediction(
                                pred.rotation[j : j + 1], pred.euler_deg[j : j + 1], pred.names, pred.convention,
                                boxes=None if pred.boxes is None else pred.boxes[j : j + 1],
                            )  # fmt: skip
                            rgb = annotate(rgb, one)
                        rgb.save(out_dir / chunk[k].name)
        finally:
            if csv_file is not None:
                csv_file.close()
        if failed:
            _log.warning(
                "predict_folder: %d of %d images could not be read (see the 'error' column of %s)",
                failed, len(paths), str(csv_path) if csv_path is not None else "the returned table",
            )  # fmt: skip
        return pd.concat(frames, ignore_index=True)


def _read_checkpoint(path: Path, trust_checkpoint: bool | None = None) -> dict[str, Any]:
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(ckpt, dict) or ckpt.get("hpelib_class_path") is None:
        raise ValueError(
            f"checkpoint {str(path)!r} was not written by an hpelib method (no hpelib_class_path)"
        )
    return ckpt


def _module_from(path: Path, ckpt: dict[str, Any]) -> torch.nn.Module:
    """Build the registered class the checkpoint names and load its weights
    (:func:`hpelib.methods.base.module_from_checkpoint`): the class comes from hpelib's
    registry (never imported by name), the saved hyper-parameters are passed as plain values
    (Lightning's ``_instantiator`` entry, which would hand them to jsonargparse, is dropped),
    and the init-only ones get their loading values (``pretrained: false``, no
    ``backbone_weights`` file...), so loading needs no network and no initial-weights file."""
    from hpelib.methods.base import module_from_checkpoint

    return module_from_checkpoint(ckpt, f"checkpoint {str(path)!r}").eval()


def load_module(checkpoint: str | Path, trust_checkpoint: bool | None = None) -> torch.nn.Module:
    """Rebuild the hpelib method saved in ``checkpoint`` (its class path is stored by
    ``HPEModule.on_save_checkpoint``), in eval mode on the CPU.

    The file is read without running code from it (:func:`hpelib.checkpoint_io.read_checkpoint`);
    ``trust_checkpoint=True`` is the opt-in for a file you trust that needs more."""
    path = Path(checkpoint)
    return _module_from(path, _read_checkpoint(path, trust_checkpoint))


def load_with_preprocessing(
    checkpoint: str | Path, trust_checkpoint: bool | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(module, preprocessing)``: :func:`load_module` and the checkpoint's own
    preprocessing record (:func:`hpelib.checkpoint_io.checkpoint_preprocessing`), with the
    module's Euler convention filled in where an older checkpoint's record lacks it."""
    path = Path(checkpoint)
    ckpt = _read_checkpoint(path, trust_checkpoint)
    prep = checkpoint_preprocessing(ckpt, path)
    module = _module_from(path, ckpt)
    if prep["euler_convention"] is None:
        prep["euler_convention"] = getattr(module, "euler_convention", "300wlp")
    if prep["euler_output_convention"] is None:
        prep["euler_output_convention"] = getattr(module, "euler_output_convention", None)
    return module, prep


def load(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    convention: str | None = None,
    box_margin: float = 0.0,
    trust_checkpoint: bool | None = None,
) -> Predictor:
    """Load a checkpoint written by ``hpelib fit`` (or any Lightning run of an hpelib method)
    and return a :class:`Predictor` with the checkpoint's own preprocessing (input size,
    normalisation, grayscale, crop record) and Euler convention (``convention`` overrides
    the latter).

    The checkpoint is read without running code from it and must name a registered hpelib
    method (see :mod:`hpelib.checkpoint_io`); ``trust_checkpoint=True`` allows a trusted file
    that pickled other objects. Loading needs neither network access nor the model's initial
    weights files (``pretrained``, ``backbone_weights``... are init-only,
    :attr:`hpelib.methods.HPEModule.INIT_ONLY_HPARAMS`).

    Raises:
        hpelib.checkpoint_io.MissingPreprocessingError: a checkpoint without the record
            (saved without an HPEDataModule), naming the file.
    """
    module, prep = load_with_preprocessing(checkpoint, trust_checkpoint)
    return Predictor(
        module,
        image_size=prep["image_size"],
        mean=prep["mean"],
        std=prep["std"],
        grayscale=prep["grayscale"],
        device=device,
        convention=convention or prep["euler_convention"],
        box_margin=box_margin,
        data_crop=prep,
    )
