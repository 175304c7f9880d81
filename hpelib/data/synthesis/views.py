"""Render a real face in a new out-of-plane pose, with exact labels (OpNet Sec. 3.1).

The head part of the mesh (:mod:`.mesh`) turns by ``delta`` about the head centre ``c``:
``p' = c + delta @ (p - c)``; the label of the new view is ``delta @ R`` EXACTLY, because
``delta`` acts in the camera frame on head points ``p = c + s R x`` (internal convention:
``R`` maps head to camera coordinates, x right, y down, z into the scene). The moved 68
landmarks are the new ``landmarks_3d`` (their depth stays relative to the head centre, whose
depth is 0), their x, y the new ``landmarks_2d``.

Rendering: the moved mesh is rasterized with a z-buffer (:mod:`.raster`) and back faces are
removed, so the far side of the face disappears behind the near side instead of smearing
over it: per pixel on the head (where the turned head-ellipsoid normal points away: a smooth
outline) and per triangle on the face (a face triangle whose screen orientation flipped, the
far side of the nose). Each pixel's source position is interpolated and the source image
sampled there (``grid_sample``, bilinear); the back of the head is painted with its vertex
colours. Pixels the head uncovers show the stretched background band (nothing in the source
shows what was behind the head), as in 300W-LP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hpelib.data.synthesis.mesh import FaceMesh, build_face_mesh, landmark_normals
from hpelib.data.synthesis.raster import rasterize, signed_areas
from hpelib.rotation.conventions import euler_300wlp_from_rotation, rotation_from_euler_300wlp

__all__ = [
    "INCREMENT_MODES",
    "PoseIncrement",
    "SynthesisError",
    "render_view",
    "synthesize_view",
]

IncrementMode = Literal["towards_profile", "uniform"]
INCREMENT_MODES: tuple[str, ...] = ("towards_profile", "uniform")
#: Kept from the source sample: properties of the person, not of the view.
_KEPT_KEYS = ("identity", "index", "shape_params", "head_size", "head_center", "occluded")
#: A landmark is visible when the rendered surface at its pixel is within this many spreads
#: of its own depth (the mesh approximates the surface between vertices).
_VISIBILITY_TOLERANCE = 0.25


class SynthesisError(ValueError):
    """A sample cannot be turned into a new view (no 3D landmarks, bad shapes)."""


@dataclass(frozen=True)
class PoseIncrement:
    """Distribution of the new pose of a synthesised view (300W-LP Euler angles, degrees).

    ``mode="towards_profile"`` (the paper, 300W-LP): the new |yaw| is uniform between the
    source's |yaw| and ``max_yaw_deg``, on the side the face already turns to (a random side
    when the source is within 5 degrees of frontal). ``mode="uniform"``: the new yaw is
    uniform in ``[-max_yaw_deg, max_yaw_deg]`` whatever the source (a flat yaw histogram).
    Either way pitch moves by ``U(-pitch_jitter_deg, pitch_jitter_deg)`` and roll is kept.
    """

    mode: IncrementMode = "towards_profile"
    max_yaw_deg: float = 90.0
    pitch_jitter_deg: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in INCREMENT_MODES:
            raise ValueError(f"PoseIncrement mode={self.mode!r} is not one of {INCREMENT_MODES}")
        if not 0.0 <= self.max_yaw_deg <= 180.0 or self.pitch_jitter_deg < 0.0:
            raise ValueError(
                f"PoseIncrement needs 0 <= max_yaw_deg <= 180 and pitch_jitter_deg >= 0, got "
                f"{self.max_yaw_deg} and {self.pitch_jitter_deg}"
            )

    def sample_target(self, rotation: Tensor, rng: np.random.Generator) -> Tensor:
        """The new pose ``(3, 3)`` (internal convention, dtype of ``rotation``) of a source
        with label ``rotation`` ``(3, 3)``; the increment is ``target @ rotation.T``."""
        pitch, yaw, roll = (float(a) for a in euler_300wlp_from_rotation(rotation.double()))
        limit = math.radians(self.max_yaw_deg)
        if self.mode == "towards_profile":
            side = math.copysign(1.0, yaw) if abs(yaw) > math.radians(5.0) else float(rng.choice([-1.0, 1.0]))
            lo = min(abs(yaw), limit)
            new_yaw = side * float(rng.uniform(lo, max(lo, limit)))
        else:
            new_yaw = float(rng.uniform(-limit, limit))
        j = math.radians(self.pitch_jitter_deg)
        new_pitch = pitch + float(rng.uniform(-j, j))
        angles = torch.tensor([new_pitch, new_yaw, roll], dtype=torch.float64)
        return rotation_from_euler_300wlp(angles[0], angles[1], angles[2]).to(rotation.dtype)


def _moved_vertices(mesh: FaceMesh, delta: Tensor) -> Tensor:
    v = mesh.vertices
    turned = mesh.centre + (v - mesh.centre) @ delta.to(v.dtype).T
    return torch.where(mesh.moving[:, None], turned, v)


def render_view(image: Tensor, mesh: FaceMesh, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Render ``image`` ``(C, H, W)`` float with the head of ``mesh`` turned by ``delta``.

    Returns:
        ``(C, H, W)`` image (same dtype) and ``(H, W)`` depth of the visible surface
        (``+inf`` where no triangle covers a pixel; those pixels keep the source pixel).
    """
    channels, height, width = image.shape
    moved = _moved_vertices(mesh, delta)
    faces = mesh.faces
    # Back-face removal, two ways. The head ellipsoid, per pixel (below): where its turned
    # normal points away, a smooth outline. The face's own relief (nose, brows), per
    # triangle: a face triangle whose screen orientation flipped has turned its back.
    turn = signed_areas(mesh.vertices[:, :2], faces) * signed_areas(moved[:, :2], faces)
    on_face = torch.zeros(mesh.vertices.shape[0], dtype=torch.bool)
    on_face[mesh.landmark_vertex[mesh.landmark_vertex >= 0]] = True
    flipped = on_face[faces].any(dim=1) & ~mesh.back & (turn <= 0)
    corner_moves = mesh.moving[faces]
    head = corner_moves.all(dim=1)
    # Per-pixel removal draws nothing of a head triangle whose 3 turned normals all point away.
    turned_nz = (mesh.normals @ delta.to(mesh.normals.dtype).T)[:, 2]
    away = (turned_nz[faces] > 0).all(dim=1)
    # Triangles of fixed vertices only are the untouched image at a constant depth behind
    # everything else: the identity fill below draws them, no need to rasterize them.
    keep = corner_moves.any(dim=1) & (~head | ~(flipped | away))
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    uv = mesh.uv
    colour = F.grid_sample(
        image[None], (uv * scale - 1.0).to(image.dtype).view(1, 1, -1, 2),
        mode="bilinear", padding_mode="border", align_corners=False,
    )[0, :, 0].T  # (N, C) the source colour at each vertex's uv  # fmt: skip
    attributes = torch.cat([uv.float(), colour.float()], dim=1)
    # Per-pixel back-face removal on the head: where the turned ellipsoid normal points away.
    raster = rasterize(
        moved.float(), faces[keep], attributes, height, width,
        cull=turned_nz.float(), cull_faces=head[keep],
    )  # fmt: skip
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    covered = raster.covered
    pix_uv = torch.where(covered[..., None], raster.attributes[..., :2], identity)
    grid = (pix_uv * scale.float() - 1.0).to(image.dtype)
    out = F.grid_sample(
        image[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    painted = covered & mesh.back[keep][raster.triangle.clamp(min=0)]
    if bool(painted.any()):
        paint = raster.attributes[..., 2 : 2 + channels].permute(2, 0, 1).to(image.dtype)
        out = torch.where(painted[None], paint, out)
    return out, raster.depth


def synthesize_view(
    sample: dict[str, Any], delta: Tensor | None = None, target: Tensor | None = None
) -> dict[str, Any]:
    """A new view of a sample (:mod:`hpelib.data.sample`) with the head turned out of plane.

    Args:
        sample: needs ``image`` ``(3, S, S)`` uint8 (or float), ``rotation`` ``(3, 3)`` and
            ``landmarks_3d`` ``(68, 3)`` (crop pixels, depth relative to the head centre; a
            ``head_center`` ``(2,)`` is used as the rotation centre when present).
        delta: ``(3, 3)`` camera-frame rotation of the head; or
        target: ``(3, 3)`` the new label (``delta = target @ rotation.T``). Neither: identity.

    Returns:
        A new sample: ``image`` (source dtype), ``rotation`` = ``delta @ rotation``,
        ``landmarks_3d`` / ``landmarks_2d`` moved, ``landmarks_visible`` (facing the camera and
        on the rendered surface, not behind it), ``box`` (x0, y0, x1, y1: the box of the 68
        moved landmarks, as OpNet's ``pt3d_68`` boxes); ``identity``, ``index``,
        ``shape_params``, ``head_size``, ``head_center`` (the rotation centre: it does not
        move) and ``occluded`` are kept when the sample has them.

    Raises:
        SynthesisError: the sample lacks a key or has the wrong shapes, or both ``delta`` and
            ``target`` are given.
    """
    if delta is not None and target is not None:
        raise SynthesisError("synthesize_view takes delta or target, not both")
    for key in ("image", "rotation", "landmarks_3d"):
        if key not in sample:
            raise SynthesisError(
                f"synthesize_view needs {key!r} in the sample (keys: {sorted(sample)}); "
                "out-of-plane synthesis needs a dataset with 3D landmarks (pt3d_68)"
            )
    image = torch.as_tensor(sample["image"])
    rotation = torch.as_tensor(sample["rotation"]).float()
    if image.ndim != 3 or rotation.shape != (3, 3):
        raise SynthesisError(
            f"expected image (C, H, W) and rotation (3, 3), got {tuple(image.shape)} and "
            f"{tuple(rotation.shape)}"
        )
    if delta is None:
        delta = (
            torch.eye(3) if target is None else torch.as_tensor(target).float() @ rotation.T
        )
    delta = torch.as_tensor(delta).double()
    lm3 = torch.as_tensor(sample["landmarks_3d"]).double()
    _, height, width = image.shape
    centre = None
    if "head_center" in sample:
        centre = np.array([*torch.as_tensor(sample["head_center"]).double().tolist(), 0.0])
    mesh = build_face_mesh(lm3, rotation, (height, width), centre=centre)
    work = image.float() if not image.is_floating_point() else image
    rendered, depth = render_view(work, mesh, delta)
    if not image.is_floating_point():
        rendered = rendered.round().clamp(0, 255).to(image.dtype)

    moved = mesh.centre + (lm3 - mesh.centre) @ delta.T
    new_rotation = (delta @ rotation.double()).float()
    visible = _visible(moved, new_rotation, mesh, depth)
    xy = moved[:, :2]
    box = torch.cat([xy.amin(dim=0), xy.amax(dim=0)])
    out: dict[str, Any] = {
        "image": rendered.contiguous(),
        "rotation": new_rotation,
        "landmarks_3d": moved.float(),
        "landmarks_2d": xy.float(),
        "landmarks_visible": visible,
        "box": box.float(),
    }
    out.update({k: sample[k] for k in _KEPT_KEYS if k in sample})
    return out


def _visible(moved: Tensor, rotation: Tensor, mesh: FaceMesh, depth: Tensor) -> Tensor:
    """``(68,)`` bool: the landmark faces the camera (head-ellipsoid normal), lies inside the
    image and on the rendered surface: within a depth tolerance of the depth at its pixel or
    one of the 8 around it (a landmark on an outline, the nose tip of a profile, has the
    background in half of its neighbourhood). A landmark behind another surface (the far eye
    behind the nose) or whose own triangles were culled (turned away) is not on it."""
    normals = landmark_normals(
        moved.numpy(), rotation.double().numpy(), mesh.centre.numpy(), mesh.spread
    )
    facing = torch.from_numpy(normals[:, 2] < 0.0)
    height, width = depth.shape
    col = torch.floor(moved[:, 0]).long()
    row = torch.floor(moved[:, 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    padded = F.pad(depth[None, None], (1, 1, 1, 1), value=float("inf"))[0, 0]
    off = torch.arange(3)
    rows = (row.clamp(0, height - 1)[:, None] + off)[:, :, None]  # (68, 3, 1) padded rows
    cols = (col.clamp(0, width - 1)[:, None] + off)[:, None, :]  # (68, 1, 3) padded cols
    around = padded[rows, cols].reshape(len(moved), 9).double()
    tol = _VISIBILITY_TOLERANCE * mesh.spread
    on_surface = ((around - moved[:, 2:3]).abs() <= tol).any(dim=1)
    return facing & on_surface & inside
