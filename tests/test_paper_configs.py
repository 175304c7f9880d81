"""Every paper-reproduction config (``examples/*_paper*.yaml``): as written it is the paper's
recipe on real data with ImageNet weights; rewritten onto the real fixtures in
``../shared/data`` (no downloads, a few CPU steps) it trains every stage and tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.paper_configs import fixture_config, paper_config_paths, run_hpelib, walk

PAPER_CONFIGS = paper_config_paths()
IDS = [p.stem for p in PAPER_CONFIGS]


def test_every_method_has_a_paper_config():
    methods = {"clerf", "lechpe", "opnet", "rankpose"}
    have = {p.stem.split("_paper")[0] for p in PAPER_CONFIGS}
    assert methods <= have, f"no examples/<method>_paper.yaml for {sorted(methods - have)}"


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=IDS)
def test_paper_config_as_written(path: Path):
    config = yaml.safe_load(path.read_text())
    pretrained: list[bool] = []
    walk(config["model"], lambda node: pretrained.append(node["pretrained"]) if "pretrained" in node else None)
    assert pretrained and all(pretrained), f"{path.name}: the papers start from ImageNet weights"
    data = config["data"]
    assert data.get("train") and data.get("test"), f"{path.name}: needs train and test data"
    tests = data["test"].values() if isinstance(data["test"], dict) and "name" not in data["test"] else [data["test"]]
    assert data.get("val") not in list(tests), f"{path.name}: validation set is a test set"


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=IDS)
def test_paper_config_parses(path: Path, tmp_path: Path):
    result = run_hpelib("fit", "--config", str(path), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def _fit_and_test(path: Path, shared_dir: Path, tmp_path: Path, small: bool) -> None:
    config = fixture_config(path, shared_dir, tmp_path, small=small)
    env = {"HPELIB_CACHE": str(tmp_path / "cache")}
    fit = run_hpelib("fit", "--config", str(config), cwd=tmp_path, env=env)
    assert fit.returncode == 0, fit.stderr[-4000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file(), f"{path.name}: no last.ckpt after fit"
    test = run_hpelib("test", "--config", str(config), "--ckpt_path", "last", cwd=tmp_path, env=env)
    assert test.returncode == 0, test.stderr[-4000:]
    assert "geodesic" in test.stdout + test.stderr, test.stdout[-2000:]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=IDS)
def test_paper_recipe_runs_on_real_fixtures(path: Path, shared_dir: Path, tmp_path: Path):
    """The paper's recipe (stages, optimiser, schedule, losses, augmentation, crop) with a
    tiny backbone at 64 px, a couple of steps per stage."""
    _fit_and_test(path, shared_dir, tmp_path, small=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=IDS)
def test_paper_config_runs_on_real_fixtures(path: Path, shared_dir: Path, tmp_path: Path):
    """As above with the paper's own backbone and input size (minutes each on a CPU)."""
    _fit_and_test(path, shared_dir, tmp_path, small=False)
