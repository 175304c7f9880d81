"""Label consistency of the batched augmentation (hpelib.data.transforms).

The central check: a rotation label ``R`` and head-frame points ``X`` explain the image
landmarks (weak perspective: ``landmarks = s * (R X)_xy + t``). After a warp, the NEW label
must explain the warped landmarks the same way (with ``Fx X`` after a reflection, since a
mirrored head is the mirror image of the head), far better than a wrong label does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hpelib.rotation as hr
from hpelib.data.transforms import (
    AUGMENTATIONS,
    MULTIPIE68_MIRROR_PERMUTATION,
    Grayscale,
    RandomGeometric,
    RandomHorizontalMirror,
    RandomInPlaneRotation,
    RandomLineFlip,
    RandomOcclusion,
    RandomScaleTranslate,
    apply_warp,
    build_augmentation,
    clerf_photometric,
    face_boxes,
    image_center,
    opnet_photometric,
)
from hpelib.rotation import (
    ImageWarp,
    euler_300wlp_from_rotation,
    geodesic_distance,
    random_rotation,
    rotation_from_euler_300wlp,
)

AFLW = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "AFLW2000-dev"
PERM = torch.tensor(MULTIPIE68_MIRROR_PERMUTATION)
FX = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
SIZE = 48


# ----------------------------------------------------------------------------- helpers
def weak_perspective_error(r: torch.Tensor, x: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """RMS residual (pixels) of the best ``s * (r @ x)_xy + t`` fit to ``pts``.

    r: (B, 3, 3), x: (B, N, 3) head-frame points, pts: (B, N, 2). Returns (B,).
    """
    proj = (x.double() @ r.double().transpose(-1, -2))[..., :2]
    p0 = proj - proj.mean(dim=1, keepdim=True)
    q0 = pts.double() - pts.double().mean(dim=1, keepdim=True)
    s = (p0 * q0).sum(dim=(1, 2)) / (p0 * p0).sum(dim=(1, 2)).clamp_min(1e-12)
    res = s[:, None, None] * p0 - q0
    return res.pow(2).sum(-1).mean(-1).sqrt()


def head_points_after(batch_in: dict, batch_out: dict, x: torch.Tensor, warp: ImageWarp):
    """Head-frame points matching the output's landmark order and mirror state, and the
    output landmarks in the input's order: reflected samples have ``Fx X`` and permuted
    landmarks (undone here with the involutive permutation)."""
    reflected = torch.linalg.det(warp.matrix[:, :2, :2].double()) < 0
    x_out = torch.where(reflected[:, None, None], x.double() @ FX, x.double())
    lm = batch_out["landmarks_2d"]
    lm_in_order = torch.where(reflected[:, None, None], lm[:, PERM], lm)
    return x_out, lm_in_order, reflected


def load_aflw(names: list[str]) -> tuple[dict, torch.Tensor]:
    """A batch of real AFLW2000 samples resized to SIZE px, and their head-frame points."""
    sio = pytest.importorskip("scipy.io")
    from PIL import Image

    if not AFLW.is_dir():
        pytest.skip(f"shared AFLW2000-dev data not found at {AFLW}")
    images, rots, lms, lm3, xs = [], [], [], [], []
    s = (SIZE - 1) / 449.0  # 450 px source, pixel centres at integers
    for name in names:
        mat = sio.loadmat(str(AFLW / f"{name}.mat"))
        pitch, yaw, roll = (
            torch.tensor(float(a), dtype=torch.float64) for a in mat["Pose_Para"][0, :3]
        )
        r = rotation_from_euler_300wlp(pitch, yaw, roll)
        pt3d = torch.tensor(mat["pt3d_68"], dtype=torch.float64).T  # (68, 3)
        # pt3d_68: x, y are image pixels; its z points towards the viewer, so camera-axes
        # depth (z into the scene) is -z (checked: only then is R^T p the same face shape
        # across samples, nose tip in front).
        cam = torch.stack([pt3d[:, 0], pt3d[:, 1], -pt3d[:, 2]], dim=-1)
        centred = cam - cam.mean(dim=0)
        xs.append(centred @ r)  # rows of R^T @ centred
        lms.append(cam[:, :2] * s)
        lm3.append(torch.cat([cam[:, :2] * s, centred[:, 2:] * s], dim=-1))
        rots.append(r)
        img = Image.open(AFLW / f"{name}.jpg").convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0)
    lm2 = torch.stack(lms).float()
    batch = {
        "image": torch.stack(images),
        "rotation": torch.stack(rots).float(),
        "landmarks_2d": lm2,
        "landmarks_visible": torch.arange(68).expand(len(names), 68) % 3 != 0,
        "landmarks_3d": torch.stack(lm3).float(),
        "box": torch.cat([lm2.amin(1), lm2.amax(1)], dim=-1),
        "head_center": lm2.mean(1),
        "head_size": (lm2.amax(1) - lm2.amin(1)).amax(-1),
    }
    return batch, torch.stack(xs)


@pytest.fixture(scope="module")
def aflw():
    return load_aflw(["image00002", "image00006", "image00020", "image00042"])


def synthetic_batch(b: int, seed: int) -> tuple[dict, torch.Tensor]:
    """Random rotations, random 3D point clouds and their exact weak-perspective landmarks."""
    g = torch.Generator().manual_seed(seed)
    r = random_rotation(b, generator=g, dtype=torch.float64)
    x = torch.randn(b, 68, 3, generator=g, dtype=torch.float64)
    x = x - x.mean(dim=1, keepdim=True)
    cam = x @ r.transpose(-1, -2)
    scale = 5.0 + 3.0 * torch.rand(b, 1, 1, generator=g, dtype=torch.float64)
    center = (SIZE - 1) / 2 + 4 * torch.randn(b, 1, 2, generator=g, dtype=torch.float64)
    lm = scale * cam[..., :2] + center
    batch = {
        "image": torch.rand(b, 3, SIZE, SIZE, generator=g),
        "rotation": r.float(),
        "landmarks_2d": lm.float(),
        "landmarks_visible": torch.rand(b, 68, generator=g) < 0.7,
        "landmarks_3d": torch.cat([lm, scale * cam[..., 2:]], dim=-1).float(),
        "box": torch.cat([lm.amin(1), lm.amax(1)], dim=-1).float(),
        "head_center": center[:, 0].float(),
        "head_size": scale[:, 0, 0].float() * 4,
    }
    return batch, x


def check_consistency(batch: dict, x: torch.Tensor, out: dict, warp: ImageWarp) -> torch.Tensor:
    """Assert every geometric label of ``out`` is the warped label of ``batch``; returns the
    weak-perspective residual of the new rotation (pixels, per sample)."""
    x_out, lm, reflected = head_points_after(batch, out, x, warp)
    err = weak_perspective_error(out["rotation"], x_out, lm)
    spread = lm.double().std(dim=1).norm(dim=-1)
    assert (err < 2e-3 * spread + 2e-4).all(), (err, spread)
    # landmarks follow the warp exactly
    expected_lm = warp.apply_points(batch["landmarks_2d"].double())
    torch.testing.assert_close(lm.double(), expected_lm, atol=1e-3, rtol=0)
    # visibility permuted like the points
    vis = torch.where(
        reflected[:, None], out["landmarks_visible"][:, PERM], out["landmarks_visible"]
    )
    assert torch.equal(vis, batch["landmarks_visible"])
    # 3D landmarks: x, y like 2D points, depth scaled; the new rotation predicts all three
    scale = torch.linalg.det(warp.matrix[:, :2, :2].double()).abs().sqrt()
    l3 = out["landmarks_3d"].double()
    l3 = torch.where(reflected[:, None, None], l3[:, PERM], l3)
    torch.testing.assert_close(l3[..., :2], expected_lm, atol=1e-3, rtol=0)
    torch.testing.assert_close(
        l3[..., 2], batch["landmarks_3d"][..., 2].double() * scale[:, None], atol=1e-3, rtol=1e-5
    )
    pred = x_out @ out["rotation"].double().transpose(-1, -2)
    s_fit = (l3 - l3.mean(1, keepdim=True)).norm(dim=(1, 2)) / (
        pred - pred.mean(1, keepdim=True)
    ).norm(dim=(1, 2))
    resid = (l3 - l3.mean(1, keepdim=True)) - s_fit[:, None, None] * (
        pred - pred.mean(1, keepdim=True)
    )
    assert (resid.norm(dim=-1).amax(-1) < 1e-2 * spread + 1e-3).all()
    torch.testing.assert_close(
        out["head_center"].double(),
        warp.apply_points(batch["head_center"].double()[:, None])[:, 0],
        atol=1e-3,
        rtol=0,
    )
    torch.testing.assert_close(
        out["head_size"].double(), batch["head_size"].double() * scale, atol=1e-3, rtol=1e-5
    )
    torch.testing.assert_close(
        out["box"].double(), warp.apply_boxes(batch["box"].double()), atol=1e-3, rtol=0
    )
    # rotations stay rotations
    rr = out["rotation"].double()
    torch.testing.assert_close(
        rr @ rr.transpose(-1, -2),
        torch.eye(3, dtype=torch.float64).expand_as(rr),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        torch.linalg.det(rr), torch.ones(rr.shape[0], dtype=torch.float64), atol=1e-5, rtol=0
    )
    return err


def run_transform(transform, batch: dict, seed: int) -> tuple[dict, ImageWarp]:
    """Sample the transform's warp with a seeded generator and apply it; also return the warp."""
    transform.generator = torch.Generator().manual_seed(seed)
    if isinstance(transform, RandomGeometric):
        for t in transform.transforms:
            t.generator = transform.generator
    warp, active = transform.sample_warp(batch)
    transform.generator = torch.Generator().manual_seed(seed)
    if isinstance(transform, RandomGeometric):
        for t in transform.transforms:
            t.generator = transform.generator
    out = transform(batch)
    return out, warp


GEOMETRIC = {
    "rotation": lambda: RandomInPlaneRotation(p=1.0, max_degrees=90.0),
    "line_flip": lambda: RandomLineFlip(p=1.0, max_degrees=90.0),
    "mirror": lambda: RandomHorizontalMirror(p=1.0),
    "scale_translate": lambda: RandomScaleTranslate(scale=(0.8, 1.2), translate=0.1),
    "composed": lambda: RandomGeometric(
        [
            RandomScaleTranslate(),
            RandomInPlaneRotation(p=0.7),
            RandomLineFlip(p=0.5),
            RandomHorizontalMirror(p=0.5),
        ]
    ),
}


# ----------------------------------------------------------------------------- real faces
@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_label_consistency_on_aflw2000(aflw, name):
    batch, x = aflw
    # the unwarped label explains the landmarks exactly: the setup itself is right
    err0 = weak_perspective_error(batch["rotation"], x, batch["landmarks_2d"])
    assert (err0 < 1e-3).all()
    out, warp = run_transform(GEOMETRIC[name](), batch, seed=3)
    err = check_consistency(batch, x, out, warp)
    # A wrong label (the stale one, and for rotations the naive "roll += phi") is far off.
    x_out, lm, _ = head_points_after(batch, out, x, warp)
    wrong = [batch["rotation"]]
    if name == "rotation":
        phi = torch.atan2(-warp.matrix[:, 1, 0], warp.matrix[:, 0, 0])  # CCW as displayed
        p, y, r = euler_300wlp_from_rotation(batch["rotation"].double())
        wrong.append(rotation_from_euler_300wlp(p, y, r - phi))
        wrong.append(rotation_from_euler_300wlp(p, y, r + phi))
    moved = (
        warp.matrix[:, :2, :2].double()
        - torch.eye(2, dtype=torch.float64)
        * torch.linalg.det(warp.matrix[:, :2, :2].double()).abs().sqrt()[:, None, None]
    )
    changes_label = moved.abs().amax(dim=(1, 2)) > 0.05
    for rw in wrong:
        bad = weak_perspective_error(rw, x_out, lm)
        assert (bad[changes_label] > 20 * err[changes_label] + 0.2).all(), (name, bad, err)


def test_mirror_uses_symmetric_landmark_semantics(aflw):
    """With the permutation, the mirrored label R' explains the permuted landmarks with the
    ORIGINAL head points (a face is nearly symmetric), much better than without it."""
    batch, x = aflw
    out = RandomHorizontalMirror(p=1.0)(batch)
    good = weak_perspective_error(out["rotation"], x, out["landmarks_2d"])
    unpermuted = out["landmarks_2d"][:, PERM]
    bad = weak_perspective_error(out["rotation"], x, unpermuted)
    spread = out["landmarks_2d"].double().std(dim=1).norm(dim=-1)
    assert (good < 0.1 * spread).all()
    assert (bad > 2 * good).all()


def test_mirror_permutation_pairs_symmetric_points(aflw):
    _, x = aflw
    perm = torch.tensor(MULTIPIE68_MIRROR_PERMUTATION)
    assert torch.equal(perm[perm], torch.arange(68))
    mirrored = x @ FX  # Fx X, rows
    d = (mirrored[:, perm] - x).norm(dim=-1)
    width = x[..., 0].amax(1) - x[..., 0].amin(1)
    assert (d.median(dim=1).values < 0.06 * width).all()
    # a wrong pairing (identity) is clearly worse for the non-midline points
    d_id = (mirrored - x).norm(dim=-1)
    assert (d_id.mean(1) > 3 * d.mean(1)).all()


# ----------------------------------------------------------------------------- synthetic
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(GEOMETRIC)))
def test_label_consistency_random_point_clouds(seed, name):
    batch, x = synthetic_batch(6, seed)
    out, warp = run_transform(GEOMETRIC[name](), batch, seed)
    check_consistency(batch, x, out, warp)


def _apply(batch: dict, warp: ImageWarp) -> dict:
    return apply_warp(batch, warp)


def test_flip_is_an_involution_and_rotations_add():
    batch, _ = synthetic_batch(4, 0)
    c = image_center(SIZE, SIZE, 4, torch.float64)
    theta = torch.tensor([0.0, 0.3, 1.0, math.pi / 2], dtype=torch.float64)
    flip = ImageWarp.flip(theta, c)
    twice = _apply(_apply(batch, flip), flip)
    # (not "box": the enclosing box of a box flipped at an oblique line grows)
    for key in ("rotation", "landmarks_2d", "landmarks_3d", "head_center", "head_size"):
        torch.testing.assert_close(twice[key], batch[key], atol=1e-4, rtol=1e-5)
    assert torch.equal(twice["landmarks_visible"], batch["landmarks_visible"])
    a = torch.tensor([0.2, -1.0, 2.5, 3.0], dtype=torch.float64)
    b_ = torch.tensor([0.5, 0.4, -1.0, 0.3], dtype=torch.float64)
    ab = _apply(_apply(batch, ImageWarp.rotation(a, c)), ImageWarp.rotation(b_, c))
    direct = _apply(batch, ImageWarp.rotation(a + b_, c))
    torch.testing.assert_close(ab["rotation"], direct["rotation"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ab["landmarks_2d"], direct["landmarks_2d"], atol=1e-3, rtol=0)
    ang = geodesic_distance(direct["rotation"].double(), batch["rotation"].double())
    expected = torch.remainder(a + b_ + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(ang, expected.abs(), atol=1e-4, rtol=0)


def _dot_image(points: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """(B, 1, H, W) images with a Gaussian blob at each (B, 2) point."""
    ys = torch.arange(size, dtype=torch.float32)[:, None]
    xs = torch.arange(size, dtype=torch.float32)[None, :]
    d2 = (xs - points[:, 0, None, None]) ** 2 + (ys - points[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * 1.5**2))[:, None]


def _centroid(img: torch.Tensor) -> torch.Tensor:
    w = img[:, 0].double()
    ys = torch.arange(img.shape[-2], dtype=torch.float64)[:, None]
    xs = torch.arange(img.shape[-1], dtype=torch.float64)[None, :]
    tot = w.sum(dim=(1, 2))
    return torch.stack([(w * xs).sum(dim=(1, 2)) / tot, (w * ys).sum(dim=(1, 2)) / tot], dim=-1)


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_images_move_with_the_points(name):
    """The pixel content moves where the warp sends the landmarks (image and label agree)."""
    b = 6
    g = torch.Generator().manual_seed(7)
    pts = (SIZE - 1) / 2 + (torch.rand(b, 2, generator=g) - 0.5) * 12
    batch = {"image": _dot_image(pts).expand(b, 3, SIZE, SIZE).contiguous(), "head_center": pts}
    out, warp = run_transform(GEOMETRIC[name](), batch, seed=11)
    torch.testing.assert_close(
        _centroid(out["image"]), out["head_center"].double(), atol=0.05, rtol=0
    )
    # label and image moved the same way, and something moved
    torch.testing.assert_close(
        out["head_center"].double(),
        warp.apply_points(pts.double()[:, None])[:, 0],
        atol=1e-4,
        rtol=0,
    )
    assert (out["head_center"] - pts).norm(dim=-1).amax() > 0.5


def test_exact_pixel_expectations():
    img = torch.rand(2, 3, 16, 16)
    c = image_center(16, 16, 2, torch.float64)
    # 90 degrees counter-clockwise as displayed: the top-right corner goes to the top-left
    rot = apply_warp(
        {"image": img}, ImageWarp.rotation(torch.full((2,), math.pi / 2, dtype=torch.float64), c)
    )
    torch.testing.assert_close(
        rot["image"], torch.rot90(img, k=1, dims=(-2, -1)), atol=1e-5, rtol=0
    )
    assert torch.allclose(rot["image"][..., 0, 0], img[..., 0, 15], atol=1e-5)
    mir = RandomHorizontalMirror(p=1.0)({"image": img})
    torch.testing.assert_close(mir["image"], img.flip(-1), atol=1e-5, rtol=0)
    # a flip across the 45-degree line (displayed) maps (x, y) -> (W-1-y, H-1-x)
    flip = apply_warp(
        {"image": img}, ImageWarp.flip(torch.full((2,), math.pi / 4, dtype=torch.float64), c)
    )
    expected = img.flip(-1).flip(-2).transpose(-1, -2)
    torch.testing.assert_close(flip["image"], expected, atol=1e-5, rtol=0)


def test_per_sample_probability_and_untouched_samples():
    batch, _ = synthetic_batch(64, 1)
    t = RandomInPlaneRotation(p=0.5, generator=torch.Generator().manual_seed(0))
    out = t(batch)
    changed = (out["rotation"] - batch["rotation"]).abs().amax(dim=(1, 2)) > 1e-6
    assert 10 < int(changed.sum()) < 54
    same = ~changed
    assert torch.equal(out["image"][same], batch["image"][same])
    assert torch.equal(out["landmarks_2d"][same], batch["landmarks_2d"][same])
    none = RandomLineFlip(p=0.0)(batch)
    assert all(torch.equal(none[k], batch[k]) for k in batch)


def test_masks_and_other_keys_untouched():
    batch, _ = synthetic_batch(4, 2)
    batch["has_rotation"] = torch.tensor([True, False, True, True])
    batch["identity"] = torch.arange(4)
    out = build_augmentation("clerf")(batch)
    assert out["has_rotation"] is batch["has_rotation"]
    assert out["identity"] is batch["identity"]
    partial = {"image": batch["image"], "rotation": batch["rotation"]}
    out = RandomLineFlip(p=1.0)(partial)
    assert set(out) == {"image", "rotation"}


def test_reproducible_with_a_seed():
    batch, _ = synthetic_batch(8, 3)
    outs = []
    for _ in range(2):
        aug = build_augmentation("clerf", occlusion=0.5, generator=torch.Generator().manual_seed(5))
        torch.manual_seed(123)  # kornia's magnitudes come from the global RNG
        outs.append(aug(batch))
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k
    torch.manual_seed(9)
    a = GEOMETRIC["composed"]()(batch)
    torch.manual_seed(9)
    b = GEOMETRIC["composed"]()(batch)
    assert torch.equal(a["rotation"], b["rotation"]) and torch.equal(a["image"], b["image"])


def test_padding_modes_and_bad_options():
    batch, _ = synthetic_batch(2, 4)
    for mode in ("zeros", "border", "reflection"):
        out = RandomInPlaneRotation(p=1.0, min_degrees=40, max_degrees=50, padding_mode=mode)(batch)
        corner = out["image"][:, :, 0, 0]
        if mode == "zeros":
            assert torch.equal(corner, torch.zeros_like(corner))
        else:
            assert (corner > 0).any()
    with pytest.raises(ValueError, match="padding_mode"):
        RandomInPlaneRotation(padding_mode="wrap")
    with pytest.raises(ValueError, match="name"):
        build_augmentation("autoaugment")
    with pytest.raises(ValueError, match="p="):
        RandomLineFlip(p=1.5)
    with pytest.raises(ValueError, match="scale"):
        RandomScaleTranslate(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="shapes"):
        RandomOcclusion(shapes=("star",))


# ----------------------------------------------------------------------------- photometric
@pytest.mark.parametrize("name", ["clerf", "opnet", "opnet_gray"])
def test_photometric_changes_pixels_only(name):
    batch, _ = synthetic_batch(16, 5)
    torch.manual_seed(0)
    if name == "clerf":
        aug = clerf_photometric(generator=torch.Generator().manual_seed(1))
    else:
        aug = opnet_photometric(
            grayscale=name == "opnet_gray", generator=torch.Generator().manual_seed(1)
        )
    out = aug(batch)
    for k in batch:
        if k != "image":
            assert out[k] is batch[k], k
    assert out["image"].shape == batch["image"].shape
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert not torch.equal(out["image"], batch["image"])
    if name == "opnet_gray":
        img = out["image"]
        assert torch.allclose(img[:, 0], img[:, 1]) and torch.allclose(img[:, 1], img[:, 2])


def test_grayscale_one_channel():
    img = torch.rand(3, 3, 8, 8)
    out = Grayscale(p=1.0, channels=1)({"image": img})
    assert out["image"].shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="channels=1"):
        Grayscale(p=0.5, channels=1)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_named_pipelines_keep_labels_consistent(name):
    batch, x = synthetic_batch(8, 6)
    torch.manual_seed(0)
    out = build_augmentation(name)(batch)
    assert out["image"].shape == batch["image"].shape
    # Whatever warp was applied, the landmarks determine it (a similarity): recover it from
    # the landmarks and check the rotation label agrees.
    src, dst = batch["landmarks_2d"].double(), out["landmarks_2d"].double()
    refl = torch.zeros(8, dtype=torch.bool)
    fitted = []
    for i in range(8):
        best = None
        for mirrored in (False, True):
            d = dst[i][PERM] if mirrored else dst[i]
            a = torch.cat([src[i], torch.ones(68, 1, dtype=torch.float64)], dim=1)
            sol = torch.linalg.lstsq(a, d).solution  # (3, 2)
            res = (a @ sol - d).norm()
            if best is None or res < best[0]:
                best = (res, sol, mirrored)
        m = torch.eye(3, dtype=torch.float64)
        m[:2, :] = best[1].T
        fitted.append(m)
        refl[i] = bool(torch.linalg.det(m[:2, :2]) < 0)
    warp = ImageWarp(torch.stack(fitted))
    check_consistency(batch, x, out, warp)


# ----------------------------------------------------------------------------- occlusion
def test_occlusion_flags_and_stays_in_face_box():
    batch, _ = synthetic_batch(32, 7)
    box = torch.tensor([10.0, 12.0, 30.0, 40.0]).expand(32, 4).clone()
    batch["box"] = box
    occ = RandomOcclusion(p=0.5, generator=torch.Generator().manual_seed(0))
    out = occ(batch)
    flag = out["occluded"]
    assert out["has_occluded"].all()
    assert 4 < int(flag.sum()) < 28
    diff = (out["image"] != batch["image"]).any(dim=1)  # (B, H, W)
    ys = torch.arange(SIZE)[:, None]
    xs = torch.arange(SIZE)[None, :]
    inside = (xs >= 10) & (xs <= 30) & (ys >= 12) & (ys <= 40)
    assert not diff[:, ~inside].any()
    assert diff[flag].flatten(1).any(dim=1).all()
    assert not diff[~flag].any()
    # landmarks under an occluder become invisible, others keep their visibility
    assert (out["landmarks_visible"] <= batch["landmarks_visible"]).all()
    for k in ("rotation", "landmarks_2d", "landmarks_3d", "box"):
        assert torch.equal(out[k], batch[k])
    again = RandomOcclusion(p=0.5, generator=torch.Generator().manual_seed(0))(batch)
    assert torch.equal(again["image"], out["image"]) and torch.equal(again["occluded"], flag)
    # an existing flag is OR-ed, not overwritten
    batch["occluded"] = torch.ones(32, dtype=torch.bool)
    batch["has_occluded"] = torch.zeros(32, dtype=torch.bool)
    out2 = RandomOcclusion(p=0.5, generator=torch.Generator().manual_seed(0))(batch)
    assert out2["occluded"].all()
    assert torch.equal(out2["has_occluded"], flag)


@pytest.mark.parametrize("shape", ["rectangle", "ellipse", "polygon"])
def test_occlusion_shapes(shape):
    img = torch.full((8, 3, 32, 32), 0.5)
    out = RandomOcclusion(
        p=1.0,
        shapes=(shape,),
        fills=("color",),
        num_shapes=(1, 1),
        area=(0.2, 0.2),
        generator=torch.Generator().manual_seed(1),
    )({"image": img})
    covered = (out["image"] != img).any(dim=1).float().mean(dim=(1, 2))
    # one shape of about 20 % of the (whole-image) face box: covered area in a sane range
    assert (covered > 0.02).all() and (covered < 0.3).all()


def test_face_boxes_fallbacks():
    img = torch.zeros(3, 3, 20, 20)
    lm = torch.rand(3, 68, 2) * 5 + 4
    b = face_boxes(
        {"image": img, "landmarks_2d": lm, "has_landmarks_2d": torch.tensor([True, False, True])}
    )
    torch.testing.assert_close(b[1], torch.tensor([0.0, 0.0, 19.0, 19.0]))
    torch.testing.assert_close(b[0], torch.cat([lm[0].amin(0), lm[0].amax(0)]))


def test_color_jitter_matches_pil_enhance():
    """RandomColorJitter has PIL ImageEnhance semantics (brightness, contrast, colour)."""
    from PIL import Image, ImageEnhance

    from hpelib.data.transforms import RandomColorJitter

    g = torch.Generator().manual_seed(0)
    img = torch.randint(70, 180, (1, 3, 16, 16), generator=g, dtype=torch.uint8)  # no clipping
    jitter = RandomColorJitter(0.3, 0.3, 0.3, p=1.0, generator=torch.Generator().manual_seed(2))
    out = jitter({"image": img.float() / 255.0, "rotation": torch.eye(3)[None]})
    g2 = torch.Generator().manual_seed(2)
    torch.rand((1,), generator=g2, dtype=torch.float64)  # the per-sample "apply?" draw comes first
    f = 1.0 + torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64) * (
        2.0 * torch.rand((1, 3), generator=g2, dtype=torch.float64) - 1.0
    )
    pil = Image.fromarray(img[0].permute(1, 2, 0).numpy())
    pil = ImageEnhance.Brightness(pil).enhance(float(f[0, 0]))
    pil = ImageEnhance.Contrast(pil).enhance(float(f[0, 1]))
    pil = ImageEnhance.Color(pil).enhance(float(f[0, 2]))
    ref = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255.0
    # PIL rounds to uint8 after each step and its contrast mean is an integer
    assert (out["image"][0] - ref).abs().max() < 4 / 255
    assert torch.equal(out["rotation"], torch.eye(3)[None])


def test_full_range_rotates_every_sample_without_black_corners():
    batch, _ = synthetic_batch(16, 6)
    batch["image"] = torch.ones_like(batch["image"])  # any zero pixel out would be padding
    torch.manual_seed(1)
    out = build_augmentation("full_range")(batch)
    # Every label moved (in-plane angle uniform in +/-180 degrees, never left at 0)...
    moved = hr.geodesic_distance(out["rotation"].double(), batch["rotation"].double())
    mirrored = torch.linalg.det(out["rotation"].double()) < 0  # never: labels stay rotations
    assert not mirrored.any() and (moved > 1e-4).all()
    # ...and reflection padding leaves no black corners whose shape would leak the angle.
    assert torch.allclose(out["image"], torch.ones_like(out["image"]), atol=1e-5)


# ------------------------------------------------------------------ noise on grey images
OPNET_NOISE_LEVELS = (4.0, 16.0, math.hypot(4.0, 16.0))  # of 255: either, or both


def _noise_levels_of_grey_images(out: torch.Tensor, clean_grey: torch.Tensor) -> list[float]:
    """Per image: std (of 255) of the noise in the grey value; images left clean omitted."""
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    noise = (out[:, 0] - clean_grey[:, 0]).flatten(1).double()
    std = noise.std(dim=1) * 255
    return [float(s) for s in std if s > 0.5]


def _assert_opnet_sigmas(levels: list[float]) -> None:
    # 64 x 64 pixels per image: the std is estimated within about 1 % (4 % allowed).
    assert levels, "no image got noise"
    for s in levels:
        nearest = min(OPNET_NOISE_LEVELS, key=lambda ref: abs(ref - s))
        assert abs(s / nearest - 1) < 0.04, (s, levels)
    assert any(s < 8 for s in levels) and any(s > 12 for s in levels), levels


def _flat_colour_batch(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    from kornia.color import rgb_to_grayscale

    colour = torch.tensor([0.62, 0.41, 0.33]).view(1, 3, 1, 1)
    image = colour.expand(n, 3, 64, 64).contiguous()
    return image, rgb_to_grayscale(image)


def test_opnet_noise_sigma_holds_in_the_grey_image():
    """OpNet's noise (sigma 4 and 16 of 255) must have these sigmas in the grey image the
    model sees: grey first, then noise (not RGB noise averaged to 0.668 sigma by the luma)."""
    from hpelib.data.datamodule import HPEDataModule

    image, clean_grey = _flat_colour_batch()
    torch.manual_seed(0)
    aug = opnet_photometric(grayscale=True, op_probability=0.0, generator=torch.Generator().manual_seed(2))
    _assert_opnet_sigmas(_noise_levels_of_grey_images(aug({"image": image})["image"], clean_grey))
    # The datamodule's `grayscale: true` with the RGB preset (`augmentation: opnet`'s
    # photometric part): converted before the augmentation, so the same sigmas.
    dm = HPEDataModule(
        augmentation=opnet_photometric(op_probability=0.0, generator=torch.Generator().manual_seed(2)),
        normalize="none",
        grayscale=True,
    )
    torch.manual_seed(0)
    out = dm.prepare_images({"image": (image * 255).round().to(torch.uint8)}, train=True)["image"]
    quantised = (image * 255).round() / 255
    from kornia.color import rgb_to_grayscale

    _assert_opnet_sigmas(_noise_levels_of_grey_images(out, rgb_to_grayscale(quantised)))


def test_gaussian_noise_shared_on_grey_independent_on_colour():
    from hpelib.data.transforms.photometric import RandomGaussianNoise

    torch.manual_seed(0)
    grey = torch.full((4, 3, 64, 64), 0.5)
    colour = torch.rand(4, 3, 64, 64) * 0.5 + 0.25
    noise = RandomGaussianNoise(std=0.05, p=1.0)
    g = noise({"image": grey})["image"]
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 0], g[:, 2])
    assert abs(float((g - grey).std()) / 0.05 - 1) < 0.03
    c = noise({"image": colour})["image"] - colour
    assert float(torch.corrcoef(c[:, :2].transpose(0, 1).reshape(2, -1))[0, 1]).__abs__() < 0.05
    assert abs(float(c.std()) / 0.05 - 1) < 0.03
    one = noise({"image": torch.full((2, 1, 32, 32), 0.5)})["image"]
    assert one.shape == (2, 1, 32, 32) and abs(float(one.std()) / 0.05 - 1) < 0.05
    with pytest.raises(ValueError, match="std"):
        RandomGaussianNoise(std=-1.0)
