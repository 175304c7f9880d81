"""benchmarks/real_faces.py: fixed k-fold split of AFLW2000 and a 3-step run of a few rows."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def real_faces():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("real_faces")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_folds_disjoint_cover_and_fixed(real_faces) -> None:
    folds = real_faces.make_folds(979, 5, seed=0)
    flat = [i for fold in folds for i in fold]
    assert sorted(flat) == list(range(979))  # every face, none twice
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert folds == real_faces.make_folds(979, 5, seed=0)
    assert folds != real_faces.make_folds(979, 5, seed=1)
    with pytest.raises(ValueError, match="k must be"):
        real_faces.make_folds(10, 1)


def test_one_fold_three_rows(real_faces, shared_dir: Path, tmp_path: Path) -> None:
    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    argv = ["--root", str(root), "--output", str(tmp_path), "--folds", "0", "--steps", "2",
            "--batch-size", "8", "--size", "32", "--synthetic-weight", "0",
            "--methods", "mean_pose", "sixd_raw_mse", "clerf"]  # fmt: skip
    per_fold = real_faces.main(argv)
    assert per_fold["method"].tolist() == ["mean_pose", "sixd_raw_mse", "clerf"]
    assert set(real_faces.COLUMNS) <= set(per_fold.columns)
    assert per_fold[["mae", "geodesic"]].notna().all().all()
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == 979 and folds["file"].is_unique and set(folds["fold"]) == set(range(5))
    expected = real_faces.make_folds(979, 5, seed=0)  # the written folds are the fixed ones
    assert [folds.index[folds["fold"] == f].tolist() for f in range(5)] == expected
    report = (tmp_path / "results.md").read_text()
    assert "python benchmarks/real_faces.py" in report and "| clerf |" in report
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    assert all(column in header for column in real_faces.COLUMNS)
    assert (tmp_path / "errors_cdf.png").stat().st_size > 0
    assert (tmp_path / "per_fold.csv").is_file()


def test_method_variants_parse_model_and_data_options(real_faces) -> None:
    assert real_faces.parse_method("rankpose") == ("rankpose", {}, {})
    name, model, data = real_faces.parse_method(
        "opnet:in_chans=3,loss_weights={rotation: 1.0, landmarks: 0},data.grayscale=false"
    )
    assert name == "opnet"
    assert model == {"in_chans": 3, "loss_weights": {"rotation": 1.0, "landmarks": 0}}
    assert data == {"grayscale": False}
    with pytest.raises(ValueError, match="unknown method"):
        real_faces.parse_method("sixd:loss=geodesic")
    with pytest.raises(ValueError, match="key=value"):
        real_faces.parse_method("lechpe:beta")
    with pytest.raises(ValueError, match="mean_pose takes no options"):
        real_faces.parse_method("mean_pose:x=1")
