"""hpelib: interchangeable head pose estimation methods on PyTorch Lightning.

Sub-packages: :mod:`hpelib.rotation` (torch + roma only), :mod:`hpelib.data`,
:mod:`hpelib.nn`, :mod:`hpelib.metrics`, :mod:`hpelib.methods`, :mod:`hpelib.callbacks`.
``hpelib.load(checkpoint)`` returns a :class:`hpelib.predict.Predictor`.
"""

from __future__ import annotations

from typing import Any

from hpelib._version import __version__

__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    # Lazy so that ``import hpelib.rotation`` stays free of Lightning/timm/kornia imports.
    if name == "load":
        from hpelib.predict import load

        return load
    raise AttributeError(f"module 'hpelib' has no attribute {name!r}")
