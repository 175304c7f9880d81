"""Batched pure-torch ray caster for the parametric heads of :mod:`.head`.

Why a ray caster over analytic ellipsoids: for a pinhole (or orthographic) camera, the ray
through pixel ``w = (u, v, 1)`` meets an ellipsoid where a quadratic in the depth has a
root, and every coefficient of that quadratic is itself a quadratic polynomial in ``(u, v)``.
So a whole image of one primitive is one small matrix product (6 monomials per pixel times 6
coefficients per primitive), for the whole batch and all primitives at once; the only
per-pixel work left is a square root, a division and a max over primitives. That keeps the
renderer vectorised (no Python loop over the batch), deterministic, free of any display or
graphics driver (it runs unchanged in DDP workers and on GPU), and fast on CPU.

The discriminant is computed in the cancellation-free form ``|dl|^2 - |el x dl|^2`` (local
ray direction ``dl``, local ray origin minus centre ``el``), so silhouettes of small
primitives seen from a distance stay clean in float32.

Camera (all in pixels, pixel centres at integer coordinates, principal point at the image
centre ``((S - 1) / 2, (S - 1) / 2)``): ``perspective`` uses focal length
``f = head_fill * S * camera_distance`` with the head at depth ``camera_distance / scale``;
``weak_perspective`` projects ``u = s x + cx`` with ``s = head_fill * S * scale``. A rotation
of the image about its centre is then exactly a rotation of the camera about its axis, so
``rotate_inplane`` / ``flip_across_line`` labels are exact for a centred head (the tests
check this against fresh renders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from hpelib.data.synthetic.head import (
    HEAD_PARTS,
    MATERIAL_HAIR,
    MATERIAL_NECK,
    MATERIAL_SKULL,
    NUM_OCCLUDER_PARAMS,
    OCCLUDER_KINDS,
    build_head,
    head_landmarks,
)
from hpelib.rotation.sampling import random_rotation, sample_rotation_euler_range

__all__ = [
    "CAMERAS",
    "FRONTAL_RANGES_DEG",
    "NUM_BACKGROUND_PARAMS",
    "PRESETS",
    "SceneConfig",
    "default_scene",
    "render_heads",
    "sample_rotations",
    "sample_scenes",
]

CAMERAS = ("perspective", "weak_perspective")
PRESETS = ("full_range", "frontal")
# 300W-LP-like ranges (pitch, yaw, roll) in degrees, 300W-LP Euler convention.
FRONTAL_RANGES_DEG = (40.0, 90.0, 35.0)
_COARSE, _FINE = 4, 12  # background noise grids
NUM_BACKGROUND_PARAMS = 12 + 3 * _COARSE * _COARSE + 3 * _FINE * _FINE


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn and framed (everything except the head and its pose).

    Attributes:
        camera: ``"perspective"`` or ``"weak_perspective"``.
        camera_distance: head-centre depth in head heights (perspective strength).
        head_fill: head height (crown to chin) over the image size at nominal scale.
        translation_jitter: head-centre shift, uniform in ``+/-`` this fraction of the image.
        scale_jitter: relative head-size change, uniform in ``+/-`` this fraction.
        occlusion_prob: probability that a sample gets one occluder.
        occluder_kinds: which of :data:`OCCLUDER_KINDS` may be drawn.
        expression_prob: probability of a random eye closure / open mouth.
        occluded_threshold: fraction of visible face pixels an occluder must cover for the
            sample's ``occluded`` flag.
    """

    camera: str = "perspective"
    camera_distance: float = 8.0
    head_fill: float = 0.55
    translation_jitter: float = 0.05
    scale_jitter: float = 0.1
    occlusion_prob: float = 0.0
    occluder_kinds: tuple[str, ...] = field(default=OCCLUDER_KINDS)
    expression_prob: float = 0.3
    occluded_threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {self.camera!r}")
        if not 0.0 <= self.occlusion_prob <= 1.0:
            raise ValueError(f"occlusion_prob must be in [0, 1], got {self.occlusion_prob}")
        unknown = set(self.occluder_kinds) - set(OCCLUDER_KINDS)
        if unknown or not self.occluder_kinds:
            raise ValueError(
                f"occluder_kinds must be a non-empty subset of {OCCLUDER_KINDS}, got "
                f"{self.occluder_kinds!r}"
            )
        if self.camera_distance <= 1.0:
            raise ValueError(f"camera_distance must be > 1 head height, got {self.camera_distance}")
        if not 0.05 <= self.head_fill <= 2.0:
            raise ValueError(f"head_fill must be in [0.05, 2], got {self.head_fill}")


def sample_rotations(
    n: int, preset: str | tuple[float, float, float], generator: torch.Generator
) -> Tensor:
    """``(n, 3, 3)`` rotations: ``"full_range"`` (uniform on SO(3)), ``"frontal"``
    (300W-LP-like ranges :data:`FRONTAL_RANGES_DEG`) or explicit ``(pitch, yaw, roll)``
    ranges in degrees (300W-LP convention)."""
    if isinstance(preset, str):
        if preset == "full_range":
            return random_rotation(n, generator=generator)
        if preset == "frontal":
            return sample_rotation_euler_range(n, FRONTAL_RANGES_DEG, "300wlp", generator)
        raise ValueError(
            f"preset must be one of {PRESETS} or (pitch, yaw, roll) ranges, got {preset!r}"
        )
    if len(preset) != 3:
        raise ValueError(f"preset ranges must be (pitch, yaw, roll) degrees, got {preset!r}")
    return sample_rotation_euler_range(n, tuple(float(x) for x in preset), "300wlp", generator)


def sample_scenes(
    n: int,
    generator: torch.Generator,
    preset: str | tuple[float, float, float] = "full_range",
    config: SceneConfig | None = None,
) -> dict[str, Tensor]:
    """Draw ``n`` scenes (pose, framing, light, expression, occluders, background).

    Returns a dict of CPU tensors with leading dimension ``n``: ``rotation (n, 3, 3)``,
    ``translation (n, 2)`` pixels/size, ``scale (n,)``, ``light (n, 3)`` unit vector towards
    the light in camera axes, ``ambient (n,)``, ``diffuse (n,)``, ``eye_closure (n,)``,
    ``mouth_open (n,)``, ``occluder_flags (n, 5)`` bool, ``occluder_params (n, 10)``,
    ``background (n, NUM_BACKGROUND_PARAMS)``. The draw order is fixed, so the same generator
    state gives the same scenes.
    """
    cfg = config or SceneConfig()
    rot = sample_rotations(n, preset, generator)
    u = torch.rand(n, 12, generator=generator)
    translation = (2 * u[:, 0:2] - 1) * cfg.translation_jitter
    scale = 1 + (2 * u[:, 2] - 1) * cfg.scale_jitter
    # Light from the camera's hemisphere, up to ~70 degrees off-axis.
    az, el = 2 * math.pi * u[:, 3], 1.2 * u[:, 4].sqrt()
    light = torch.stack([el.sin() * az.cos(), el.sin() * az.sin(), -el.cos()], -1)
    ambient = 0.3 + 0.25 * u[:, 5]
    diffuse = 0.55 + 0.4 * u[:, 6]
    expressive = u[:, 7] < cfg.expression_prob
    eye_closure = torch.where(expressive & (u[:, 8] < 0.5), u[:, 9], torch.zeros(n))
    mouth_open = torch.where(expressive & (u[:, 8] >= 0.3), u[:, 10], torch.zeros(n))
    occ_u = torch.rand(n, 2, generator=generator)
    kinds = torch.tensor([OCCLUDER_KINDS.index(k) for k in cfg.occluder_kinds])
    kind = kinds[(occ_u[:, 1] * len(kinds)).long().clamp_max(len(kinds) - 1)]
    flags = torch.zeros(n, len(OCCLUDER_KINDS), dtype=torch.bool)
    flags[torch.arange(n), kind] = occ_u[:, 0] < cfg.occlusion_prob
    occluder_params = torch.rand(n, NUM_OCCLUDER_PARAMS, generator=generator)
    background = torch.rand(n, NUM_BACKGROUND_PARAMS, generator=generator)
    return {
        "rotation": rot.float(),
        "translation": translation,
        "scale": scale,
        "light": light,
        "ambient": ambient,
        "diffuse": diffuse,
        "eye_closure": eye_closure,
        "mouth_open": mouth_open,
        "occluder_flags": flags,
        "occluder_params": occluder_params,
        "background": background,
    }


def default_scene(rotations: Tensor) -> dict[str, Tensor]:
    """A neutral scene per rotation ``(B, 3, 3)``: centred head, nominal scale, light along
    the optical axis, no expression or occluder, mid-grey flat background. Edit its entries
    to build controlled renders (tests, figures)."""
    b = rotations.shape[0]
    bg = torch.full((b, NUM_BACKGROUND_PARAMS), 0.5)
    bg[:, 7:12] = 0.0  # no noise, no stripes
    return {
        "rotation": rotations.float().cpu(),
        "translation": torch.zeros(b, 2),
        "scale": torch.ones(b),
        "light": torch.tensor([0.0, 0.0, -1.0]).expand(b, 3).clone(),
        "ambient": torch.full((b,), 0.35),
        "diffuse": torch.full((b,), 0.7),
        "eye_closure": torch.zeros(b),
        "mouth_open": torch.zeros(b),
        "occluder_flags": torch.zeros(b, len(OCCLUDER_KINDS), dtype=torch.bool),
        "occluder_params": torch.full((b, NUM_OCCLUDER_PARAMS), 0.5),
        "background": bg,
    }


def _backgrounds(bg: Tensor, size: int) -> Tensor:
    """``(B, NUM_BACKGROUND_PARAMS)`` in [0, 1) -> ``(B, 3, S, S)`` float backgrounds:
    a two-colour gradient, smooth colour noise, blocky texture noise and stripes."""
    b, dev = bg.shape[0], bg.device
    g = torch.linspace(-0.5, 0.5, size, device=dev)
    y, x = torch.meshgrid(g, g, indexing="ij")
    c1, c2 = bg[:, 0:3], bg[:, 3:6]
    ang = 2 * math.pi * bg[:, 6]
    ramp = (0.5 + ang.cos()[:, None, None] * x + ang.sin()[:, None, None] * y).clamp(0, 1)
    img = c1[:, :, None, None] + (c2 - c1)[:, :, None, None] * ramp[:, None]
    o = 12
    coarse = bg[:, o : o + 3 * _COARSE**2].reshape(b, 3, _COARSE, _COARSE) - 0.5
    o += 3 * _COARSE**2
    fine = bg[:, o : o + 3 * _FINE**2].reshape(b, 3, _FINE, _FINE) - 0.5
    img = img + 0.6 * bg[:, 7, None, None, None] * F.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=True
    )
    img = img + 0.35 * bg[:, 8, None, None, None] * F.interpolate(
        fine, size=(size, size), mode="nearest"
    )
    sang = math.pi * bg[:, 10]
    freq = 2 + 10 * bg[:, 11]
    phase = (sang.cos()[:, None, None] * x + sang.sin()[:, None, None] * y) * freq[:, None, None]
    stripes = torch.sin(2 * math.pi * phase)
    img = img + 0.2 * bg[:, 9, None, None, None] * stripes[:, None]
    return img.clamp(0, 1)


def _poly_coeffs(m: Tensor) -> Tensor:
    """``(..., 3, 3)`` quadratic form ``w^T M w`` -> ``(..., 6)`` coefficients of the
    monomials ``[u^2, v^2, uv, u, v, 1]`` with ``w = (u, v, 1)``."""
    return torch.stack(
        [m[..., 0, 0], m[..., 1, 1], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0],
         m[..., 1, 2] + m[..., 2, 1], m[..., 2, 2]], -1,
    )  # fmt: skip


def _cross_matrix(v: Tensor) -> Tensor:
    """``(..., 3)`` -> ``(..., 3, 3)`` with ``[v]_x a = v x a``."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v.unbind(-1)
    return torch.stack([z, -w, y, w, z, -x, -y, x, z], -1).reshape(*v.shape, 3)


def _ray_matrices(
    b: int, size: int, cfg: SceneConfig, scale: Tensor, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Ray origin ``O`` and direction ``D`` as linear maps of ``w = ((u-c)/S, (v-c)/S, 1)``
    (``(B, 3, 3)`` each), and the head depth ``(B,)``. Direction z is 1, so the ray
    parameter is the camera depth."""
    o = torch.zeros(b, 3, 3, dtype=dtype, device=device)
    d = torch.zeros(b, 3, 3, dtype=dtype, device=device)
    if cfg.camera == "perspective":
        inv = 1.0 / (cfg.head_fill * cfg.camera_distance)  # S / f
        d[:, 0, 0] = d[:, 1, 1] = inv
        d[:, 2, 2] = 1.0
        depth = cfg.camera_distance / scale.to(dtype)
    else:
        inv = 1.0 / (cfg.head_fill * scale.to(dtype))  # S / s
        o[:, 0, 0] = o[:, 1, 1] = inv
        d[:, 2, 2] = 1.0
        depth = torch.full((b,), cfg.camera_distance, dtype=dtype, device=device)
    return o, d, depth


def _project(points: Tensor, size: int, cfg: SceneConfig, scale: Tensor, depth: Tensor) -> Tensor:
    """Camera points ``(B, N, 3)`` -> pixels ``(B, N, 2)``."""
    c = (size - 1) / 2
    if cfg.camera == "perspective":
        f = cfg.head_fill * size * cfg.camera_distance
        return f * points[..., :2] / points[..., 2:3] + c
    s = (cfg.head_fill * size * scale)[:, None, None]
    return s * points[..., :2] + c


def render_heads(
    params: Tensor,
    scene: dict[str, Tensor],
    image_size: int = 64,
    config: SceneConfig | None = None,
    device: torch.device | str | None = None,
    supersample: int = 1,
) -> dict[str, Tensor]:
    """Render a batch of heads with perfect labels.

    Args:
        params: ``(B, NUM_IDENTITY_PARAMS)`` identity parameters (one row per image).
        scene: per-image scene tensors as from :func:`sample_scenes` / :func:`default_scene`.
        image_size: output size ``S`` (square), at least 16.
        config: camera and framing (:class:`SceneConfig`); only its camera fields and
            ``occluded_threshold`` are used here.
        device: where to render (default: ``params``' device); outputs are on this device.
        supersample: render at ``supersample * S`` and average (anti-aliasing).

    Returns:
        dict of batched tensors: ``image (B, 3, S, S)`` uint8 RGB, ``rotation (B, 3, 3)``,
        ``depth (B, S, S)`` camera depth of the head only (``inf`` elsewhere), ``head_mask``
        and ``occlusion_mask`` ``(B, S, S)`` bool (occluded face pixels), ``face_mask``
        ``(B, S, S)`` bool (visible face pixels without occluders), ``occlusion_fraction
        (B,)``, ``occluded (B,)`` bool, ``landmarks_2d (B, 68, 2)``, ``landmarks_3d (B, 68,
        3)``, ``landmarks_visible (B, 68)``, ``box (B, 4)`` (tight box of the 68 projected
        landmarks: the face box), ``head_box (B, 4)`` (tight box of the head silhouette,
        neck and shoulders excluded), ``head_center (B, 2)`` (projected head origin),
        ``head_size (B,)`` (pixels per head height at the head's depth).
    """
    cfg = config or SceneConfig()
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    dev = torch.device(device) if device is not None else params.device
    b = params.shape[0]
    sc = {k: v.to(dev) for k, v in scene.items()}
    params = params.to(dev, torch.float32)
    flags = sc["occluder_flags"].bool()
    with_occ = bool(flags[:, :4].any())
    prims = build_head(
        params, sc["eye_closure"], sc["mouth_open"], flags, sc["occluder_params"], with_occ
    )
    is_torso = torch.arange(prims.centers.shape[1], device=dev) == HEAD_PARTS.index("torso")
    # Primitives off in every image of the batch cost full per-pixel work for nothing.
    keep = prims.enabled.any(0)
    if not bool(keep.all()):
        prims = replace(
            prims,
            centers=prims.centers[:, keep],
            axes=prims.axes[:, keep],
            orient=prims.orient[:, keep],
            colors=prims.colors[:, keep],
            enabled=prims.enabled[:, keep],
            material=prims.material[keep],
            is_occluder=prims.is_occluder[keep],
            is_face=prims.is_face[keep],
        )
        is_torso = is_torso[keep]
    k_all = prims.centers.shape[1]
    k_head = int((~prims.is_occluder).sum())
    with_occ = k_all > k_head

    # Pose: camera-frame ellipsoids, in float64 for the small per-primitive algebra.
    f64 = torch.float64
    rot = sc["rotation"].to(f64)
    o_mat, d_mat, depth0 = _ray_matrices(b, image_size, cfg, sc["scale"], f64, dev)
    head_pos = torch.stack(
        [
            sc["translation"][:, 0].to(f64),
            sc["translation"][:, 1].to(f64),
            torch.ones(b, dtype=f64, device=dev),
        ],
        -1,
    )
    if cfg.camera == "perspective":
        t_cam = (
            head_pos
            * depth0[:, None]
            * torch.tensor(
                [1 / (cfg.head_fill * cfg.camera_distance)] * 2 + [1.0], dtype=f64, device=dev
            )
        )
    else:
        t_cam = head_pos * torch.stack(
            [1 / (cfg.head_fill * sc["scale"].to(f64))] * 2 + [depth0], -1
        )
    centers = (rot[:, None] @ prims.centers.to(f64)[..., None])[..., 0] + t_cam[:, None]  # (B,K,3)
    frame = rot[:, None] @ prims.orient.to(f64)  # (B, K, 3, 3)
    n_map = frame.transpose(-1, -2) / prims.axes.to(f64)[..., None]  # camera -> unit sphere
    qm = n_map.transpose(-1, -2) @ n_map  # (B, K, 3, 3)
    d_k = d_mat[:, None]
    e_k = o_mat[:, None].clone().expand(b, k_all, 3, 3).clone()
    e_k[..., 2] = e_k[..., 2] - centers  # origin minus centre, linear in w
    coef_a = _poly_coeffs(d_k.transpose(-1, -2) @ qm @ d_k)
    coef_hb = _poly_coeffs(e_k.transpose(-1, -2) @ qm @ d_k)
    dl = n_map @ d_k
    if cfg.camera == "perspective":  # origin fixed: el is constant, el x dl linear in w
        el = (n_map @ -centers[..., None])[..., 0]
        cross = _cross_matrix(el) @ dl
    else:  # direction fixed
        cross = -_cross_matrix((n_map @ d_k)[..., 2]) @ (n_map @ e_k)
    coef_disc = _poly_coeffs(dl.transpose(-1, -2) @ dl - cross.transpose(-1, -2) @ cross)
    off = ~prims.enabled
    coef_disc = torch.where(
        off[..., None], torch.tensor([0, 0, 0, 0, 0, -1.0], dtype=f64, device=dev), coef_disc
    )
    coef_a = torch.where(
        off[..., None], torch.tensor([0, 0, 0, 0, 0, 1.0], dtype=f64, device=dev), coef_a
    )
    coef = torch.stack([coef_a, coef_hb, coef_disc], 1).to(torch.float32)  # (B, 3, K, 6)

    s_hi = image_size * supersample
    g = ((torch.arange(s_hi, device=dev, dtype=torch.float32) + 0.5) / supersample - 0.5
         - (image_size - 1) / 2) / image_size  # fmt: skip
    gv, gu = torch.meshgrid(g, g, indexing="ij")
    gu, gv = gu.reshape(-1), gv.reshape(-1)
    mono = torch.stack([gu * gu, gv * gv, gu * gv, gu, gv, torch.ones_like(gu)], 0)  # (6, P)
    poly = (coef.reshape(b, 3 * k_all, 6) @ mono).view(b, 3, k_all, -1)
    a, hb, disc = poly[:, 0], poly[:, 1], poly[:, 2]
    miss = disc <= 0
    # Negated depth of the near root, -t = (hb + sqrt(disc)) / a: max over primitives = nearest.
    neg_t = disc.clamp_min_(0).sqrt_().add_(hb).div_(a).masked_fill_(miss, -math.inf)
    neg_head, idx_head = neg_t[:, :k_head].max(1)
    if with_occ:
        neg_occ, idx_occ = neg_t[:, k_head:].max(1)
        occ_front = neg_occ > neg_head
        neg_all = torch.where(occ_front, neg_occ, neg_head)
        idx = torch.where(occ_front, idx_occ + k_head, idx_head)
    else:
        occ_front = torch.zeros_like(miss[:, 0])
        neg_all, idx = neg_head, idx_head
    hit = torch.isfinite(neg_all)
    head_hit = torch.isfinite(neg_head)
    del poly, a, hb, disc, miss, neg_t

    # Shading of the front-most surface.
    t = (-neg_all).where(hit, torch.zeros_like(neg_all))  # (B, P)
    # Both cameras have diagonal O and D, so X = O w + t D w is three per-pixel products.
    o32, d32 = o_mat.float(), d_mat.float()
    xc = gu * (o32[:, 0, 0, None] + t * d32[:, 0, 0, None])
    yc = gv * (o32[:, 1, 1, None] + t * d32[:, 1, 1, None])
    zc = t * d32[:, 2, 2, None]
    # One row per pixel of the winning primitive: quadric (6 unique), centre (3), colour (3).
    q32 = qm.float()
    table = torch.cat(
        [
            q32[..., 0, 0:3],
            q32[..., 1, 1:3],
            q32[..., 2, 2:3],
            centers.float(),
            prims.colors.float(),
        ],
        -1,
    ).reshape(b * k_all, 12)
    flat = (idx + torch.arange(b, device=dev)[:, None] * k_all).reshape(-1)
    q00, q01, q02, q11, q12, q22, cx_, cy_, cz_, cr, cg, cb = (
        table.index_select(0, flat).view(b, -1, 12).unbind(-1)
    )
    rx, ry, rz = xc - cx_, yc - cy_, zc - cz_
    nx = q00 * rx + q01 * ry + q02 * rz
    ny = q01 * rx + q11 * ry + q12 * rz
    nz = q02 * rx + q12 * ry + q22 * rz
    light = sc["light"].float()
    dot = nx * light[:, 0, None] + ny * light[:, 1, None] + nz * light[:, 2, None]
    lambert = (dot / (nx * nx + ny * ny + nz * nz).sqrt().clamp_min(1e-12)).clamp_min(0)
    shade = sc["ambient"].float()[:, None] + sc["diffuse"].float()[:, None] * lambert
    color = torch.stack([cr, cg, cb], -1)
    # Head-frame texture: hair above the hairline, clothing below the collar, combed hair.
    r32, tc = rot.float(), t_cam.float()
    px_, py_, pz_ = xc - tc[:, 0, None], yc - tc[:, 1, None], zc - tc[:, 2, None]
    hx, hy, hz = (
        px_ * r32[:, 0, i, None] + py_ * r32[:, 1, i, None] + pz_ * r32[:, 2, i, None]
        for i in range(3)
    )
    sc_ = prims.scale[:, None]
    front, back = prims.hairline[:, 0:1], prims.hairline[:, 1:2]
    hairline = front + (back - front) * ((hz / sc_ + 0.45) / 0.9).clamp(0, 1)
    mat = prims.material[idx]
    is_hair = ((mat == MATERIAL_SKULL) & (hy < hairline)) | (mat == MATERIAL_HAIR)
    is_cloth = (mat == MATERIAL_NECK) & (hy > prims.collar[:, None])
    comb = 0.85 + 0.15 * torch.sin(120 * (0.6 * hy - 0.8 * hz) / sc_ + 12 * (hx / sc_) ** 2)
    color = torch.where(is_hair[..., None], prims.hair_color[:, None] * comb[..., None], color)
    color = torch.where(is_cloth[..., None], prims.clothing_color[:, None], color)
    fg = (color * shade[..., None]).clamp(0, 1)

    is_face = prims.is_face[idx_head] & head_hit & ~(is_hair & ~occ_front) & (hz < 0.1 * sc_)
    bg = _backgrounds(sc["background"].float(), s_hi).permute(0, 2, 3, 1).reshape(b, -1, 3)
    img = torch.where(hit[..., None], fg, bg)
    head_depth = (-neg_head).where(head_hit, torch.full_like(neg_head, math.inf))
    head_mask = head_hit & (prims.material[idx_head] != MATERIAL_NECK) & ~is_torso[idx_head]

    def down(x: Tensor) -> Tensor:  # (B, P_hi, C) -> (B, C, S, S)
        x = x.reshape(b, s_hi, s_hi, -1).permute(0, 3, 1, 2)
        return F.avg_pool2d(x, supersample) if supersample > 1 else x

    img = down(img)
    face_mask = down(is_face.float()[..., None])[:, 0] > 0.5
    occ_mask = down((is_face & occ_front).float()[..., None])[:, 0] > 0.5
    head_mask = down(head_mask.float()[..., None])[:, 0] > 0.5
    depth = -F.max_pool2d(-head_depth.view(b, 1, s_hi, s_hi), supersample)[:, 0] if supersample > 1 \
        else head_depth.view(b, image_size, image_size)  # fmt: skip

    # Landmarks, boxes, head centre and size.
    lm_head = head_landmarks(params, prims, sc["eye_closure"], sc["mouth_open"])
    lm_cam = lm_head.to(f64) @ rot.transpose(-1, -2) + t_cam[:, None]
    lm2d = _project(lm_cam, image_size, cfg, sc["scale"].to(f64), depth0)
    center2d = _project(t_cam[:, None], image_size, cfg, sc["scale"].to(f64), depth0)[:, 0]
    if cfg.camera == "perspective":
        px_per_unit = cfg.head_fill * image_size * cfg.camera_distance / depth0
    else:
        px_per_unit = cfg.head_fill * image_size * sc["scale"].to(f64)
    lm3d = torch.cat(
        [lm2d, (lm_cam[..., 2:] - t_cam[:, None, 2:]) * px_per_unit[:, None, None]], -1
    )
    pix = lm2d.round().long()
    inside = ((pix >= 0) & (pix < image_size)).all(-1)
    pix = pix.clamp(0, image_size - 1)
    zbuf = depth.reshape(b, -1).gather(1, pix[..., 1] * image_size + pix[..., 0])
    tol = 0.04 * prims.scale.to(f64)[:, None]
    visible = inside & (lm_cam[..., 2] <= zbuf.to(f64) + tol)
    box = torch.cat([lm2d.amin(1), lm2d.amax(1)], -1)
    cols, rows = head_mask.any(1), head_mask.any(2)  # (B, S) each
    ar = torch.arange(image_size, device=dev)
    first = lambda m: torch.where(m, ar, image_size).amin(1)  # noqa: E731
    last = lambda m: torch.where(m, ar, -1).amax(1)  # noqa: E731
    any_head = cols.any(1)
    hb = torch.stack([first(cols), first(rows), last(cols), last(rows)], -1).to(f64)
    half = 0.5 * px_per_unit * prims.scale.to(f64)
    fallback = torch.cat([center2d - half[:, None], center2d + half[:, None]], -1)
    head_box = torch.where(any_head[:, None], hb, fallback)

    # 2D patch occluders: a textured rectangle over part of the face box.
    patch = flags[:, OCCLUDER_KINDS.index("patch")]
    if bool(patch.any()):
        q = sc["occluder_params"].float()
        fb = box.float()
        size_wh = (fb[:, 2:] - fb[:, :2]).clamp_min(4.0)
        pc = fb[:, :2] + size_wh * (0.2 + 0.6 * q[:, 0:2])
        ph = size_wh * (0.15 + 0.2 * q[:, 2:4])
        ys32, xs32 = torch.meshgrid(ar.float(), ar.float(), indexing="ij")
        inside_patch = (
            ((xs32[None] - pc[:, 0, None, None]).abs() <= ph[:, 0, None, None])
            & ((ys32[None] - pc[:, 1, None, None]).abs() <= ph[:, 1, None, None])
            & patch[:, None, None]
        )
        tex = F.interpolate(
            sc["background"].float()[:, -3 * _FINE**2 :].reshape(b, 3, _FINE, _FINE),
            size=(image_size, image_size), mode="nearest",
        )  # fmt: skip
        pcol = q[:, 4:7, None, None] * 0.7 + 0.3 * tex
        img = torch.where(inside_patch[:, None], pcol, img)
        occ_mask = occ_mask | (inside_patch & face_mask)
    face_px = face_mask.flatten(1).sum(1)
    occ_frac = occ_mask.flatten(1).sum(1) / face_px.clamp_min(1)
    return {
        "image": (img * 255 + 0.5).clamp(0, 255).to(torch.uint8),
        "rotation": sc["rotation"].float(),
        "depth": depth,
        "head_mask": head_mask,
        "face_mask": face_mask,
        "occlusion_mask": occ_mask,
        "occlusion_fraction": occ_frac.float(),
        "occluded": occ_frac >= cfg.occluded_threshold,
        "landmarks_2d": lm2d.float(),
        "landmarks_3d": lm3d.float(),
        "landmarks_visible": visible,
        "box": box.float(),
        "head_box": head_box.float(),
        "head_center": center2d.float(),
        "head_size": (px_per_unit * prims.scale.to(f64)).float(),
    }
