"""Inference API: ``hpelib.load(checkpoint).predict(images)``.

The predictor repeats the preprocessing the model was trained with (input size,
normalisation, grayscale), read from the checkpoint, and accepts image paths, PIL images,
``(H, W, 3)`` uint8 arrays, and ``(3, H, W)`` / ``(B, 3, H, W)`` tensors (uint8, or float in
[0, 1]). Without boxes the whole image is the face crop; with ``boxes`` (x0, y0, x1, y1 in
the image's pixels) each box, enlarged by ``box_margin`` on every side and made square, is
cropped and resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import pandas as pd
import torch
from kornia.color import rgb_to_grayscale
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from hpelib.rotation import ImageWarp, euler_names, rotation_to_euler
from hpelib.specs import import_object

__all__ = ["PosePrediction", "Predictor", "load", "load_module", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class PosePrediction:
    """Batched predictions.

    Attributes:
        rotation: ``(B, 3, 3)`` internal-convention rotations.
        euler_deg: ``(B, 3)`` angles in degrees, in the order of ``names``.
        names: angle names of ``convention``.
        convention: the Euler convention name.
        outputs: every tensor output of the method (e.g. OpNet's covariances), batched.
    """

    rotation: Tensor
    euler_deg: Tensor
    names: tuple[str, str, str]
    convention: str
    outputs: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rotation.shape[0])

    def to_dataframe(self) -> pd.DataFrame:
        """One row per image: the Euler angles and the row-major rotation matrix."""
        data = {f"{n}_deg": self.euler_deg[:, i].tolist() for i, n in enumerate(self.names)}
        flat = self.rotation.reshape(-1, 9)
        for k in range(9):
            data[f"r{k // 3}{k % 3}"] = flat[:, k].tolist()
        return pd.DataFrame(data)


def _read_image(path: str | Path) -> Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot decode image {str(path)!r}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _to_float_chw(image: Any) -> Tensor:
    """One image of any accepted kind -> ``(3, H, W)`` float in [0, 1]."""
    if isinstance(image, str | Path):
        image = _read_image(image)
    elif isinstance(image, Image.Image):
        image = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be (H, W, 3) or (H, W), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, Tensor):
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"tensor images must be (3, H, W) or (1, H, W), got {tuple(image.shape)}")
    image = image.expand(3, -1, -1)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def _square_boxes(boxes: Tensor, margin: float) -> Tensor:
    """Enlarge ``(B, 4)`` boxes by ``margin`` of their size per side and make them square."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + 2 * margin)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=-1)


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

    def preprocess(self, images: Any, boxes: Tensor | np.ndarray | None = None) -> Tensor:
        """Images (see module docstring) -> normalised ``(B, 3, S, S)`` network input."""
        if isinstance(images, Tensor) and images.ndim == 4:
            items = list(images)
        elif isinstance(images, list | tuple):
            items = list(images)
        else:
            items = [images]
        crops = []
        box_tensor = None if boxes is None else torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4)
        if box_tensor is not None and len(box_tensor) != len(items):
            raise ValueError(f"got {len(box_tensor)} boxes for {len(items)} images")
        for i, item in enumerate(items):
            img = _to_float_chw(item).to(self.device)
            h, w = img.shape[-2:]
            box = (
                torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]])
                if box_tensor is None
                else _square_boxes(box_tensor[i : i + 1], self.box_margin)
            )
            warp = ImageWarp.crop_resize(box.to(self.device), self.image_size)
            crops.append(
                kornia.geometry.transform.warp_affine(
                    img[None], warp.affine, (self.image_size, self.image_size), align_corners=True
                )
            )
        batch = torch.cat(crops)
        if self.grayscale:
            batch = rgb_to_grayscale(batch).expand(-1, 3, -1, -1)
        return (batch - self.mean) / self.std

    @torch.no_grad()
    def predict(
        self, images: Any, boxes: Tensor | np.ndarray | None = None, batch_size: int = 32
    ) -> PosePrediction:
        """Predict the pose of one image or a batch (paths, PIL, arrays, tensors)."""
        inputs = self.preprocess(images, boxes)
        chunks: list[dict[str, Tensor]] = [
            self.module(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)
        ]
        outputs = {
            k: torch.cat([c[k] for c in chunks]).cpu()
            for k in chunks[0]
            if isinstance(chunks[0][k], Tensor) and chunks[0][k].shape[:1] == (min(batch_size, len(inputs)),)
        }
        rotation = outputs["rotation"]
        return PosePrediction(
            rotation=rotation,
            euler_deg=rotation_to_euler(rotation, self.convention, degrees=True),
            names=self.names,
            convention=self.convention,
            outputs=outputs,
        )

    def predict_folder(
        self,
        folder: str | Path,
        output_csv: str | Path | None = None,
        annotated_dir: str | Path | None = None,
        batch_size: int = 32,
    ) -> pd.DataFrame:
        """Predict every image in ``folder``; optionally write a CSV and annotated copies."""
        from hpelib.viz import draw_axes

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"image folder {str(folder)!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        frames = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            pred = self.predict(chunk, batch_size=batch_size)
            frame = pred.to_dataframe()
            frame.insert(0, "path", [p.name for p in chunk])
            frames.append(frame)
            if annotated_dir is not None:
                out = Path(annotated_dir)
                out.mkdir(parents=True, exist_ok=True)
                for path, rot in zip(chunk, pred.rotation, strict=True):
                    with Image.open(path) as img:
                        draw_axes(img.convert("RGB"), rot).save(out / path.name)
        table = pd.concat(frames, ignore_index=True)
        if output_csv is not None:
            table.to_csv(output_csv, index=False)
        return table


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("hpelib_class_path") is None:
        raise ValueError(f"checkpoint {str(path)!r} was not written by an hpelib method (no hpelib_class_path)")
    return ckpt


def _module_from(path: Path, ckpt: dict[str, Any]) -> torch.nn.Module:
    cls = import_object(ckpt["hpelib_class_path"])
    return cls.load_from_checkpoint(path, map_location="cpu", weights_only=False).eval()


def load_module(checkpoint: str | Path) -> torch.nn.Module:
    """Rebuild the hpelib method saved in ``checkpoint`` (its class path is stored by
    ``HPEModule.on_save_checkpoint``), in eval mode on the CPU."""
    path = Path(checkpoint)
    return _module_from(path, _read_checkpoint(path))


def load(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    convention: str | None = None,
    box_margin: float = 0.0,
) -> Predictor:
    """Load a checkpoint written by ``hpelib fit`` (or any Lightning run of an hpelib method)
    and return a :class:`Predictor` with the training preprocessing."""
    path = Path(checkpoint)
    ckpt = _read_checkpoint(path)
    module = _module_from(path, ckpt)
    prep = next(
        (v["preprocessing"] for v in ckpt.values() if isinstance(v, dict) and "preprocessing" in v),
        None,
    )
    if prep is None or prep.get("image_size") is None:
        raise ValueError(f"checkpoint {str(path)!r} has no preprocessing record (image size); was it trained with HPEDataModule?")
    return Predictor(
        module,
        image_size=prep["image_size"],
        mean=prep["mean"],
        std=prep["std"],
        grayscale=prep["grayscale"],
        device=device,
        convention=convention or getattr(module, "euler_convention", "300wlp"),
        box_margin=box_margin,
    )
