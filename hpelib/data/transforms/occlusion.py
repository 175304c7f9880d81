"""Synthetic occlusion (LSR / LEC-HPE style): random shapes pasted over the face region.

:class:`RandomOcclusion` draws, per occluded sample, a few rectangles, ellipses and convex
polygons of random size, aspect ratio, orientation and fill (a flat random colour or
uniform noise) whose centres lie in the face box, and clips them to that box, so pixels
outside the face region never change. It marks the samples in ``occluded`` and, optionally,
hides the landmarks that fall under an occluder in ``landmarks_visible``. All shapes are
rasterised in one batched pass (no per-sample Python loop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hpelib.data.sample import mask_key

__all__ = ["OCCLUSION_FILLS", "OCCLUSION_SHAPES", "RandomOcclusion", "face_boxes", "shape_masks"]

Batch = dict[str, Any]

#: Shape kinds :class:`RandomOcclusion` can draw.
OCCLUSION_SHAPES: tuple[str, ...] = ("rectangle", "ellipse", "polygon")
#: Fills: one random colour per shape, or independent uniform noise per pixel.
OCCLUSION_FILLS: tuple[str, ...] = ("color", "noise")

_POLYGON_VERTICES = 8  # at most; each polygon gets 3..8 vertices


def face_boxes(batch: Batch) -> Tensor:
    """``(B, 4)`` float face boxes (x0, y0, x1, y1) in pixels, clipped to the image.

    Uses ``box`` where present (and ``has_box`` is True), else the bounding box of the
    ``landmarks_2d`` (where ``has_landmarks_2d``), else the whole image.
    """
    image = batch["image"]
    b, _, h, w = image.shape
    full = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0]).expand(b, 4).clone()
    boxes = full
    if "landmarks_2d" in batch:
        lm = batch["landmarks_2d"].detach().float().cpu()
        lm_box = torch.cat([lm.amin(dim=1), lm.amax(dim=1)], dim=-1)
        has = batch.get(mask_key("landmarks_2d"), torch.ones(b, dtype=torch.bool)).cpu()
        boxes = torch.where(has[:, None], lm_box, boxes)
    if "box" in batch:
        box = batch["box"].detach().float().cpu()
        has = batch.get(mask_key("box"), torch.ones(b, dtype=torch.bool)).cpu()
        boxes = torch.where(has[:, None], box, boxes)
    lo = torch.tensor([0.0, 0.0, 0.0, 0.0])
    hi = torch.tensor([w - 1.0, h - 1.0, w - 1.0, h - 1.0])
    boxes = torch.maximum(torch.minimum(boxes, hi), lo)
    # A degenerate (empty or inverted) box falls back to the whole image.
    bad = (boxes[:, 2] - boxes[:, 0] < 1.0) | (boxes[:, 3] - boxes[:, 1] < 1.0)
    return torch.where(bad[:, None], full, boxes)


def shape_masks(
    kind: Tensor,
    center: Tensor,
    half_size: Tensor,
    angle: Tensor,
    vertex_angles: Tensor,
    height: int,
    width: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Rasterise ``(B, K)`` shapes into ``(B, K, H, W)`` boolean masks (pixel centres).

    Args:
        kind: ``(B, K)`` long index into :data:`OCCLUSION_SHAPES`.
        center: ``(B, K, 2)`` centres in pixels.
        half_size: ``(B, K, 2)`` half extents along the shape's own axes (rectangle half
            sides, ellipse semi-axes, semi-axes of the ellipse the polygon is inscribed in).
        angle: ``(B, K)`` orientation in radians.
        vertex_angles: ``(B, K, V)`` sorted parametric angles of the polygon vertices on that
            ellipse (repeat the last one to use fewer vertices).
        height, width: mask size.
        device: where to build the masks.
    """
    dt = torch.float32
    ys = torch.arange(height, device=device, dtype=dt)[:, None]
    xs = torch.arange(width, device=device, dtype=dt)[None, :]
    c = center.to(device, dt)[..., None, None, :]  # (B, K, 1, 1, 2)
    dx, dy = xs - c[..., 0], ys - c[..., 1]
    ca = torch.cos(angle).to(device, dt)[..., None, None]
    sa = torch.sin(angle).to(device, dt)[..., None, None]
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy  # shape-local coordinates
    hs = half_size.to(device, dt).clamp_min(1e-3)
    a, b = hs[..., 0, None, None], hs[..., 1, None, None]
    rect = (u.abs() <= a) & (v.abs() <= b)
    ellipse = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    # Points on an ellipse in parametric-angle order form a convex polygon: inside means on
    # the same side of every edge (degenerate repeated vertices give zero and pass).
    t = vertex_angles.to(device, dt)
    px, py = hs[..., 0, None] * torch.cos(t), hs[..., 1, None] * torch.sin(t)  # (B, K, V)
    qx, qy = px.roll(-1, dims=-1), py.roll(-1, dims=-1)
    inside = torch.ones_like(rect)
    for i in range(t.shape[-1]):
        ex, ey = (qx - px)[..., i, None, None], (qy - py)[..., i, None, None]
        cross = ex * (v - py[..., i, None, None]) - ey * (u - px[..., i, None, None])
        inside &= cross >= -1e-4
    kind = kind.to(device)[..., None, None]
    return torch.where(kind == 0, rect, torch.where(kind == 1, ellipse, inside))


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _sample_shapes(
    boxes: Tensor,
    max_shapes: int,
    area: tuple[float, float],
    aspect: tuple[float, float],
    kinds: Sequence[int],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Draw ``(B, K)`` shape parameters inside ``boxes (B, 4)``; see :func:`shape_masks`."""
    b, k, nv = boxes.shape[0], max_shapes, _POLYGON_VERTICES
    x0, y0, x1, y1 = boxes.double().unbind(-1)
    bw, bh = (x1 - x0 + 1.0)[:, None], (y1 - y0 + 1.0)[:, None]
    u = _rand((b, k, 6), generator)
    kind = torch.tensor(list(kinds), dtype=torch.long)[
        (u[..., 0] * len(kinds)).long().clamp_max(len(kinds) - 1)
    ]
    center = torch.stack([x0[:, None] + u[..., 1] * bw, y0[:, None] + u[..., 2] * bh], dim=-1) - 0.5
    frac = area[0] + (area[1] - area[0]) * u[..., 3]
    la, lb = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(la + (lb - la) * u[..., 4])
    shape_area = frac * bw * bh
    # Half extents giving the requested area for a rectangle (an ellipse/polygon of the same
    # extents covers pi/4 / less of it: close enough for an occluder).
    half = 0.5 * torch.stack([(shape_area * ratio).sqrt(), (shape_area / ratio).sqrt()], dim=-1)
    angle = u[..., 5] * math.pi
    n_used = 3 + (_rand((b, k), generator) * (nv - 2)).long().clamp_max(nv - 3)
    # Stratified angles (one per sector of 2 pi / n) give well-spread, never sliver-thin
    # polygons; sorted by construction. Unused slots repeat the last vertex.
    idx = torch.arange(nv, dtype=torch.float64)
    jitter = _rand((b, k, nv), generator)
    offset = _rand((b, k, 1), generator) * 2 * math.pi
    t = offset + 2 * math.pi * (idx + 0.8 * jitter) / n_used[..., None]
    last = t.gather(-1, (n_used - 1)[..., None])
    t = torch.where(idx < n_used[..., None], t, last)
    return kind, center, half, angle, t


class RandomOcclusion(nn.Module):
    """Paste random occluders over the face region of each sample with probability ``p``.

    Args:
        p: per-sample probability of being occluded.
        num_shapes: ``(min, max)`` number of shapes per occluded sample.
        area: ``(min, max)`` area of one shape as a fraction of the face box area.
        aspect: ``(min, max)`` aspect ratio of a shape (log-uniform).
        shapes: subset of :data:`OCCLUSION_SHAPES`.
        fills: subset of :data:`OCCLUSION_FILLS` (chosen per shape).
        update_visibility: set ``landmarks_visible`` False for landmarks under an occluder.
        generator: optional CPU generator; otherwise torch's global RNG. With a generator
            the output is reproducible bit for bit on every device; without one, noise
            fills are drawn on the image's device.

    ``forward`` takes a batch with float ``image (B, C, H, W)`` in [0, 1] and returns a new
    dict with occluded images, ``occluded`` (B,) bool OR-ed with the samples occluded here
    (created if absent) and ``has_occluded`` (all True if absent, else OR-ed likewise).
    The face region is :func:`face_boxes`; pixels outside it are never changed.
    """

    def __init__(
        self,
        p: float = 0.5,
        num_shapes: tuple[int, int] = (1, 3),
        area: tuple[float, float] = (0.05, 0.25),
        aspect: tuple[float, float] = (0.5, 2.0),
        shapes: Sequence[str] = OCCLUSION_SHAPES,
        fills: Sequence[str] = OCCLUSION_FILLS,
        update_visibility: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} must be a probability in [0, 1]")
        lo, hi = (int(n) for n in num_shapes)
        if not 1 <= lo <= hi:
            raise ValueError(
                f"num_shapes={tuple(num_shapes)} must be (min, max) with 1 <= min <= max"
            )
        if not 0.0 < area[0] <= area[1]:
            raise ValueError(f"area={tuple(area)} must be (min, max) with 0 < min <= max")
        if not 0.0 < aspect[0] <= aspect[1]:
            raise ValueError(f"aspect={tuple(aspect)} must be (min, max) with 0 < min <= max")
        bad = [s for s in shapes if s not in OCCLUSION_SHAPES]
        if bad or not shapes:
            raise ValueError(
                f"shapes={list(shapes)} must be a non-empty subset of {OCCLUSION_SHAPES}"
            )
        bad = [f for f in fills if f not in OCCLUSION_FILLS]
        if bad or not fills:
            raise ValueError(f"fills={list(fills)} must be a non-empty subset of {OCCLUSION_FILLS}")
        self.p, self.num_shapes = float(p), (lo, hi)
        self.area = (float(area[0]), float(area[1]))
        self.aspect = (float(aspect[0]), float(aspect[1]))
        self.shapes, self.fills = tuple(shapes), tuple(fills)
        self.update_visibility = update_visibility
        self.generator = generator

    def sample_masks(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Draw the occluders of ``batch``.

        Returns:
            ``(active, masks, fills)``: ``(B,)`` bool on the CPU, ``(B, K, H, W)`` bool
            masks (already clipped to the face box, empty for inactive samples and unused
            shape slots) and ``(B, K, C, H, W)`` float fills on the image's device (noise
            fills of one sample share one noise image, to bound memory).
        """
        image = batch["image"]
        b, c, h, w = image.shape
        device, gen = image.device, self.generator
        lo, hi = self.num_shapes
        active = _rand((b,), gen) < self.p
        count = lo + (_rand((b,), gen) * (hi - lo + 1)).long().clamp_max(hi - lo)
        boxes = face_boxes(batch)
        kinds = [OCCLUSION_SHAPES.index(s) for s in self.shapes]
        kind, center, half, angle, vert = _sample_shapes(
            boxes, hi, self.area, self.aspect, kinds, gen
        )
        masks = shape_masks(kind, center, half, angle, vert, h, w, device)
        used = active[:, None] & (torch.arange(hi)[None, :] < count[:, None])
        ys = torch.arange(h, device=device)[:, None]
        xs = torch.arange(w, device=device)[None, :]
        bx = boxes.to(device)[:, :, None, None]
        in_box = (xs >= bx[:, 0]) & (xs <= bx[:, 2]) & (ys >= bx[:, 1]) & (ys <= bx[:, 3])
        masks = masks & in_box[:, None] & used.to(device)[:, :, None, None]

        fill_kind = (_rand((b, hi), gen) * len(self.fills)).long().clamp_max(len(self.fills) - 1)
        is_noise = torch.tensor([self.fills[i] == "noise" for i in fill_kind.flatten().tolist()])
        is_noise = is_noise.reshape(b, hi)
        colour = _rand((b, hi, c), gen).to(device, image.dtype)[..., None, None]
        fills = colour.expand(b, hi, c, h, w)
        if bool((is_noise & used).any()):
            if gen is not None:
                noise = _rand((b, 1, c, h, w), gen).to(device, image.dtype)
            else:
                noise = torch.rand((b, 1, c, h, w), device=device, dtype=image.dtype)
            fills = torch.where(is_noise.to(device)[:, :, None, None, None], noise, fills)
        return active, masks, fills

    def forward(self, batch: Batch) -> Batch:
        """Occlude ``batch``; returns a new dict (see the class docstring)."""
        out = dict(batch)
        image = batch["image"]
        b = image.shape[0]
        active, masks, fills = self.sample_masks(batch)
        if bool(active.any()):
            occluded_image = image
            for k in range(masks.shape[1]):
                occluded_image = torch.where(masks[:, k, None], fills[:, k], occluded_image)
            out["image"] = occluded_image
            if self.update_visibility and "landmarks_visible" in batch and "landmarks_2d" in batch:
                union = masks.any(dim=1)  # (B, H, W)
                h, w = union.shape[-2:]
                lm = batch["landmarks_2d"].to(union.device).round().long()
                x, y = lm[..., 0], lm[..., 1]
                inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
                flat = union.flatten(1).gather(1, (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)))
                covered = flat & inside
                out["landmarks_visible"] = batch["landmarks_visible"] & ~covered.to(
                    batch["landmarks_visible"].device
                )
        dev = image.device
        act = active.to(dev)
        if "occluded" in batch:
            out["occluded"] = batch["occluded"].to(torch.bool) | act.to(batch["occluded"].device)
        else:
            out["occluded"] = act.clone()
        key = mask_key("occluded")
        if key in batch:
            out[key] = batch[key] | act.to(batch[key].device)
        else:
            out[key] = torch.ones(b, dtype=torch.bool, device=dev)
        return out
