"""Dataset loaders on files in their true formats (written here, or the shared real samples)."""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from hpelib.data import collate_samples
from hpelib.data.datasets import (
    AFLW2000,
    DATASETS,
    BIWINpz,
    BIWIRaw,
    DatasetError,
    OpNetHDF5,
    Pose300WLP,
    PoseTable,
    aflw2000_filter_mask,
    build_dataset,
    crop_rule_6drepnet,
    landmark_box,
    register_dataset,
)
from hpelib.rotation import (
    euler_300wlp_from_rotation,
    euler_to_rotation,
    opnet_quaternion_from_rotation,
    random_rotation,
    rotation_from_euler_300wlp,
    rotation_to_6drepnet_matrix,
)
from tests.data.writers import pt2d, table_dir, write_3ddfa, write_image

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"shared sample data not found at {path.resolve()}")
    return path


@pytest.fixture(autouse=True)
def _user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Index caches go to a temporary user cache dir, never into ~/.cache or the data folders.
    cache = tmp_path / "cache"
    monkeypatch.setenv("HPELIB_CACHE", str(cache))
    return cache


def _degrees(r: torch.Tensor) -> list[float]:
    return [math.degrees(float(a)) for a in euler_300wlp_from_rotation(r.double())]


@pytest.fixture
def w300lp_root(tmp_path: Path) -> Path:
    root = tmp_path / "300W_LP"
    write_3ddfa(root / "AFW", "AFW_134_1_0", (0.1, -0.3, 0.05))
    write_3ddfa(root / "AFW", "AFW_134_1_1", (0.1, -0.6, 0.05))
    write_3ddfa(root / "AFW_Flip", "AFW_134_1_0", (0.1, 0.3, -0.05))
    write_3ddfa(root / "HELEN", "HELEN_77_2_0", (-0.2, 0.5, 0.1), Shape_Para=np.ones((199, 1)))
    return root


# ----------------------------------------------------------------------- registry, helpers
def test_registry_names_and_unknown_name() -> None:
    for name in ("300wlp", "aflw2000", "biwi", "biwi_npz", "opnet_h5", "table"):
        assert name in DATASETS
    assert DATASETS["300w_lp"] is Pose300WLP
    with pytest.raises(ValueError, match="unknown dataset name 'nope'.*aflw2000"):
        build_dataset("nope")


def test_register_dataset_decorator_and_name_normalisation(tmp_path: Path) -> None:
    @register_dataset("My-Test-Set")
    class _Mine(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

    try:
        assert build_dataset("my_test_set", n=3).n == 3
        assert build_dataset("MY-TEST-SET", n=1).n == 1
    finally:
        DATASETS.pop("my_test_set")


def test_crop_rule_6drepnet_matches_reference_arithmetic() -> None:
    box = np.array([10.0, 20.0, 110.0, 120.0])
    # Test: k = 0.2; sequential updates as in the reference (x_max sees the new x_min).
    np.testing.assert_allclose(
        crop_rule_6drepnet(box, (200, 200), None), [-30.0, -20.0, 110 + 0.4 * 140, 120 + 0.12 * 140]
    )
    a = crop_rule_6drepnet(box, (200, 200), np.random.default_rng(5))
    b = crop_rule_6drepnet(box, (200, 200), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    k = (10 - a[0]) / (0.6 * 100)
    assert 0.2 <= k <= 0.4
    np.testing.assert_allclose(a[1], 20 - 2 * k * 100)


def test_landmark_box_ignores_missing_points() -> None:
    pts = np.array([[10, 20], [-1, 452], [30, 5], [np.nan, 1]])
    np.testing.assert_array_equal(landmark_box(pts), [10, 5, 30, 20])
    with pytest.raises(ValueError, match="no valid landmark"):
        landmark_box(np.full((3, 2), -1.0))


def test_aflw2000_filter_mask_is_inclusive_at_99() -> None:
    a = np.array([[0, 0, 99.0], [0, -99.01, 0], [np.nan, 0, 0], [-972, 0, 0]])
    np.testing.assert_array_equal(aflw2000_filter_mask(a), [True, False, False, False])


# ------------------------------------------------------------------------------- 300W-LP
def test_300wlp_labels_identity_and_sample_contract(w300lp_root: Path) -> None:
    ds = Pose300WLP(w300lp_root, image_size=32, train=False, shape_params=True)
    assert len(ds) == 4
    by_path = {p: i for i, p in enumerate(ds.index["path"])}
    i = by_path[os.path.join("AFW", "AFW_134_1_1.jpg")]
    s = ds[i]
    want = rotation_from_euler_300wlp(*torch.tensor([0.1, -0.6, 0.05], dtype=torch.float32))
    torch.testing.assert_close(s["rotation"], want.float(), atol=1e-6, rtol=0)
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.uint8
    # One original photo = one person, across views k and the _Flip folder.
    ids = {p: int(ds[j]["identity"]) for p, j in by_path.items()}
    assert len({ids[p] for p in ids if "AFW_134_1" in p}) == 1
    assert (
        ids[os.path.join("HELEN", "HELEN_77_2_0.jpg")]
        != ids[os.path.join("AFW", "AFW_134_1_0.jpg")]
    )
    # Landmarks and box are in crop pixels: the landmark box is the sample's box.
    lm = s["landmarks_2d"][s["landmarks_visible"]]
    box = s["box"]
    torch.testing.assert_close(
        torch.stack([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()]),
        box,
        atol=1e-4,
        rtol=0,
    )
    assert 0 < box[0] < box[2] < 32 and 0 < box[1] < box[3] < 32
    helen = ds[by_path[os.path.join("HELEN", "HELEN_77_2_0.jpg")]]
    assert helen["shape_params"].shape == (199,)
    batch = collate_samples([ds[j] for j in range(4)])
    assert batch["has_shape_params"].tolist().count(True) == 1


def test_300wlp_shared_sample(tmp_path: Path) -> None:
    root = _shared("fixtures/300W_LP")
    ds = Pose300WLP(root, train=False)
    assert len(ds) == 1
    pitch, yaw, roll = _degrees(ds[0]["rotation"])
    assert (pitch, yaw, roll) == pytest.approx((-7.58, -44.01, 3.21), abs=0.01)
    assert ds[0]["landmarks_visible"].all()


def test_300wlp_index_is_cached_and_invalidated(
    w300lp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Pose300WLP(w300lp_root)
    real = scipy.io.loadmat
    calls = []

    def counting(*args: object, **kwargs: object) -> dict:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.io, "loadmat", counting)
    second = Pose300WLP(w300lp_root)
    assert calls == []  # labels come from the index, not from loadmat
    torch.testing.assert_close(first._rotation, second._rotation)
    mat = w300lp_root / "AFW" / "AFW_134_1_0.mat"
    os.utime(mat, ns=(mat.stat().st_atime_ns, mat.stat().st_mtime_ns + 10**9))
    Pose300WLP(w300lp_root)
    assert len(calls) == 4  # touched file -> new key -> index rebuilt


def test_300wlp_index_can_live_next_to_the_data(w300lp_root: Path, _user_cache: Path) -> None:
    Pose300WLP(w300lp_root, cache="data")
    assert list((w300lp_root / ".hpelib_index").glob("300wlp-*.npz"))
    Pose300WLP(w300lp_root, cache=False)
    assert not _user_cache.exists() or not list(_user_cache.glob("*.npz"))


def test_300wlp_train_crop_jitter_is_seeded(w300lp_root: Path) -> None:
    a = Pose300WLP(w300lp_root, image_size=32, train=True, seed=7)
    b = Pose300WLP(w300lp_root, image_size=32, train=True, seed=7)
    c = Pose300WLP(w300lp_root, image_size=32, train=True, seed=8)
    assert torch.equal(a[0]["image"], b[0]["image"]) and torch.equal(a[0]["box"], b[0]["box"])
    assert not torch.equal(a[0]["box"], c[0]["box"])
    box0 = a[0]["box"].clone()
    a.set_epoch(1)
    assert not torch.equal(a[0]["box"], box0)
    test = Pose300WLP(w300lp_root, image_size=32, train=False)
    torch.testing.assert_close(
        test[0]["box"], Pose300WLP(w300lp_root, image_size=32, train=False)[0]["box"]
    )


def test_300wlp_bad_inputs(
    w300lp_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = w300lp_root / "LFPW"
    bad.mkdir()
    write_image(bad / "LFPW_9_1_0.jpg")
    scipy.io.savemat(bad / "LFPW_9_1_0.mat", {"pt2d": pt2d()})
    with pytest.raises(DatasetError, match=r"LFPW_9_1_0\.mat.*Pose_Para"):
        Pose300WLP(w300lp_root)
    with caplog.at_level(logging.WARNING, logger="hpelib.data"):
        ds = Pose300WLP(w300lp_root, on_invalid="skip")
    assert len(ds) == 4 and ds.num_skipped == 1
    assert "skipped 1 invalid" in caplog.text

    write_3ddfa(w300lp_root / "LFPW", "LFPW_9_1_0", (float("nan"), 0.0, 0.0))
    with pytest.raises(DatasetError, match=r"LFPW_9_1_0\.mat.*pitch is nan"):
        Pose300WLP(w300lp_root)
    write_3ddfa(w300lp_root / "LFPW", "LFPW_9_1_0", (0.0, math.radians(200), 0.0))
    with pytest.raises(DatasetError, match=r"LFPW_9_1_0\.mat.*yaw = 200"):
        Pose300WLP(w300lp_root)
    assert len(Pose300WLP(w300lp_root, angle_limit_deg=None)) == 5

    (w300lp_root / "LFPW" / "LFPW_9_1_0.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    ds = Pose300WLP(w300lp_root, angle_limit_deg=None)
    i = list(ds.index["path"]).index(os.path.join("LFPW", "LFPW_9_1_0.jpg"))
    with pytest.raises(DatasetError, match=r"cannot decode image .*LFPW_9_1_0\.jpg"):
        ds[i]

    write_image(w300lp_root / "LFPW" / "LFPW_5_1_0.jpg")  # image without label
    with pytest.raises(DatasetError, match=r"LFPW_5_1_0\.jpg: image has no \.mat"):
        Pose300WLP(w300lp_root, angle_limit_deg=None)

    empty = tmp_path / "empty"
    (empty / "AFW").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no files matching .*\.mat in .*empty"):
        Pose300WLP(empty)
    with pytest.raises(DatasetError, match="none of the folders"):
        Pose300WLP(tmp_path / "missing")


def test_300wlp_pt3d_box_from_landmarks_folder(w300lp_root: Path) -> None:
    lm = w300lp_root / "landmarks" / "AFW"
    lm.mkdir(parents=True)
    for stem in ("AFW_134_1_0", "AFW_134_1_1"):
        scipy.io.savemat(
            lm / f"{stem}_pts.mat", {"pts_3d": pt2d(20, 22, 44, 50).T, "pts_2d": pt2d().T}
        )
    ds = Pose300WLP(
        w300lp_root,
        subsets=["AFW"],
        box_source="pt3d_68",
        crop_rule="tight",
        train=False,
        image_size=64,
    )
    boxes = {p: ds._box[i] for i, p in enumerate(ds.index["path"])}
    np.testing.assert_allclose(boxes[os.path.join("AFW", "AFW_134_1_0.jpg")], [20, 22, 44, 50])
    # The _Flip item has no landmarks file: the original's box is mirrored (width 64).
    np.testing.assert_allclose(
        boxes[os.path.join("AFW_Flip", "AFW_134_1_0.jpg")], [64 - 44, 22, 64 - 20, 50]
    )


# ------------------------------------------------------------------------------ AFLW2000
@pytest.fixture(scope="module")
def aflw_dev(tmp_path_factory: pytest.TempPathFactory) -> tuple[AFLW2000, AFLW2000]:
    root = _shared("AFLW2000-dev")
    cache = tmp_path_factory.mktemp("aflw_cache")
    filtered = AFLW2000(root, cache=cache)
    everything = AFLW2000(root, cache=cache, filter_99=False)
    return filtered, everything


def test_aflw2000_dev_counts(aflw_dev: tuple[AFLW2000, AFLW2000]) -> None:
    filtered, everything = aflw_dev
    assert len(everything) == 1000
    assert len(filtered) == 979 and filtered.num_filtered == 21


def test_aflw2000_labels_equal_the_6drepnet_reading(aflw_dev: tuple[AFLW2000, AFLW2000]) -> None:
    ds = aflw_dev[1]
    root = ds.root
    for i in range(0, len(ds), 25):
        pose = scipy.io.loadmat(root / ds.index["label_file"][i])["Pose_Para"][0][:3]
        pitch, yaw, roll = (float(v) for v in pose)
        want = Rotation.from_euler("xyz", [pitch, yaw, roll]).as_matrix()
        got = rotation_to_6drepnet_matrix(ds._rotation[i].double()).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_aflw2000_crop_is_the_reference_crop(aflw_dev: tuple[AFLW2000, AFLW2000]) -> None:
    ds = aflw_dev[0]
    i = 3
    mat = scipy.io.loadmat(ds.root / ds.index["label_file"][i])
    pt2d = mat["pt2d"]
    ok = np.all(pt2d >= 0, axis=0)
    x_min, y_min = pt2d[0, ok].min(), pt2d[1, ok].min()
    x_max, y_max = pt2d[0, ok].max(), pt2d[1, ok].max()
    k = 0.2  # 6DRepNet AFLW2000 test crop
    x_min -= 2 * k * abs(x_max - x_min)
    y_min -= 2 * k * abs(y_max - y_min)
    x_max += 2 * k * abs(x_max - x_min)
    y_max += 0.6 * k * abs(y_max - y_min)
    img = Image.open(ds.image_path(i)).convert("RGB")
    ref = img.crop((int(x_min), int(y_min), int(x_max), int(y_max))).resize(
        (224, 224), Image.BILINEAR
    )
    s = ds[i]
    assert torch.equal(s["image"], torch.from_numpy(np.array(ref)).permute(2, 0, 1))
    # 3D landmarks: z into the scene, so the nose tip (30) is in front of the face's mean.
    assert s["landmarks_3d"][30, 2] < 0


def test_aflw2000_written_files_filter_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "AFLW2000"
    pt3d = np.concatenate([pt2d(), np.zeros((1, 68))]).astype(np.float32)
    write_3ddfa(root, "image00001", (0.1, 0.2, 0.3), pt3d_68=pt3d)
    write_3ddfa(root, "image00002", (0.1, 0.2, math.radians(-972)), pt3d_68=pt3d)
    ds = AFLW2000(root)
    assert len(ds) == 1 and ds.num_filtered == 1
    assert len(AFLW2000(root, filter_99=False)) == 2
    write_3ddfa(root, "image00003", (0.1, float("inf"), 0.3), pt3d_68=pt3d)
    with pytest.raises(DatasetError, match=r"image00003\.mat.*yaw is inf"):
        AFLW2000(root)
    ds = AFLW2000(root, on_invalid="skip")
    assert len(ds) == 1 and ds.num_skipped == 2
    with pytest.raises(DatasetError, match=r"nothing does not exist"):
        AFLW2000(tmp_path / "nothing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match=r"no files matching image\*\.mat.* in .*nothing"):
        AFLW2000(tmp_path / "nothing")


# ---------------------------------------------------------------------------------- BIWI
def test_biwi_shared_frame_figures() -> None:
    root = _shared("fixtures/BIWI")
    ds = BIWIRaw(root)
    assert len(ds) == 1
    pitch, yaw, roll = _degrees(ds[0]["rotation"])
    assert yaw == pytest.approx(3.29, abs=0.01)
    assert pitch == pytest.approx(7.61, abs=0.01)
    assert roll == pytest.approx(-1.57, abs=0.01)
    r_file = np.loadtxt(root / "01" / "frame_00003_pose.txt", max_rows=3)
    np.testing.assert_allclose(ds[0]["rotation"].numpy(), r_file, atol=1e-6)
    assert int(ds[0]["identity"]) == 1
    # The metric box sits on the face: its centre near the head in the 640 x 480 frame.
    hc = ds._head[0]
    assert 330 < hc[0] < 370 and 240 < hc[1] < 275 and 100 < hc[2] < 160


@pytest.fixture
def biwi_root(tmp_path: Path) -> Path:
    src = _shared("fixtures/BIWI") / "01"
    root = tmp_path / "hpdb"
    for s in range(1, 6):
        dst = root / f"{s:02d}"
        dst.mkdir(parents=True)
        for name in ("frame_00003_rgb.png", "frame_00003_pose.txt", "rgb.cal"):
            shutil.copy(src / name, dst / name)
    return root


def test_biwi_subject_split_is_fixed_and_disjoint(biwi_root: Path) -> None:
    train = BIWIRaw(biwi_root, split="train", image_size=16)
    test = BIWIRaw(biwi_root, split="test", image_size=16)
    assert set(train.subjects).isdisjoint(test.subjects)
    assert sorted(train.subjects + test.subjects) == ["01", "02", "03", "04", "05"]
    assert len(test.subjects) == 2  # round(0.3 * 5)
    assert BIWIRaw(biwi_root, split="test", image_size=16).subjects == test.subjects
    fixed = BIWIRaw(biwi_root, split="test", test_subjects=[2, 5], image_size=16)
    assert fixed.subjects == ["02", "05"]
    assert sorted(int(i) for i in fixed.index["identity"]) == [2, 5]
    with pytest.raises(ValueError, match="not among subjects"):
        BIWIRaw(biwi_root, split="test", test_subjects=[9])


def test_biwi_bad_inputs(biwi_root: Path, tmp_path: Path) -> None:
    (biwi_root / "03" / "frame_00003_pose.txt").write_text("1 0 0\n0 1\n")
    with pytest.raises(DatasetError, match=r"03.frame_00003_pose\.txt.*12 numbers"):
        BIWIRaw(biwi_root)
    assert len(BIWIRaw(biwi_root, on_invalid="skip")) == 4
    (biwi_root / "04" / "rgb.cal").unlink()
    with pytest.raises(DatasetError, match=r"rgb\.cal"):
        BIWIRaw(biwi_root, split="test", test_subjects=[4])
    with pytest.raises(DatasetError, match="no subject folders"):
        (tmp_path / "e").mkdir()
        BIWIRaw(tmp_path / "e")


def test_biwi_npz(tmp_path: Path) -> None:
    n = 5
    rgb = np.zeros((n, 24, 24, 3), np.uint8)
    rgb[..., 2] = 200  # blue in RGB
    pose = np.array([[10.0, -20.0, 5.0]] * n)  # yaw, pitch, roll
    pose[3] = [np.nan, 0, 0]
    path = tmp_path / "BIWI_test.npz"
    np.savez(path, image=rgb[..., ::-1], pose=pose)  # FSA-Net stores BGR
    with pytest.raises(DatasetError, match=r"BIWI_test\.npz#3.*yaw is nan"):
        BIWINpz(path)
    ds = BIWINpz(path, image_size=16, on_invalid="skip")
    assert len(ds) == 4 and ds.num_skipped == 1
    s = ds[0]
    assert s["image"].shape == (3, 16, 16)
    assert s["image"][2].float().mean() > 190 and s["image"][0].float().mean() < 5
    want = rotation_from_euler_300wlp(*torch.tensor(np.radians([-20.0, 10.0, 5.0])))
    torch.testing.assert_close(s["rotation"], want.float(), atol=1e-6, rtol=0)
    np.savez(path, image=rgb, pose=pose[:3])
    with pytest.raises(DatasetError, match="5 images but 3 poses"):
        BIWINpz(path)


# ------------------------------------------------------------------------------- OpNet h5
def test_opnet_hdf5(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    n = 4
    rot = random_rotation(n, generator=torch.Generator().manual_seed(0)).double()
    quats = opnet_quaternion_from_rotation(rot).numpy()
    pt = np.zeros((n, 3, 68))
    pt[:, :2] = pt2d(8, 8, 24, 28)[None]
    pt[:, 2] = np.arange(68)
    path = tmp_path / "opnet.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.full((n, 32, 32), 90, np.uint8)
        f["quats"] = quats
        f["coords"] = np.tile([16.0, 18.0, 20.0], (n, 1))
        f["rois"] = np.tile([4.0, 4.0, 28.0, 30.0], (n, 1))
        f["pt3d_68"] = pt  # (N, 3, 68) layout
        f["shapeparams"] = np.ones((n, 40), np.float32)
    ds = OpNetHDF5(path, image_size=16)
    s = ds[1]
    torch.testing.assert_close(s["rotation"], rot[1].float(), atol=1e-5, rtol=0)
    assert s["image"].shape == (3, 16, 16) and int(s["image"][0, 3, 3]) == 90
    assert s["shape_params"].shape == (40,) and s["landmarks_3d"].shape == (68, 3)
    torch.testing.assert_close(s["box"], torch.tensor([0.0, 0.0, 16.0, 16.0]))
    torch.testing.assert_close(s["head_center"], torch.tensor([8.0, 16 * 14 / 26]))
    pt_box = OpNetHDF5(path, image_size=16, box_source="pt3d_68")
    np.testing.assert_allclose(pt_box._box[0], [8, 8, 24, 28], atol=1e-9)
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers reopen the file
    assert torch.equal(clone[1]["image"], s["image"])
    for d in (ds, clone, pt_box):
        d.close()
    with h5py.File(path, "a") as f:
        del f["quats"]
        f["quats"] = quats[:3]
    with pytest.raises(DatasetError, match=r"opnet\.h5.*'quats' has 3 rows"):
        OpNetHDF5(path)
    with h5py.File(path, "a") as f:
        del f["quats"]
    with pytest.raises(DatasetError, match=r"missing dataset 'quats'"):
        OpNetHDF5(path)


# ---------------------------------------------------------------------------- table format
def test_table_with_angles_box_identity_landmarks(tmp_path: Path) -> None:
    root = table_dir(tmp_path)
    df = pd.DataFrame({
        "path": [f"img/{i}.png" for i in range(3)],
        "x0": [5.0, np.nan, 0.0], "y0": [5.0, np.nan, 0.0],
        "x1": [25.0, np.nan, 40.0], "y1": [25.0, np.nan, 30.0],
        "yaw": [10.0, 20.0, 30.0], "pitch": [0.0, -5.0, 5.0], "roll": [1.0, 2.0, 3.0],
        "identity": [3, 3, np.nan], "occluded": [0, 1, 0],
        **{f"lmx_{k}": [10.0, np.nan, np.nan] for k in range(68)},
        **{f"lmy_{k}": [15.0, np.nan, np.nan] for k in range(68)},
    })  # fmt: skip
    df.to_csv(root / "labels.csv", index=False)
    ds = PoseTable(root / "labels.csv", euler_convention="clerf", image_size=20)
    want = euler_to_rotation(torch.tensor([[10.0, 0.0, 1.0]]), "clerf", degrees=True)[0]
    torch.testing.assert_close(ds[0]["rotation"], want.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ds[0]["box"], torch.tensor([0.0, 0.0, 20.0, 20.0]))
    torch.testing.assert_close(ds[0]["landmarks_2d"][0], torch.tensor([5.0, 10.0]))
    assert "box" not in ds[1] and "landmarks_2d" not in ds[1]  # no box -> whole image
    assert [int(ds[i]["identity"]) for i in range(3)] == [3, 3, -1]
    assert bool(ds[1]["occluded"]) and not bool(ds[0]["occluded"])
    batch = collate_samples([ds[i] for i in range(3)])
    assert batch["has_landmarks_2d"].tolist() == [True, False, False]
    assert build_dataset("csv", table=root / "labels.csv", image_size=8)[2]["image"].shape == (
        3,
        8,
        8,
    )


def test_table_with_matrices_roundtrips_the_synthetic_writer(tmp_path: Path) -> None:
    writer = pytest.importorskip("hpelib.data.synthetic.writer")
    rot = random_rotation(3, generator=torch.Generator().manual_seed(1)).float()
    items = [
        {
            "image": torch.full((3, 24, 24), 10 * i, dtype=torch.uint8),
            "rotation": rot[i],
            "box": torch.tensor([2.0, 2.0, 20.0, 22.0]),
            "identity": torch.tensor(i),
        }
        for i in range(3)
    ]
    csv = writer.write_table_dataset(items, tmp_path / "syn")
    ds = PoseTable(csv, image_size=24)
    for i in range(3):
        torch.testing.assert_close(ds[i]["rotation"], rot[i], atol=1e-6, rtol=0)
        assert int(ds[i]["identity"]) == i


def test_table_bad_inputs(tmp_path: Path) -> None:
    root = table_dir(tmp_path)
    base = {
        "path": ["img/0.png", "img/1.png"],
        "pitch": [0.0, 1.0],
        "yaw": [0.0, 2.0],
        "roll": [0.0, 3.0],
    }
    pd.DataFrame({**base, "yaw": [0.0, np.nan]}).to_csv(root / "nan.csv", index=False)
    with pytest.raises(DatasetError, match=r"nan\.csv row 3: yaw is nan"):
        PoseTable(root / "nan.csv")
    assert len(PoseTable(root / "nan.csv", on_invalid="skip")) == 1
    pd.DataFrame({**base, "path": ["img/0.png", "img/zz.png"]}).to_csv(root / "m.csv", index=False)
    with pytest.raises(DatasetError, match=r"image img/zz\.png not found"):
        PoseTable(root / "m.csv")
    pd.DataFrame({**base, "x0": [1, 5], "y0": [1, 5], "x1": [9, 5], "y1": [9, 9]}).to_csv(
        root / "z.csv", index=False
    )
    with pytest.raises(DatasetError, match="zero area"):
        PoseTable(root / "z.csv")
    pd.DataFrame({"path": ["img/0.png"], "a": [1]}).to_csv(root / "nopose.csv", index=False)
    with pytest.raises(DatasetError, match="r00..r22 or pitch, yaw, roll"):
        PoseTable(root / "nopose.csv")
    with pytest.raises(ValueError, match="unknown Euler convention"):
        PoseTable(root / "nan.csv", euler_convention="xyz?")
    (root / "empty.csv").write_text("path,pitch,yaw,roll\n")
    with pytest.raises(DatasetError, match="has no rows"):
        PoseTable(root / "empty.csv")


def test_table_parquet_needs_pyarrow(tmp_path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        path = tmp_path / "t.parquet"
        path.write_bytes(b"PAR1")
        with pytest.raises(ImportError, match="pip install pyarrow"):
            PoseTable(path)
        return
    root = table_dir(tmp_path)
    pd.DataFrame({"path": ["img/0.png"], "pitch": [1.0], "yaw": [2.0], "roll": [3.0]}).to_parquet(
        root / "t.parquet"
    )
    assert len(PoseTable(root / "t.parquet")) == 1
