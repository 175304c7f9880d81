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
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from hpelib.data.synthetic.head import (
    HEAD_PARTS,
    MATERIAL_HAIR,
    MATERIAL_NECK,
    MATERIAL_SKULL,
    OCCLUDER_KINDS,
    build_head,
)
from hpelib.data.synthetic.landmarks import head_landmarks
from hpelib.data.synthetic.raycast import (
    _backgrounds,
    _cast,
    _cross_matrix,
    _pixel_windows,
    _poly_coeffs,
    _project,
    _ray_matrices,
)
from hpelib.data.synthetic.scene import (
    _FINE,
    CAMERAS,
    FRONTAL_RANGES_DEG,
    NUM_BACKGROUND_PARAMS,
    PRESETS,
    SceneConfig,
    default_scene,
    sample_rotations,
    sample_scenes,
)

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
