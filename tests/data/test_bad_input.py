"""Bad-input sweep: every kind of broken input gives a clear error (or a logged skip).

Each test writes real files in the dataset's true format (``scipy.io.savemat`` for ``.mat``,
PIL for images, pandas for CSV) and checks that the error is a specific exception whose
message names the offending file (or config option) and the problem. Where the library
documents a skip (``on_invalid="skip"``), the skip and its logged count are checked instead.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

from hpelib.data.datasets import AFLW2000, BIWINpz, BIWIRaw, DatasetError, Pose300WLP, PoseTable
from hpelib.data.datasets.base import angle_unit_mixup
from hpelib.methods import LECHPE
from hpelib.nn import BackboneNotFoundError, create_backbone
from hpelib.rotation import rotation_from_euler_300wlp
from tests.data.writers import pt2d, table_dir, write_3ddfa, write_image

POSE = (0.1, -0.2, 0.05)  # pitch, yaw, roll radians: well inside every range


@pytest.fixture(autouse=True)
def _user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Index caches go to a temporary folder, never into ~/.cache or the data folders.
    monkeypatch.setenv("HPELIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def aflw_root(tmp_path: Path) -> Path:
    """Two valid AFLW2000 items (``image00001``, ``image00002``)."""
    root = tmp_path / "AFLW2000"
    write_3ddfa(root, "image00001", POSE)
    write_3ddfa(root, "image00002", POSE)
    return root


def _table(root: Path, name: str = "labels.csv", **columns: list[object]) -> Path:
    """A pose table over ``img/0.png`` and ``img/1.png`` (valid unless ``columns`` override)."""
    base: dict[str, list[object]] = {
        "path": ["img/0.png", "img/1.png"],
        "pitch": [0.0, 1.0],
        "yaw": [0.0, 2.0],
        "roll": [0.0, 3.0],
    }
    path = root / name
    pd.DataFrame({**base, **columns}).to_csv(path, index=False)
    return path


def _identity_matrix_columns(r00_of_row_3: float) -> dict[str, list[object]]:
    """``r00 .. r22`` columns: identity matrices, ``r00`` of the second row (CSV row 3) set."""
    columns: dict[str, list[object]] = {
        f"r{i}{j}": [float(i == j)] * 2 for i in range(3) for j in range(3)
    }
    columns["r00"] = [1.0, r00_of_row_3]
    return columns


# ------------------------------------------------------------------------------ images
def test_corrupt_image_file_names_the_file(aflw_root: Path) -> None:
    (aflw_root / "image00002.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    ds = AFLW2000(aflw_root)  # labels are fine: the image is decoded per item
    with pytest.raises(DatasetError, match=r"cannot decode image .*image00002\.jpg"):
        ds[1]


def test_truncated_jpeg_names_the_file(aflw_root: Path) -> None:
    image = aflw_root / "image00002.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # a valid JPEG header, half the scan data
    ds = AFLW2000(aflw_root)
    with pytest.raises(DatasetError, match=r"cannot decode image .*image00002\.jpg: .*truncated"):
        ds[1]


# ------------------------------------------------------------------------------- .mat
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"pt2d": pt2d()}, r"missing key 'Pose_Para'"),
        ({"Pose_Para": "pitch yaw roll", "pt2d": pt2d()}, r"'Pose_Para' is not numeric"),
        ({"Pose_Para": np.array([[0.1, 0.2]]), "pt2d": pt2d()}, r"'Pose_Para' has 2 values"),
        ({"Pose_Para": np.array([[*POSE, 0, 0, 0, 1.0]])}, r"no face box from pt2d: .*'pt2d'"),
        (
            {"Pose_Para": np.array([[*POSE, 0, 0, 0, 1.0]]), "pt2d": np.ones((1, 5))},
            r"'pt2d' has shape \(1, 5\), expected \(2, N\)",
        ),
        (None, r"cannot read \.mat file"),
    ],
    ids=["no_pose_para", "pose_para_string", "pose_para_short", "no_pt2d", "pt2d_shape", "bytes"],
)
def test_bad_mat_file_names_file_and_key(
    aflw_root: Path, content: dict[str, object] | None, problem: str
) -> None:
    mat = aflw_root / "image00002.mat"
    if content is None:
        mat.write_bytes(np.random.default_rng(1).bytes(512))
    else:
        scipy.io.savemat(mat, content)
    with pytest.raises(DatasetError, match=rf"aflw2000: image00002\.mat: {problem}"):
        AFLW2000(aflw_root)


def test_bad_300wlp_landmarks_file_names_it(tmp_path: Path) -> None:
    root = tmp_path / "300W_LP"
    write_3ddfa(root / "AFW", "AFW_1_0", POSE)
    write_3ddfa(root / "AFW", "AFW_2_0", POSE)
    folder = root / "landmarks" / "AFW"
    folder.mkdir(parents=True)
    scipy.io.savemat(folder / "AFW_1_0_pts.mat", {"pts_3d": pt2d().T})
    scipy.io.savemat(folder / "AFW_2_0_pts.mat", {"pts_3d": np.ones((5, 2))})
    with pytest.raises(
        DatasetError, match=r"AFW_2_0_pts\.mat: 'pts_3d' has shape \(5, 2\), expected \(68, 2\)"
    ):
        Pose300WLP(root, flipped=False, box_source="pt3d_68")
    # The landmarks files are part of the index cache key: a fixed file is re-read.
    scipy.io.savemat(folder / "AFW_2_0_pts.mat", {"pts_3d": pt2d().T})
    assert len(Pose300WLP(root, flipped=False, box_source="pt3d_68")) == 2


# ------------------------------------------------------------------------ NaN/inf labels
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nan_inf_angle_in_mat_is_rejected_or_skipped(
    aflw_root: Path, value: float, caplog: pytest.LogCaptureFixture
) -> None:
    write_3ddfa(aflw_root, "image00002", (0.1, value, 0.05))
    with pytest.raises(DatasetError, match=rf"image00002\.mat: yaw is {value}"):
        AFLW2000(aflw_root)
    with caplog.at_level(logging.WARNING, logger="hpelib.data"):
        ds = AFLW2000(aflw_root, on_invalid="skip")
    assert len(ds) == 1 and ds.num_skipped == 1
    assert "aflw2000: skipped 1 invalid item(s) of 2" in caplog.text


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"yaw": [0.0, math.nan]}, r"yaw is nan"),
        ({"roll": [0.0, math.inf]}, r"roll is inf"),
        (_identity_matrix_columns(r00_of_row_3=math.nan), r"rotation has NaN/inf"),
        (
            {"x0": [1.0, 1.0], "y0": [1.0, -math.inf], "x1": [9.0, 9.0], "y1": [9.0, 9.0]},
            r"box \(x0, y0, x1, y1\) = \[1\.0, -inf, 9\.0, 9\.0\] is partly missing or infinite",
        ),
    ],
    ids=["nan_angle", "inf_angle", "nan_matrix", "inf_box"],
)
def test_nan_inf_label_in_table_is_rejected_or_skipped(
    tmp_path: Path, columns: dict[str, list[object]], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    csv = _table(table_dir(tmp_path), **columns)
    with pytest.raises(DatasetError, match=rf"table: labels\.csv row 3: {problem}"):
        PoseTable(csv)
    with caplog.at_level(logging.WARNING, logger="hpelib.data"):
        ds = PoseTable(csv, on_invalid="skip")
    assert len(ds) == 1 and ds.num_skipped == 1
    assert "table: skipped 1 invalid item(s) of 2" in caplog.text


def test_non_numeric_table_cell_names_row_and_column(tmp_path: Path) -> None:
    csv = _table(table_dir(tmp_path), pitch=[0.0, "12,5"])
    with pytest.raises(
        DatasetError, match=r"labels\.csv row 3: column 'pitch' is not a number \('12,5'"
    ):
        PoseTable(csv)


# --------------------------------------------------------------------------- empty input
@pytest.mark.parametrize("dataset", ["aflw2000", "300wlp", "biwi", "table"])
def test_empty_dataset_folder_names_it(tmp_path: Path, dataset: str) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    if dataset == "aflw2000":
        write_image(root / "image00001.jpg")  # images alone are not a dataset
        with pytest.raises(
            DatasetError, match=r"aflw2000: no files matching image\*\.mat .* in .*empty"
        ):
            AFLW2000(root)
    elif dataset == "300wlp":
        (root / "AFW").mkdir()
        with pytest.raises(DatasetError, match=r"300wlp: no files matching .*\.mat in .*empty"):
            Pose300WLP(root)
    elif dataset == "biwi":
        with pytest.raises(DatasetError, match=r"biwi: no subject folders NN/ in .*empty"):
            BIWIRaw(root)
    else:
        (root / "labels.csv").write_text("path,pitch,yaw,roll\n")
        with pytest.raises(DatasetError, match=r"table: .*empty.labels\.csv has no rows"):
            PoseTable(root / "labels.csv")


def test_all_items_invalid_is_an_error_even_when_skipping(aflw_root: Path) -> None:
    # Skipping everything would leave an empty dataset that fails far from the cause.
    for stem in ("image00001", "image00002"):
        write_3ddfa(aflw_root, stem, (math.nan, 0.0, 0.0))
    with pytest.raises(DatasetError, match=r"image00001\.mat: pitch is nan \(all 2 item\(s\)"):
        AFLW2000(aflw_root, on_invalid="skip")


# ------------------------------------------------------------------ mismatched counts
@pytest.mark.parametrize(
    "case", ["aflw_image_without_mat", "aflw_mat_without_image", "300wlp_image_without_mat"]
)
def test_mismatched_images_and_labels(
    tmp_path: Path, aflw_root: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    if case == "aflw_image_without_mat":
        write_image(aflw_root / "image00003.jpg")
        build, problem = AFLW2000, r"image00003\.jpg: image has no \.mat label file"
        root, name, total = aflw_root, "aflw2000", 3
    elif case == "aflw_mat_without_image":
        (aflw_root / "image00002.jpg").unlink()
        build, problem = (
            AFLW2000,
            r"image00002\.mat: image image00002\.jpg not found next to the label",
        )
        root, name, total = aflw_root, "aflw2000", 2
    else:
        root = tmp_path / "300W_LP"
        write_3ddfa(root / "AFW", "AFW_1_0", POSE)
        write_image(root / "AFW" / "AFW_2_0.jpg")
        build, problem = Pose300WLP, r"AFW_2_0\.jpg: image has no \.mat label file"
        name, total = "300wlp", 2
    with pytest.raises(DatasetError, match=rf"{name}: .*{problem} \(1 invalid item"):
        build(root)
    with caplog.at_level(logging.WARNING, logger="hpelib.data"):
        ds = build(root, on_invalid="skip")
    assert len(ds) == total - 1 and ds.num_skipped == 1
    assert f"{name}: skipped 1 invalid item(s) of {total}" in caplog.text


def test_table_row_pointing_to_missing_image(tmp_path: Path) -> None:
    root = table_dir(tmp_path)
    csv = _table(root, path=["img/0.png", "img/missing.png"])
    with pytest.raises(DatasetError, match=r"labels\.csv row 3: image img/missing\.png not found"):
        PoseTable(csv)
    assert len(PoseTable(csv, on_invalid="skip")) == 1


# ------------------------------------------------------------------------------ config
def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(
        BackboneNotFoundError, match=r"unknown backbone 'resnet_18'.*Did you mean: .*resnet18"
    ):
        create_backbone("resnet_18")


# ------------------------------------------------------------------------- crop vs image
def test_image_smaller_than_crop_is_padded_black(tmp_path: Path) -> None:
    # Documented: the out-of-image part of the crop box is black (PIL's crop, as the
    # references), and images smaller than image_size are resized up.
    root = table_dir(tmp_path)  # 40 x 30 images
    csv = _table(root, x0=[-40.0, 0.0], y0=[-30.0, 0.0], x1=[40.0, 40.0], y1=[30.0, 30.0])
    ds = PoseTable(csv, image_size=64)
    padded, whole = ds[0]["image"], ds[1]["image"]
    assert padded.shape == whole.shape == (3, 64, 64)
    assert int(padded[:, :30, :30].max()) == 0  # top-left quarter of the crop is outside
    assert int(padded[:, 34:, 34:].float().mean()) > 50  # the image itself is still there


def test_crop_outside_the_image_names_file_and_size(tmp_path: Path) -> None:
    # Landmarks made for a 450 x 450 image next to a 64 x 64 file: the crop misses it.
    root = tmp_path / "AFLW2000"
    write_3ddfa(root, "image00001", POSE, pt2d=pt2d(300, 310, 420, 430))
    ds = AFLW2000(root)
    with pytest.raises(
        DatasetError, match=r"image00001\.jpg: crop box .* lies outside the 64 x 64 image"
    ):
        ds[0]


# ------------------------------------------------------------------------ angle range
def test_lechpe_rejects_labels_outside_the_bins_when_configured() -> None:
    images = torch.rand(2, 3, 16, 16)
    # Sample 1 has yaw 120 degrees: outside LEC-HPE's bins [-99, 99).
    pitch, yaw = torch.tensor([0.1, 0.2]), torch.tensor([0.2, math.radians(120)])
    roll = torch.zeros(2)
    rotation = rotation_from_euler_300wlp(pitch, yaw, roll).float()
    batch = {"image": images, "rotation": rotation}
    module = LECHPE(backbone="test_resnet", out_of_range="error")
    outputs = module(images)
    with pytest.raises(ValueError, match=r"outside \[-99.0, 99.0\) degrees.*out_of_range='mask'"):
        module.compute_loss(outputs, batch)
    module.out_of_range = "mask"  # the default: the sample leaves the angle losses
    loss, parts = module.compute_loss(outputs, batch)
    assert torch.isfinite(loss) and float(parts["angle_fraction"]) == 0.5


def test_table_angle_limit_rejects_out_of_range_angle(tmp_path: Path) -> None:
    csv = _table(table_dir(tmp_path), yaw=[0.0, 120.0])
    with pytest.raises(
        DatasetError, match=r"labels\.csv row 3: yaw = 120\.00 degrees is outside \[-90, 90\]"
    ):
        PoseTable(csv, angle_limit_deg=90)
    assert len(PoseTable(csv)) == 2  # no limit by default


# ------------------------------------------------------------------------- angle units
DEGREE_POSES = [(10.0, -30.0, 5.0), (0.0, 45.0, 2.0), (-5.0, 20.0, 0.0), (3.0, -60.0, 1.0)]


@pytest.mark.parametrize("dataset", ["aflw2000", "300wlp"])
def test_degrees_in_pose_para_are_a_unit_error(tmp_path: Path, dataset: str) -> None:
    root = tmp_path / dataset
    folder = root if dataset == "aflw2000" else root / "AFW"
    for k, pose in enumerate(DEGREE_POSES):  # degrees written where radians belong
        write_3ddfa(folder, f"image0000{k}" if dataset == "aflw2000" else f"AFW_{k}_0", pose)
    build = AFLW2000 if dataset == "aflw2000" else Pose300WLP
    with pytest.raises(
        DatasetError,
        match=rf"{dataset}: .*{root.name}: 'Pose_Para' angles must be radians, but 4 of 4 items "
        r"have an \|angle\| > pi.*(image00000|AFW_0_0)\.mat .*unit mix-up.*check_units=False",
    ):
        build(root)
    if dataset == "aflw2000":  # opted out, the 99-degree filter then drops everything
        with pytest.raises(DatasetError, match=r"99-degree filter dropped all 4"):
            AFLW2000(root, check_units=False)
    else:
        assert len(Pose300WLP(root, check_units=False, angle_limit_deg=None)) == 4


def test_a_few_wild_radian_labels_are_not_a_unit_error(tmp_path: Path) -> None:
    # The rule decides on the share of items: AFLW2000's roll of -972 degrees is one item.
    root = tmp_path / "AFLW2000"
    write_3ddfa(root, "image00001", POSE)
    write_3ddfa(root, "image00002", (0.1, 0.2, math.radians(-972)))
    write_3ddfa(root, "image00003", (-0.3, 0.6, 0.0))
    ds = AFLW2000(root)
    assert len(ds) == 2 and ds.num_filtered == 1
    write_3ddfa(root, "image00003", (math.radians(200), 0.0, math.radians(-400)))
    with pytest.raises(DatasetError, match=r"2 of 3 items have an \|angle\| > pi"):
        AFLW2000(root)


def test_unit_rule_on_the_real_aflw2000_dev_labels(shared_dir: Path, tmp_path: Path) -> None:
    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = AFLW2000(root, filter_99=False, cache=tmp_path / "cache")  # radians: no error
    rad = np.radians(ds.index.loc[:, ["pitch", "yaw", "roll"]].to_numpy(np.float64))
    share = float((np.abs(rad).max(axis=1) > math.pi).mean())
    assert len(rad) == 1000 and share == pytest.approx(0.006)  # a few wild labels
    deg = np.degrees(rad)
    assert angle_unit_mixup(rad, "radians") == ""
    assert "990 of 1000 items have an |angle| > pi" in angle_unit_mixup(deg, "radians")
    assert angle_unit_mixup(deg, "degrees") == ""
    assert "look like radians" in angle_unit_mixup(rad, "degrees")
    # The same labels times 180/pi in real files (every 10th item): the loader refuses them.
    copy = tmp_path / "AFLW2000-degrees"
    copy.mkdir()
    for mat in sorted(root.glob("*.mat"))[::10]:
        content = scipy.io.loadmat(mat)
        content = {k: v for k, v in content.items() if not k.startswith("__")}
        content["Pose_Para"] = content["Pose_Para"].copy()
        content["Pose_Para"][0, :3] = np.degrees(content["Pose_Para"][0, :3])
        scipy.io.savemat(copy / mat.name, content)
        (copy / mat.with_suffix(".jpg").name).symlink_to(mat.with_suffix(".jpg"))
    with pytest.raises(DatasetError, match=r"(9\d|100) of 100 items have an \|angle\| > pi"):
        AFLW2000(copy, cache=False)


def _biwi_npz(path: Path, pose: np.ndarray) -> Path:
    images = np.zeros((len(pose), 8, 8, 3), np.uint8)
    np.savez(path, image=images, pose=pose)  # FSA-Net's keys: BGR images, degree poses
    return path


def test_radians_in_biwi_npz_are_a_unit_error(tmp_path: Path) -> None:
    pose = np.random.default_rng(0).uniform(-1.2, 1.2, (12, 3))  # yaw, pitch, roll radians
    path = _biwi_npz(tmp_path / "BIWI_test.npz", pose)
    with pytest.raises(
        DatasetError,
        match=r"biwi_npz: .*BIWI_test\.npz: 'pose' .* must be degrees, but 12 of 12 items have "
        r"every \|angle\| <= pi .*unit mix-up.*check_units=False",
    ):
        BIWINpz(path)
    assert len(BIWINpz(path, check_units=False)) == 12
    assert len(BIWINpz(_biwi_npz(tmp_path / "deg.npz", np.degrees(pose)))) == 12
    # Near-zero poses read the same in both units: not a mix-up.
    assert len(BIWINpz(_biwi_npz(tmp_path / "zero.npz", pose * 0.05))) == 12


@pytest.mark.parametrize("degrees", [True, False])
def test_table_angles_in_the_other_unit_are_an_error(tmp_path: Path, degrees: bool) -> None:
    root = table_dir(tmp_path)
    rng = np.random.default_rng(1)
    rad = rng.uniform(-1.0, 1.0, (12, 3))
    wrong = rad if degrees else np.degrees(rad)  # the unit the flag does NOT say
    csv = root / "labels.csv"
    pd.DataFrame({
        "path": [f"img/{i % 3}.png" for i in range(12)],
        "pitch": wrong[:, 0], "yaw": wrong[:, 1], "roll": wrong[:, 2],
    }).to_csv(csv, index=False)  # fmt: skip
    unit, other = ("degrees", "radians") if degrees else ("radians", "degrees")
    with pytest.raises(
        DatasetError,
        match=rf"table: .*labels\.csv: angle columns pitch, yaw, roll must be {unit} "
        rf"\(degrees={degrees}\), .*look like {other}.*set degrees={not degrees}",
    ):
        PoseTable(csv, degrees=degrees)
    assert len(PoseTable(csv, degrees=not degrees)) == 12
    assert len(PoseTable(csv, degrees=degrees, check_units=False)) == 12


# ------------------------------------------------------------ empty after the 99 filter
def test_test_set_emptied_by_the_99_filter_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "AFLW2000"
    write_3ddfa(root, "image00001", (0.1, math.radians(120), 0.0))
    write_3ddfa(root, "image00002", (math.radians(-105), 0.2, 0.0))
    with pytest.raises(
        DatasetError,
        match=r"aflw2000: .*AFLW2000: the 99-degree filter dropped all 2 item\(s\).*"
        r"filter_99=False \(filter_99: false in a config\) keeps them",
    ):
        AFLW2000(root)
    assert len(AFLW2000(root, filter_99=False)) == 2
    path = _biwi_npz(tmp_path / "BIWI_test.npz", np.array([[120.0, 0.0, 0.0]] * 3))
    with pytest.raises(DatasetError, match=r"biwi_npz: .*BIWI_test\.npz: .*dropped all 3"):
        BIWINpz(path, filter_99=True)
    assert len(BIWINpz(path)) == 3
