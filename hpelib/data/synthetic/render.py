"""Batched pure-torch ray caster for the parametric heads of :mod:`.head`.

Why a ray caster over analytic ellipsoids: for a pinhole (or orthographic) camera, the ray
through pixel ``w = (u, v, 1)`` meets an ellipsoid where a quadratic in the depth has a
root, and every coefficient of that quadratic is itself a quadratic polynomial in ``(u, v)``.
So a whole image of one primitive is one small matrix product (6 monomials per pixel times 6
coefficients per primitive), for the whole batch at once; the only per-pixel work left is a
square root, a division and a max over primitives. That keeps the renderer vectorised (no
Python loop over the batch), deterministic, free of any display or graphics driver (it runs
unchanged in DDP workers and on GPU), and fast on CPU.

The discriminant is computed in the cancellation-free form ``|dl|^2 - |el x dl|^2`` (local
ray direction ``dl``, local ray origin minus centre ``el``), so silhouettes of small
primitives seen from a distance stay clean in float32.

Screen-space culling: most primitives (eyes, irises, brows, nose, lips, ears, ...) cover a
few pixels. The hit region of a primitive is where its discriminant polynomial is positive,
an ellipse whose bounding box is known in closed form, so each call sizes one window per
primitive (the largest box over the batch, plus a pixel of margin) and casts the primitive
only at the window pixels of each image, in the images that have it, merging into the
running nearest hit in primitive order. Only big primitives present in every image (cranium,
torso) are cast over the full grid. The per-pixel formulas are unchanged, so the result is
that of a full-grid cast (bit for bit on CPU, where window and full-grid products run the
same BLAS kernel). Shading then runs on the hit pixels only (compacted), and the background
is built from small matrix products (interpolation matrices, rank-2 stripes) rather than a
dozen full-image passes.

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


def _upsample_matrices(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(size, _COARSE)`` bilinear (``align_corners=True``) and ``(size, _FINE)`` nearest
    interpolation matrices, built by ``F.interpolate`` itself so that the weights and the
    nearest source indices are the ones it uses."""
    lin = F.interpolate(
        torch.eye(_COARSE, device=device)[:, None], size=size, mode="linear", align_corners=True
    )[:, 0].t()
    near = F.interpolate(torch.eye(_FINE, device=device)[:, None], size=size, mode="nearest")
    return lin, near[:, 0].t()


def _backgrounds(bg: Tensor, size: int) -> Tensor:
    """``(B, NUM_BACKGROUND_PARAMS)`` in [0, 1) -> ``(B, 3, S, S)`` float backgrounds:
    a two-colour gradient, smooth colour noise, blocky texture noise and stripes.

    Everything but the clamped gradient is separable, so it is one product per image and
    channel, ``L @ M @ R`` with ``L (S, 18)``, ``M (18, 18)``, ``R (18, S)``: bilinear and
    nearest upsampling of the noise grids are interpolation matrices (block-diagonal ``M``,
    the first colour folded into the bilinear block since its weights sum to 1), and the
    stripes ``sin(a x + b y) = sin(a x) cos(b y) + cos(a x) sin(b y)`` are rank 2. That
    writes each output pixel once instead of a dozen full-image passes."""
    b, dev = bg.shape[0], bg.device
    g = torch.linspace(-0.5, 0.5, size, device=dev)
    c1, c2 = bg[:, 0:3], bg[:, 3:6]
    ang = 2 * math.pi * bg[:, 6]
    # Gradient ramp, clamped (not separable): (0.5 + cos x) + sin y, as an outer sum.
    ramp = (0.5 + ang.cos()[:, None] * g)[:, None, :] + (ang.sin()[:, None] * g)[:, :, None]
    ramp = ramp.clamp_(0, 1)
    o = 12
    coarse = bg[:, o : o + 3 * _COARSE**2].reshape(b, 3, _COARSE, _COARSE) - 0.5
    o += 3 * _COARSE**2
    fine = bg[:, o : o + 3 * _FINE**2].reshape(b, 3, _FINE, _FINE) - 0.5
    sang = math.pi * bg[:, 10]
    freq = 2 + 10 * bg[:, 11]
    ax = (2 * math.pi * freq * sang.cos())[:, None] * g  # (B, S) stripe phase along x
    by = (2 * math.pi * freq * sang.sin())[:, None] * g  # (B, S) along y
    nc, nf = _COARSE, _COARSE + _FINE
    mid = torch.zeros(b, 3, nf + 2, nf + 2, device=dev)
    mid[..., :nc, :nc] = 0.6 * bg[:, 7, None, None, None] * coarse + c1[:, :, None, None]
    mid[..., nc:nf, nc:nf] = 0.35 * bg[:, 8, None, None, None] * fine
    mid[..., nf, nf] = mid[..., nf + 1, nf + 1] = 0.2 * bg[:, 9, None]
    lin, near = _upsample_matrices(size, dev)
    left = torch.cat(
        [lin.expand(b, -1, -1), near.expand(b, -1, -1), by.cos()[..., None], by.sin()[..., None]],
        -1,
    )  # (B, S, 18) rows: y
    right = torch.cat(
        [
            lin.t().expand(b, -1, -1),
            near.t().expand(b, -1, -1),
            ax.sin()[:, None],
            ax.cos()[:, None],
        ],
        1,
    )  # (B, 18, S) columns: x
    img = left[:, None] @ (mid @ right[:, None])  # (B, 3, S, S)
    return img.addcmul_((c2 - c1)[:, :, None, None], ramp[:, None]).clamp_(0, 1)


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


# A window is grown by this many pixels on each side beyond the exact silhouette box, so that
# float32 rounding of the per-pixel discriminant cannot create a hit outside it.
_WINDOW_MARGIN = 1.0
# Primitives whose window covers more than this fraction of the image are cast over the full
# grid (one matrix product for all of them) instead of through gathered window pixels.
_FULL_GRID_FRACTION = 0.35
# Smallest window side: PyTorch computes batched products below ~400 multiply-adds with its own
# loop (no fused multiply-add), which would round differently from the BLAS kernel of the
# full grid; 5 x 5 windows (3 x 25 x 6 = 450) keep every pixel's polynomial bit-identical.
_MIN_WINDOW = 5


def _pixel_windows(
    disc: Tensor, enabled: Tensor, image_size: int, supersample: int
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Pixel windows that contain every hit of each primitive, one size per primitive.

    A pixel hits a primitive where the discriminant polynomial ``disc(u, v)`` is positive.
    For an ellipsoid in front of the camera its quadratic part is negative definite, so the
    hit region is an ellipse whose centre and half-extents follow in closed form; anything
    else (a primitive reaching behind the camera plane) gets the whole image.

    Args:
        disc: ``(B, K, 6)`` float64 coefficients of the discriminant in the monomials
            ``[u^2, v^2, uv, u, v, 1]`` of the normalised pixel coordinates.
        enabled: ``(B, K)`` bool; a disabled primitive needs no window.
        image_size: output size ``S``; supersample: the grid is ``supersample * S`` pixels.

    Returns:
        ``start (B, K, 2)`` int64 first column and row of each window (inside the grid), and
        per primitive its window ``(width, height)`` in pixels, shared by the batch.
    """
    s_hi = image_size * supersample
    qa, qb, qc, qd, qe, qf = disc.unbind(-1)
    det = qa * qb - 0.25 * qc * qc  # of the quadratic part [[A, C/2], [C/2, B]]
    bounded = enabled & (qa < 0) & (det > 0)
    det = torch.where(bounded, det, torch.ones_like(det))
    u0 = (qc * qe - 2 * qb * qd) / (4 * det)  # centre: the gradient of disc vanishes there
    v0 = (qc * qd - 2 * qa * qe) / (4 * det)
    peak = (qf + 0.5 * (qd * u0 + qe * v0)).clamp_min(0)  # disc at the centre
    # Normalised coordinate -> pixel index, and half-extents in pixels (+ margin).
    centre = (torch.stack([u0, v0], -1) * image_size + image_size / 2) * supersample - 0.5
    half = (peak[..., None] * torch.stack([-qb, -qa], -1) / det[..., None]).sqrt()
    half = half * s_hi + _WINDOW_MARGIN
    lo, hi = (centre - half).ceil(), (centre + half).floor()  # (B, K, 2) each
    bounded = bounded & (lo.isfinite() & hi.isfinite()).all(-1)
    lo = torch.where(bounded[..., None], lo.clamp(0, s_hi), 0.0)
    hi = torch.where(bounded[..., None], hi.clamp(-1, s_hi - 1), lo - 1)
    hi = torch.where((enabled & ~bounded)[..., None], s_hi - 1.0, hi)  # the whole image
    sizes = (hi - lo + 1).amax(0).clamp(min(_MIN_WINDOW, s_hi), s_hi).long()  # (K, 2)
    start = torch.minimum(lo.long(), s_hi - sizes)  # shifted inwards where it would leave
    return start, [(int(w), int(h)) for w, h in sizes.tolist()]


def _neg_depth(poly: Tensor) -> Tensor:
    """``(B, 3, ...)`` values of ``a``, ``hb`` and ``disc`` -> ``(B, ...)`` negated depth of the
    near root, ``-t = (hb + sqrt(disc)) / a``, ``-inf`` where the ray misses (``disc <= 0``).
    Works in place on ``poly``."""
    a, hb, disc = poly.unbind(1)
    miss = disc <= 0
    # Misses take sqrt(1), not sqrt(0): they are masked anyway, and MKL's vectorised sqrt is
    # about ten times slower on zeros.
    return disc.masked_fill_(miss, 1.0).sqrt_().add_(hb).div_(a).masked_fill_(miss, -math.inf)


def _cast(
    coef: Tensor,
    enabled: Tensor,
    mono: Tensor,
    start: Tensor,
    sizes: list[tuple[int, int]],
    s_hi: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-most hit over a group of primitives (pixel results as a full-grid max over all).

    Big primitives present in every image are cast over the full grid by one matrix product;
    every other primitive only over its window pixels, and only in the images that have it
    (occluders, hair styles and the open mouth are absent from most images).

    Args:
        coef: ``(B, 3, K, 6)`` float32 coefficients of ``a``, ``hb`` and ``disc``.
        enabled: ``(B, K)`` bool.
        mono: ``(6, P)`` monomials of the ``P = s_hi^2`` pixels.
        start, sizes: the group's windows from :func:`_pixel_windows`.

    Returns:
        ``neg (B, P)`` negated depth of the nearest hit (``-inf`` = miss), ``code (B, P)``
        uint8 and ``order (K,)`` int64, the winning primitive being ``order[code]`` (its
        value at a miss is meaningless).
    """
    b, _, k, _ = coef.shape
    dev, p = coef.device, mono.shape[1]
    count = enabled.sum(0).tolist()
    full = [
        j for j in range(k) if count[j] == b and sizes[j][0] * sizes[j][1] > _FULL_GRID_FRACTION * p
    ]
    windowed = [j for j in range(k) if j not in full]
    order = torch.tensor(full + windowed, dtype=torch.int64, device=dev)
    code = torch.zeros(b, p, dtype=torch.uint8, device=dev)
    if full:
        sub = coef[:, :, full] if len(full) < k else coef
        neg_t = _neg_depth((sub.reshape(b, 3 * len(full), 6) @ mono).view(b, 3, len(full), p))
        # Max over primitives = nearest; pairwise (first one wins ties, like max), which is
        # much cheaper than a max with indices over a middle dimension.
        neg = neg_t[:, 0].contiguous()
        for j in range(1, len(full)):
            nearer = neg_t[:, j] > neg
            torch.maximum(neg, neg_t[:, j], out=neg)
            code.masked_fill_(nearer, j)
        del neg_t
    else:
        neg = torch.full((b, p), -math.inf, device=dev)
    # The rest: the same per-pixel formulas on their window pixels only, merged in primitive
    # order; a later primitive wins only when strictly nearer, like max (an exact depth tie
    # with a full-grid primitive, two surfaces through one point, would keep the latter).
    neg_flat, code_flat = neg.view(-1), code.view(-1)
    all_rows = torch.arange(b, device=dev)
    for c, j in enumerate(windowed, len(full)):
        if count[j] == 0:
            continue
        rows = all_rows if count[j] == b else enabled[:, j].nonzero().squeeze(1)
        wu, wv = sizes[j]
        offs = torch.arange(wv, device=dev)[:, None] * s_hi + torch.arange(wu, device=dev)
        corner = start[rows, j]  # (B', 2)
        pix = (corner[:, 1] * s_hi + corner[:, 0])[:, None] + offs.view(-1)  # (B', W)
        # The same 6-term dot products as the full-grid product, so on CPU the same values
        # bit for bit (see _MIN_WINDOW).
        mono_w = mono.index_select(1, pix.view(-1)).view(6, len(rows), -1).transpose(0, 1)
        neg_k = _neg_depth(coef[rows, :, j] @ mono_w).reshape(-1)
        at = (pix + (rows * p)[:, None]).view(-1)  # into the flattened (B, P) buffers
        cur = neg_flat.gather(0, at)
        nearer = neg_k > cur
        neg_flat.scatter_(0, at, torch.where(nearer, neg_k, cur))
        code_flat.scatter_(0, at, code_flat.gather(0, at).masked_fill_(nearer, c))
    return neg, code, order


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
    # Primitives off in every image of the batch are dropped (fewer windows, smaller tables).
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
    p_hi = s_hi * s_hi
    # Screen-space culling: each primitive is cast only inside the window of its silhouette.
    start, sizes = _pixel_windows(coef_disc, prims.enabled, image_size, supersample)
    neg_head, code_head, order_head = _cast(
        coef[:, :, :k_head],
        prims.enabled[:, :k_head],
        mono,
        start[:, :k_head],
        sizes[:k_head],
        s_hi,
    )
    head_hit = neg_head > -math.inf  # finite or -inf (miss); cheaper than isfinite
    if with_occ:
        neg_occ, code_occ, order_occ = _cast(
            coef[:, :, k_head:],
            prims.enabled[:, k_head:],
            mono,
            start[:, k_head:],
            sizes[k_head:],
            s_hi,
        )
        occ_front = neg_occ > neg_head
        neg_all = torch.where(occ_front, neg_occ, neg_head)
        hit = neg_all > -math.inf
    else:
        neg_all, hit = neg_head, head_hit
    head_depth = -neg_head  # inf where the head is missed

    # Shading and labels of the hit pixels only: the same per-pixel formulas as over the whole
    # grid, on the ~30 % of the pixels that show the head (or an occluder).
    b_sel, p_sel = hit.nonzero(as_tuple=True)  # (N,) each: image and pixel, in raster order
    sel = b_sel * p_hi + p_sel
    t = -neg_all.view(-1).index_select(0, sel)  # camera depth
    prim_head = order_head.index_select(0, code_head.view(-1).index_select(0, sel).long())
    if with_occ:
        occ_sel = occ_front.view(-1).index_select(0, sel)
        code_sel = code_occ.view(-1).index_select(0, sel).long()
        prim = torch.where(occ_sel, order_occ.index_select(0, code_sel) + k_head, prim_head)
        head_sel = head_hit.view(-1).index_select(0, sel)
    else:
        prim = prim_head
    # One gather per pixel from a table with a column per (image, primitive): the winning
    # primitive's quadric (6 unique entries), centre and material, and its image's camera,
    # light, pose and hair frame. Laid out (C, B K) so that each quantity comes out contiguous.
    weak = cfg.camera == "weak_perspective"
    q32 = qm.float()
    per_image = torch.cat(
        [
            o_mat[:, 0, 0:1].float() if weak else o_mat[:, 0, 0:0].float(),
            sc["light"].float(),
            sc["ambient"].float()[:, None],
            sc["diffuse"].float()[:, None],
            t_cam.float(),
            rot.float().transpose(1, 2).reshape(b, 9),  # row i: column i of R
            prims.scale[:, None],
            prims.hairline,
            prims.collar[:, None],
        ],
        -1,
    )
    table = torch.cat(
        [
            q32[..., 0, 0:3],
            q32[..., 1, 1:3],
            q32[..., 2, 2:3],
            centers.float(),
            prims.material.float().expand(b, k_all)[..., None],
            per_image[:, None].expand(b, k_all, -1),
        ],
        -1,
    )
    row = b_sel * k_all + prim
    cols = list(table.reshape(b * k_all, -1).t().contiguous().index_select(1, row))  # (N,) each
    q00, q01, q02, q11, q12, q22, cx_, cy_, cz_, mat = cols[:10]
    o00 = cols.pop(10) if weak else None
    l0, l1, l2, amb, dif, tx, ty, tz = cols[10:18]
    r00, r10, r20, r01, r11, r21, r02, r12, r22, sc_, front, back, collar = cols[18:]
    gu_s, gv_s = gu.index_select(0, p_sel), gv.index_select(0, p_sel)
    # Both cameras have diagonal O and D, so X = O w + t D w is three per-pixel products
    # (perspective: O = 0; weak perspective: D = diag(0, 0, 1)).
    if weak:
        xc, yc = gu_s * o00, gv_s * o00
    else:
        ts = t * float(d_mat[0, 0, 0].float())
        xc, yc = gu_s * ts, gv_s * ts
    zc = t
    rx, ry, rz = xc - cx_, yc - cy_, zc - cz_
    nx = q00 * rx + q01 * ry + q02 * rz
    ny = q01 * rx + q11 * ry + q12 * rz
    nz = q02 * rx + q12 * ry + q22 * rz
    dot = nx * l0 + ny * l1 + nz * l2
    lambert = (dot / (nx * nx + ny * ny + nz * nz).sqrt().clamp_min(1e-12)).clamp_min(0)
    shade = amb + dif * lambert
    # Head-frame texture: hair above the hairline, clothing below the collar, combed hair.
    px_, py_, pz_ = xc - tx, yc - ty, zc - tz
    hx = px_ * r00 + py_ * r10 + pz_ * r20
    hy = px_ * r01 + py_ * r11 + pz_ * r21
    hz = px_ * r02 + py_ * r12 + pz_ * r22
    hairline = front + (back - front) * ((hz / sc_ + 0.45) / 0.9).clamp(0, 1)
    is_hair = ((mat == MATERIAL_SKULL) & (hy < hairline)) | (mat == MATERIAL_HAIR)
    is_cloth = (mat == MATERIAL_NECK) & (hy > collar)
    comb = 0.85 + 0.15 * torch.sin(120 * (0.6 * hy - 0.8 * hz) / sc_ + 12 * (hx / sc_) ** 2)
    # Colour: the primitive's own, the (combed) hair's or the clothing's, gathered from a
    # table of all three per (image, primitive) rather than carried per pixel.
    rgb = torch.stack(
        [
            prims.colors.float(),
            prims.hair_color[:, None].expand(b, k_all, 3),
            prims.clothing_color[:, None].expand(b, k_all, 3),
        ],
        2,
    )  # (B, K, 3 kinds, 3)
    kind = torch.where(is_cloth, 2, is_hair.long())  # the two materials exclude each other
    color = rgb.reshape(-1, 3).t().contiguous().index_select(1, row * 3 + kind)  # (3, N)
    fg = color.mul_(torch.where(is_hair, comb, 1.0)).mul_(shade).clamp_(0, 1)

    face_px = prims.is_face.index_select(0, prim_head) & (hz < 0.1 * sc_)
    head_px = ((prims.material != MATERIAL_NECK) & ~is_torso).index_select(0, prim_head)
    if with_occ:
        face_px &= head_sel & ~(is_hair & ~occ_sel)
        head_px &= head_sel
    else:
        face_px &= ~is_hair
    img = _backgrounds(sc["background"].float(), s_hi)  # (B, 3, s_hi, s_hi)
    at = b_sel * (3 * p_hi) + p_sel  # flat index of channel 0
    for c in range(3):
        img.view(-1)[c * p_hi :].scatter_(0, at, fg[c])

    def scattered(values: Tensor) -> Tensor:  # (N,) bool at the hit pixels -> (B, 1, S, S)
        out = torch.zeros(b * p_hi, dtype=torch.bool, device=dev)
        out.scatter_(0, sel, values)
        return out.view(b, 1, s_hi, s_hi)

    def down(mask: Tensor) -> Tensor:  # (B, 1, s_hi, s_hi) bool -> (B, S, S) majority
        return F.avg_pool2d(mask.float(), supersample)[:, 0] > 0.5 if supersample > 1 \
            else mask[:, 0]  # fmt: skip

    face_mask = down(scattered(face_px))
    occ_mask = down(scattered(face_px & occ_sel)) if with_occ else torch.zeros_like(face_mask)
    head_mask = down(scattered(head_px))
    if supersample > 1:
        img = F.avg_pool2d(img, supersample)
        depth = -F.max_pool2d(-head_depth.view(b, 1, s_hi, s_hi), supersample)[:, 0]
    else:
        depth = head_depth.view(b, image_size, image_size)

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
    head8 = head_mask.view(torch.uint8)  # (a max over bytes is much faster than any over bool)
    cols, rows = head8.amax(1).bool(), head8.amax(2).bool()  # (B, S) each
    ar = torch.arange(image_size, device=dev)
    first = lambda m: torch.where(m, ar, image_size).amin(1)  # noqa: E731
    last = lambda m: torch.where(m, ar, -1).amax(1)  # noqa: E731
    any_head = cols.any(1)
    hb = torch.stack([first(cols), first(rows), last(cols), last(rows)], -1).to(f64)
    half = 0.5 * px_per_unit * prims.scale.to(f64)
    fallback = torch.cat([center2d - half[:, None], center2d + half[:, None]], -1)
    head_box = torch.where(any_head[:, None], hb, fallback)

    # 2D patch occluders: a textured rectangle over part of the face box (only the images
    # that have one are touched).
    patch = flags[:, OCCLUDER_KINDS.index("patch")]
    if bool(patch.any()):
        patched = patch.nonzero().squeeze(1)
        q = sc["occluder_params"].float()[patched]
        fb = box.float()[patched]
        size_wh = (fb[:, 2:] - fb[:, :2]).clamp_min(4.0)
        pc = fb[:, :2] + size_wh * (0.2 + 0.6 * q[:, 0:2])
        ph = size_wh * (0.15 + 0.2 * q[:, 2:4])
        ys32, xs32 = torch.meshgrid(ar.float(), ar.float(), indexing="ij")
        inside_patch = ((xs32[None] - pc[:, 0, None, None]).abs() <= ph[:, 0, None, None]) & (
            (ys32[None] - pc[:, 1, None, None]).abs() <= ph[:, 1, None, None]
        )
        tex = F.interpolate(
            sc["background"].float()[patched, -3 * _FINE**2 :].reshape(-1, 3, _FINE, _FINE),
            size=(image_size, image_size), mode="nearest",
        )  # fmt: skip
        pcol = q[:, 4:7, None, None] * 0.7 + 0.3 * tex
        img[patched] = torch.where(inside_patch[:, None], pcol, img[patched])
        occ_mask[patched] = occ_mask[patched] | (inside_patch & face_mask[patched])
    # Counted as bytes: summing bool converts the whole mask to int64 first.
    face_px = face_mask.flatten(1).view(torch.uint8).sum(1, dtype=torch.int32)
    occ_frac = occ_mask.flatten(1).view(torch.uint8).sum(1, dtype=torch.int32) / face_px.clamp_min(
        1
    )
    return {
        "image": img.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8),
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
