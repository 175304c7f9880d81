"""DDP on CPU (gloo, 2 processes) through the real CLI: training runs, and the test metrics
are synced across ranks (the sample count is the whole test set, not one rank's share)."""

from __future__ import annotations

import re

import yaml

from tests.distributed.launch import run_module


def test_sixd_ddp_two_cpu_processes_sync_metrics(tmp_path):
    run = tmp_path / "run"
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
            "default_root_dir": str(run), "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True}}],
        },
        "model": {"class_path": "hpelib.methods.SixD", "init_args": {"backbone": "test_resnet"}},
        "data": {
            "train": {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 64}},
            "test": {"glyphs": {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 24, "seed": 3}}},
            "batch_size": 8,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    for args in (["fit"], ["test", "--ckpt_path", "last"]):
        result = run_module("hpelib.cli", [*args, "--config", str(path)], tmp_path, timeout=600)
    out = result.stdout
    # The summary is printed once (rank zero) with n = 24: each rank saw 12 samples.
    rows = re.findall(r"glyphs\s*│.*│\s*(\d+)\s*│", out)
    assert rows == ["24"], out[-3000:]
