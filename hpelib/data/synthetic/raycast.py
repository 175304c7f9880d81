"""Ray casting and background internals of :func:`hpelib.data.synthetic.render.render_heads`
(see that module's docstring for why a ray caster over analytic ellipsoids, the culling
windows and the camera model): quadratic-form coefficients per primitive, projection, screen
windows, the nearest-hit cast, and the procedural backgrounds."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hpelib.data.synthetic.scene import _COARSE, _FINE, SceneConfig


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


