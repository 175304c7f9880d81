"""The ``hpelib`` command end to end (subprocess): fit, test with ckpt_path=last, export,
evaluate — on the tiny axis-glyph toy data so it runs in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_fit_then_test_last_prints_metrics(trained):
    tmp, config = trained
    assert (tmp / "run" / "checkpoints" / "last.ckpt").is_file()
    result = _hpelib("test", "--config", str(config), "--ckpt_path", "last", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for key in ("test/glyphs/yaw_mae", "test/glyphs/pitch_mae", "test/glyphs/roll_mae", "test/glyphs/mae", "test/glyphs/geodesic"):
        assert key in out


def test_evaluate_writes_table_and_cdf(trained):
    tmp, config = trained
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    result = _hpelib("evaluate", "--config", str(config), "--ckpt", str(ckpt), "--variants", "original", "sa", "--output", str(tmp / "eval"), cwd=tmp)
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
