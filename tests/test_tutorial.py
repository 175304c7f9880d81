"""The "Add your own method" tutorial (docs/tutorial_add_a_method.md) runs as written.

* the page shows the code of ``examples/add_a_method/`` verbatim: every code block of the
  page is a ``--8<--`` include of one of those files (which ``mkdocs build --strict`` in
  tests/test_docs.py resolves, ``check_paths`` failing on a missing file), and every file is
  shown;
* the tutorial's own tests (``examples/add_a_method/test_matrix_fisher.py``) pass, collected
  here through the import below;
* its config trains through the CLI (``hpelib fit``: a couple of steps of timm's
  ``test_resnet`` on 8 synthetic heads), ``hpelib test --ckpt_path last`` tests the
  checkpoint, and ``hpelib.load`` rebuilds the method from it, as the page tells the reader.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hpelib.cli import main
from tests.paper_configs import fixture_config, walk

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "examples" / "add_a_method"
PAGE = ROOT / "docs" / "tutorial_add_a_method.md"
CONFIG = TUTORIAL / "matrix_fisher.yaml"

# As the page's `export PYTHONPATH=examples/add_a_method`: the tutorial's package and tests.
if str(TUTORIAL) not in sys.path:
    sys.path.insert(0, str(TUTORIAL))

from test_matrix_fisher import (  # noqa: E402  the tutorial's own tests, collected here
    test_forward_gives_the_mode_and_the_concentration,
    test_gradient_is_finite_where_singular_values_coincide,
    test_nll_prefers_a_distribution_concentrated_at_the_label,
    test_normaliser_and_gradient_match_monte_carlo,
    test_normaliser_is_one_for_the_uniform_distribution,
    test_trains_saves_and_loads_with_hpelib_load,
)

__all__ = [
    "test_forward_gives_the_mode_and_the_concentration",
    "test_gradient_is_finite_where_singular_values_coincide",
    "test_nll_prefers_a_distribution_concentrated_at_the_label",
    "test_normaliser_and_gradient_match_monte_carlo",
    "test_normaliser_is_one_for_the_uniform_distribution",
    "test_trains_saves_and_loads_with_hpelib_load",
]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# `--8<-- "path"` (a whole file) or `--8<-- "path:name"` (its `--8<-- [start:name]` section).
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::[\w-]+)?"$')


def test_every_tutorial_test_is_collected_here():
    import test_matrix_fisher

    names = {name for name in vars(test_matrix_fisher) if name.startswith("test_")}
    assert names <= set(globals()), f"import {sorted(names - set(globals()))} above"


def _code_blocks(text: str) -> list[str]:
    return [block.strip() for block in FENCE.findall(text)]


def _tutorial_files() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in TUTORIAL.rglob("*")
        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts
    }


def test_page_shows_every_tutorial_file_verbatim():
    included: list[str] = []
    for block in _code_blocks(PAGE.read_text(encoding="utf-8")):
        match = SNIPPET.match(block)
        if match is not None:  # a block of one include: the file itself
            included.append(match[1])
        elif "--8<--" in block:
            pytest.fail(f"{PAGE.name}: an include must be a code block of its own:\n{block}")
    missing = [path for path in included if not (ROOT / path).is_file()]
    assert not missing, f"{PAGE.name} includes files that do not exist: {missing}"
    assert _tutorial_files() <= set(included), (
        f"{PAGE.name} does not show {sorted(_tutorial_files() - set(included))}"
    )


def test_page_code_blocks_are_only_includes_or_shell_commands():
    # Code that is on the page only could go stale unseen: Python and YAML come from files.
    text = PAGE.read_text(encoding="utf-8")
    for lang, block in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if lang in ("python", "yaml") and not SNIPPET.match(block.strip()):
            pytest.fail(f"{PAGE.name}: a {lang} block that is not an included file:\n{block}")


def _few_samples(node: dict) -> None:
    # The synthetic heads are rendered up front: a handful is enough for two steps.
    if isinstance(node.get("num_samples"), int):
        node["num_samples"] = 8


def test_config_fits_tests_and_loads_through_the_cli(tmp_path: Path, capsys) -> None:
    config = fixture_config(CONFIG, ROOT / ".." / "shared", tmp_path, small=True)
    tree = yaml.safe_load(config.read_text())
    walk(tree, _few_samples)
    tree["trainer"]["max_time"] = "00:00:05:00"  # TimeBudgetLR's budget; two steps end the fit
    config.write_text(yaml.safe_dump(tree, sort_keys=False))

    # The console script's entry point, in this process (`matrix_fisher` is importable as
    # with the page's PYTHONPATH): the same run as `hpelib fit/test` without two more
    # interpreter starts and Lightning imports (a third of this test's time on 2 cores).
    main(["fit", "--config", str(config)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    capsys.readouterr()
    main(["test", "--config", str(config), "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert "hpelib test results" in out
    assert "synthetic_full_range" in out and "synthetic_frontal" in out

    import matrix_fisher  # defines (registers) the method: hpelib imports nothing a file names

    import hpelib

    predictor = hpelib.load(last)
    assert isinstance(predictor.module, matrix_fisher.MatrixFisher)
    prediction = predictor.predict(torch.rand(2, 3, 64, 64))
    assert prediction.rotation.shape == (2, 3, 3)
    assert prediction.outputs["concentration"].shape == (2, 3)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
