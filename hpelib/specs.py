"""Config specs shared by the datamodule, the methods and the CLI tools: dotted-path imports
and ``{"class_path": ..., "init_args": {...}}`` instantiation, as jsonargparse does it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["import_object", "instantiate_spec", "plain_spec"]


def import_object(path: str) -> Any:
    """``"package.module.Name"`` -> the object, or a ``ValueError`` naming the path."""
    module_name, _, attr = str(path).rpartition(".")
    if not module_name:
        raise ValueError(f"class_path {path!r} must be a dotted path like 'package.module.Class'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import class_path {path!r}: {err}") from err


def plain_spec(spec: Any) -> Any:
    """jsonargparse may hand over specs as Namespaces; make them plain dicts (recursively)."""
    if hasattr(spec, "as_dict") and callable(spec.as_dict):
        spec = spec.as_dict()
    if isinstance(spec, Mapping):
        return {k: plain_spec(v) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        return [plain_spec(v) for v in spec]
    return spec


def instantiate_spec(spec: Any) -> Any:
    """Build a ``{"class_path": ..., "init_args": {...}}`` spec (nested class_path values in
    ``init_args`` too, e.g. the dataset wrapped by an ``SAVariant``); anything else is
    returned unchanged."""
    spec = plain_spec(spec)
    if isinstance(spec, list):
        return [instantiate_spec(v) for v in spec]
    if not (isinstance(spec, Mapping) and "class_path" in spec):
        return spec
    cls = import_object(spec["class_path"])
    init_args = {k: instantiate_spec(v) for k, v in (spec.get("init_args") or {}).items()}
    return cls(**init_args)
