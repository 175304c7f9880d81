"""A textured 2.5D mesh of a face image: landmarks, head and background (OpNet Sec. 3.1,
3DDFA's "face profiling" that made 300W-LP).

Camera model: orthographic, checked on the data. AFLW2000's and 300W-LP's ``pt3d_68`` come
from a weak-perspective 3DMM fit, so their x, y ARE the 2D landmarks (the loaders take the
2D landmarks from them) and their z is depth at the same pixel scale; the items'
``landmarks_3d`` keep that (x, y in crop pixels, z into the scene relative to the head centre,
:mod:`hpelib.data.sample`). On AFLW2000-dev the landmarks expressed in the head frame,
``R.T @ (p - c) / spread``, are the same shape in every image to 0.03-0.05 spread units: the
internal rotation label maps this frame onto the camera (x right, y down, z into the scene).

The mesh, in the source camera frame (crop pixels):

* the source-visible face landmarks (a landmark facing away in the source, e.g. the far
  jaw of a profile, is left out: its pixel shows another surface);
* points of a head ellipsoid (forehead, crown, temples, ears) that face the camera in the
  source and lie outside the face, plus the ellipsoid's exact source silhouette;
* a background ring beyond the silhouette and the crop border, which stay where they are:
  the triangles between the silhouette and the ring stretch, blending the moved head into
  the untouched image (the paper's Fig. 4);
* the back of the head (ellipsoid points facing away in the source, closed by the
  silhouette), so a turned head shows a head outline instead of holes. The source shows
  nothing of it: it is painted with the colour found just inside the head's rim in the
  same direction (hair, mostly).

The visible part is triangulated in the source image plane (Delaunay): every vertex is
visible in the source, so it is a height field whose texture coordinates are the vertices'
own source pixels, and rendering it unmoved returns the input image. The back is
triangulated the same way on its own (a height field seen from behind).

The head centre (the rotation centre) and the head ellipsoid are placed from the landmarks:
on AFLW2000-dev (287 images, |angles| <= 99 degrees, centre from the 3DMM translation) the
landmarks' mean lies at :data:`LANDMARK_MEAN_OFFSET` in the head frame, in units of the
landmarks' RMS distance from their mean (``spread``, rotation invariant; std 0.013-0.056).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import ConvexHull, Delaunay, QhullError
from torch import Tensor

__all__ = [
    "HEAD_ELLIPSOID_AXES",
    "HEAD_ELLIPSOID_CENTRE",
    "LANDMARK_MEAN_OFFSET",
    "FaceMesh",
    "MeshError",
    "build_face_mesh",
    "estimate_head_centre",
    "landmark_normals",
]

#: Mean of the 68 landmarks in the head frame (x right, y down, z into the scene for a
#: frontal face), in spread units; measured on AFLW2000-dev (median over 287 images).
LANDMARK_MEAN_OFFSET: tuple[float, float, float] = (0.0, 0.208, -1.44)
#: Head ellipsoid in the head frame, spread units (1 spread ~ 62 mm): centre and semi-axes.
#: Fitted by eye to the median landmark template (jaw ends at |x| 1.19, z -0.29; brows at
#: z -1.75; chin at y 1.40) and head proportions (breadth ~150 mm, height ~230 mm).
HEAD_ELLIPSOID_CENTRE: tuple[float, float, float] = (0.0, -0.35, 0.0)
HEAD_ELLIPSOID_AXES: tuple[float, float, float] = (1.25, 1.95, 1.8)
#: A landmark or ellipsoid point counts as facing the camera when its normal's z is below this.
_FACING_Z = -0.15
#: Head ellipsoid grid points are kept this far from grazing (|normal z| above it), so they
#: lie well inside the silhouette ring and the background band attaches to the ring only (a
#: band triangle reaching an inner head point would sweep in front of the turned head).
_GRID_FACING_Z = 0.3
#: Face hull dilation (about its centroid) inside which ellipsoid points are dropped.
_HULL_DILATION = 1.08
#: Background ring radius, relative to the silhouette ellipse, and its depth behind the head
#: centre in ellipsoid z semi-axes (far behind, so stretched blend triangles stay behind the head).
_BACKGROUND_RING = 1.35
_BACKGROUND_DEPTH = 3.0
#: Ellipsoid sample grids: polar angles from the face direction and azimuths (multiples of 4,
#: so each grid is symmetric under the head's mirror x -> -x). The front is textured (denser
#: towards the sides, whose grazing texture stretches most when turned to the camera); the
#: back is only painted with smooth colours (coarse).
_FRONT_GRID: tuple[tuple[float, ...], int] = ((25.0, 45.0, 60.0, 72.0, 82.0, 95.0), 24)
_BACK_GRID: tuple[tuple[float, ...], int] = ((105.0, 135.0, 165.0), 16)
#: The back of the head takes the colour found this far out towards the source's head rim
#: (ellipse-normalised): inside it, on the hair rather than the background (on the rim
#: itself where that point is on the face).
_RIM_INSET = 0.8


class MeshError(ValueError):
    """The landmarks cannot make a face mesh (too few, degenerate or not finite)."""


@dataclass(frozen=True)
class FaceMesh:
    """The mesh of a source image (module docstring): a height field over its visible part
    plus the back of the head.

    Attributes:
        vertices: ``(N, 3)`` float64 source positions (x, y in pixels, depth relative to the
            head centre, z into the scene).
        uv: ``(N, 2)`` float64 source pixel each vertex takes its colour from: its own x, y
            for the visible surface; a point just inside the head's rim for the back.
        normals: ``(N, 3)`` float64 unit outward normals of the head ellipsoid at the moving
            vertices (source camera frame; zero for the fixed ones): the per-pixel back-face
            test interpolates their z after the turn.
        faces: ``(T, 3)`` int64 triangles.
        back: ``(T,)`` bool, the triangle is on the back of the head (facing away in the
            source, painted with its vertices' colours instead of textured).
        moving: ``(N,)`` bool, the vertex turns with the head (face, head); the rest
            (background ring, crop border) stays.
        landmark_vertex: ``(68,)`` int64 vertex of each landmark, ``-1`` when it is not in the
            mesh (facing away in the source).
        centre: ``(3,)`` float64 rotation centre (the head centre) in the same coordinates.
        spread: RMS distance of the landmarks from their mean (pixels): the head's scale.
    """

    vertices: Tensor
    uv: Tensor
    normals: Tensor
    faces: Tensor
    back: Tensor
    moving: Tensor
    landmark_vertex: Tensor
    centre: Tensor
    spread: float


def estimate_head_centre(
    landmarks_3d: np.ndarray, rotation: np.ndarray, depth_origin_at_centre: bool = True
) -> tuple[np.ndarray, float]:
    """Head centre ``(3,)`` and spread (pixels) from the 68 landmarks ``(68, 3)`` and the
    internal rotation ``(3, 3)``: ``c = mean - spread * R @ LANDMARK_MEAN_OFFSET``.

    ``depth_origin_at_centre``: the landmark depth is already relative to the head centre
    (every hpelib loader, :mod:`hpelib.data.sample`), so the centre's depth is 0 exactly.
    """
    p = np.asarray(landmarks_3d, dtype=np.float64)
    mean = p.mean(axis=0)
    spread = float(np.sqrt(((p - mean) ** 2).sum(axis=1).mean()))
    centre = mean - spread * (np.asarray(rotation, np.float64) @ np.array(LANDMARK_MEAN_OFFSET))
    if depth_origin_at_centre:
        centre[2] = 0.0
    return centre, spread


def landmark_normals(
    landmarks_3d: np.ndarray, rotation: np.ndarray, centre: np.ndarray, spread: float
) -> np.ndarray:
    """Approximate outward unit normals ``(68, 3)`` (camera frame) of the landmarks: the head
    ellipsoid's normal in the direction of each landmark from the ellipsoid centre."""
    r = np.asarray(rotation, np.float64)
    head = (np.asarray(landmarks_3d, np.float64) - centre) @ r / spread  # R.T @ (p - c)
    axes = np.array(HEAD_ELLIPSOID_AXES)
    n = (head - np.array(HEAD_ELLIPSOID_CENTRE)) / axes**2
    n = n @ r.T
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(min=1e-12)


def _ellipsoid_normals(
    points: np.ndarray, rotation: np.ndarray, centre: np.ndarray, spread: float
) -> np.ndarray:
    """Unit normals ``(K, 3)`` (camera frame) of the head ellipsoid (centre ``centre`` in the
    camera) in the direction of ``points`` ``(K, 3)`` from its centre."""
    head = (points - centre) @ rotation / spread
    n = (head / np.array(HEAD_ELLIPSOID_AXES) ** 2) @ rotation.T
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(min=1e-12)


def _sphere_directions(polar_deg: tuple[float, ...], azimuths: int) -> np.ndarray:
    """Unit directions ``(K, 3)`` around the face direction ``-z`` of the head frame."""
    dirs = [np.array([0.0, 0.0, -1.0])]
    phi = np.arange(azimuths) * (2 * math.pi / azimuths)
    for t in np.radians(polar_deg):
        dirs.append(
            np.stack([np.sin(t) * np.cos(phi), np.sin(t) * np.sin(phi), -np.cos(t) * np.ones_like(phi)], 1)
        )
    return np.concatenate([d.reshape(-1, 3) for d in dirs], axis=0)


#: Both grids' unit directions ``(K, 3)``, once.
_GRID_DIRECTIONS = np.concatenate([_sphere_directions(*_FRONT_GRID), _sphere_directions(*_BACK_GRID)])


def _inside(hull: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(K,)`` bool: points ``xy`` ``(K, 2)`` inside the convex hull with half-plane
    equations ``hull`` ``(E, 3)`` (qhull's ``a x + b y + c <= 0`` inside)."""
    if len(xy) == 0:
        return np.zeros(0, dtype=bool)
    return (xy @ hull[:, :2].T + hull[:, 2]).max(axis=1) <= 0.0


def build_face_mesh(
    landmarks_3d: np.ndarray | Tensor,
    rotation: np.ndarray | Tensor,
    image_size: tuple[int, int],
    centre: np.ndarray | None = None,
    ring_points: int = 24,
) -> FaceMesh:
    """Build the mesh of the module docstring for one image.

    Args:
        landmarks_3d: ``(68, 3)`` landmarks (x, y in pixels, depth relative to the head centre).
        rotation: ``(3, 3)`` internal rotation label of the image.
        image_size: ``(height, width)`` of the image in pixels.
        centre: ``(3,)`` head centre when known; default :func:`estimate_head_centre`.
        ring_points: points on the silhouette and on the background ring (a multiple of 4
            keeps the mesh mirror-symmetric: a mirrored source gives the mirrored view).

    Raises:
        MeshError: non-finite landmarks or fewer than 3 non-collinear visible ones.
    """
    p = np.asarray(torch.as_tensor(landmarks_3d).detach().cpu().double().numpy())
    r = np.asarray(torch.as_tensor(rotation).detach().cpu().double().numpy())
    if p.shape != (68, 3) or not np.all(np.isfinite(p)):
        raise MeshError(f"landmarks_3d must be 68 finite 3D points, got shape {p.shape}")
    if centre is None:
        c, spread = estimate_head_centre(p, r)
    else:
        c, spread = np.asarray(centre, np.float64), estimate_head_centre(p, r)[1]
    if spread <= 1e-6:
        raise MeshError("landmarks_3d are all at one point")
    height, width = image_size

    facing = landmark_normals(p, r, c, spread)[:, 2] < _FACING_Z
    face_idx = np.nonzero(facing)[0]
    face_xy = p[face_idx, :2]
    hull = None
    if len(face_idx) >= 3:
        mid = face_xy.mean(axis=0)
        try:
            hull = ConvexHull(mid + _HULL_DILATION * (face_xy - mid)).equations
        except QhullError:
            pass
    if hull is None:
        raise MeshError(
            f"only {len(face_idx)} landmark(s) face the camera or they are collinear: no face mesh"
        )

    axes = np.array(HEAD_ELLIPSOID_AXES)
    e0 = np.array(HEAD_ELLIPSOID_CENTRE)
    m_mat = spread * r * axes[None, :]  # camera = m + M @ u for u on the unit sphere
    m_ctr = c + spread * (r @ e0)
    # Ellipsoid grid points: facing the camera and outside the face (front), or facing away
    # (back); the grazing band between them is the silhouette's.
    # (a source turned away from the camera shows part of the "back" grid and hides part of
    # the "front" one: both grids are classified by their camera-frame normals.)
    u = _GRID_DIRECTIONS
    pts = m_ctr + u @ m_mat.T
    normals = (u / axes) @ r.T
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    head_pts = pts[(normals[:, 2] < -_GRID_FACING_Z) & ~_inside(hull, pts[:, :2])]
    back_pts = pts[normals[:, 2] > _GRID_FACING_Z]
    # Silhouette: for image-plane boundary point b = L w of the projected ellipse (S = P P^T,
    # L its symmetric square root: mirror-equivariant, unlike a Cholesky factor), the unit u
    # with P u = b is u = P^T S^-1 b.
    proj = m_mat[:2]
    shape = proj @ proj.T
    evals, evecs = np.linalg.eigh(shape)
    root = evecs @ np.diag(np.sqrt(evals)) @ evecs.T
    ang = np.arange(ring_points) * (2 * math.pi / ring_points)
    b = np.stack([np.cos(ang), np.sin(ang)], axis=1) @ root.T
    sil_all = m_ctr + (b @ np.linalg.inv(shape).T @ proj) @ m_mat.T
    sil = sil_all[~_inside(hull, sil_all[:, :2])]
    # Background ring and crop border: fixed, far behind the head.
    z_back = c[2] + _BACKGROUND_DEPTH * spread * axes[2]
    ring_xy = m_ctr[:2] + _BACKGROUND_RING * b
    margin = 0.1 * max(height, width)
    in_view = (
        (ring_xy[:, 0] > -margin) & (ring_xy[:, 0] < width + margin)
        & (ring_xy[:, 1] > -margin) & (ring_xy[:, 1] < height + margin)
    )  # fmt: skip
    ring_xy = ring_xy[in_view & ~_inside(hull, ring_xy)]
    t = np.linspace(0.0, 1.0, 5)
    border_xy = np.unique(
        np.concatenate([
            np.stack([t * width, np.zeros_like(t)], 1), np.stack([t * width, np.full_like(t, height)], 1),
            np.stack([np.zeros_like(t), t * height], 1), np.stack([np.full_like(t, width), t * height], 1),
        ]),
        axis=0,
    )  # fmt: skip
    fixed_xy = np.concatenate([ring_xy, border_xy])
    fixed = np.concatenate([fixed_xy, np.full((len(fixed_xy), 1), z_back)], axis=1)

    front = np.concatenate([p[face_idx], head_pts, sil, fixed])
    # The back of the head (hidden in the source) closes the surface, so that a turned head
    # shows a head outline rather than holes; it has no texture of its own and is painted
    # with the colour of the source's head rim in the same direction (hair, mostly).
    back = np.concatenate([sil_all, back_pts])
    rim = np.linalg.solve(root, (back[:, :2] - m_ctr[:2]).T).T  # ellipse-normalised offsets
    rim /= np.linalg.norm(rim, axis=1, keepdims=True).clip(min=1e-9)
    rim_xy = rim @ root.T
    back_uv = m_ctr[:2] + _RIM_INSET * rim_xy
    # Never the face's colour on the back of the head: on the silhouette itself there.
    on_face = _inside(hull, back_uv)
    back_uv[on_face] = m_ctr[:2] + rim_xy[on_face]
    try:
        front_faces = Delaunay(front[:, :2]).simplices
        back_faces = Delaunay(back[:, :2]).simplices + len(front)
    except QhullError as err:
        raise MeshError(f"cannot triangulate the face mesh: {err}") from None
    vertices = np.concatenate([front, back])
    normals = _ellipsoid_normals(vertices, r, m_ctr, spread)
    moving = np.ones(len(vertices), dtype=bool)
    moving[len(front) - len(fixed) : len(front)] = False
    normals[~moving] = 0.0
    landmark_vertex = np.full(68, -1, dtype=np.int64)
    landmark_vertex[face_idx] = np.arange(len(face_idx))
    faces = np.concatenate([front_faces, back_faces]).astype(np.int64)
    back_face = np.zeros(len(faces), dtype=bool)
    back_face[len(front_faces) :] = True
    return FaceMesh(
        vertices=torch.from_numpy(vertices),
        uv=torch.from_numpy(np.concatenate([front[:, :2], back_uv])),
        normals=torch.from_numpy(normals),
        faces=torch.from_numpy(faces),
        back=torch.from_numpy(back_face),
        moving=torch.from_numpy(moving),
        landmark_vertex=torch.from_numpy(landmark_vertex),
        centre=torch.from_numpy(c),
        spread=spread,
    )
