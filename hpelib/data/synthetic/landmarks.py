"""The 68 MultiPIE landmarks of a procedural head, on its front surface, in the head frame.

Split from :mod:`.head` (the identity and primitive model): the landmark positions follow
the identity's facial features (:func:`~hpelib.data.synthetic.head.build_head`'s inputs) and
are lifted onto the head's front-most face primitive by an analytic ray-ellipsoid hit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hpelib.data.synthetic.head import HeadPrimitives, _features

__all__ = ["head_landmarks"]


def _surface_hit_z(prims: HeadPrimitives, xy: Tensor, parts: Tensor) -> Tensor:
    """Front-most z where head-frame rays ``(x, y, -inf) + t e_z`` hit the ``parts``.

    Args:
        prims: heads (``B``); ``xy``: ``(B, L, 2)`` head-frame points; ``parts``: ``(K,)`` bool.

    Returns:
        ``(B, L)`` z of the first hit (``inf`` where no selected primitive is hit).
    """
    c = prims.centers[:, parts]  # (B, K', 3)
    m = prims.orient[:, parts].transpose(-1, -2) / prims.axes[:, parts, :, None]  # local map
    o = torch.cat([xy, torch.zeros_like(xy[..., :1])], -1)  # (B, L, 3) at z = 0
    lo = torch.einsum("bkij,blkj->blki", m, o[:, :, None, :] - c[:, None])  # (B, L, K', 3)
    ld = m[..., 2][:, None].expand_as(lo)  # image of e_z
    a = (ld * ld).sum(-1)
    bb = 2 * (lo * ld).sum(-1)
    cc = (lo * lo).sum(-1) - 1
    disc = bb * bb - 4 * a * cc
    t = (-bb - disc.clamp_min(0).sqrt()) / (2 * a)
    t = torch.where((disc > 0) & prims.enabled[:, None, parts], t, torch.full_like(t, math.inf))
    return t.amin(-1)


def head_landmarks(
    params: Tensor,
    prims: HeadPrimitives,
    eye_closure: Tensor | None = None,
    mouth_open: Tensor | None = None,
) -> Tensor:
    """68 landmarks in MultiPIE-68 order on the front surface of the head, in the head frame.

    Each landmark has a head-frame ``(x, y)`` from the identity's features (jaw outline
    0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67; "right" = subject's right =
    image left at ``R = I``) and lies on the front-most face surface at that ``(x, y)``.
    The set is mirror-symmetric under ``x -> -x`` with the usual 68-point index mirroring.

    Args:
        params: ``(B, P)`` identity parameters; prims: the matching ``build_head`` output.

    Returns:
        ``(B, 68, 3)`` head-frame points (already multiplied by the head scale).
    """
    b, dev, dt = params.shape[0], params.device, params.dtype
    f = _features(params)
    zero = torch.zeros(b, dtype=dt, device=dev)
    eye_closure = zero if eye_closure is None else eye_closure.to(dev, dt)
    mouth_open = zero if mouth_open is None else mouth_open.to(dev, dt)

    def lin(n: int, a: float, c: float) -> Tensor:
        return torch.linspace(a, c, n, dtype=dt, device=dev)

    pts: list[Tensor] = []  # each (B, n, 2)
    beta = lin(17, -1.75, 1.75)  # jaw: angle around the face outline, 0 = chin
    fw, fl = f["face_w"][:, None], f["face_l"][:, None]
    pts.append(
        torch.stack(
            [0.95 * fw * torch.sin(beta), f["face_cy"][:, None] + 0.95 * fl * torch.cos(beta)], -1
        )
    )
    tb = lin(5, -1, 1)
    brow_y = (f["eye_y"] - 0.085 - 0.012)[:, None] - 0.012 * (1 - tb**2)
    bx = (f["eye_x"] + 0.01)[:, None]
    pts.append(torch.stack([-bx + 0.07 * tb, brow_y], -1))
    pts.append(torch.stack([bx + 0.07 * tb, brow_y], -1))
    ny = lin(4, 0, 1)[None] * (f["nose_y"] - f["eye_y"])[:, None] + f["eye_y"][:, None]
    pts.append(torch.stack([torch.zeros_like(ny), ny], -1))
    nw = f["nose_w"][:, None]
    nostril_y = (f["nose_y"] + 0.02)[:, None] - 0.012 * (1 - lin(5, -1, 1) ** 2)
    pts.append(torch.stack([0.9 * nw * lin(5, -1, 1), nostril_y], -1))
    ew, eh = f["eye_w"][:, None], (0.5 * f["eye_w"] * (1 - eye_closure).clamp_min(0))[:, None]
    ecx = torch.tensor([-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3], dtype=dt, device=dev)
    ecy = torch.tensor([0, -1, -1, 0, 1, 1], dtype=dt, device=dev)
    for side in (-1.0, 1.0):
        pts.append(
            torch.stack(
                [
                    side * f["eye_x"][:, None] + 0.9 * ew * ecx,
                    f["eye_y"][:, None] + 0.85 * eh * ecy,
                ],
                -1,
            )
        )
    mw, my = f["mouth_w"][:, None], f["mouth_y"][:, None]
    lh = (f["lip_h"] * (1 + 1.5 * mouth_open))[:, None]
    inner_h = (0.9 * f["lip_h"] * mouth_open)[:, None]
    ox = torch.tensor(
        [-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0, -1 / 3, -2 / 3],
        dtype=dt,
        device=dev,
    )
    oy = torch.tensor([0, -0.7, -1, -0.8, -1, -0.7, 0, 0.8, 1, 1, 1, 0.8], dtype=dt, device=dev)
    pts.append(torch.stack([0.95 * mw * ox, my + 0.9 * lh * oy], -1))
    ix = torch.tensor([-0.8, -1 / 3, 0, 1 / 3, 0.8, 1 / 3, 0, -1 / 3], dtype=dt, device=dev)
    iy = torch.tensor([0, -1, -1, -1, 0, 1, 1, 1], dtype=dt, device=dev)
    pts.append(torch.stack([mw * ix, my + inner_h * iy], -1))
    xy = torch.cat(pts, 1) * prims.scale[:, None, None]  # (B, 68, 2)

    face_parts = prims.is_face & ~prims.is_occluder
    z = _surface_hit_z(prims, xy, face_parts)
    # A point outside every face primitive (not expected) falls back to the face's plane.
    z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
    return torch.cat([xy, z[..., None]], -1)
