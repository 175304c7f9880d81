"""CLERF's SA / FA / occluded test-set variants (hpelib.data.variants)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from hpelib.data.transforms import MULTIPIE68_MIRROR_PERMUTATION
from hpelib.data.variants import FAVariant, OccludedVariant, SAVariant, item_generator
from hpelib.rotation import flip_across_line, geodesic_distance, rotate_inplane

S = 40
PERM = torch.tensor(MULTIPIE68_MIRROR_PERMUTATION)
FX = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))


def _rotation(g: torch.Generator) -> torch.Tensor:
    q = torch.randn(4, generator=g, dtype=torch.float64)
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )


class PointCloudFaces(Dataset):
    """Items with a random rotation, head points X and their exact weak-perspective landmarks."""

    def __init__(self, n: int = 6) -> None:
        self.items, self.points = [], []
        for i in range(n):
            g = torch.Generator().manual_seed(100 + i)
            r = _rotation(g)
            x = torch.randn(68, 3, generator=g, dtype=torch.float64)
            x -= x.mean(0)
            cam = 4.0 * x @ r.T
            lm = cam[:, :2] + (S - 1) / 2
            self.points.append(x)
            self.items.append(
                {
                    "image": torch.randint(0, 256, (3, S, S), generator=g, dtype=torch.uint8),
                    "rotation": r.float(),
                    "landmarks_2d": lm.float(),
                    "landmarks_visible": torch.rand(68, generator=g) < 0.8,
                    "landmarks_3d": torch.cat([lm, cam[:, 2:]], dim=-1).float(),
                    "box": torch.tensor([8.0, 6.0, 30.0, 33.0]),
                    "head_center": torch.tensor([(S - 1) / 2, (S - 1) / 2]),
                    "head_size": torch.tensor(20.0),
                    "index": torch.tensor(i),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def _fit_error(r: torch.Tensor, x: torch.Tensor, pts: torch.Tensor) -> float:
    proj = (x @ r.double().T)[:, :2]
    p0, q0 = proj - proj.mean(0), pts.double() - pts.double().mean(0)
    s = (p0 * q0).sum() / (p0 * p0).sum()
    return float((s * p0 - q0).norm(dim=-1).max())


def _check_item(base: dict, item: dict, x: torch.Tensor, rot_deg: float, flip_deg: float) -> None:
    r = base["rotation"].double()
    expected = flip_across_line(rotate_inplane(r, math.radians(rot_deg)), math.radians(flip_deg))
    torch.testing.assert_close(item["rotation"].double(), expected, atol=1e-5, rtol=0)
    # reflected once: the permuted-back landmarks are explained by R' and Fx X
    lm = item["landmarks_2d"][PERM]
    assert _fit_error(item["rotation"], x @ FX, lm) < 1e-3
    assert _fit_error(base["rotation"], x @ FX, lm) > 0.3  # the stale label does not fit
    assert torch.equal(item["landmarks_visible"][PERM], base["landmarks_visible"])
    assert item["image"].dtype == torch.uint8 and item["image"].shape == base["image"].shape
    assert torch.equal(item["index"], base["index"])


def test_sa_variant_labels_and_determinism():
    ds = PointCloudFaces()
    sa = SAVariant(ds)
    assert len(sa) == len(ds)
    for i in range(len(ds)):
        item = sa[i]
        _check_item(ds[i], item, ds.points[i], -10.0, 85.0)
        assert torch.equal(item["image"], sa[i]["image"])


def test_sa_image_moves_like_the_label():
    """A bright dot at p ends where the SA warp sends p: 10 degrees clockwise, then the
    reflection across the 85-degree line (almost a left-right mirror)."""
    img = torch.zeros(3, S, S, dtype=torch.uint8)
    img[:, 10, 30] = 255  # (x=30, y=10): upper right
    base = {"image": img, "rotation": torch.eye(3), "head_center": torch.tensor([30.0, 10.0])}
    out = SAVariant([base])[0]
    c = (S - 1) / 2
    a = math.radians(-10.0)  # displayed CCW angle: y-down rotation by -a
    dx, dy = 30 - c, 10 - c
    rx, ry = math.cos(a) * dx + math.sin(a) * dy, -math.sin(a) * dx + math.cos(a) * dy
    t = math.radians(85.0)
    d = torch.tensor([math.cos(t), -math.sin(t)], dtype=torch.float64)  # line direction
    v = torch.tensor([rx, ry], dtype=torch.float64)
    refl = 2 * (v @ d) * d - v + c
    torch.testing.assert_close(out["head_center"].double(), refl, atol=1e-4, rtol=0)
    w = out["image"][0].double()
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    centroid = torch.stack([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    torch.testing.assert_close(centroid, refl, atol=0.15, rtol=0)
    assert refl[0] < c  # it moved to the left half


def test_fa_variant_labels_and_determinism():
    ds = PointCloudFaces()
    fa = FAVariant(ds, seed=3)
    angles = [fa.angles(i) for i in range(len(ds))]
    for i, (rot, flip) in enumerate(angles):
        assert -180 <= rot <= 180 and 0 <= flip <= 90
        _check_item(ds[i], fa[i], ds.points[i], rot, flip)
    again = FAVariant(ds, seed=3)
    for i in range(len(ds)):
        a, b = fa[i], again[i]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert angles != [FAVariant(ds, seed=4).angles(i) for i in range(len(ds))]
    assert len(set(angles)) == len(angles)


@pytest.mark.parametrize("variant", ["SA", "FA"])
def test_geodesic_distance_invariant(variant):
    """CLERF Theorem 3.1: the same transform keeps the distance between two poses."""
    ds = PointCloudFaces()
    for k in range(len(ds)):
        wrapper = SAVariant(ds) if variant == "SA" else FAVariant(ds, seed=1)
        warp = wrapper.warp_for(k, S, S)
        ri, rj = ds[0]["rotation"].double()[None], ds[k]["rotation"].double()[None]
        before = geodesic_distance(ri, rj)
        after = geodesic_distance(warp.apply_rotation(ri), warp.apply_rotation(rj))
        torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    sa = SAVariant(ds)
    for i, j in [(0, 1), (2, 5), (3, 4)]:
        before = geodesic_distance(ds[i]["rotation"].double(), ds[j]["rotation"].double())
        after = geodesic_distance(sa[i]["rotation"].double(), sa[j]["rotation"].double())
        assert abs(float(after - before)) < 1e-5


def test_occluded_variant():
    ds = PointCloudFaces()
    occ = OccludedVariant(ds, seed=0)
    for i in range(len(ds)):
        base, item = ds[i], occ[i]
        assert bool(item["occluded"])
        assert item["image"].dtype == torch.uint8
        changed = (item["image"] != base["image"]).any(dim=0)
        assert changed.any()
        x0, y0, x1, y1 = base["box"].tolist()
        ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        assert not changed[~inside].any()
        for k in ("rotation", "landmarks_2d", "box"):
            assert torch.equal(item[k], base[k])
        assert (item["landmarks_visible"] <= base["landmarks_visible"]).all()
        assert torch.equal(item["image"], occ[i]["image"])
    assert not torch.equal(OccludedVariant(ds, seed=1)[0]["image"], occ[0]["image"])
    # combined variant: occluded SA
    combo = OccludedVariant(SAVariant(ds), seed=0)[2]
    assert bool(combo["occluded"])
    torch.testing.assert_close(combo["rotation"], SAVariant(ds)[2]["rotation"])


def test_item_generator_and_bad_inputs():
    a = torch.rand(3, generator=item_generator(0, 5))
    assert torch.equal(a, torch.rand(3, generator=item_generator(0, 5)))
    assert not torch.equal(a, torch.rand(3, generator=item_generator(0, 6)))
    with pytest.raises(ValueError, match="sample dicts"):
        SAVariant([torch.zeros(3)])[0]
    with pytest.raises(ValueError, match="rotation_range"):
        FAVariant([], rotation_range=(10.0, -10.0))
    with pytest.raises(ValueError, match="shapes"):
        OccludedVariant([], shapes=("star",))
