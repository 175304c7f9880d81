"""Docs: every relative link in README/docs points to an existing file, and mkdocs builds
the site in strict mode (broken links and missing nav pages fail the build)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_relative_links_resolve():
    broken = []
    for md in _markdown_files():
        for target in LINK.findall(md.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://|^mailto:|^#", target):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_mkdocs_builds_strict(tmp_path):
    if shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists():
        pytest.skip("mkdocs is not installed (pip install 'hpelib[docs]')")
    exe = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    result = subprocess.run(
        [exe, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()


def _griffe_extension():
    pytest.importorskip("griffe", reason="griffe is installed with mkdocstrings[python] (docs extra)")
    import importlib.util

    path = ROOT / "docs" / "api" / "griffe_grouped_params.py"
    spec = importlib.util.spec_from_file_location("griffe_grouped_params", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grouped_args_become_one_entry_per_name():
    ext = _griffe_extension()
    text = (
        "Summary.\n\nArgs:\n    a, b: shared\n        more.\n    c: own.\n    d, e,\n    f: wrapped.\n"
        "\nReturns:\n    x, y: not parameters.\n"
    )
    assert ext.expand_grouped_params(text) == (
        "Summary.\n\nArgs:\n    a: shared\n        more.\n    b: shared\n        more.\n"
        "    c: own.\n    d: wrapped.\n    e: wrapped.\n    f: wrapped.\n"
        "\nReturns:\n    x, y: not parameters.\n"
    )
    assert ext.strip_sphinx_roles("see :func:`hpelib.nn.x` and :class:`~a.B`") == "see `hpelib.nn.x` and `B`"


def test_a_wrong_name_in_a_group_still_warns(caplog):
    ext = _griffe_extension()
    import griffe

    code = 'def f(a, b):\n    """Sum.\n\n    Args:\n        a, c: numbers.\n    """\n'
    extensions = griffe.load_extensions(ext.GroupedParams)
    with griffe.temporary_visited_module(code, extensions=extensions) as module:
        with caplog.at_level("WARNING"):
            params = module["f"].docstring.parse("google")[1].value
    assert [p.name for p in params] == ["a", "c"]
    assert "Parameter 'c' does not appear in the function signature" in caplog.text
