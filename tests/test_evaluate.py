"""hpelib evaluate: one unique label per checkpoint, each checkpoint scored with its own
preprocessing (size, crop, normalisation, grayscale) and Euler convention, a CDF plot that
shows every error. (The CLI end to end on the toy data is also in tests/test_cli.py.)"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import hpelib
from hpelib.checkpoint_io import read_checkpoint
from hpelib.data.datamodule import HPEDataModule
from hpelib.evaluate import checkpoint_labels, evaluate, plot_error_cdf, specs_for_checkpoint
from hpelib.evaluate import main as evaluate_main
from hpelib.methods import CLERF, HPEModule, OpNet, SixD
from hpelib.video import load_predictor, predict_frames
from tests.conftest import SHARED
from tests.toy import AxisGlyphDataset

GLYPHS = {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 8, "seed": 3}}


def _trainer(root: Path, steps: int = 2) -> L.Trainer:
    return L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
    )  # fmt: skip


def _fit_and_save(module: HPEModule, dm: HPEDataModule, path: Path, seed: int = 0) -> Path:
    L.seed_everything(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = _trainer(path.parent)
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    return path


def _glyph_dm() -> HPEDataModule:
    return HPEDataModule(train=AxisGlyphDataset(16, 32), batch_size=8, normalize="symmetric")


# ------------------------------------------------------------------ labels
@pytest.fixture(scope="module")
def two_last_ckpts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    a = _fit_and_save(SixD(backbone="test_resnet"), _glyph_dm(), root / "run1" / "checkpoints" / "last.ckpt", 0)
    b = _fit_and_save(SixD(backbone="test_resnet"), _glyph_dm(), root / "run2" / "checkpoints" / "last.ckpt", 1)
    return a, b


def test_checkpoint_labels_are_the_shortest_distinguishing_path_ends(tmp_path):
    assert checkpoint_labels(["x/run1/checkpoints/last.ckpt", "x/run2/checkpoints/last.ckpt"]) == [
        "run1/checkpoints/last.ckpt", "run2/checkpoints/last.ckpt"]  # fmt: skip
    assert checkpoint_labels(["a.ckpt", "b/c.ckpt"]) == ["a.ckpt", "c.ckpt"]
    assert checkpoint_labels(["a.ckpt", "b.ckpt"], ["SixD", "OpNet"]) == ["SixD", "OpNet"]
    with pytest.raises(ValueError, match="given twice"):
        checkpoint_labels(["a/last.ckpt", "a/../a/last.ckpt"])
    with pytest.raises(ValueError, match="1 labels for 2 checkpoints"):
        checkpoint_labels(["a.ckpt", "b.ckpt"], ["one"])
    with pytest.raises(ValueError, match="unique"):
        checkpoint_labels(["a.ckpt", "b.ckpt"], ["same", "same"])


def test_two_last_ckpts_in_two_folders_get_two_rows_and_two_curves(two_last_ckpts, tmp_path, monkeypatch):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"data": {"test": {"glyphs": GLYPHS}}}))
    drawn: list[list[str]] = []
    real_plot = plot_error_cdf

    def recording_plot(errors, path, max_error=None):
        drawn.append(real_plot(errors, path, max_error))
        return drawn[-1]

    monkeypatch.setattr("hpelib.evaluate.plot_error_cdf", recording_plot)
    out = tmp_path / "out"
    table = evaluate_main(["--config", str(config), "--ckpt", *map(str, two_last_ckpts), "--output", str(out)])
    assert list(table["checkpoint"]) == ["run1/checkpoints/last.ckpt", "run2/checkpoints/last.ckpt"]
    saved = pd.read_csv(out / "results.csv")
    assert len(saved) == 2 and saved["checkpoint"].nunique() == 2
    assert saved["geodesic"].nunique() == 2  # two models, two results (none overwritten)
    assert drawn == [["run1/checkpoints/last.ckpt | glyphs", "run2/checkpoints/last.ckpt | glyphs"]]
    assert (out / "error_cdf.png").stat().st_size > 1000
    table = evaluate_main(["--config", str(config), "--ckpt", *map(str, two_last_ckpts),
                           "--labels", "first", "second", "--output", str(out)])  # fmt: skip
    assert list(table["checkpoint"]) == ["first", "second"]


def test_evaluate_never_writes_over_its_inputs(two_last_ckpts, tmp_path):
    a, _ = two_last_ckpts
    config = tmp_path / "results.csv"  # the config sits where the table would go
    config.write_text(yaml.safe_dump({"data": {"test": {"glyphs": GLYPHS}}}))
    before = config.read_text()
    with pytest.raises(SystemExit, match="would overwrite the input"):
        evaluate_main(["--config", str(config), "--ckpt", str(a), "--output", str(tmp_path)])
    assert config.read_text() == before


def test_cdf_spans_every_error_with_the_legend_outside(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    rng = np.random.default_rng(0)
    errors = {
        (f"model{i}", "set"): pd.DataFrame({n: rng.uniform(0, top, 50) for n in ("pitch", "yaw", "roll", "geodesic")} | {"mae": 0.0})
        for i, top in enumerate((20.0, 170.0))
    }  # fmt: skip
    labels = plot_error_cdf(errors, tmp_path / "cdf.png")
    assert labels == ["model0 | set", "model1 | set"]
    (fig,) = kept
    axes = fig.axes
    assert [ax.get_xlabel() for ax in axes] == [f"{n} error (deg)" for n in ("pitch", "yaw", "roll", "geodesic")]
    for ax, column in zip(axes, ("pitch", "yaw", "roll", "geodesic"), strict=True):
        largest = max(float(f[column].max()) for f in errors.values())
        assert ax.get_xlim()[1] >= largest  # every curve reaches 1 inside the panel
        assert len(ax.get_lines()) == 2 and ax.get_legend() is None
    (legend,) = fig.legends
    fig.canvas.draw()
    right_of_panels = max(ax.get_window_extent().x1 for ax in axes)
    assert legend.get_window_extent().x0 >= right_of_panels


# ------------------------------------------------------------------ own preprocessing
def test_test_specs_take_the_checkpoint_size_and_its_dataset_crop(tmp_path, monkeypatch):
    import sys

    from hpelib.methods.opnet import OpNetCrop

    prep = {"image_size": 40, "dataset": "hpelib.data.datasets.aflw2000.AFLW2000",
            "crop_rule": {"class_path": "hpelib.methods.opnet.OpNetCrop"}, "box_source": "pt3d_68"}  # fmt: skip
    tests = {
        "aflw": {"name": "aflw", "root": "/data/AFLW2000", "image_size": 64, "crop_rule": "6drepnet"},
        "biwi": {"name": "biwi_npz", "path": "/data/biwi.npz", "image_size": 64},
        "split": {"class_path": "hpelib.data.splits.SplitDataset", "init_args": {
            "dataset": {"name": "aflw2000", "root": "/data/AFLW2000"}, "part": "val"}},
        "glyphs": GLYPHS,
    }  # fmt: skip
    out = specs_for_checkpoint(tests, prep)
    assert out["aflw"]["image_size"] == 40 and out["aflw"]["box_source"] == "pt3d_68"
    assert isinstance(out["aflw"]["crop_rule"], OpNetCrop)  # an alias of the same dataset
    assert out["biwi"] == {**tests["biwi"], "image_size": 40}  # another dataset: its own crop
    inner = out["split"]["init_args"]["dataset"]
    assert inner["image_size"] == 40 and inner["box_source"] == "pt3d_68"
    assert out["glyphs"]["init_args"] == {**GLYPHS["init_args"], "image_size": 40}
    # A crop rule class from outside hpelib is never imported because a checkpoint names it.
    marker = tmp_path / "imported.txt"
    (tmp_path / "hostile_crop.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Crop: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hostile = {**prep, "crop_rule": {"class_path": "hostile_crop.Crop"}}
    assert specs_for_checkpoint(tests, hostile)["aflw"]["crop_rule"] == "6drepnet"
    assert not marker.exists() and "hostile_crop" not in sys.modules


@pytest.fixture(scope="module")
def aflw_root(tmp_path_factory) -> Path:
    """24 real AFLW2000 faces (links into the shared AFLW2000-dev copy)."""
    source = SHARED / "data" / "AFLW2000-dev"
    if not source.is_dir():
        pytest.skip(f"shared AFLW2000 faces not found at {source.resolve()}")
    root = tmp_path_factory.mktemp("aflw")
    for mat in sorted(source.glob("*.mat"))[:24]:
        for suffix in (".mat", ".jpg"):
            (root / mat.with_suffix(suffix).name).symlink_to(mat.with_suffix(suffix).resolve())
    return root


def _aflw(root: Path, **kwargs) -> dict:
    return {"name": "aflw2000", "root": str(root), "cache": None, **kwargs}


@pytest.fixture(scope="module")
def opnet_and_sixd(aflw_root, tmp_path_factory):
    """An OpNet-style checkpoint (grey, x - 0.5, 40 px, tight crop of the 68-landmark box)
    and a SixD one (RGB, ImageNet normalisation, 32 px, 6DRepNet crop of the pt2d box), each
    with its own config's test set."""
    root = tmp_path_factory.mktemp("methods")
    opnet_test = _aflw(aflw_root, image_size=40, box_source="pt3d_68", crop_rule="tight")
    opnet_dm = HPEDataModule(
        train=opnet_test, val=opnet_test, batch_size=8, grayscale=True,
        normalize=[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]],
    )  # fmt: skip
    # in_chans=3: the network sees the datamodule's grey image as it is (with in_chans=1
    # OpNet takes the luminance itself, and a missed grey conversion would go unnoticed).
    model = OpNet(backbone="test_resnet", keypoint_model="none", in_chans=3)
    opnet = _fit_and_save(model, opnet_dm, root / "opnet.ckpt")
    sixd_test = _aflw(aflw_root, image_size=32)
    sixd_dm = HPEDataModule(train=sixd_test, val=sixd_test, batch_size=8, normalize="imagenet")
    sixd = _fit_and_save(SixD(backbone="test_resnet"), sixd_dm, root / "sixd.ckpt")
    return (opnet, {"aflw": opnet_test}, opnet_dm), (sixd, {"aflw": sixd_test}, sixd_dm)


def test_the_record_holds_what_inference_needs(opnet_and_sixd):
    (opnet, _, _), (sixd, _, _) = opnet_and_sixd
    record = read_checkpoint(opnet)["hpelib_preprocessing"]
    assert record == {
        "image_size": 40, "mean": [0.5] * 3, "std": [1.0] * 3, "grayscale": True,
        "dataset": "hpelib.data.datasets.aflw2000.AFLW2000", "crop_rule": "tight",
        "box_source": "pt3d_68", "euler_convention": "300wlp", "euler_output_convention": None,
    }  # fmt: skip
    record = read_checkpoint(sixd)["hpelib_preprocessing"]
    assert (record["image_size"], record["grayscale"], record["crop_rule"], record["box_source"]) == (
        32, False, "6drepnet", "pt2d")  # the dataset's defaults, as it cropped  # fmt: skip
    assert hpelib.load(opnet).preprocessing == read_checkpoint(opnet)["hpelib_preprocessing"]


def test_each_checkpoint_is_scored_with_its_own_preprocessing(opnet_and_sixd, tmp_path):
    (opnet, opnet_tests, opnet_dm), (sixd, sixd_tests, _) = opnet_and_sixd
    alone_opnet, _ = evaluate([opnet], opnet_tests)
    alone_sixd, _ = evaluate([sixd], sixd_tests)
    joint, _ = evaluate([opnet, sixd], sixd_tests)  # one config: SixD's
    numbers = ["pitch_mae", "yaw_mae", "roll_mae", "mae", "geodesic", "n"]
    np.testing.assert_allclose(joint.loc[0, numbers].to_numpy(float), alone_opnet.loc[0, numbers].to_numpy(float), rtol=1e-5)
    np.testing.assert_allclose(joint.loc[1, numbers].to_numpy(float), alone_sixd.loc[0, numbers].to_numpy(float), rtol=1e-5)
    joint_other, _ = evaluate([opnet, sixd], opnet_tests)  # and with OpNet's config
    np.testing.assert_allclose(joint_other[numbers].to_numpy(float), joint[numbers].to_numpy(float), rtol=1e-5)
    # The same numbers as Lightning's test loop on the OpNet module with its own datamodule.
    module = hpelib.load(opnet).module
    dm = HPEDataModule(test=opnet_tests, batch_size=8, grayscale=True, normalize=[[0.5] * 3, [1.0] * 3])
    result = _trainer(tmp_path).test(module, dm, verbose=False)[0]
    assert result["test/aflw/geodesic"] == pytest.approx(alone_opnet.loc[0, "geodesic"], rel=1e-4)
    assert result["test/aflw/mae"] == pytest.approx(alone_opnet.loc[0, "mae"], rel=1e-4)


# ------------------------------------------------------------------ CLERF end to end
def test_clerf_checkpoint_loads_evaluates_and_predicts_video(tmp_path):
    path = _fit_and_save(CLERF(backbone="test_resnet", embedding_dim=8, stage=2), _glyph_dm(), tmp_path / "clerf.ckpt")
    assert read_checkpoint(path)["clerf_stage"] is None  # CLERF's own entry beside base's
    predictor = hpelib.load(path)
    assert isinstance(predictor.module, CLERF) and predictor.convention == "clerf"
    assert predictor.preprocessing["image_size"] == 32
    table, _ = evaluate([path], {"glyphs": GLYPHS})
    assert table.loc[0, "convention"] == "clerf" and table.loc[0, "n"] == 8
    assert list(table.columns[3:6]) == ["yaw_mae", "pitch_mae", "roll_mae"]  # CLERF's order
    in_300wlp, _ = evaluate([path], {"glyphs": GLYPHS}, convention="300wlp")
    assert in_300wlp.loc[0, "geodesic"] == pytest.approx(table.loc[0, "geodesic"])
    frames = [AxisGlyphDataset(2, 32, seed=4)[i]["image"].permute(1, 2, 0).numpy() for i in range(2)]
    results = list(predict_frames(path, frames, annotate_frames=False))  # predict_video's loader
    assert isinstance(load_predictor(path).module, CLERF)
    direct = predictor.predict(torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames]))
    for result, rotation in zip(results, direct.rotation, strict=True):
        assert torch.allclose(result.prediction.rotation[0], rotation, atol=1e-5)
