"""The example configs (``examples/*.yaml``): each parses with ``--print_config`` and names
valid dataset specs, a schedule is logged where one runs, validation never uses a test set,
and the config a fit saves (``config.yaml``) parses again, SWA configs included (their
``device`` once made the saved config unserialisable)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from hpelib.cli import main
from hpelib.data.datamodule import dataset_spec_problems
from tests.paper_configs import fixture_config, run_hpelib, walk

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

#: Configs that only replace part of another (given after it with a second --config).
PARTIAL = {"opnet_mixture.yaml": "opnet_paper.yaml"}


def _configs() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("real_faces/*.yaml"))


def _id(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def _config_args(path: Path) -> list[str]:
    base = PARTIAL.get(path.name)
    return (["--config", str(EXAMPLES / base)] if base else []) + ["--config", str(path)]


def _class_names(node: object) -> list[str]:
    names: list[str] = []
    walk(node, lambda d: names.append(str(d.get("class_path", "")).rsplit(".", 1)[-1]))
    return names


@pytest.mark.parametrize("path", _configs(), ids=_id)
def test_example_parses_with_print_config(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_config_args(path), "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out.err[-3000:]
    printed = yaml.safe_load(out.out)
    assert printed["model"]["class_path"].startswith("hpelib.methods")
    for stage in ("train", "val", "test", "predict"):
        problems = dataset_spec_problems(printed["data"].get(stage), f"data.{stage}", sets=stage == "test")
        assert not problems, problems


@pytest.mark.parametrize("path", _configs(), ids=_id)
def test_a_running_schedule_is_logged(path):
    config = yaml.safe_load(path.read_text())
    if path.name in PARTIAL:
        pytest.skip("a partial config (data only)")
    callbacks = _class_names(config["trainer"].get("callbacks"))
    model = config["model"].get("init_args", {})
    scheduled = (
        model.get("scheduler") is not None
        or {"TimeBudgetLR", "StochasticWeightAveraging"} & set(callbacks)
    )
    if scheduled:
        assert "LearningRateMonitor" in callbacks, f"{path.name}: a schedule runs but no LR monitor"


@pytest.mark.parametrize("path", _configs(), ids=_id)
def test_validation_is_not_a_test_set(path):
    config = yaml.safe_load(path.read_text())
    data = config.get("data") or {}
    val, test = data.get("val"), data.get("test")
    if val is None or test is None:
        return
    tests = list(test.values()) if isinstance(test, dict) and not ({"name", "class_path"} & set(test)) else [test]
    assert all(val != t for t in tests), f"{path.name}: data.val is one of its test sets"
    # A real dataset validated on must not be the dataset tested on either.
    val_roots, test_roots = set(), set()
    walk(val, lambda d: val_roots.add(d.get("root")))
    walk(tests, lambda d: test_roots.add(d.get("root")))
    assert not (val_roots & test_roots) - {None}, f"{path.name}: validates on {val_roots & test_roots}"


def _swa_configs() -> list[Path]:
    return [p for p in _configs() if "StochasticWeightAveraging" in p.read_text()]


def test_swa_configs_are_found():
    assert {p.name for p in _swa_configs()} >= {"opnet.yaml", "opnet_aflw2000.yaml", "opnet_paper.yaml"}


def _few_samples(node: dict) -> None:
    # Generated datasets render their items up front: a handful is enough for two steps.
    if isinstance(node.get("num_samples"), int):
        node["num_samples"] = 8


@pytest.mark.parametrize("path", _swa_configs(), ids=_id)
def test_saved_config_of_a_short_fit_parses_again(path, tmp_path, request, capsys):
    # A couple of CPU steps (fixtures for real-data configs, timm's test_resnet at 64 px),
    # the config's SWA block as written; the saved config.yaml must be usable with --config.
    needs_data = "root:" in path.read_text()
    shared = request.getfixturevalue("shared_dir") if needs_data else ROOT / ".." / "shared"
    config = fixture_config(path, shared, tmp_path, small=True)
    tree = yaml.safe_load(config.read_text())
    walk(tree, _few_samples)
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    fit = run_hpelib("fit", "--config", str(config), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-4000:]
    saved = tmp_path / "run" / "config.yaml"
    assert saved.is_file()
    text = saved.read_text()
    assert "StochasticWeightAveraging" in text
    # jsonargparse writes this in place of a value it cannot serialise (SWA's device=cpu
    # before `device: null`); such a config parses but fails when the callback is built.
    assert "Unable to serialize" not in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(saved), "--print_config"])
    again = capsys.readouterr()
    assert exit_info.value.code == 0, again.err[-4000:]
    assert yaml.safe_load(again.out)["trainer"]["callbacks"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
