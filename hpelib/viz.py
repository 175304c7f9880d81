"""Drawing head poses on images: coordinate axes and a pose cube.

Both functions take a rotation in hpelib's internal convention (head -> camera, image axes
x right, y down, z into the scene) and draw an orthographic projection, which is what the
reference tools (HopeNet's ``draw_axis``, 6DRepNet's ``plot_pose_cube``) draw as well.

Colours follow the common HPE picture: **red** = the head's x axis (towards the subject's
left, image right for a frontal face), **green** = the head's *up* axis, **blue** = the
direction the face points (out of the nose). HopeNet's/6DRepNet's ``draw_axis`` draws red and blue
the same way but its green axis points *down* the face (see docs/inference.md). Images may be a PIL image, a ``(H, W, 3)``
uint8 numpy array, or a ``(3, H, W)`` uint8 torch tensor; the result has the same type.

:func:`draw_pose_comparison` draws a predicted and a true pose on one image (the truth as wide
pale bands, the prediction as thin outlined lines on top), and :func:`pose_gallery` lays such
images out in a grid with a legend (what ``hpelib.callbacks.PoseGallery`` writes on test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from hpelib.rotation import geodesic_distance

__all__ = [
    "AXIS_COLORS",
    "AXIS_NAMES",
    "GalleryRow",
    "axes_endpoints",
    "draw_axes",
    "draw_cube",
    "draw_pose_comparison",
    "pose_gallery",
]

ImageLike = TypeVar("ImageLike", Image.Image, np.ndarray, Tensor)

AXIS_COLORS = ((230, 40, 40), (40, 200, 40), (40, 90, 240))
AXIS_NAMES = ("x (subject's left)", "up", "facing direction")
# Dark border under predicted axes, so they stay visible on any background.
OUTLINE = (20, 20, 20)
# True axes: pale (half white) and nearly opaque, readable on busy backgrounds yet unlike
# the saturated predicted lines.
TRUTH_LIGHTEN, TRUTH_ALPHA = 0.5, 0.85


def _lighter(color: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """``color`` mixed with white: ``amount`` 0 keeps it, 1 gives white."""
    return tuple(round(c + amount * (255 - c)) for c in color)  # type: ignore[return-value]


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB").copy()
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(
                f"a tensor image must be (C, H, W) with C = 1 or 3, got {tuple(image.shape)}"
            )
        array = image.detach().cpu()
        if array.dtype != torch.uint8:
            array = (array.clamp(0, 1) * 255).round().to(torch.uint8)
        array = array.expand(3, -1, -1).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(array))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a numpy image must be (H, W, 3) or (H, W), got {array.shape}")
    return Image.fromarray(array.astype(np.uint8))


def _like(pil: Image.Image, original: ImageLike) -> ImageLike:
    if isinstance(original, Image.Image):
        return pil
    array = np.asarray(pil)
    if isinstance(original, Tensor):
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    return array.copy()


def _rotation_array(rotation: Tensor | np.ndarray) -> np.ndarray:
    r = np.asarray(
        rotation.detach().cpu() if isinstance(rotation, Tensor) else rotation, dtype=np.float64
    )
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be a (3, 3) matrix, got {r.shape}")
    return r


def _axis_directions(rotation: Tensor | np.ndarray) -> np.ndarray:
    """``(3, 3)``: rows = the drawn axes (x, up, face direction) in camera coordinates."""
    r = _rotation_array(rotation)
    # Head up = -y (y points to the chin), face direction = -z (z points into the head).
    return np.stack([r[:, 0], -r[:, 1], -r[:, 2]], axis=0)


def _frame(
    pil: Image.Image, center: Sequence[float] | None, size: float | None
) -> tuple[np.ndarray, float]:
    """Default drawing centre (the image centre) and size (a third of the smaller side)."""
    w, h = pil.size
    center = ((w - 1) / 2, (h - 1) / 2) if center is None else center
    return np.asarray(center, dtype=np.float64), min(w, h) / 3 if size is None else size


def axes_endpoints(
    rotation: Tensor | np.ndarray, center: Sequence[float], size: float
) -> np.ndarray:
    """``(3, 2)`` image points of the red/green/blue axis tips (x, up, forward) drawn from
    ``center`` with length ``size`` pixels."""
    return np.asarray(center, dtype=np.float64)[None, :] + size * _axis_directions(rotation)[:, :2]


def draw_axes(
    image: ImageLike,
    rotation: Tensor | np.ndarray,
    center: Sequence[float] | None = None,
    size: float | None = None,
    width: int = 2,
    alpha: float = 1.0,
    outline: tuple[int, int, int] | None = None,
    lighten: float = 0.0,
) -> ImageLike:
    """Draw the head's axes (red x, green up, blue face direction) at ``center`` (default: the
    image centre) with length ``size`` (default: a third of the smaller image side). The
    axis pointing away from the camera is drawn first so nearer axes stay on top.

    ``alpha`` (0..1) blends the lines with the image (1: opaque); ``outline`` draws each line
    over a 2-pixel-wider line of that colour, so it stands out on a busy background;
    ``lighten`` (0..1) mixes the axis colours with white (pale tints)."""
    for name, value in (("alpha", alpha), ("lighten", lighten)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"draw_axes {name}={value} must be in [0, 1]")
    pil = _to_pil(image)
    center, size = _frame(pil, center, size)
    tips = axes_endpoints(rotation, center, size)
    depth = _axis_directions(rotation)[:, 2]
    # Lines go on a transparent layer, blended once: overlapping lines of one call do not
    # add up their opacity.
    layer = Image.new("RGBA", pil.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    opacity = round(255 * alpha)
    for i in np.argsort(-depth):  # farthest first
        line = [tuple(center), tuple(tips[i])]
        if outline is not None:
            draw.line(line, fill=(*outline, opacity), width=width + 2)
        draw.line(line, fill=(*_lighter(AXIS_COLORS[i], lighten), opacity), width=width)
    pil = Image.alpha_composite(pil.convert("RGBA"), layer).convert("RGB")
    return _like(pil, image)


def draw_pose_comparison(
    image: ImageLike,
    predicted: Tensor | np.ndarray,
    true: Tensor | np.ndarray,
    center: Sequence[float] | None = None,
    size: float | None = None,
    width: int = 3,
) -> ImageLike:
    """Draw a true and a predicted pose on one image, in the axis colours of
    :func:`draw_axes`: the truth as wide pale bands (``3 * width`` pixels, the colours mixed
    half with white, 85 % opaque), the prediction as thin saturated lines (``width`` pixels,
    dark outline) on top of them. Where the prediction is right, each thin line runs inside
    the band of its colour."""
    banded = draw_axes(
        image, true, center, size, width=3 * width, alpha=TRUTH_ALPHA, lighten=TRUTH_LIGHTEN
    )
    return draw_axes(banded, predicted, center, size, width=width, outline=OUTLINE)


def draw_cube(
    image: ImageLike,
    rotation: Tensor | np.ndarray,
    center: Sequence[float] | None = None,
    size: float | None = None,
    width: int = 2,
) -> ImageLike:
    """Draw a pose cube around the head: the face side in blue, the back in red, the
    connecting edges in green."""
    pil = _to_pil(image)
    center, size = _frame(pil, center, size)
    r = _rotation_array(rotation)
    half = 0.5 * size
    signs = np.array(
        [[x, y, z] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], dtype=np.float64
    )
    corners = center[None, :] + half * (signs @ r.T)[:, :2]
    # z = -1 corners are on the face side (head z points into the head).
    front = [0, 1, 3, 2]
    back = [4, 5, 7, 6]
    draw = ImageDraw.Draw(pil)
    for a, b in zip(back, back[1:] + back[:1], strict=True):
        draw.line([tuple(corners[a]), tuple(corners[b])], fill=AXIS_COLORS[0], width=width)
    for a, b in zip(front, back, strict=True):
        draw.line([tuple(corners[a]), tuple(corners[b])], fill=AXIS_COLORS[1], width=width)
    for a, b in zip(front, front[1:] + front[:1], strict=True):
        draw.line([tuple(corners[a]), tuple(corners[b])], fill=AXIS_COLORS[2], width=width)
    return _like(pil, image)


# ------------------------------------------------------------------------------ gallery
@dataclass
class GalleryRow:
    """One row of :func:`pose_gallery`: ``N`` images with their predicted and true poses.

    Attributes:
        label: text above the row (e.g. the test set's name).
        images: ``(N, 3, H, W)`` (or ``(N, 1, H, W)``) float in ``[0, 1]`` or uint8.
        predicted: ``(N, 3, 3)`` predicted rotations (hpelib's convention).
        true: ``(N, 3, 3)`` true rotations.
        centers: ``(N, 2)`` image points ``(x, y)`` in the images' pixels to draw the axes
            from (e.g. the head centres); ``None``: the image centre.
    """

    label: str
    images: Tensor
    predicted: Tensor
    true: Tensor
    centers: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"GalleryRow {self.label!r}: images must be (N, 3, H, W), got {tuple(self.images.shape)}"
            )
        for name in ("predicted", "true"):
            shape = tuple(getattr(self, name).shape)
            if shape != (n, 3, 3):
                raise ValueError(
                    f"GalleryRow {self.label!r}: {name} must be ({n}, 3, 3), got {shape}"
                )
        if self.centers is not None and tuple(self.centers.shape) != (n, 2):
            raise ValueError(
                f"GalleryRow {self.label!r}: centers must be ({n}, 2), got {tuple(self.centers.shape)}"
            )


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in scalable font (no font file needed); a bitmap font without FreeType.
    return ImageFont.load_default(size=size)


def _legend(
    draw: ImageDraw.ImageDraw, origin: tuple[int, int], font: ImageFont.ImageFont, line_h: int
) -> None:
    """Two legend lines: which colour is which axis; which line is prediction, which truth."""
    x, y = origin
    swatch = 26
    draw.text((x, y), "axes:", fill=(0, 0, 0), font=font)
    x += int(draw.textlength("axes: ", font=font))
    for color, name in zip(AXIS_COLORS, AXIS_NAMES, strict=True):
        mid = y + line_h // 2
        draw.line([(x, mid), (x + swatch, mid)], fill=OUTLINE, width=5)
        draw.line([(x, mid), (x + swatch, mid)], fill=color, width=3)
        x += swatch + 5
        draw.text((x, y), name, fill=color, font=font)
        x += int(draw.textlength(name, font=font)) + 16
    x, y = origin[0], origin[1] + line_h
    pale = _lighter(AXIS_COLORS[0], TRUTH_LIGHTEN)
    entries = (("prediction: thin outlined line", 3, OUTLINE), ("truth: wide pale band", 9, None))
    for text, width, border in entries:
        mid = y + line_h // 2
        if border is not None:
            draw.line([(x, mid), (x + swatch, mid)], fill=border, width=width + 2)
            draw.line([(x, mid), (x + swatch, mid)], fill=AXIS_COLORS[0], width=width)
        else:
            draw.line([(x, mid), (x + swatch, mid)], fill=pale, width=width)
        x += swatch + 5
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
        x += int(draw.textlength(text, font=font)) + 16
    draw.text((x, y), "number: geodesic error (degrees)", fill=(0, 0, 0), font=font)


def _cell(row: GalleryRow, i: int, cell_size: int, width: int) -> Image.Image:
    """Image ``i`` of ``row`` resized to ``cell_size`` with both poses and its error drawn."""
    pil = _to_pil(row.images[i]).resize((cell_size, cell_size), Image.Resampling.BICUBIC)
    scale = cell_size / row.images.shape[-1]
    center = None if row.centers is None else (row.centers[i].double() * scale).tolist()
    size = 0.38 * cell_size
    pil = draw_pose_comparison(pil, row.predicted[i], row.true[i], center, size, width=width)
    error = math.degrees(float(geodesic_distance(row.predicted[i].double(), row.true[i].double())))
    draw = ImageDraw.Draw(pil)
    font = _font(max(10, cell_size // 11))
    text = f"{error:.1f}°"
    box = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(255, 255, 255))
    draw.text((4, 3), text, fill=(0, 0, 0), font=font)
    return pil


def pose_gallery(
    rows: Sequence[GalleryRow],
    cell_size: int = 160,
    title: str | None = None,
    pad: int = 8,
) -> Image.Image:
    """A grid of images with predicted and true axes (:func:`draw_pose_comparison`), one row
    per :class:`GalleryRow`, under a title and a legend that names each axis colour and tells
    prediction (thin outlined line) from truth (wide pale band). Each cell shows its
    geodesic error in degrees.

    Returns:
        an RGB image of width ``pad + columns * (cell_size + pad)`` with ``columns`` the
        longest row; the height grows with the number of rows.
    """
    if not rows:
        raise ValueError("pose_gallery needs at least one row")
    if cell_size < 32:
        raise ValueError(f"pose_gallery cell_size={cell_size} is too small to draw on (>= 32)")
    columns = max(row.images.shape[0] for row in rows)
    font = _font(14)
    line_h = 22
    header_h = pad + (line_h if title else 0) + 2 * line_h + pad
    row_h = line_h + cell_size + pad
    width = max(pad + columns * (cell_size + pad), 900)
    canvas = Image.new("RGB", (width, header_h + len(rows) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = pad
    if title:
        draw.text((pad, y), title, fill=(0, 0, 0), font=_font(16))
        y += line_h
    _legend(draw, (pad, y), font, line_h)
    y = header_h
    line_width = max(2, cell_size // 50)
    for row in rows:
        draw.text((pad, y + 3), row.label, fill=(0, 0, 0), font=font)
        for i in range(row.images.shape[0]):
            canvas.paste(
                _cell(row, i, cell_size, line_width), (pad + i * (cell_size + pad), y + line_h)
            )
        y += row_h
    return canvas
