"""Config specs shared by the datamodule, the methods and the CLI tools: dotted-path imports
and ``{"class_path": ..., "init_args": {...}}`` instantiation, as jsonargparse does it, and
the inspection of dataset specs (which class a spec builds, with which arguments, and how it
crops) that checkpoints record and ``hpelib evaluate`` rewrites."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "SPEC_META_KEYS",
    "constructor_parameter",
    "dataset_factory",
    "evaluation_crop",
    "first_spec",
    "import_object",
    "instantiate_spec",
    "plain_spec",
    "qualified_name",
    "spec_arguments",
]

#: Keys of a dataset spec that are not constructor arguments (mixture weight, set label).
SPEC_META_KEYS = ("weight", "label")


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


# ----------------------------------------------------------------------------- dataset specs
def qualified_name(obj: Any) -> str:
    """``"module.QualName"`` of a class or function (how checkpoints record a dataset class)."""
    return f"{obj.__module__}.{obj.__qualname__}"


def dataset_factory(spec: Any) -> Callable[..., Any] | None:
    """The class a dataset spec builds (registry name, ``class_path`` or instance), or
    ``None`` when it cannot be told without building it."""
    from torch.utils.data import Dataset

    if isinstance(spec, Dataset):
        return type(spec)
    if not isinstance(spec, Mapping):
        return None
    if "class_path" in spec:
        try:
            return import_object(spec["class_path"])
        except ValueError:
            return None
    if "name" in spec:
        from hpelib.data.datasets.registry import dataset_class

        try:
            return dataset_class(str(spec["name"]))
        except ValueError:
            return None
    return None


def constructor_parameter(factory: Callable[..., Any], name: str) -> inspect.Parameter | None:
    try:
        return inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return None


def spec_arguments(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments a mapping spec gives (``init_args`` of a class_path spec)."""
    if "class_path" in spec:
        return dict(spec.get("init_args") or {})
    return {k: v for k, v in spec.items() if k not in ("name", *SPEC_META_KEYS)}


def _crop_rule_record(rule: Any) -> Any:
    """A crop rule as a dataset spec takes it and JSON holds it: a name, a
    ``{class_path, init_args}`` mapping, or ``None`` for a callable without a name."""
    if rule is None or isinstance(rule, str):
        return rule
    if isinstance(rule, Mapping):
        return plain_spec(dict(rule))
    from hpelib.data.datasets.base import CROP_RULES

    return next((name for name, fn in CROP_RULES.items() if fn is rule), None)


def evaluation_crop(spec: Any) -> dict[str, Any]:
    """How a dataset spec crops: ``{"dataset": class path, "crop_rule": ..., "box_source":
    ...}`` (the spec's own values, else the dataset class's defaults; ``None`` where the
    class has no such argument). A wrapper spec (``SplitDataset``, ``SAVariant``...) with no
    crop of its own describes the dataset it wraps. ``{}`` for a spec that names no class."""
    spec = plain_spec(spec)
    factory = dataset_factory(spec)
    if factory is None:
        return {}
    if not isinstance(spec, Mapping):  # a Dataset instance
        inner = getattr(spec, "dataset", None)
        if not hasattr(spec, "crop_rule") and dataset_factory(inner) is not None:
            return evaluation_crop(inner)  # a wrapper (Subset, SplitDataset, a variant)
        return {
            "dataset": qualified_name(factory),
            "crop_rule": _crop_rule_record(getattr(spec, "crop_rule", None)),
            "box_source": getattr(spec, "box_source", None),
        }
    args = spec_arguments(spec)
    if constructor_parameter(factory, "crop_rule") is None and "dataset" in args:
        return evaluation_crop(args["dataset"])
    out: dict[str, Any] = {"dataset": qualified_name(factory)}
    for key in ("crop_rule", "box_source"):
        param = constructor_parameter(factory, key)
        default = None if param is None or param.default is inspect.Parameter.empty else param.default
        out[key] = args.get(key, default) if param is not None else None
    out["crop_rule"] = _crop_rule_record(out["crop_rule"])
    return out


def first_spec(spec: Any) -> Any:
    """The first dataset spec of a stage (``test`` may map set names to specs)."""
    spec = plain_spec(spec)
    if isinstance(spec, Mapping) and not ({"name", "class_path"} & set(spec)):
        return next(iter(spec.values()), None)
    if isinstance(spec, list | tuple):
        return spec[0] if spec else None
    return spec
