"""Parametric head model: identities and analytic primitives (landmarks: :mod:`.landmarks`).

Everything here lives in hpelib's **head frame** (:mod:`hpelib.rotation`): x towards the
subject's left (image right at ``R = I``), y towards the chin, z from the face into the back
of the head. One unit is about the height of the head (crown to chin); the origin is the
centre of the head. A head is a list of ``K`` ellipsoids ("primitives"), each with a centre,
semi-axes, an orientation, a base colour and a material that adds head-frame texture (hair
above a hairline, a collar on the neck).

The model is **exactly mirror-symmetric** under ``x -> -x`` (geometry and colour): paired
primitives are reflections of each other and every material depends on ``|x|`` at most.
No rotation maps the head onto its mirror image, so the symmetry creates no pose ambiguity,
and image flips have exact labels (``flip_across_line``). Occluder primitives (glasses, mask,
hat, hand) are not symmetric; they are off unless asked for.

An identity is a vector of ``NUM_IDENTITY_PARAMS`` numbers in ``[0, 1)`` (returned as the
sample's ``shape_params``); :func:`build_head` maps it to physical sizes and colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hpelib.rotation.core import rotation_x, rotation_y, rotation_z

__all__ = [
    "HEAD_PARTS",
    "IDENTITY_PARAMS",
    "MATERIAL_HAIR",
    "MATERIAL_NECK",
    "MATERIAL_PLAIN",
    "MATERIAL_SKULL",
    "NUM_IDENTITY_PARAMS",
    "NUM_OCCLUDER_PARAMS",
    "OCCLUDER_KINDS",
    "HeadPrimitives",
    "build_head",
    "identity_seed",
    "sample_identity_params",
]

# Names of the identity parameters, each a number in [0, 1) mapped to a range in build_head.
IDENTITY_PARAMS: tuple[str, ...] = (
    "head_scale", "cranium_width", "cranium_depth", "face_width", "face_length",
    "eye_separation", "eye_size", "eye_height", "nose_length", "nose_width",
    "nose_protrusion", "mouth_width", "mouth_height", "lip_thickness", "ear_size",
    "neck_width", "skin_tone", "skin_jitter", "hair_colour", "hair_jitter", "eye_colour",
    "clothing_r", "clothing_g", "clothing_b", "hairline_front", "hairline_back",
    "hair_style", "brow_thickness", "lip_colour",
)  # fmt: skip
NUM_IDENTITY_PARAMS = len(IDENTITY_PARAMS)
_P = {name: i for i, name in enumerate(IDENTITY_PARAMS)}

# Occluder kinds in the order of the per-sample ``occluder_flags`` (the last one, "patch",
# is a 2D image-space patch applied by the renderer, not a primitive).
OCCLUDER_KINDS: tuple[str, ...] = ("glasses", "mask", "hat", "hand", "patch")
NUM_OCCLUDER_PARAMS = 10

MATERIAL_PLAIN = 0  # base colour only
MATERIAL_SKULL = 1  # hair above the identity's hairline, skin below
MATERIAL_NECK = 2  # clothing below the collar, skin above
MATERIAL_HAIR = 3  # hair colour with a combed-stripe texture

# Primitive order of the head (occluders follow when requested). Pairs are (right, left):
# right = the subject's right = head-frame x < 0.
HEAD_PARTS: tuple[str, ...] = (
    "cranium", "face", "chin", "nose", "eye_white_r", "eye_white_l", "iris_r", "iris_l",
    "brow_r", "brow_l", "lips", "mouth_inside", "ear_r", "ear_l", "neck", "torso",
    "long_hair", "bun",
)  # fmt: skip
_H = {name: i for i, name in enumerate(HEAD_PARTS)}
_OCCLUDER_PARTS: tuple[str, ...] = (
    "glasses_r", "glasses_l", "glasses_bridge", "mask", "hat", "hat_visor", "hand_palm",
    "hand_finger_1", "hand_finger_2",
)  # fmt: skip
_OCCLUDER_OF_PART = (0, 0, 0, 1, 2, 2, 3, 3, 3)  # index into OCCLUDER_KINDS
# Primitives whose front surface carries landmarks and counts as "face" for occlusion.
_FACE_PARTS = ("cranium", "face", "chin", "nose", "eye_white_r", "eye_white_l", "iris_r",
               "iris_l", "brow_r", "brow_l", "lips", "mouth_inside")  # fmt: skip
_MATERIALS = {"cranium": MATERIAL_SKULL, "face": MATERIAL_SKULL, "neck": MATERIAL_NECK,
              "long_hair": MATERIAL_HAIR, "bun": MATERIAL_HAIR}  # fmt: skip

# Colour palettes (linear RGB in [0, 1]); an identity picks one entry and jitters it.
_SKIN = torch.tensor([[0.98, 0.84, 0.72], [0.93, 0.72, 0.58], [0.80, 0.58, 0.42],
                      [0.60, 0.41, 0.28], [0.40, 0.26, 0.17]])  # fmt: skip
_HAIR = torch.tensor([[0.07, 0.05, 0.04], [0.28, 0.16, 0.08], [0.50, 0.33, 0.16],
                      [0.86, 0.70, 0.40], [0.62, 0.25, 0.10], [0.72, 0.72, 0.70]])  # fmt: skip
_EYES = torch.tensor([[0.30, 0.17, 0.07], [0.25, 0.45, 0.70], [0.30, 0.48, 0.28],
                      [0.08, 0.06, 0.05]])  # fmt: skip


def _mix64(*values: int) -> int:
    """Deterministic 63-bit hash of integers (splitmix64 steps), stable across processes."""
    h = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for v in values:
        h = (h ^ (int(v) & mask)) & mask
        h = (h + 0x9E3779B97F4A7C15) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def identity_seed(seed: int, identity: int) -> int:
    """Seed of one identity's generator: a pure function of ``(seed, identity)``."""
    return _mix64(seed, identity, 0x1D)


def sample_identity_params(identities: Sequence[int] | Tensor, seed: int = 0) -> Tensor:
    """``(N,)`` identity ids -> ``(N, NUM_IDENTITY_PARAMS)`` float32 parameters in ``[0, 1)``.

    Identity ``i`` always gets the same head for the same ``seed`` (whatever the batch it is
    drawn in), so datasets can share identities by id and keep splits disjoint by id.
    """
    ids = torch.as_tensor(identities, dtype=torch.int64).reshape(-1).tolist()
    out = torch.empty(len(ids), NUM_IDENTITY_PARAMS)
    gen = torch.Generator()
    for row, ident in enumerate(ids):
        gen.manual_seed(identity_seed(seed, ident))
        out[row] = torch.rand(NUM_IDENTITY_PARAMS, generator=gen)
    return out


@dataclass
class HeadPrimitives:
    """A batch of heads as ellipsoids in the head frame (``B`` heads, ``K`` primitives).

    Attributes:
        centers: ``(B, K, 3)`` centres.
        axes: ``(B, K, 3)`` semi-axes (positive).
        orient: ``(B, K, 3, 3)`` rotation of each ellipsoid's local frame (columns = axes).
        colors: ``(B, K, 3)`` base colours in ``[0, 1]``.
        enabled: ``(B, K)`` bool; a disabled primitive is not rendered.
        material: ``(K,)`` int64 material ids (``MATERIAL_*``).
        is_occluder: ``(K,)`` bool; occluders are not part of the head (masks, landmarks).
        is_face: ``(K,)`` bool; primitives that make up the face for the occlusion measure.
        hair_color: ``(B, 3)``; skin_color ``(B, 3)``; clothing_color ``(B, 3)``.
        hairline: ``(B, 2)`` hairline height (head y) at the front and at the back.
        collar: ``(B,)`` head-frame y below which the neck is clothing.
        scale: ``(B,)`` overall size of the head (head units; height of the head ~ scale).
    """

    centers: Tensor
    axes: Tensor
    orient: Tensor
    colors: Tensor
    enabled: Tensor
    material: Tensor
    is_occluder: Tensor
    is_face: Tensor
    hair_color: Tensor
    skin_color: Tensor
    clothing_color: Tensor
    hairline: Tensor
    collar: Tensor
    scale: Tensor


def _lerp(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def _pick(palette: Tensor, u: Tensor) -> Tensor:
    """``(N,)`` u in [0, 1) -> ``(N, 3)`` palette entries."""
    idx = (u * palette.shape[0]).long().clamp(0, palette.shape[0] - 1)
    return palette.to(u.device)[idx]


def _front_z(center: Tensor, axes: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Front (smallest z) surface of axis-aligned ellipsoids at head (x, y); ``(N,)`` each.
    Points outside the outline get the ellipsoid's widest z (the outline itself)."""
    q = 1 - ((x - center[:, 0]) / axes[:, 0]) ** 2 - ((y - center[:, 1]) / axes[:, 1]) ** 2
    return center[:, 2] - axes[:, 2] * q.clamp_min(0).sqrt()


def _ellipsoid(
    center: Tensor, axes: Tensor, orient: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    if orient is None:
        orient = torch.eye(3, dtype=center.dtype, device=center.device).expand(
            center.shape[0], 3, 3
        )
    return center, axes, orient


def _mirror(part: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Reflection x -> -x of an ellipsoid: centre x negated, orientation ``Fx O Fx``."""
    c, a, o = part
    f = torch.tensor([-1.0, 1.0, 1.0], dtype=c.dtype, device=c.device)
    return c * f, a, o * f[:, None] * f[None, :]


def _vec(*cols: Tensor | float, like: Tensor) -> Tensor:
    """Stack scalars / ``(N,)`` tensors into ``(N, 3)``."""
    n = like.shape[0]
    return torch.stack(
        [c if isinstance(c, Tensor) else torch.full((n,), float(c), dtype=like.dtype,
                                                    device=like.device) for c in cols],
        dim=-1,
    )  # fmt: skip


def _features(params: Tensor) -> dict[str, Tensor]:
    """Physical feature sizes and positions (head units, before ``head_scale``) of ``(B, P)``."""
    p = {name: params[:, i] for name, i in _P.items()}
    f = {
        "cran_w": _lerp(p["cranium_width"], 0.34, 0.39),
        "cran_d": _lerp(p["cranium_depth"], 0.44, 0.50),
        "face_w": _lerp(p["face_width"], 0.27, 0.31),
        "face_l": _lerp(p["face_length"], 0.38, 0.42),
        "eye_x": _lerp(p["eye_separation"], 0.115, 0.14),
        "eye_w": _lerp(p["eye_size"], 0.050, 0.062),
        "eye_y": _lerp(p["eye_height"], -0.06, -0.03),
        "nose_y": _lerp(p["nose_length"], 0.10, 0.15),
        "nose_w": _lerp(p["nose_width"], 0.045, 0.062),
        "nose_d": _lerp(p["nose_protrusion"], 0.08, 0.11),
        "mouth_w": _lerp(p["mouth_width"], 0.085, 0.11),
        "mouth_y": _lerp(p["mouth_height"], 0.22, 0.26),
        "lip_h": _lerp(p["lip_thickness"], 0.022, 0.032),
        "ear_h": _lerp(p["ear_size"], 0.09, 0.12),
        "neck_w": _lerp(p["neck_width"], 0.13, 0.165),
        "brow_h": _lerp(p["brow_thickness"], 0.014, 0.024),
    }
    f["face_cy"] = 0.46 - f["face_l"]  # the chin stays at y ~ 0.46
    return f


def _face_z(f: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Front surface z of the cranium/face union at head (x, y), ``(B,)``."""
    z_cran = _front_z(
        _vec(0.0, -0.08, 0.05, like=x), _vec(f["cran_w"], 0.42, f["cran_d"], like=x), x, y
    )
    z_face = _front_z(
        _vec(0.0, f["face_cy"], -0.06, like=x), _vec(f["face_w"], f["face_l"], 0.36, like=x), x, y
    )
    return torch.minimum(z_cran, z_face)


def build_head(
    params: Tensor,
    eye_closure: Tensor | None = None,
    mouth_open: Tensor | None = None,
    occluder_flags: Tensor | None = None,
    occluder_params: Tensor | None = None,
    with_occluders: bool = False,
) -> HeadPrimitives:
    """Identity parameters (+ expression, occluders) -> primitives in the head frame.

    Args:
        params: ``(B, NUM_IDENTITY_PARAMS)`` identity parameters in ``[0, 1)``.
        eye_closure: ``(B,)`` in ``[0, 1]`` (1 = closed); ``None`` = open.
        mouth_open: ``(B,)`` in ``[0, 1]``; ``None`` = closed.
        occluder_flags: ``(B, len(OCCLUDER_KINDS))`` bool, which occluders each head wears.
        occluder_params: ``(B, NUM_OCCLUDER_PARAMS)`` in ``[0, 1)``: colours and placement.
        with_occluders: append the occluder primitives (needed when any flag may be set;
            they cost render time even when disabled).

    Returns:
        :class:`HeadPrimitives` with ``K = len(HEAD_PARTS)`` (+ 9 occluder primitives).
    """
    b, dev, dt = params.shape[0], params.device, params.dtype
    zero = torch.zeros(b, dtype=dt, device=dev)
    eye_closure = zero if eye_closure is None else eye_closure.to(dev, dt)
    mouth_open = zero if mouth_open is None else mouth_open.to(dev, dt)
    f = _features(params)
    p = {name: params[:, i] for name, i in _P.items()}
    one = torch.ones_like(zero)
    parts: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    parts["cranium"] = _ellipsoid(
        _vec(0.0, -0.08, 0.05, like=zero), _vec(f["cran_w"], 0.42, f["cran_d"], like=zero)
    )
    parts["face"] = _ellipsoid(
        _vec(0.0, f["face_cy"], -0.06, like=zero), _vec(f["face_w"], f["face_l"], 0.36, like=zero)
    )
    chin_y = 0.38 * one
    parts["chin"] = _ellipsoid(
        _vec(0.0, chin_y, _face_z(f, zero, chin_y) + 0.06, like=zero),
        _vec(0.10, 0.075, 0.09, like=zero),
    )

    # Nose: an ellipsoid from the bridge (eye height) to the tip, tilted so the tip sticks out.
    nose_cy = 0.5 * (f["eye_y"] + f["nose_y"]) + 0.01
    nose_len = 0.5 * (f["nose_y"] - f["eye_y"]) + 0.015
    tilt = torch.full_like(zero, -0.35)
    parts["nose"] = _ellipsoid(
        _vec(0.0, nose_cy, _face_z(f, zero, nose_cy) + 0.35 * f["nose_d"], like=zero),
        _vec(f["nose_w"], nose_len, f["nose_d"], like=zero),
        rotation_x(tilt),
    )
    # Eyes: a white ellipsoid and an iris slightly in front; closing the eye flattens both.
    open_ = (1 - eye_closure).clamp(0.04, 1)
    eye_h = 0.55 * f["eye_w"] * open_
    ex, ey = -f["eye_x"], f["eye_y"]
    ez = _face_z(f, ex, ey)
    parts["eye_white_r"] = _ellipsoid(
        _vec(ex, ey, ez + 0.012, like=zero), _vec(f["eye_w"], eye_h, 0.03, like=zero)
    )
    parts["eye_white_l"] = _mirror(parts["eye_white_r"])
    iris_r = 0.42 * f["eye_w"]
    parts["iris_r"] = _ellipsoid(
        _vec(ex, ey, ez + 0.0, like=zero),
        _vec(iris_r, torch.minimum(iris_r, eye_h), 0.02, like=zero),
    )
    parts["iris_l"] = _mirror(parts["iris_r"])
    brow_x, brow_y = -(f["eye_x"] + 0.01), ey - 0.085
    parts["brow_r"] = _ellipsoid(
        _vec(brow_x, brow_y, _face_z(f, brow_x, brow_y) + 0.018, like=zero),
        _vec(0.075, f["brow_h"], 0.025, like=zero),
        rotation_z(torch.full_like(zero, 0.12)),
    )
    parts["brow_l"] = _mirror(parts["brow_r"])
    lip_h = f["lip_h"] * (1 + 1.5 * mouth_open)
    mz = _face_z(f, zero, f["mouth_y"])
    parts["lips"] = _ellipsoid(
        _vec(0.0, f["mouth_y"], mz + 0.02, like=zero), _vec(f["mouth_w"], lip_h, 0.04, like=zero)
    )
    # A dark slit in front of the lips: invisible (inside) when closed, the open mouth otherwise.
    parts["mouth_inside"] = _ellipsoid(
        _vec(0.0, f["mouth_y"], mz + 0.02 - 0.035 * mouth_open.clamp(0, 1).sqrt(), like=zero),
        _vec(0.8 * f["mouth_w"], 0.9 * lip_h * mouth_open + 0.002, 0.012, like=zero),
    )
    ear_x = -(f["cran_w"] - 0.01)
    parts["ear_r"] = _ellipsoid(
        _vec(ear_x, f["eye_y"] + 0.06, 0.06, like=zero),
        _vec(0.03, f["ear_h"], 0.065, like=zero),
        rotation_y(torch.full_like(zero, 0.35)),
    )
    parts["ear_l"] = _mirror(parts["ear_r"])
    parts["neck"] = _ellipsoid(
        _vec(0.0, 0.47, 0.10, like=zero), _vec(f["neck_w"], 0.30, f["neck_w"], like=zero)
    )
    parts["torso"] = _ellipsoid(_vec(0.0, 0.92, 0.14, like=zero), _vec(0.55, 0.22, 0.28, like=zero))
    parts["long_hair"] = _ellipsoid(
        _vec(0.0, 0.16, 0.24, like=zero), _vec(f["cran_w"] - 0.02, 0.42, 0.2, like=zero)
    )
    parts["bun"] = _ellipsoid(
        _vec(0.0, -0.30, f["cran_d"] + 0.06, like=zero), _vec(0.12, 0.12, 0.12, like=zero)
    )

    # Colours.
    skin = (_pick(_SKIN, p["skin_tone"]) * _lerp(p["skin_jitter"], 0.92, 1.06)[:, None]).clamp(0, 1)
    hair = (_pick(_HAIR, p["hair_colour"]) * _lerp(p["hair_jitter"], 0.85, 1.15)[:, None]).clamp(
        0, 1
    )
    eyes = _pick(_EYES, p["eye_colour"])
    clothing = torch.stack([p["clothing_r"], p["clothing_g"], p["clothing_b"]], -1) * 0.8 + 0.1
    lips = skin * torch.stack([_lerp(p["lip_colour"], 0.75, 0.9), 0.55 * one, 0.55 * one], -1)
    colors = {
        "cranium": skin, "face": skin, "chin": skin, "nose": skin * 0.97,
        "eye_white_r": torch.tensor([0.95, 0.95, 0.93], device=dev).expand(b, 3),
        "iris_r": eyes, "brow_r": hair * 0.8, "lips": lips,
        "mouth_inside": torch.tensor([0.25, 0.06, 0.06], device=dev).expand(b, 3),
        "ear_r": skin * 0.93, "neck": skin * 0.95, "torso": clothing, "long_hair": hair, "bun": hair,
    }  # fmt: skip
    for side in ("eye_white", "iris", "brow", "ear"):
        colors[f"{side}_l"] = colors[f"{side}_r"]
    style = p["hair_style"]
    enabled = {name: torch.ones(b, dtype=torch.bool, device=dev) for name in HEAD_PARTS}
    enabled["long_hair"] = (style >= 0.55) & (style < 0.8)
    enabled["bun"] = style >= 0.8
    enabled["mouth_inside"] = mouth_open > 0.02

    names = list(HEAD_PARTS)
    if with_occluders:
        flags = (
            torch.zeros(b, len(OCCLUDER_KINDS), dtype=torch.bool, device=dev)
            if occluder_flags is None else occluder_flags.to(dev).bool()
        )  # fmt: skip
        q = (
            torch.full((b, NUM_OCCLUDER_PARAMS), 0.5, dtype=dt, device=dev)
            if occluder_params is None else occluder_params.to(dev, dt)
        )  # fmt: skip
        gz = ez - 0.07
        parts["glasses_r"] = _ellipsoid(
            _vec(ex, ey, gz, like=zero), _vec(0.085, 0.06, 0.01, like=zero)
        )
        parts["glasses_l"] = _mirror(parts["glasses_r"])
        parts["glasses_bridge"] = _ellipsoid(
            _vec(0.0, ey - 0.01, gz, like=zero), _vec(0.05, 0.01, 0.01, like=zero)
        )
        nose_tip_z = _face_z(f, zero, f["nose_y"]) - f["nose_d"]
        parts["mask"] = _ellipsoid(
            _vec(0.0, 0.25, 0.02, like=zero),
            _vec(f["face_w"] + 0.015, 0.21, 0.02 - nose_tip_z + 0.015, like=zero),
        )
        parts["hat"] = _ellipsoid(
            _vec(0.0, -0.30, 0.05, like=zero),
            _vec(f["cran_w"] + 0.03, 0.23, f["cran_d"] + 0.03, like=zero),
        )
        parts["hat_visor"] = _ellipsoid(
            _vec(0.0, -0.26, -0.33, like=zero), _vec(0.26, 0.018, 0.22, like=zero)
        )
        # Hand: a palm and two fingers in front of a random part of the face.
        hx, hy = _lerp(q[:, 0], -0.2, 0.2), _lerp(q[:, 1], -0.05, 0.3)
        hang = _lerp(q[:, 2], -0.8, 0.8)
        hrot = rotation_z(hang)
        hz = _face_z(f, hx, hy) - 0.13
        parts["hand_palm"] = _ellipsoid(
            _vec(hx, hy, hz, like=zero), _vec(0.13, 0.16, 0.05, like=zero), hrot
        )
        for k, dx in ((1, -0.05), (2, 0.05)):
            off = hrot @ torch.tensor([dx, -0.2, 0.0], dtype=dt, device=dev)
            parts[f"hand_finger_{k}"] = _ellipsoid(
                _vec(hx + off[:, 0], hy + off[:, 1], hz, like=zero),
                _vec(0.03, 0.11, 0.03, like=zero),
                hrot,
            )
        colors["glasses_r"] = colors["glasses_l"] = (0.25 * q[:, 3:6]).clamp(0, 1)
        colors["glasses_bridge"] = 0.2 * q[:, 3:6]
        colors["mask"] = 0.55 + 0.45 * q[:, 6:9]
        colors["hat"] = colors["hat_visor"] = 0.9 * q[:, [7, 3, 6]]
        colors["hand_palm"] = colors["hand_finger_1"] = colors["hand_finger_2"] = _pick(
            _SKIN, q[:, 9]
        )
        for name, kind in zip(_OCCLUDER_PARTS, _OCCLUDER_OF_PART, strict=True):
            enabled[name] = flags[:, kind]
        names += list(_OCCLUDER_PARTS)

    scale = _lerp(p["head_scale"], 0.92, 1.08)
    centers = torch.stack([parts[n][0] for n in names], 1) * scale[:, None, None]
    axes = torch.stack([parts[n][1] for n in names], 1) * scale[:, None, None]
    orient = torch.stack([parts[n][2] for n in names], 1)
    return HeadPrimitives(
        centers=centers,
        axes=axes,
        orient=orient,
        colors=torch.stack([colors[n] for n in names], 1).to(dt),
        enabled=torch.stack([enabled[n] for n in names], 1),
        material=torch.tensor([_MATERIALS.get(n, MATERIAL_PLAIN) for n in names], device=dev),
        is_occluder=torch.tensor([n in _OCCLUDER_PARTS for n in names], device=dev),
        is_face=torch.tensor([n in _FACE_PARTS for n in names], device=dev),
        hair_color=hair,
        skin_color=skin,
        clothing_color=clothing,
        hairline=torch.stack(
            [_lerp(p["hairline_front"], -0.33, -0.24), _lerp(p["hairline_back"], 0.05, 0.3)], -1
        )
        * scale[:, None],
        collar=0.62 * scale,
        scale=scale,
    )
