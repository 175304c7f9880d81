"""Out-of-plane synthesis of real faces (:mod:`hpelib.data.synthesis`): exact labels, landmarks
that land on their facial points in the rendered image, identity at zero increment,
visibility past profile, mirror equivariance, the rasterizer's depth test and the wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpelib.data.synthesis import (
    MeshError,
    OutOfPlaneViews,
    PoseIncrement,
    SynthesisError,
    build_face_mesh,
    rasterize,
    synthesize_view,
)
from hpelib.data.synthetic import SyntheticHeads
from hpelib.rotation import (
    euler_300wlp_from_rotation,
    geodesic_distance,
    is_rotation_matrix,
    mirror_horizontal,
    rotation_from_euler_300wlp,
    rotation_y,
)

SIZE = 64


@pytest.fixture(scope="module")
def heads() -> SyntheticHeads:
    # Weak-perspective renders: landmarks_3d are orthographic in x, y, as AFLW2000's pt3d_68.
    return SyntheticHeads(
        num_samples=8, image_size=SIZE, preset=(5.0, 5.0, 5.0), camera="weak_perspective",
        cache="none",
    )  # fmt: skip


def _yaw(deg: float) -> torch.Tensor:
    return rotation_y(torch.tensor(math.radians(deg), dtype=torch.float64)).float()


def _coordinate_image(size: int = SIZE) -> torch.Tensor:
    """A float image whose channels are each pixel's own centre (x, y): sampling the rendered
    view at a point says which source point is shown there."""
    c = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y, torch.zeros_like(x)])


def _landing_error(image: torch.Tensor, xy: torch.Tensor, source_xy: torch.Tensor) -> torch.Tensor:
    """``(N,)`` distance (source pixels) from each source point ``source_xy`` ``(N, 2)`` to the
    nearest source point the coordinate ``image`` shows at the pixel of ``xy`` ``(N, 2)`` or
    one of its 8 neighbours: the facial point is drawn within a pixel of where its moved
    landmark projects (a landmark on an outline has background in half its neighbourhood)."""
    _, h, w = image.shape
    best = torch.full((len(xy),), float("inf"))
    for dx in (-1.0, 0.0, 1.0):
        for dy in (-1.0, 0.0, 1.0):
            p = xy + torch.tensor([dx, dy])
            grid = (p / torch.tensor([w, h]) * 2 - 1).view(1, 1, -1, 2).float()
            shown = F.grid_sample(image[None], grid, mode="nearest", align_corners=False)[0, :2, 0].T
            best = torch.minimum(best, (shown - source_xy).norm(dim=1))
    return best


def _mirrored(sample: dict) -> dict:
    w = sample["image"].shape[-1]
    lm = sample["landmarks_3d"].clone()
    lm[:, 0] = w - lm[:, 0]
    hc = sample["head_center"].clone()
    hc[0] = w - hc[0]
    return {
        "image": sample["image"].flip(-1), "rotation": mirror_horizontal(sample["rotation"]),
        "landmarks_3d": lm, "head_center": hc,
    }  # fmt: skip


# ------------------------------------------------------------------------------ raster
def test_rasterizer_depth_test_keeps_the_nearer_triangle():
    # Two overlapping squares' worth of triangles; the second is nearer and must win.
    v = torch.tensor([
        [0.0, 0.0, 5.0], [8.0, 0.0, 5.0], [0.0, 8.0, 5.0],
        [0.0, 0.0, 1.0], [8.0, 0.0, 1.0], [0.0, 8.0, 1.0],
    ])  # fmt: skip
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    attr = torch.tensor([[1.0], [1.0], [1.0], [2.0], [2.0], [2.0]])
    out = rasterize(v, faces, attr, 8, 8)
    assert out.covered[0, 0] and not out.covered[7, 7]
    assert torch.all(out.attributes[out.covered] == 2.0)
    assert torch.allclose(out.depth[out.covered], torch.tensor(1.0))
    # Covered pixels: centres (j + 0.5, i + 0.5) with x + y <= 8: 36 of 64.
    assert int(out.covered.sum()) == 36
    # Reverse the depths: the other triangle wins.
    v[:3, 2], v[3:, 2] = 1.0, 5.0
    assert torch.all(rasterize(v, faces, attr, 8, 8).attributes[out.covered] == 1.0)


def test_rasterizer_interpolates_linearly():
    v = torch.tensor([[0.0, 0.0, 0.0], [16.0, 0.0, 0.0], [0.0, 16.0, 0.0], [16.0, 16.0, 0.0]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    out = rasterize(v, faces, v[:, :2].clone(), 16, 16)
    c = torch.arange(16.0) + 0.5
    y, x = torch.meshgrid(c, c, indexing="ij")
    assert out.covered.all()
    assert torch.allclose(out.attributes, torch.stack([x, y], -1), atol=1e-4)


# -------------------------------------------------------------------------- labels, views
def test_label_is_delta_times_rotation_and_the_head_is_rigid(heads):
    s = heads[0]
    # Any rotation (pitch, yaw and roll together), not only a turn about the vertical.
    angles = torch.tensor([0.2, 0.6, -0.15], dtype=torch.float64)
    delta = rotation_from_euler_300wlp(angles[0], angles[1], angles[2]).float()
    out = synthesize_view(s, delta=delta)
    assert torch.allclose(out["rotation"], delta @ s["rotation"], atol=1e-6)
    assert bool(is_rotation_matrix(out["rotation"]))
    # The moved landmarks are the same head points: head-frame coordinates unchanged.
    c = torch.tensor([*s["head_center"].tolist(), 0.0])
    before = (s["landmarks_3d"] - c) @ s["rotation"]
    after = (out["landmarks_3d"] - c) @ out["rotation"]
    assert torch.allclose(before, after, atol=1e-3)
    # target= gives the same view as the equivalent delta.
    again = synthesize_view(s, target=delta @ s["rotation"])
    assert torch.allclose(again["rotation"], out["rotation"], atol=1e-6)
    assert float((again["image"].float() - out["image"].float()).abs().mean()) < 0.05
    assert torch.allclose(out["landmarks_2d"], out["landmarks_3d"][:, :2])
    lo, hi = out["landmarks_2d"].amin(0), out["landmarks_2d"].amax(0)
    assert torch.allclose(out["box"], torch.cat([lo, hi]))


def test_zero_increment_returns_the_input(heads):
    s = heads[1]
    out = synthesize_view(s)
    assert out["image"].dtype == torch.uint8
    assert int((out["image"].int() - s["image"].int()).abs().max()) <= 1
    assert torch.allclose(out["landmarks_3d"], s["landmarks_3d"], atol=1e-4)
    assert torch.allclose(out["rotation"], s["rotation"])


@pytest.mark.parametrize("yaw_deg", [-40.0, 30.0])
def test_moved_landmarks_land_on_their_facial_points(heads, yaw_deg):
    # Texture = source coordinates: at each moved, visible landmark the rendered image must
    # show the source pixel of that same landmark.
    s = dict(heads[2])
    s["image"] = _coordinate_image()
    out = synthesize_view(s, delta=_yaw(yaw_deg))
    mesh = build_face_mesh(s["landmarks_3d"], s["rotation"], (SIZE, SIZE),
                           centre=np.array([*s["head_center"].tolist(), 0.0]))  # fmt: skip
    use = out["landmarks_visible"] & (mesh.landmark_vertex >= 0)
    assert int(use.sum()) >= 25
    err = _landing_error(out["image"], out["landmarks_2d"][use], s["landmarks_3d"][use, :2])
    assert float(err.median()) < 0.5 and float(err.max()) < 1.5, err
    # The check can fail: the un-moved positions do not show their landmarks.
    wrong = _landing_error(out["image"], s["landmarks_3d"][use, :2], s["landmarks_3d"][use, :2])
    assert float(wrong.median()) > 2.0


def test_visibility_flips_past_profile(heads):
    s = heads[3]
    frontal = synthesize_view(s)["landmarks_visible"]
    assert int(frontal.sum()) >= 60
    left, right = synthesize_view(s, delta=_yaw(100.0)), synthesize_view(s, delta=_yaw(-100.0))
    # Landmark 36 / 45: outer corners of the eyes on the image's left / right of a frontal face.
    assert bool(frontal[36]) and bool(frontal[45])
    assert bool(left["landmarks_visible"][36]) != bool(left["landmarks_visible"][45])
    assert bool(right["landmarks_visible"][36]) != bool(right["landmarks_visible"][45])
    assert bool(left["landmarks_visible"][36]) != bool(right["landmarks_visible"][36])
    # Past profile a landmark is visible only where its side of the head faces the camera.
    c = torch.tensor([*s["head_center"].tolist(), 0.0])
    side = ((s["landmarks_3d"] - c) @ s["rotation"])[:, 0]  # head-frame x
    for view in (left, right):
        vis = view["landmarks_visible"]
        toward = (view["landmarks_3d"][:, 2] < 0) & (side.abs() > 0.5 * side.abs().max())
        away = (view["landmarks_3d"][:, 2] > 0) & (side.abs() > 0.5 * side.abs().max())
        assert not bool(vis[away].any())
        assert bool(vis[toward].float().mean() > 0.7)


@pytest.mark.parametrize("yaw_deg", [120.0, 180.0])
def test_the_far_side_disappears_instead_of_smearing(heads, yaw_deg):
    # Turned away, no pixel may show the face: paint the (shrunk) hull of the eyes, nose and
    # mouth white on black; the turned view must have no white left.
    from scipy.spatial import Delaunay

    s = dict(heads[3])
    inner = s["landmarks_3d"][27:68, :2].double().numpy()
    mid = inner.mean(axis=0)
    hull = Delaunay(mid + 0.8 * (inner - mid))
    centres = _coordinate_image()[:2].reshape(2, -1).T.double().numpy()
    face = torch.from_numpy(hull.find_simplex(centres) >= 0).reshape(SIZE, SIZE)
    s["image"] = (face.to(torch.uint8) * 255).expand(3, SIZE, SIZE).contiguous()
    assert int(face.sum()) > 50  # the check can fail: the source shows the face
    out = synthesize_view(s, delta=_yaw(yaw_deg))
    assert int((out["image"][0] > 64).sum()) == 0
    central = list(range(27, 36)) + list(range(48, 68))  # nose and mouth
    assert not bool(out["landmarks_visible"][central].any())
    # ... while a smaller turn still shows it.
    assert int((synthesize_view(s, delta=_yaw(30.0))["image"][0] > 64).sum()) > 30


def test_mirrored_source_gives_the_mirrored_view(heads):
    s = heads[4]
    delta = _yaw(40.0)
    out = synthesize_view(s, delta=delta)
    mirror = synthesize_view(_mirrored(s), delta=mirror_horizontal(delta))
    assert torch.allclose(mirror["rotation"], mirror_horizontal(out["rotation"]), atol=1e-6)
    flipped = out["landmarks_2d"].clone()
    flipped[:, 0] = SIZE - flipped[:, 0]
    assert torch.allclose(mirror["landmarks_2d"], flipped, atol=1e-3)
    assert torch.equal(mirror["landmarks_visible"], out["landmarks_visible"])
    diff = (mirror["image"].float() - out["image"].flip(-1).float()).abs()
    # Equal up to float rounding (a grey level here and there); Delaunay could break ties
    # between co-circular points either way, so not bit for bit.
    assert float(diff.mean()) < 0.05 and float((diff > 8).float().mean()) < 0.002


def test_real_face_landmarks_land_on_their_points(shared_dir):
    from hpelib.data.datasets import AFLW2000

    ds = AFLW2000(shared_dir / "data" / "AFLW2000-dev", image_size=SIZE, box_source="pt3d_68",
                  cache="off")  # fmt: skip
    s = dict(ds[0])
    p, y, r = euler_300wlp_from_rotation(s["rotation"].double())
    s["image"] = _coordinate_image()
    target = PoseIncrement(max_yaw_deg=60.0, pitch_jitter_deg=0.0).sample_target(
        s["rotation"], np.random.default_rng(1)
    )
    out = synthesize_view(s, target=target)
    assert float(geodesic_distance(out["rotation"], target)) < 1e-5
    mesh = build_face_mesh(s["landmarks_3d"], s["rotation"], (SIZE, SIZE))
    use = out["landmarks_visible"] & (mesh.landmark_vertex >= 0)
    assert int(use.sum()) >= 20, (p, y, r)
    err = _landing_error(out["image"], out["landmarks_2d"][use], s["landmarks_3d"][use, :2])
    # Source pixels: a surface turned by ~60 degrees is compressed 2-3x in the view, so one
    # view pixel spans up to ~3 source pixels there.
    assert float(err.median()) < 0.5 and float(err.quantile(0.9)) < 1.5, err
    assert float(err.max()) < 3.5, err
    wrong = _landing_error(out["image"], s["landmarks_3d"][use, :2], s["landmarks_3d"][use, :2])
    assert float(wrong.median()) > 2.0


def test_bad_samples_are_clear_errors(heads):
    s = dict(heads[0])
    del s["landmarks_3d"]
    with pytest.raises(SynthesisError, match="landmarks_3d"):
        synthesize_view(s)
    with pytest.raises(SynthesisError, match="not both"):
        synthesize_view(heads[0], delta=torch.eye(3), target=torch.eye(3))
    with pytest.raises(MeshError, match="68 finite"):
        build_face_mesh(torch.full((68, 3), float("nan")), torch.eye(3), (SIZE, SIZE))


# ------------------------------------------------------------------- increments, wrapper
def test_pose_increment_towards_profile_and_uniform():
    rng = np.random.default_rng(0)
    src = _yaw(-30.0)  # internal convention: check the sign through the Euler decomposition
    src_yaw = float(euler_300wlp_from_rotation(src.double())[1])
    towards = PoseIncrement(max_yaw_deg=90.0, pitch_jitter_deg=5.0)
    uniform = PoseIncrement(mode="uniform", max_yaw_deg=60.0, pitch_jitter_deg=0.0)
    for _ in range(20):
        p, y, r = (float(a) for a in euler_300wlp_from_rotation(towards.sample_target(src, rng).double()))
        assert math.copysign(1, y) == math.copysign(1, src_yaw)
        assert abs(src_yaw) - 1e-6 <= abs(y) <= math.radians(90.0) + 1e-6
        assert abs(p) <= math.radians(5.0) + 1e-6
        _, y, _ = (float(a) for a in euler_300wlp_from_rotation(uniform.sample_target(src, rng).double()))
        assert abs(y) <= math.radians(60.0) + 1e-6
    with pytest.raises(ValueError, match="mode"):
        PoseIncrement(mode="sideways")  # type: ignore[arg-type]


def test_out_of_plane_views_wrapper(heads):
    views = OutOfPlaneViews(heads, views_per_image=2, seed=3)
    assert len(views) == 3 * len(heads)
    assert views.source_of(4) == (1, 1)
    first = views[0]
    assert int((first["image"].int() - heads[0]["image"].int()).abs().max()) <= 1
    a, b = views[1], views[1]
    assert torch.equal(a["image"], b["image"])
    assert float(geodesic_distance(a["rotation"], heads[0]["rotation"])) > 1e-3
    assert bool(is_rotation_matrix(a["rotation"]))
    views.set_epoch(1)
    assert not torch.allclose(views[1]["rotation"], a["rotation"])
    fixed = OutOfPlaneViews(heads, views_per_image=1, include_source=False,
                            resample_each_epoch=False)  # fmt: skip
    fixed.set_epoch(5)
    assert len(fixed) == len(heads)
    assert torch.equal(views.identity_of([0, 1, 2, 3]), heads.identity_of(torch.tensor([0, 0, 0, 1])))
    with pytest.raises(IndexError):
        views[len(views)]
    with pytest.raises(ValueError, match="views_per_image"):
        OutOfPlaneViews(heads, views_per_image=0, include_source=False)
    assert int(views[5]["index"]) == 5  # the wrapper's own index


class _NoDepth(torch.utils.data.Dataset):
    name = "flat"

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "rotation": torch.eye(3)}


def test_wrapper_rejects_a_dataset_without_3d_landmarks():
    with pytest.raises(SynthesisError, match="flat.*landmarks_3d"):
        OutOfPlaneViews(_NoDepth())


def test_expanded_dataset_written_once_to_disk_reads_back(heads, tmp_path):
    from hpelib.data.datasets import PoseTable
    from hpelib.data.synthetic import write_table_dataset

    views = OutOfPlaneViews(heads, views_per_image=1, include_source=False,
                            resample_each_epoch=False)  # fmt: skip
    csv = write_table_dataset(views, tmp_path / "expanded", limit=4)
    table = PoseTable(csv, image_size=SIZE, crop_rule="full")
    assert len(table) == 4
    for i in range(4):
        item, again = table[i], views[i]
        assert torch.allclose(item["rotation"], again["rotation"], atol=1e-5)
        assert int((item["image"].int() - again["image"].int()).abs().max()) <= 1
        assert torch.allclose(item["landmarks_2d"], again["landmarks_2d"], atol=1e-3)
