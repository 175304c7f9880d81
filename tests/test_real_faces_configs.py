"""examples/real_faces/*.yaml: every method's real-faces config trains (a couple of steps,
timm's test_resnet) on the training folds of the real AFLW2000-dev faces and tests on the
held fold through ``hpelib fit`` / ``hpelib test --ckpt_path last``; the folds are the
benchmark's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.paper_configs import fixture_config, run_hpelib, walk

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples" / "real_faces").glob("*.yaml"))


def test_every_method_has_a_real_faces_config() -> None:
    assert {p.stem for p in CONFIGS} == {"sixd", "opnet", "lechpe", "rankpose", "clerf"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_folds_are_the_benchmarks_and_train_never_holds_the_test_fold(path: Path) -> None:
    folds: list[tuple[int, int, str]] = []
    walk(
        yaml.safe_load(path.read_text()),
        lambda d: folds.append((d["k"], d["fold"], d["part"])) if "fold" in d else None,
    )
    assert ("test" in {p for _, _, p in folds}) and ("train" in {p for _, _, p in folds})
    assert len({(k, f) for k, f, _ in folds}) == 1, f"{path.name}: parts of different splits"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_real_faces_config_fits_and_tests(path: Path, shared_dir: Path, tmp_path: Path) -> None:
    if not (shared_dir / "data" / "AFLW2000-dev").is_dir():
        pytest.skip("AFLW2000-dev not found")
    config = fixture_config(path, shared_dir, tmp_path, small=True)
    fit = run_hpelib("fit", "--config", str(config), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-4000:]
    test = run_hpelib("test", "--config", str(config), "--ckpt_path", "last", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-4000:]
    assert "aflw2000_fold0" in test.stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
