"""examples/sixd_aflw2000_outofplane.yaml: SixD trained on AFLW2000 expanded by out-of-plane
synthesis runs a couple of CPU steps on the AFLW2000-dev copy (test_resnet, 64 px)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.paper_configs import fixture_config, run_hpelib

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "sixd_aflw2000_outofplane.yaml"


def test_outofplane_example_trains_a_few_steps(shared_dir, tmp_path):
    config = fixture_config(CONFIG, shared_dir, tmp_path, small=True)
    tree = yaml.safe_load(config.read_text())
    assert tree["data"]["train"]["class_path"] == "hpelib.data.synthesis.OutOfPlaneViews"
    # No BIWI in this run: fit only needs train and val.
    tree["data"].pop("test", None)
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    fit = run_hpelib("fit", "--config", str(config), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-4000:]
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
