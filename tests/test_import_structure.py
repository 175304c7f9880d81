"""The module dependency graph has no cycles between the pairs that once had one (#27):
``hpelib.predict`` -> ``hpelib.detect`` and ``hpelib.data.datasets`` -> ``hpelib.data.synthetic``,
never the reverse. Checked on the source (every ``import``, function-level and
``TYPE_CHECKING`` ones included) and by importing in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hpelib

PACKAGE_ROOT = Path(hpelib.__file__).parent

#: (module or package, what it must never import): the allowed direction is the reverse.
ONE_WAY = [
    ("hpelib.detect", "hpelib.predict"),
    ("hpelib.data.synthetic", "hpelib.data.datasets"),
]


def _source_files(module: str) -> list[Path]:
    path = PACKAGE_ROOT.parent.joinpath(*module.split("."))
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")]


def _module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(file: Path, source: str | None = None) -> set[str]:
    """Every module an ``import``/``from ... import`` anywhere in ``file`` (or in ``source``
    read as that file) names, with relative imports resolved and ``from pkg import sub``
    counted as ``pkg.sub`` too."""
    module = _module_name(file)
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(file.read_text() if source is None else source, str(file))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is_under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_checker_sees_function_level_and_relative_imports() -> None:
    """The source check must be able to fail: a function-level relative import and a
    ``TYPE_CHECKING`` one in a synthetic module are both found."""
    text = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from hpelib.predict import Predictor\n"
        "def f():\n    from ..datasets import registry\n"
    )
    found = imported_modules(PACKAGE_ROOT / "data" / "synthetic" / "head.py", text)
    assert "hpelib.data.datasets.registry" in found and "hpelib.predict" in found
    assert "hpelib._images" in imported_modules(PACKAGE_ROOT / "detect.py")


@pytest.mark.parametrize("module,forbidden", ONE_WAY)
def test_no_import_back_in_source(module: str, forbidden: str) -> None:
    bad = {
        f"{_module_name(f)} imports {name}"
        for f in _source_files(module)
        for name in imported_modules(f)
        if _is_under(name, forbidden)
    }
    assert not bad, f"{module} must not import {forbidden}: {sorted(bad)}"


@pytest.mark.parametrize("module,forbidden", ONE_WAY)
def test_no_import_back_at_runtime(module: str, forbidden: str) -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        f"m = importlib.import_module({module!r})\n"
        "for info in pkgutil.walk_packages(getattr(m, '__path__', []), m.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(sorted(k for k in sys.modules if k == {forbidden!r} "
        f"or k.startswith({forbidden!r} + '.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == "[]", f"importing {module} loads {out}"
