"""OpNet HDF5 files in the reference layout (OpenTrack's ``dsprocess_*.py``): ``coords`` holds
the head centre and the projected head RADIUS, ``pt3d_68`` depth is relative to that centre.

A file written here with the OpNet model's own equation must give labels that the model can
fit exactly: ``landmarks_3d = [x, y, 0] + size * R @ keypoints(shape)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpelib.data import collate_samples
from hpelib.data.datasets import OpNetHDF5
from hpelib.data.datasets.base import LANDMARK_Z_COLUMNS
from hpelib.methods.opnet import OpNet
from hpelib.rotation import opnet_quaternion_from_rotation, random_rotation

h5py = pytest.importorskip("h5py")

CENTRES = np.array([[30.0, 33.0], [28.0, 30.0], [34.0, 31.0]])  # image pixels
RADII = np.array([12.0, 14.0, 10.0])  # projected head radius, image pixels


@pytest.fixture(scope="module")
def module() -> OpNet:
    torch.manual_seed(0)
    return OpNet(backbone="test_resnet", num_shape_params=4)


def _write_reference_file(
    path: Path, module: OpNet
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    n = len(RADII)
    rot = random_rotation(n, generator=torch.Generator().manual_seed(3)).double()
    shape = torch.randn(n, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        local = module.model.keypoints(shape).double()  # (n, 68, 3) head frame, head radii
    centre3 = np.concatenate([CENTRES, np.zeros((n, 1))], axis=1)
    # Reference pt3d_68: image x/y, depth relative to the head centre of coords.
    pt3d = centre3[:, None] + RADII[:, None, None] * (local @ rot.mT).numpy()
    # A square face box around the landmarks, on whole pixels (the crop is square, so one
    # scale maps x, y and depth; the loaders crop at int()).
    lo, hi = pt3d[..., :2].min(1), pt3d[..., :2].max(1)
    mid, half = (lo + hi) / 2, np.ceil((hi - lo).max(1) / 2 + 1)[:, None]
    roi = np.concatenate([np.floor(mid) - half, np.floor(mid) + half], axis=1)
    with h5py.File(path, "w") as f:
        f["images"] = np.full((n, 64, 64), 100, np.uint8)
        f["quats"] = opnet_quaternion_from_rotation(rot).numpy()
        f["coords"] = np.concatenate([CENTRES, RADII[:, None]], axis=1)
        f["rois"] = roi
        f["pt3d_68"] = pt3d.astype(np.float32)  # (N, 68, 3)
    return rot.float(), shape, pt3d


def test_coords_box_spans_the_head_and_size_is_the_diameter(tmp_path: Path, module: OpNet) -> None:
    path = tmp_path / "ref.h5"
    _write_reference_file(path, module)
    size = 32
    ds = OpNetHDF5(path, image_size=size, box_source="coords")
    for i, (c, r) in enumerate(zip(CENTRES, RADII, strict=True)):
        np.testing.assert_allclose(ds._box[i], [c[0] - r, c[1] - r, c[0] + r, c[1] + r])
        s = ds[i]
        # The crop is the head's 2r x 2r square: the head fills it.
        torch.testing.assert_close(s["box"], torch.tensor([0.0, 0.0, size, size]))
        torch.testing.assert_close(s["head_size"], torch.tensor(float(size)))
        torch.testing.assert_close(s["head_center"], torch.tensor([size / 2, size / 2]))
    ds.close()


@pytest.mark.parametrize("box_source", ["coords", "rois"])
def test_labels_fit_the_opnet_model_equation(
    tmp_path: Path, module: OpNet, box_source: str
) -> None:
    """Size target = head radius and depth origin = head centre: the model's landmark
    equation reproduces the loaded labels and the shape parameters come back."""
    path = tmp_path / "ref.h5"
    rot, shape, pt3d = _write_reference_file(path, module)
    ds = OpNetHDF5(path, image_size=48, box_source=box_source)
    # Depth is kept as stored (relative to the head centre), not re-centred per item.
    z = ds.index[list(LANDMARK_Z_COLUMNS)].to_numpy(np.float64)
    np.testing.assert_allclose(z, pt3d[..., 2], atol=1e-4)
    batch = collate_samples([ds[i] for i in range(len(ds))])
    ds.close()
    t = module.targets(batch)
    xy, radius = t["xy"][0], t["size"][0]
    with torch.no_grad():
        model_lm = torch.cat([xy, torch.zeros_like(xy[:, :1])], -1)[:, None] + radius[:, None] * (
            module.model.keypoints(shape) @ rot.mT
        )
    lm, dims = t["landmarks"]
    assert dims.all()
    torch.testing.assert_close(lm, model_lm, atol=2e-3, rtol=0)
    got, mask = module._shape_target(batch, t, module.model.keypoints.num_params)
    assert mask.all()
    torch.testing.assert_close(got, shape, atol=2e-3, rtol=0)
