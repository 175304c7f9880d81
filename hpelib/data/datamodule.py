"""``HPEDataModule``: one LightningDataModule for every method and dataset.

Datasets are given per stage as *specs*, so a YAML config can name them:

* ``{"name": "aflw2000", "root": "/data/AFLW2000", ...}`` -> the dataset registry
  (:func:`hpelib.data.datasets.build_dataset`), extra keys are constructor arguments;
* ``{"class_path": "hpelib.data.synthetic.SyntheticHeads", "init_args": {...}}``;
* a ``torch.utils.data.Dataset`` instance (Python API).

A train spec may carry ``weight`` (sampling weight of that dataset in a mix, OpNet-style); a
list of train specs is concatenated. ``test`` may be a mapping ``{set_name: spec}`` (or a list
of specs with an optional ``label`` key), one dataloader per set, and metrics are logged per
set name.

Items are uint8 on the CPU (:mod:`hpelib.data.sample`). After the batch reaches the training
device, :meth:`HPEDataModule.on_after_batch_transfer` converts images to float, applies the
batched augmentation (train only, labels transformed with the images) and normalises.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from kornia.color import rgb_to_grayscale
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    RandomSampler,
    Subset,
    WeightedRandomSampler,
)

from hpelib.data.sample import collate_samples
from hpelib.specs import SPEC_META_KEYS, instantiate_spec, plain_spec

__all__ = [
    "AugmentationName",
    "BatchTransform",
    "HPEDataModule",
    "EpochDataLoader",
    "build_dataset_from_spec",
    "dataset_spec_problems",
    "set_dataset_epoch",
    "NORMALIZATIONS",
]

#: The pipeline names :func:`hpelib.data.transforms.build_augmentation` takes (the
#: ``AUGMENTATIONS`` tuple there; a test keeps the two equal). As a ``Literal`` the CLI checks
#: a name when it parses the config and its help lists them.
AugmentationName = Literal["none", "mirror", "full_range", "clerf", "opnet"]

#: A batch augmentation: batch dict -> batch dict (an ``nn.Module`` or any callable). Typed as
#: a callable, not ``nn.Module``, so that ``hpelib fit --help`` does not list every torch,
#: timm and kornia module as a choice; a ``class_path`` of any such class is still accepted
#: and its ``init_args`` checked when the config is parsed.
BatchTransform = Callable[[dict[str, Any]], dict[str, Any]]

#: Named input normalisations: (mean, std) per channel applied to images in [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

_SPEC_META_KEYS = SPEC_META_KEYS


def build_dataset_from_spec(spec: Any) -> Dataset:
    """Turn a dataset spec (see module docstring) into a Dataset."""
    if isinstance(spec, Dataset):
        return spec
    spec = plain_spec(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(f"a dataset spec must be a Dataset or a mapping, got {type(spec).__name__}")
    spec = {k: v for k, v in spec.items() if k not in _SPEC_META_KEYS}
    if "class_path" in spec:
        return instantiate_spec(spec)
    if "name" in spec:
        from hpelib.data.datasets import build_dataset

        kwargs = dict(spec)
        return build_dataset(kwargs.pop("name"), **kwargs)
    raise ValueError(f"dataset spec {dict(spec)!r} needs a 'name' (registry) or a 'class_path'")


#: Keys of a ``class_path`` dataset spec besides its constructor's arguments.
_CLASS_SPEC_KEYS = ("class_path", "init_args", *_SPEC_META_KEYS)


def _signature_problems(factory: Any, args: Mapping[str, Any], what: str, where: str) -> list[str]:
    """Unknown or missing constructor arguments of ``factory`` given ``args``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    known = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    problems = []
    for key in args:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{where}: {key!r} is not an argument of {what}{hint} Its arguments: "
                f"{', '.join(known)}"
            )
    missing = [
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty and n not in args
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]  # fmt: skip
    if missing:
        problems.append(f"{where}: {what} needs {', '.join(repr(m) for m in missing)}")
    return problems


def _nested_problems(args: Mapping[str, Any], where: str) -> list[str]:
    """Specs inside constructor arguments: any ``class_path`` mapping (a wrapped dataset, a
    crop rule) and a name-style spec given as a ``dataset`` argument (``SplitDataset``)."""
    problems = []
    for key, value in args.items():
        if isinstance(value, Mapping) and (
            "class_path" in value or (key == "dataset" and "name" in value)
        ):
            problems += dataset_spec_problems(value, f"{where}.{key}")
    return problems


def dataset_spec_problems(spec: Any, where: str = "dataset spec", sets: bool = False) -> list[str]:
    """What is wrong with a dataset spec (see the module docstring), before anything is
    built: an unknown registry name or class_path, a key that is not an argument of the
    dataset's constructor (with the closest argument name), a missing required argument;
    specs nested in the arguments are checked too. ``sets``: ``spec`` may map set names to
    specs (``data.test``). Returns one message per problem, each starting with ``where``
    and the key path (``data.train.init_args.rooot``); ``[]`` when the spec is fine.
    A ``Dataset`` instance or ``None`` is fine."""
    spec = plain_spec(spec)
    if spec is None or isinstance(spec, Dataset):
        return []
    if isinstance(spec, list | tuple):
        return [p for i, s in enumerate(spec) for p in dataset_spec_problems(s, f"{where}.{i}")]
    if not isinstance(spec, Mapping):
        return [f"{where}: a dataset spec is a mapping or a list of them, got {spec!r}"]
    if "class_path" in spec:
        from hpelib.specs import import_object

        extra = [k for k in spec if k not in _CLASS_SPEC_KEYS]
        problems = [
            f"{where}: {k!r} is not a key of a class_path spec (class_path, init_args, weight, "
            f"label); constructor arguments go under init_args"
            for k in extra
        ]
        try:
            factory = import_object(spec["class_path"])
        except ValueError as err:
            return [*problems, f"{where}.class_path: {err}"]
        args = spec.get("init_args") or {}
        if not isinstance(args, Mapping):
            return [*problems, f"{where}.init_args: a mapping of arguments, got {args!r}"]
        what = str(spec["class_path"])
        problems += _signature_problems(factory, args, what, f"{where}.init_args")
        return problems + _nested_problems(args, f"{where}.init_args")
    if "name" in spec:
        from hpelib.data.datasets.registry import dataset_class

        try:
            factory = dataset_class(str(spec["name"]))
        except ValueError as err:
            return [f"{where}.name: {err}"]
        args = {k: v for k, v in spec.items() if k not in ("name", *_SPEC_META_KEYS)}
        what = f"{getattr(factory, '__name__', factory)} (registry name {spec['name']!r})"
        return _signature_problems(factory, args, what, where) + _nested_problems(args, where)
    if sets:
        return [p for k, s in spec.items() for p in dataset_spec_problems(s, f"{where}.{k}")]
    return [f"{where}: dataset spec {dict(spec)!r} needs a 'name' (registry) or a 'class_path'"]


def _spec_list(spec: Any) -> list[Any]:
    if spec is None:
        return []
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        return list(spec)
    return [spec]


def _spec_label(spec: Any, dataset: Dataset, i: int) -> str:
    if isinstance(spec, Mapping):
        if spec.get("label"):
            return str(spec["label"])
        if "name" in spec:
            return str(spec["name"])
    return getattr(dataset, "name", None) or f"{type(dataset).__name__.lower()}{i}"


def _describe(spec: Any, dataset: Dataset, i: int) -> str:
    """A training dataset as an error message names it: its label or name, and its data."""
    if isinstance(spec, Mapping):
        label = spec.get("label") or spec.get("name") or getattr(dataset, "name", None)
        label = label or spec.get("class_path") or type(dataset).__name__
        where = next((spec[k] for k in ("root", "table", "path") if spec.get(k) is not None), None)
    else:
        label = getattr(dataset, "name", None) or type(dataset).__name__
        where = getattr(dataset, "root", None)
    return f"{label} at {where}" if where is not None else str(label)


class _EpochSeeded:
    """Mixin: the random draw of pass ``k`` over the data is seeded by ``seed + k``.

    Lightning calls ``set_epoch(epoch)`` before every training epoch, so a run resumed from a
    checkpoint at an epoch boundary sees the same order as an uninterrupted one (a generator
    advanced from the global RNG would not: checkpoints do not store it). Without
    ``set_epoch`` (e.g. inside Lightning's DDP sampler wrapper) each pass still advances.
    """

    seed: int
    _pass: int

    def set_epoch(self, epoch: int) -> None:
        self._pass = int(epoch)

    def _next_generator(self) -> torch.Generator:
        generator = torch.Generator().manual_seed(self.seed + self._pass)
        self._pass += 1
        return generator


class EpochShuffleSampler(_EpochSeeded, RandomSampler):
    """A ``RandomSampler`` (so Lightning still swaps in a ``DistributedSampler`` under DDP)
    whose permutation for epoch ``k`` is a function of ``(seed, k)`` only."""

    def __init__(self, data_source: Dataset, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self._pass = int(seed), 0

    def __iter__(self):  # type: ignore[override]
        yield from torch.randperm(len(self.data_source), generator=self._next_generator()).tolist()


class EpochWeightedSampler(_EpochSeeded, WeightedRandomSampler):
    """``WeightedRandomSampler`` whose draws for epoch ``k`` are a function of ``(seed, k)``."""

    def __init__(self, weights: Tensor, num_samples: int, seed: int = 0) -> None:
        super().__init__(weights, num_samples, replacement=True)
        self.seed, self._pass = int(seed), 0

    def __iter__(self):  # type: ignore[override]
        self.generator = self._next_generator()
        yield from super().__iter__()


def set_dataset_epoch(dataset: Any, epoch: int) -> int:
    """Call ``set_epoch(epoch)`` on ``dataset`` and every dataset inside it (``ConcatDataset``
    parts, ``Subset``/wrapper ``.dataset``) that has one; returns how many were set."""
    count, seen, todo = 0, set(), [dataset]
    while todo:
        d = todo.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        if callable(getattr(d, "set_epoch", None)):
            d.set_epoch(int(epoch))
            count += 1
        if isinstance(d, ConcatDataset):
            todo.extend(d.datasets)
        inner = getattr(d, "dataset", None)
        if isinstance(d, Subset) or isinstance(inner, Dataset):
            todo.append(inner)
    return count


def _sampler_epoch(loader: DataLoader) -> int | None:
    """The epoch that ``loader``'s sampler is about to draw: an ``EpochShuffleSampler``/
    ``EpochWeightedSampler``'s next pass, or a ``DistributedSampler``'s ``epoch`` (Lightning's
    sampler under DDP)."""
    for s in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if isinstance(s, _EpochSeeded):
            return int(s._pass)
        if isinstance(getattr(s, "epoch", None), int):
            return int(s.epoch)
    return None


class EpochDataLoader(DataLoader):
    """A ``DataLoader`` that sets the pass's epoch on its dataset(s) when an iterator is made.

    The epoch is ``epoch_source()`` (``HPEDataModule``: the trainer's epoch, the same on every
    DDP rank and restored from a checkpoint on resume) or, when that gives
    ``None`` (no trainer), the epoch of the sampler (:func:`_sampler_epoch`). It is set with
    :func:`set_dataset_epoch` BEFORE the base iterator exists, hence before any index reaches
    a worker; :class:`~hpelib.data.datasets.base.IndexedPoseDataset` keeps it in shared
    memory, so persistent workers see it too. Lightning re-creates the loader under DDP with
    the same class and arguments (only the sampler changes), so the mechanism survives.
    """

    def __init__(
        self, *args: Any, epoch_source: Callable[[], int | None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_source = epoch_source

    def current_epoch(self) -> int | None:
        """The epoch the next pass uses (see the class docstring)."""
        epoch = self.epoch_source() if self.epoch_source is not None else None
        return _sampler_epoch(self) if epoch is None else int(epoch)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        epoch = self.current_epoch()
        if epoch is not None:
            set_dataset_epoch(self.dataset, epoch)
        return super().__iter__()


class HPEDataModule(LightningDataModule):
    """Datasets by spec, batched on-device augmentation, normalisation, DDP-ready loaders.

    Args:
        train: dataset spec or list of specs (each may carry a sampling ``weight``).
            A name spec ``{name: 300w_lp, root: ...}`` or ``{class_path: ..., init_args:
            {...}}``; ``hpelib fit`` overrides one key with ``--data.train.root X`` or
            ``--data.train.init_args.root X`` (``--data.train.0.root X`` in a list). Keys are
            checked against the dataset's constructor before anything runs.
        val: dataset spec or list of specs (never the test set: e.g. a held-out
            ``hpelib.data.splits.SplitDataset`` part of the training data).
        test: spec, list of specs, or mapping ``{name: spec}`` (one metric group per set).
        predict: dataset spec of ``hpelib predict``, labels not needed: e.g. a folder of
            images ``{name: folder, root: /path/to/faces, image_size: 64}``
            (:class:`~hpelib.data.datasets.ImageFolderDataset`).
        samples_per_epoch: draw this many training items per epoch with the
            specs' ``weight`` (with replacement); default: one pass over the concatenated datasets.
        batch_size: training batch size (per process under DDP). Training batches are full
            (``drop_last``): a training set with fewer items per process than ``batch_size``
            is a ``ValueError`` when the train loader is built, not an epoch without batches.
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        num_workers: DataLoader workers.
        augmentation: training batch augmentation (batch dict -> batch dict, images and
            labels transformed together). A pipeline name of
            ``hpelib.data.transforms.build_augmentation``: ``none``, ``mirror``, ``full_range``,
            ``clerf``, ``opnet``. Or a class_path: the papers' pipelines
            ``hpelib.methods.clerf.CLERFPaperAugmentation``,
            ``hpelib.methods.lechpe.LECHPEAugmentation``,
            ``hpelib.methods.opnet.OpNetAugmentation``,
            ``hpelib.methods.rankpose.RankPoseAugmentation``; their parts
            ``hpelib.methods.lechpe.PILBlur``, ``hpelib.methods.lechpe.NearestResample``,
            ``hpelib.methods.rankpose.RandomZoomCrop``,
            ``hpelib.methods.rankpose.RandomGaussianNoiseVariance``; the transforms in
            ``hpelib.data.transforms``:
            ``RandomHorizontalMirror``, ``RandomInPlaneRotation``, ``RandomLineFlip``,
            ``RandomScaleTranslate``, ``RandomRightAngleRotation``, ``RandomBoxFraming``,
            ``RandomGeometric`` (fuses geometric ones into one warp), ``RandomOcclusion``,
            ``RandomColorJitter``, ``RandomCoarseDropout``, ``RandomDownsample``,
            ``RandomSomeOf``, ``KorniaPhotometric``, ``Grayscale``; or your own module (any
            class_path; an ``nn.Module`` instance from Python).
        normalize: ``"imagenet"``, ``"symmetric"`` (to [-1, 1]), ``"none"`` or ``[mean, std]``.
        grayscale: convert images to one luminance channel repeated 3 times (OpNet).
        seed: seed of the training order (shuffle or weighted draws): epoch ``k`` uses
            ``seed + k``, so a resumed run repeats the uninterrupted run's order.

    The train loader is an :class:`EpochDataLoader`: before each training pass it sets the
    trainer's epoch on the training dataset(s) (``set_epoch``), so train-time crop jitter is
    redrawn every epoch, reproducibly from the dataset's ``(seed, epoch)``, in DataLoader
    workers too, on every DDP rank alike and after a resume.
    """

    def __init__(
        self,
        train: Any = None,
        val: Any = None,
        test: Any = None,
        predict: Any = None,
        samples_per_epoch: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augmentation: AugmentationName | BatchTransform | None = None,
        normalize: str | Sequence[Sequence[float]] = "imagenet",
        grayscale: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_spec, self.val_spec, self.predict_spec = plain_spec(train), plain_spec(val), plain_spec(predict)
        self.test_spec = plain_spec(test)
        problems = [
            p
            for stage, spec in (("train", train), ("val", val), ("test", test), ("predict", predict))
            for p in dataset_spec_problems(spec, f"data.{stage}", sets=stage == "test")
        ]
        if problems:
            raise ValueError("HPEDataModule: " + "\n".join(problems))
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augmentation = self._build_augmentation(augmentation)
        mean, std = self._resolve_normalize(normalize)
        self._mean_std = (mean, std)
        self.grayscale = grayscale
        self.seed = seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_datasets: list[Dataset] = []
        self.test_names: list[str] = []
        self.predict_dataset: Dataset | None = None
        self._train_weights: list[float] = []
        self._train_labels: list[str] = []

    @staticmethod
    def _build_augmentation(augmentation: Any) -> BatchTransform | None:
        """A pipeline name -> its module; a module or callable as given; a ``class_path``
        mapping (Python callers; the CLI instantiates it) -> the instance."""
        if augmentation is None or callable(augmentation):
            return augmentation
        if isinstance(augmentation, Mapping):
            return instantiate_spec(augmentation)
        from hpelib.data.transforms import build_augmentation

        return build_augmentation(augmentation)

    @staticmethod
    def _resolve_normalize(normalize: Any) -> tuple[Tensor, Tensor]:
        if isinstance(normalize, str):
            if normalize not in NORMALIZATIONS:
                raise ValueError(
                    f"unknown normalize {normalize!r}; use one of {sorted(NORMALIZATIONS)} or [mean, std]"
                )
            mean, std = NORMALIZATIONS[normalize]
        else:
            mean, std = normalize
        return (
            torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
        )

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None and self.train_spec is not None:
            specs = _spec_list(self.train_spec)
            datasets = [build_dataset_from_spec(s) for s in specs]
            self._train_weights = [
                float(s.get("weight", 1.0)) if isinstance(s, Mapping) else 1.0 for s in specs
            ]
            self._train_labels = [
                _describe(s, d, i) for i, (s, d) in enumerate(zip(specs, datasets, strict=True))
            ]
            self.train_dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        if stage in (None, "fit", "validate") and self.val_dataset is None and self.val_spec is not None:
            vals = [build_dataset_from_spec(s) for s in _spec_list(self.val_spec)]
            self.val_dataset = vals[0] if len(vals) == 1 else ConcatDataset(vals)
        if stage in (None, "test") and not self.test_datasets and self.test_spec is not None:
            if isinstance(self.test_spec, Mapping) and not (
                {"name", "class_path"} & set(self.test_spec)
            ):
                items = list(self.test_spec.items())
            else:
                items = [(None, s) for s in _spec_list(self.test_spec)]
            for i, (name, spec) in enumerate(items):
                dataset = build_dataset_from_spec(spec)
                self.test_datasets.append(dataset)
                self.test_names.append(name or _spec_label(spec, dataset, i))
        if stage in (None, "predict") and self.predict_dataset is None and self.predict_spec is not None:
            self.predict_dataset = build_dataset_from_spec(self.predict_spec)

    def _trainer_epoch(self) -> int | None:
        """The epoch the trainer is about to train, or ``None`` without a trainer.

        That is the fit loop's ``epoch_progress.current.processed``, the value Lightning gives
        the samplers' ``set_epoch``: right also when the first iterator of a resumed run is made
        (before ``set_epoch``), where ``current_epoch`` still names the checkpoint's epoch.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        fit_loop = getattr(trainer, "fit_loop", None)
        if fit_loop is not None:
            return int(fit_loop.epoch_progress.current.processed)
        return int(trainer.current_epoch)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        if shuffle:  # the train loader: per-epoch dataset state (crop jitter)
            return EpochDataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                shuffle=sampler is None,
                num_workers=self.num_workers,
                collate_fn=collate_samples,
                persistent_workers=self.num_workers > 0,
                drop_last=True,
                epoch_source=self._trainer_epoch,
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,
        )

    def _require(self, dataset: Dataset | None, stage: str) -> Dataset:
        if dataset is None:
            raise ValueError(f"HPEDataModule has no {stage} dataset: set data.{stage} in the config")
        return dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_dataset, "train")
        weighted = len(set(self._train_weights)) > 1 or self.samples_per_epoch is not None
        if not weighted:
            sampler = EpochShuffleSampler(dataset, self.seed)
        else:
            parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
            per_item = torch.cat(
                [torch.full((len(d),), w / max(len(d), 1), dtype=torch.float64)
                 for d, w in zip(parts, self._train_weights, strict=True)]
            )  # fmt: skip
            sampler = EpochWeightedSampler(
                per_item, self.samples_per_epoch or len(dataset), self.seed
            )
        self._check_train_size(dataset, len(sampler))
        return self._loader(dataset, self.batch_size, shuffle=True, sampler=sampler)

    def _check_train_size(self, dataset: Dataset, per_epoch: int) -> None:
        """Raise when no full training batch exists (the train loader drops the last partial
        one): Lightning would only print "No training batches" and the run would end as a
        success without training."""
        trainer = getattr(self, "trainer", None)
        world = max(1, int(getattr(trainer, "world_size", 1) or 1)) if trainer is not None else 1
        connector = getattr(trainer, "_accelerator_connector", None)
        if not getattr(connector, "use_distributed_sampler", True):
            world = 1  # every rank iterates the whole sampler
        # Lightning's DistributedSampler pads every rank to ceil(n / world) items.
        per_rank = -(-per_epoch // world)
        if per_rank >= self.batch_size:
            return
        labels = self._train_labels or [_describe(None, dataset, 0)]
        where = f" per process over {world} processes ({per_epoch} in all)" if world > 1 else ""
        drawn = "" if len(dataset) == per_epoch else f", {len(dataset)} in the dataset"
        fix = f"Lower data.batch_size to at most {per_rank} or add" if per_rank else "Add"
        raise ValueError(
            f"training set {' + '.join(labels)} gives {per_rank} item(s) per epoch{where}"
            f"{drawn}, fewer than batch_size={self.batch_size}: the train loader drops the "
            f"incomplete last batch, so no training batch is left. {fix} training data."
        )

    def val_dataloader(self) -> DataLoader | list:
        # Validation is optional during fit: no val spec -> no validation loop.
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.eval_batch_size, False)

    def test_dataloader(self) -> list[DataLoader]:
        if not self.test_datasets:
            raise ValueError("HPEDataModule has no test dataset: set data.test in the config")
        return [self._loader(d, self.eval_batch_size, False) for d in self.test_datasets]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.predict_dataset, "predict"), self.eval_batch_size, False)

    # ------------------------------------------------------------------ checkpoint state
    def preprocessing(self) -> dict[str, Any]:
        """What inference must repeat: input size, normalisation and grayscale conversion."""
        size = None
        dataset = self.train_dataset or self.val_dataset or (self.test_datasets or [None])[0]
        if dataset is not None and len(dataset) > 0:
            size = int(dataset[0]["image"].shape[-1])
        mean, std = self._mean_std
        return {
            "image_size": size,
            "mean": mean.flatten().tolist(),
            "std": std.flatten().tolist(),
            "grayscale": self.grayscale,
        }

    def state_dict(self) -> dict[str, Any]:
        # Saved in every checkpoint (Lightning stores the datamodule's state) for hpelib.load.
        return {"preprocessing": self.preprocessing()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: preprocessing comes from the config; the state is informative."""

    # ------------------------------------------------------------------ on-device processing
    def prepare_images(self, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        """uint8 -> float [0, 1], augmentation (if ``train``), grayscale, normalisation.

        Nested sub-batches (pairs, positives) are processed the same way.
        """
        for key, value in list(batch.items()):
            if isinstance(value, dict) and "image" in value:
                batch[key] = self.prepare_images(value, train)
        image = batch["image"]
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        batch["image"] = image
        if train and self.augmentation is not None:
            if self.grayscale and image.shape[1] == 3:
                # Grey before the augmentation too: its noise is then drawn on the grey image
                # (RandomGaussianNoise shares it across equal channels) instead of per RGB
                # channel and averaged by the conversion below (0.668 of its sigma).
                batch["image"] = rgb_to_grayscale(image).expand(-1, 3, -1, -1).contiguous()
            batch = self.augmentation(batch)
            image = batch["image"]
        if self.grayscale and image.shape[1] == 3:
            image = rgb_to_grayscale(image).expand(-1, 3, -1, -1)
        mean, std = (t.to(image.device, image.dtype) for t in self._mean_std)
        batch["image"] = (image - mean) / std
        return batch

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        train = bool(trainer is not None and trainer.training)
        return self.prepare_images(batch, train)
