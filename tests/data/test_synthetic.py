"""Tests of hpelib.data.synthetic: the renderer agrees with the rotation library's label math,
and the datasets are reproducible, disjoint and correctly labelled."""

from __future__ import annotations

import math

import kornia
import pandas as pd
import pytest
import torch

from hpelib.data.sample import collate_samples
from hpelib.data.synthetic import (
    SceneConfig,
    SyntheticAnchorPositives,
    SyntheticHeads,
    SyntheticPairs,
    clerf_roll_free,
    default_scene,
    render_heads,
    sample_identity_params,
    sample_scenes,
    write_table_dataset,
)
from hpelib.rotation import (
    ImageWarp,
    flip_across_line,
    is_rotation_matrix,
    rotate_inplane,
    rotation_from_euler_clerf,
    rotation_z,
)

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    # The renders here are small; on a loaded 2-core machine intra-op threads spend more
    # time waiting for each other than rendering (20x slower measured), so use one.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _pose() -> torch.Tensor:
    # Clearly off-axis (yaw 40, pitch 25, roll 10 degrees) so wrong label rules show.
    ang = torch.tensor([40.0, 25.0, 10.0]) * math.pi / 180
    return rotation_from_euler_clerf(ang[0], ang[1], ang[2])[None]


def _render(r: torch.Tensor, light: torch.Tensor) -> dict[str, torch.Tensor]:
    params = sample_identity_params([3], seed=0)
    scene = default_scene(r)
    scene["light"] = light[None].float()
    return render_heads(params, scene, SIZE, supersample=2)


def _agreement(warped: dict, fresh: dict) -> tuple[float, float]:
    """Mean abs difference (0..255) inside both head masks (eroded), and mask IoU."""
    m1, m2 = warped["mask"], fresh["head_mask"][0]
    inter = (m1 & m2).float()
    iou = float(inter.sum() / (m1 | m2).float().sum())
    core = kornia.morphology.erosion(inter[None, None], torch.ones(3, 3))[0, 0] > 0.5
    diff = (warped["image"].float() - fresh["image"][0].float()).abs().mean(0)
    return float(diff[core].mean()), iou


def _warp_render(out: dict, warp: ImageWarp) -> dict:
    img = kornia.geometry.transform.warp_affine(
        out["image"].float(), warp.affine, (SIZE, SIZE), align_corners=True
    )[0]
    mask = kornia.geometry.transform.warp_affine(
        out["head_mask"].float()[:, None], warp.affine, (SIZE, SIZE), align_corners=True
    )[0, 0]
    return {"image": img, "mask": mask > 0.5}


def _o3(warp: ImageWarp) -> torch.Tensor:
    o3 = torch.eye(3)
    o3[:2, :2] = warp.linear[0]
    return o3


@pytest.mark.parametrize("phi_deg", [30.0, 90.0, 145.0, -60.0])
def test_inplane_rotation_matches_fresh_render(phi_deg: float) -> None:
    r = _pose()
    light = torch.nn.functional.normalize(torch.tensor([0.5, -0.4, -0.75]), dim=0)
    out = _render(r, light)
    phi = torch.tensor([phi_deg * math.pi / 180])
    center = torch.full((1, 2), (SIZE - 1) / 2)
    warp = ImageWarp.rotation(phi, center)
    label = warp.apply_rotation(r)
    assert torch.allclose(label, rotate_inplane(r, phi), atol=1e-6)
    warped = _warp_render(out, warp)
    light2 = _o3(warp) @ light  # the scene rotates with the camera, light included
    err, iou = _agreement(warped, _render(label, light2))
    # Naive "roll += phi": spin the head about its own z axis instead of the camera's.
    naive = r @ rotation_z(-phi)
    err_naive, iou_naive = _agreement(warped, _render(naive, light2))
    assert iou > 0.95 and err < 6.0, (iou, err)
    assert iou_naive < iou - 0.03 and err_naive > 2 * err, (iou_naive, err_naive, iou, err)


@pytest.mark.parametrize("theta_deg", [0.0, 30.0, 45.0, 120.0])
def test_flip_across_line_matches_fresh_render(theta_deg: float) -> None:
    r = _pose()  # the head model is exactly mirror-symmetric: flips have exact labels
    light = torch.nn.functional.normalize(torch.tensor([0.5, -0.4, -0.75]), dim=0)
    out = _render(r, light)
    theta = torch.tensor([theta_deg * math.pi / 180])
    warp = ImageWarp.flip(theta, torch.full((1, 2), (SIZE - 1) / 2))
    label = warp.apply_rotation(r)
    assert torch.allclose(label, flip_across_line(r, theta), atol=1e-6)
    assert is_rotation_matrix(label).all()
    warped = _warp_render(out, warp)
    o3 = _o3(warp)
    light2 = o3 @ light
    err, iou = _agreement(warped, _render(label, light2))
    # Naive flip: conjugating by the image reflection (no head-frame mirror) - a rotation,
    # but of the wrong head pose whenever the line is not vertical.
    naive = o3 @ r @ o3
    err_naive, iou_naive = _agreement(warped, _render(naive, light2))
    assert iou > 0.95 and err < 6.0, (iou, err)
    assert err_naive > 2 * err or iou_naive < iou - 0.03, (iou_naive, err_naive, iou, err)


def test_mirror_symmetric_head_renders_mirrored_image() -> None:
    r = torch.eye(3)[None]
    out = render_heads(sample_identity_params([5]), default_scene(r), 48)
    img = out["image"][0].float()
    assert (img - img.flip(-1)).abs().max() <= 1.0


def test_determinism_and_seed() -> None:
    kw = dict(num_samples=40, image_size=32, occlusion_prob=0.5)
    a, b = SyntheticHeads(seed=1, **kw), SyntheticHeads(seed=1, **kw)
    c = SyntheticHeads(seed=2, **kw)
    for i in (0, 17, 39):
        for k, v in a[i].items():
            assert torch.equal(v, b[i][k]), k
    assert not torch.equal(a[0]["image"], c[0]["image"])
    # Item i does not depend on the dataset length nor on caching.
    short = SyntheticHeads(seed=1, num_samples=20, image_size=32, occlusion_prob=0.5, cache="none")
    assert torch.equal(short[17]["image"], a[17]["image"])
    assert torch.equal(short[17]["rotation"], a[17]["rotation"])


def test_splits_have_disjoint_identities_and_valid_labels() -> None:
    ids = {}
    for split in ("train", "val", "test"):
        ds = SyntheticHeads(num_samples=60, image_size=32, split=split, num_identities=10)
        batch = torch.stack([ds[i]["identity"] for i in range(len(ds))])
        ids[split] = set(batch.tolist())
        rots = torch.stack([ds[i]["rotation"] for i in range(len(ds))])
        assert is_rotation_matrix(rots, atol=1e-5).all()
    assert (
        not ids["train"] & ids["val"]
        and not ids["train"] & ids["test"]
        and not ids["val"] & ids["test"]
    )


def test_frontal_preset_and_landmark_consistency() -> None:
    ds = SyntheticHeads(num_samples=32, image_size=64, preset="frontal")
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.uint8
        assert torch.allclose(s["landmarks_3d"][:, :2], s["landmarks_2d"])
        assert torch.allclose(s["box"][:2], s["landmarks_2d"].amin(0))
        # Frontal heads face the camera: head z axis points away from it.
        assert s["rotation"][2, 2] > 0
    weak = SyntheticHeads(num_samples=8, image_size=32, camera="weak_perspective", num_threads=1)
    for i in range(len(weak)):
        assert torch.allclose(weak[i]["landmarks_3d"][:, :2], weak[i]["landmarks_2d"])
    assert weak[0]["head_size"] > 10
    vis = torch.stack([ds[i]["landmarks_visible"] for i in range(len(ds))]).float()
    assert vis.mean() > 0.6
    # Near-frontal heads see their nose tip (30) and both inner eye corners (39, 42).
    frontal = SyntheticHeads(num_samples=8, image_size=64, preset=(5.0, 5.0, 5.0))
    for i in range(len(frontal)):
        assert frontal[i]["landmarks_visible"][[30, 39, 42]].all()
        # Landmark 36 (subject's right eye) is on the image left.
        assert frontal[i]["landmarks_2d"][36, 0] < frontal[i]["landmarks_2d"][45, 0]
    # Facing away hides the face: landmarks become invisible.
    back = render_heads(
        sample_identity_params([0]),
        default_scene(
            rotation_z(torch.tensor([0.0])) @ torch.diag(torch.tensor([-1.0, 1.0, -1.0]))[None]
        ),
        48,
    )
    assert back["landmarks_visible"].float().mean() < 0.2


def test_pairs_share_identity() -> None:
    pairs = SyntheticPairs(num_pairs=12, image_size=32, num_identities=5)
    for j in range(len(pairs)):
        a = pairs[j]
        b = a["partner"]
        assert a["identity"] == b["identity"]
        assert torch.equal(a["shape_params"], b["shape_params"])
        assert not torch.equal(a["rotation"], b["rotation"])
    batch = collate_samples([pairs[0], pairs[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["partner"]["rotation"].shape == (2, 3, 3)


@pytest.mark.parametrize("mode", ["warp", "render"])
def test_anchor_positive_rotations_equal(mode: str) -> None:
    ds = SyntheticAnchorPositives(num_pairs=16, image_size=32, mode=mode)
    for j in range(len(ds)):
        a = ds[j]
        p = a["positive"]
        assert torch.allclose(a["rotation"], p["rotation"], atol=1e-5)
        assert not torch.equal(a["image"], p["image"])
    r = torch.stack([ds[j]["rotation"] for j in range(4)])
    base, roll = clerf_roll_free(r)
    assert torch.allclose(rotation_z(roll) @ base, r, atol=1e-5)


def test_occlusion_flag_follows_mask() -> None:
    ds = SyntheticHeads(
        num_samples=64, image_size=32, preset="frontal", occlusion_prob=0.8, with_masks=True
    )
    clean = SyntheticHeads(num_samples=16, image_size=32, preset="frontal")
    frac = torch.stack([ds[i]["occlusion_fraction"] for i in range(len(ds))])
    flag = torch.stack([ds[i]["occluded"] for i in range(len(ds))])
    masks = torch.stack([ds[i]["occlusion_mask"] for i in range(len(ds))])
    assert torch.equal(flag, frac >= SceneConfig().occluded_threshold)
    assert flag.float().mean() > 0.3
    assert (masks.flatten(1).sum(1)[flag] > 0).all()
    assert not any(bool(clean[i]["occluded"]) for i in range(len(clean)))


def test_writer_round_trip(tmp_path) -> None:
    ds = SyntheticHeads(num_samples=6, image_size=32)
    csv = write_table_dataset(ds, tmp_path)
    table = pd.read_csv(csv)
    assert len(table) == 6 and {
        "path",
        "x0",
        "r22",
        "identity",
        "occluded",
        "lmx_67",
        "lmy_0",
    } <= set(table.columns)
    from PIL import Image

    img = Image.open(tmp_path / table["path"][2])
    assert img.size == (32, 32)
    rot = torch.tensor(
        table.loc[2, [f"r{i}{j}" for i in range(3) for j in range(3)]].to_numpy(float)
    ).view(3, 3)
    assert torch.allclose(rot.float(), ds[2]["rotation"], atol=1e-6)


def test_disk_cache(tmp_path) -> None:
    a = SyntheticHeads(num_samples=8, image_size=32, cache="disk", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    b = SyntheticHeads(num_samples=8, image_size=32, cache="disk", cache_dir=tmp_path)
    assert torch.equal(a[3]["image"], b[3]["image"])


def test_scene_sampler_reproducible() -> None:
    s1 = sample_scenes(10, torch.Generator().manual_seed(4))
    s2 = sample_scenes(10, torch.Generator().manual_seed(4))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preset="sideways"), "preset"),
        (dict(image_size=8), "image_size"),
        (dict(split="dev"), "split"),
        (dict(cache="ram"), "cache"),
        (dict(camera="fisheye"), "camera"),
        (dict(occlusion_prob=1.5), "occlusion_prob"),
        (dict(num_samples=0), "num_samples"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    base = dict(num_samples=4, image_size=32)
    with pytest.raises(ValueError, match=match):
        SyntheticHeads(**{**base, **kwargs})
