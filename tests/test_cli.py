"""The ``hpelib`` command end to end (subprocess): fit, test with ckpt_path=last, export,
evaluate — on the tiny axis-glyph toy data so it runs in seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1, "accelerator": "cpu", "devices": 1, "default_root_dir": str(run),
            "enable_model_summary": False, "enable_progress_bar": False, "logger": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True}}],
        },
        "model": {"class_path": "hpelib.methods.SixD", "init_args": {
            "backbone": "test_resnet",
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}},
        }},
        "data": {
            "train": {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 32}},
            "test": {"glyphs": {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 16, "seed": 3}}},
            "batch_size": 16,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _hpelib(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "hpelib.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = _config(tmp)
    fit = _hpelib("fit", "--config", str(config), cwd=tmp)
    assert fit.returncode == 0, fit.stderr[-3000:]
    return tmp, config


def test_test_last_without_checkpoint_is_an_error_naming_the_folder(tmp_path):
    config = _config(tmp_path)
    result = _hpelib("test", "--config", str(config), "--ckpt_path", "last", cwd=tmp_path)
    assert result.returncode != 0
    assert "--ckpt_path last: no last checkpoint" in result.stderr
    assert str(tmp_path / "run" / "checkpoints") in result.stderr


def test_fit_then_test_last_prints_one_results_table(trained):
    tmp, config = trained
    assert (tmp / "run" / "checkpoints" / "last.ckpt").is_file()
    result = _hpelib("test", "--config", str(config), "--ckpt_path", "last", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "hpelib test results" in out and "glyphs" in out
    # hpelib's table only: Lightning's would repeat every key as test/glyphs/<key>.
    for key in ("pitch_mae", "yaw_mae", "roll_mae", "mae", "geodesic"):
        assert len(re.findall(rf"(?<![\w/]){key}\b", out)) == 1, (key, out)
    assert "test/glyphs/" not in out


def test_evaluate_writes_table_and_cdf(trained):
    tmp, config = trained
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    result = _hpelib("evaluate", "--config", str(config), "--ckpt", str(ckpt), "--variants", "original", "sa", "--output", str(tmp / "eval"), "--batch_size", "8", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp / "eval" / "results.csv")
    assert list(table["test_set"]) == ["glyphs", "glyphs/sa"]
    assert (table["n"] == 16).all()
    assert {"yaw_mae", "pitch_mae", "roll_mae", "mae", "geodesic"} <= set(table.columns)
    assert (tmp / "eval" / "error_cdf.png").stat().st_size > 1000
    assert "| checkpoint" in result.stdout


def test_export_onnx_parity(trained):
    pytest.importorskip("onnxruntime")
    tmp, _ = trained
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    result = _hpelib("export", "--ckpt", str(ckpt), "--output", str(tmp / "model.onnx"), cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity rotation: max abs difference" in result.stdout
    import onnx

    model = onnx.load(str(tmp / "model.onnx"))
    assert any(p.key == "hpelib_preprocessing" for p in model.metadata_props)


def test_bad_config_gives_clear_error(tmp_path):
    result = _hpelib("evaluate", "--config", str(tmp_path / "missing.yaml"), "--ckpt", "x.ckpt", cwd=tmp_path)
    assert result.returncode != 0
    assert "missing.yaml" in result.stderr and "does not exist" in result.stderr


@pytest.mark.parametrize(("native", "precision", "warns"), [
    (False, "bf16-mixed", True), (True, "bf16-mixed", False), (False, "32-true", False),
])  # fmt: skip
def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, native, precision, warns):
    import warnings

    import hpelib.cli

    monkeypatch.setattr(hpelib.cli, "cpu_has_native_bf16", lambda: native)
    args = ["--config", str(_config(tmp_path)), "--trainer.precision", precision]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hpelib.cli.build_cli(args, run=False)
    messages = [str(w.message) for w in caught if "native bf16" in str(w.message)]
    assert bool(messages) == warns
    if warns:
        assert "--trainer.precision 32-true" in messages[0]


def test_cpu_bf16_probe_agrees_with_the_kernel_cpu_flags():
    from hpelib.cli import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with (not Linux)")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


# --------------------------------------------------------------------------- hpelib predict
def _write_faces(folder: Path) -> list[Path]:
    """Five 32 px glyph images (the model's input size) and one 48 x 40 (resized by the crop)."""
    import numpy as np
    from PIL import Image

    from tests.toy import AxisGlyphDataset

    folder.mkdir()
    images = AxisGlyphDataset(6, 48, seed=11).images
    paths = []
    for i, image in enumerate(images):
        array = image.permute(1, 2, 0).numpy()
        array = array[:40] if i == 5 else np.asarray(Image.fromarray(array).resize((32, 32)))
        paths.append(folder / f"face_{i}.png")
        Image.fromarray(np.ascontiguousarray(array)).save(paths[-1])
    return paths


def test_predict_on_an_image_folder_writes_the_predictions_of_hpelib_load(trained):
    import numpy as np

    import hpelib

    tmp, config = trained
    paths = _write_faces(tmp / "faces")
    folder_spec = ["--data.predict.name", "folder", "--data.predict.root", str(tmp / "faces"),
                   "--data.predict.image_size", "32"]  # fmt: skip
    result = _hpelib("predict", "--config", str(config), "--ckpt_path", "last", *folder_spec, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    csv = tmp / "run" / "predictions.csv"
    table = pd.read_csv(csv)
    assert list(table["file"]) == [str(p) for p in paths]
    assert list(table["index"]) == list(range(len(paths)))
    expected = hpelib.load(tmp / "run" / "checkpoints" / "last.ckpt").predict([str(p) for p in paths])
    frame = expected.to_dataframe()
    assert list(frame.columns) == [c for c in table.columns if c in frame.columns]
    for column in frame.columns:
        np.testing.assert_allclose(table[column], frame[column], atol=2e-4, err_msg=column)
    # The 6D method's extra output, flattened and named.
    assert [f"rotation_raw_{i}" for i in range(6)] == [c for c in table.columns if c.startswith("rotation_raw")]
    # A second run keeps the first file and writes the next free name.
    before = csv.read_bytes()
    again = _hpelib("predict", "--config", str(config), "--ckpt_path", "last", *folder_spec, cwd=tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert csv.read_bytes() == before
    assert pd.read_csv(tmp / "run" / "predictions_1.csv").shape == table.shape


# ------------------------------------------------------------------ dataset spec overrides
def _name_spec_config(tmp_path: Path) -> Path:
    path = _config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["data"]["val"] = {"name": "300w_lp", "root": "/data/300W_LP", "image_size": 32}
    config["data"]["test"]["pair"] = [
        {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 8}, "weight": 1.0},
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def test_dotted_overrides_reach_name_and_class_path_specs(tmp_path):
    from hpelib.cli import build_cli
    from hpelib.specs import plain_spec

    cli = build_cli([
        "--config", str(_name_spec_config(tmp_path)),
        "--data.train.init_args.num_samples", "48",  # class_path spec, jsonargparse's form
        "--data.train.seed", "7",  # class_path spec, shorthand for init_args.seed
        "--data.val.root", "/elsewhere/300W_LP",  # name spec
        "--data.test.glyphs.init_args.seed=5",  # one set of a {name: spec} mapping
        "--data.test.pair.0.weight", "2.5",  # an item of a list
    ], run=False)  # fmt: skip
    data = plain_spec(cli.config["data"])  # the parsed config, as config.yaml saves it
    assert data["train"]["init_args"]["num_samples"] == 48
    assert data["train"]["init_args"]["seed"] == 7
    assert data["val"] == {"name": "300w_lp", "root": "/elsewhere/300W_LP", "image_size": 32}
    assert data["test"]["glyphs"]["init_args"]["seed"] == 5
    assert data["test"]["glyphs"]["init_args"]["num_samples"] == 16
    assert data["test"]["pair"][0]["weight"] == 2.5
    assert len(cli.datamodule.train_spec) == 48  # jsonargparse built the class_path spec
    assert cli.datamodule.val_spec["root"] == "/elsewhere/300W_LP"


@pytest.mark.parametrize(("flag", "named"), [
    ("--data.val.rooot", ["'rooot'", "did you mean 'root'", "Pose300WLP"]),
    ("--data.train.init_args.num_sampels", ["'num_sampels'", "did you mean 'num_samples'", "AxisGlyphDataset"]),
    ("--data.test.glyphs.sed", ["data.test.glyphs.init_args", "'sed'", "did you mean 'seed'"]),
])  # fmt: skip
def test_a_wrong_spec_key_fails_at_parse_time_naming_it(tmp_path, capsys, flag, named):
    from hpelib.cli import build_cli

    with pytest.raises(SystemExit) as exit_info:
        build_cli(["--config", str(_name_spec_config(tmp_path)), flag, "1"], run=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for text in named:
        assert text in err, err


def test_a_wrong_key_in_the_config_file_fails_at_parse_time(tmp_path, capsys):
    from hpelib.cli import build_cli

    path = _name_spec_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["data"]["val"]["imagesize"] = 64
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["--config", str(path)], run=False)
    assert exit_info.value.code == 2
    assert "'imagesize'" in capsys.readouterr().err


def test_print_config_shows_the_merged_spec(tmp_path, capsys):
    from hpelib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(_name_spec_config(tmp_path)), "--data.val.root", "/x", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["val"] == {"name": "300w_lp", "root": "/x", "image_size": 32}


def test_apply_spec_override_rules():
    from hpelib.cli import apply_spec_override, split_spec_overrides

    cls = {"class_path": "a.B", "init_args": {"dataset": {"name": "300w_lp", "root": "/a"}}, "weight": 2}
    out = apply_spec_override(cls, ["dataset", "root"], "/b")
    assert out["init_args"]["dataset"]["root"] == "/b" and cls["init_args"]["dataset"]["root"] == "/a"
    assert apply_spec_override(cls, ["weight"], 3)["weight"] == 3
    name = {"name": "aflw2000", "root": "/a"}
    assert apply_spec_override(name, ["init_args", "root"], "/c") == {"name": "aflw2000", "root": "/c"}
    assert apply_spec_override([name], ["root"], "/d") == [{"name": "aflw2000", "root": "/d"}]
    with pytest.raises(ValueError, match=r"list of 2 datasets.*0\.root"):
        apply_spec_override([name, name], ["root"], "/d", "--data.train.root")
    assert apply_spec_override(None, ["name"], "folder") == {"name": "folder"}
    rest, found = split_spec_overrides(["fit", "--data.train.root", "/x", "--data.batch_size", "4",
                                        "--data.test.a.num_samples=1e3", "--data.val.init_args.seed", "3"])  # fmt: skip
    assert rest == ["fit", "--data.batch_size", "4"]
    assert [(o.stage, o.path, o.value) for o in found] == [
        ("train", ("root",), "/x"), ("test", ("a", "num_samples"), 1000.0), ("val", ("init_args", "seed"), 3),
    ]


# ---------------------------------------------------------------------------------- help
def test_top_level_help_lists_every_subcommand(capsys):
    from hpelib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict", "export", "evaluate"):
        assert re.search(rf"^\s+{sub}\s", out, re.M), (sub, out)


def _augmentation_classes() -> list[str]:
    import importlib
    import inspect

    from torch import nn

    import hpelib.data.transforms as transforms

    names = []
    modules = [importlib.import_module(f"hpelib.methods.{m}.augmentation") for m in ("lechpe", "opnet", "rankpose")]
    for module in [transforms, *modules]:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and name not in ("GeometricTransform", "PhotometricTransform"):
                names.append(name)
    return [*names, "CLERFPaperAugmentation"]


def test_fit_help_is_short_and_names_every_augmentation_pipeline(capsys):
    from typing import get_args

    from hpelib.cli import main
    from hpelib.data.datamodule import AugmentationName
    from hpelib.data.transforms import AUGMENTATIONS

    assert get_args(AugmentationName) == AUGMENTATIONS
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 800  # 2,364 lines when every torch/timm/kornia module was listed
    assert "torch.nn.Linear" not in out
    start = out.index("\n  --data.augmentation AUGMENTATION")  # its help, not the usage line
    help_text = re.sub(r"\s+", "", out[start : out.index("\n  --data.normalize", start)])
    missing = [n for n in (*AUGMENTATIONS, *_augmentation_classes()) if n not in help_text]
    assert not missing, missing


def test_a_user_augmentation_class_path_is_still_accepted_and_checked(tmp_path, capsys):
    from hpelib.cli import build_cli
    from hpelib.data.transforms import RandomOcclusion

    args = ["--config", str(_config(tmp_path)), "--data.augmentation", "hpelib.data.transforms.RandomOcclusion"]
    cli = build_cli([*args, "--data.augmentation.p", "0.25"], run=False)
    assert isinstance(cli.datamodule.augmentation, RandomOcclusion) and cli.datamodule.augmentation.p == 0.25
    with pytest.raises(SystemExit):
        build_cli([*args, "--data.augmentation.pp", "0.25"], run=False)
    with pytest.raises(SystemExit):
        build_cli(["--config", str(_config(tmp_path)), "--data.augmentation", "mirrror"], run=False)
    capsys.readouterr()


# ------------------------------------------------------------ one flag style for every tool
def test_export_flags_in_lightning_style_and_the_old_spelling(monkeypatch, capsys):
    import hpelib.export
    from hpelib.cli import main

    calls = []
    monkeypatch.setattr(hpelib.export, "export_onnx", lambda *a, **k: calls.append(a) or {})
    main(["export", "--ckpt", "c.ckpt", "--output", "m.onnx", "--check", "false", "--trust_checkpoint", "true"])
    with pytest.warns(FutureWarning) as record:
        main(["export", "--ckpt", "c.ckpt", "--output", "m.onnx", "--no-check", "--trust_checkpoint"])
    assert [str(w.message) for w in record] == [
        "hpelib export: --no-check is deprecated, write --check false",
        "hpelib export: --trust_checkpoint without a value is deprecated, write --trust_checkpoint true",
    ]
    main(["export", "--ckpt", "c.ckpt", "--output", "m.onnx", "--opset", "18", "--atol", "0.001"])
    assert calls[0] == calls[1] == ("c.ckpt", "m.onnx", 17, False, 1e-4, True)
    assert calls[2] == ("c.ckpt", "m.onnx", 18, True, 1e-3, False)
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "--check {true,false}" in out and "--no-check" not in out


def test_evaluate_flags_in_lightning_style_and_the_old_spelling(monkeypatch):
    import hpelib.evaluate
    from hpelib.cli import main, tool_parser

    seen = []
    monkeypatch.setattr(hpelib.evaluate, "main", lambda argv: seen.append(hpelib.evaluate._parser().parse_args(argv)))
    main(["evaluate", "--config", "c.yaml", "--ckpt", "a.ckpt", "b.ckpt", "--variants", "original", "sa",
          "--batch_size", "8", "--legacy_6drepnet", "true", "--trust_checkpoint", "true"])  # fmt: skip
    # Every option of hpelib.evaluate's own parser is there, in the one style.
    own = {a.dest for a in hpelib.evaluate._parser()._actions if a.option_strings and a.dest != "help"}
    mirrored = {a.dest for a in tool_parser("evaluate")._actions if a.option_strings and a.dest not in ("help",)}
    assert own <= mirrored, own - mirrored
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["evaluate", "--config", "c.yaml", "--ckpt", "a.ckpt", "b.ckpt", "--variants", "original", "sa",
              "--batch-size", "8", "--legacy-6drepnet", "--trust-checkpoint"])  # fmt: skip
    assert len([w for w in caught if issubclass(w.category, FutureWarning)]) == 3
    assert vars(seen[0]) == vars(seen[1])
    assert seen[0].ckpt == ["a.ckpt", "b.ckpt"] and seen[0].batch_size == 8
    assert seen[0].legacy_6drepnet and seen[0].trust_checkpoint


def test_the_lightning_cli_runs_a_tool_subcommand_too(monkeypatch):
    import hpelib.export
    from hpelib.cli import build_cli

    monkeypatch.setattr(hpelib.export, "export_onnx", lambda *a, **k: {"rotation": 0.0})
    cli = build_cli(["export", "--ckpt", "c.ckpt", "--output", "m.onnx", "--check", "false"])
    assert cli.tool_result == {"rotation": 0.0}


def test_a_fit_from_a_saved_config_does_not_write_over_it(tmp_path):
    from hpelib.cli import build_cli

    config = _config(tmp_path)
    steps = ["--trainer.max_steps", "1", "--data.train.init_args.num_samples", "16"]
    build_cli(["fit", "--config", str(config), *steps])
    saved = tmp_path / "run" / "config.yaml"
    before = saved.read_bytes()
    with pytest.warns(UserWarning, match="saved as .*config_1.yaml, not over"):
        build_cli(["fit", "--config", str(saved), "--trainer.max_steps", "2"])
    assert saved.read_bytes() == before
    assert yaml.safe_load((tmp_path / "run" / "config_1.yaml").read_text())["trainer"]["max_steps"] == 2
