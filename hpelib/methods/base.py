"""``HPEModule``: the LightningModule every hpelib method derives from.

It owns the train/val/test/predict steps, metric computation and logging, per-test-set
metric naming, and optimiser/scheduler configuration. A method implements only

* ``forward(images) -> dict`` with at least ``"rotation"``: ``(B, 3, 3)`` in hpelib's
  internal convention, and
* ``compute_loss(outputs, batch) -> (loss, {name: value})``,

optionally overriding ``training_forward(batch)`` when training needs more than the images
(pairs, anchor-positives).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any, ClassVar

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from hpelib.checkpoint_io import PREPROCESSING_KEY, read_checkpoint
from hpelib.data.sample import mask_key
from hpelib.metrics import PoseMetrics
from hpelib.metrics.pose import predicted_euler
from hpelib.plugins import AtomicCheckpointIO
from hpelib.rotation import euler_names, rotation_to_euler
from hpelib.specs import evaluation_crop, first_spec, qualified_name

__all__ = [
    "HPEModule",
    "method_class",
    "module_from_checkpoint",
    "registered_methods",
    "renamed_backbone_weights",
]

# Every HPEModule subclass by "module.QualName", filled as classes are defined: checkpoints
# name their class this way, and loading only looks it up here, never imports what a file names.
_METHODS: dict[str, type[HPEModule]] = {}


def registered_methods() -> dict[str, type[HPEModule]]:
    """``{"module.QualName": class}`` of every :class:`HPEModule` subclass defined so far
    (hpelib's methods once :mod:`hpelib.methods` is imported, and any of the user's)."""
    import hpelib.methods  # noqa: F401  (defines, hence registers, the built-in methods)

    return dict(_METHODS)


def method_class(class_path: Any, source: str = "checkpoint") -> type[HPEModule]:
    """The registered :class:`HPEModule` subclass named ``class_path``; ``ValueError``
    naming ``source`` for anything else. Nothing is imported: a method of your own must be
    defined (its module imported) before its checkpoints are loaded."""
    methods = registered_methods()
    if isinstance(class_path, str) and class_path not in methods:
        # A re-export ("hpelib.methods.SixD"): looked up in modules already imported only.
        module_name, _, name = class_path.rpartition(".")
        found = getattr(sys.modules.get(module_name), name, None)
        if isinstance(found, type) and found in methods.values():
            return found
    if not isinstance(class_path, str) or class_path not in methods:
        raise ValueError(
            f"{source} names the class {class_path!r}, which is not an hpelib method (an "
            "HPEModule subclass defined in this process). hpelib never imports a module "
            "named by a file; if the class is your own, import its module first. Known: "
            f"{', '.join(sorted(methods))}"
        )
    return methods[class_path]


def renamed_backbone_weights(
    backbone_weights: Any, checkpoint_path: Any, method: str
) -> Any:
    """``backbone_weights``, or the value given under its old name ``checkpoint_path``
    (a ``FutureWarning`` naming the new one; both at once is an error). The old name
    collided with Lightning's ``load_from_checkpoint(checkpoint_path, ...)``."""
    if checkpoint_path is None:
        return backbone_weights
    if backbone_weights is not None:
        raise ValueError(
            f"{method}: give backbone_weights only (checkpoint_path is its old, deprecated name)"
        )
    import warnings

    warnings.warn(
        f"{method}(checkpoint_path=...) is deprecated: the backbone's local weights file is "
        "now `backbone_weights` (rename the key in your config)",
        FutureWarning,  # shown to users by default, unlike DeprecationWarning
        stacklevel=3,
    )
    return checkpoint_path


# ----------------------------------------------------------------------------- loading
def _pop_private_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The saved hyper-parameters as plain constructor arguments: Lightning's
    ``_instantiator``/``_class_path`` entries (which would hand them to jsonargparse, able to
    import classes they name) are dropped; the class comes from hpelib's registry."""
    out = dict(hparams or {})
    for key in ("_instantiator", "_class_path"):
        out.pop(key, None)
    return out


def module_from_checkpoint(
    checkpoint: dict[str, Any],
    source: str,
    cls: type[HPEModule] | None = None,
    strict: bool | None = True,
    **overrides: Any,
) -> HPEModule:
    """Rebuild the method a checkpoint dict holds: the registered class it names
    (``hpelib_class_path``; ``cls`` when given must be it or a base of it), constructed from
    the saved hyper-parameters with the init-only ones replaced
    (:meth:`HPEModule.hparams_for_loading`: no ImageNet download, no initial-weights file),
    then ``overrides`` (the caller's explicit arguments win), and the saved weights loaded.
    ``source`` names the file in errors."""
    from lightning.pytorch.core.saving import _load_state

    named = checkpoint.get("hpelib_class_path")
    target = method_class(named, source) if named is not None else cls
    if target is None:
        raise ValueError(f"{source} was not written by an hpelib method (no hpelib_class_path)")
    if cls is not None and not issubclass(target, cls):
        raise ValueError(f"{source} holds a {target.__name__}, not a {cls.__name__}")
    key = target.CHECKPOINT_HYPER_PARAMS_KEY
    hparams = target.hparams_for_loading(
        _pop_private_hparams(checkpoint.get(key) or {}), checkpoint.get("state_dict")
    )
    hparams.update(overrides)
    module = _load_state(target, {**checkpoint, key: hparams}, strict=strict)
    return module


def _rotation_mask(batch: dict[str, Any]) -> Tensor:
    key = mask_key("rotation")
    if key in batch:
        return batch[key].bool()
    return torch.ones(batch["rotation"].shape[0], dtype=torch.bool, device=batch["rotation"].device)


class HPEModule(LightningModule):
    """Base LightningModule for head pose estimation methods.

    Args:
        optimizer: optimiser factory (``torch.optim.Adam`` or a ``class_path`` in YAML).
        scheduler: optional LR scheduler factory taking the optimiser.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        euler_convention: named convention used for the per-angle metrics and predictions.
        legacy_6drepnet: evaluate with 6DRepNet's +/-180 wrap (published-number mode).
        range_angle, range_edges: optional per-range breakdown of the test metrics
            (e.g. ``"yaw"`` with edges ``[0, 30, 60, 90, 180]``).
        channels_last: store the model's conv weights channels-last (NHWC) at setup; oneDNN
            and cuDNN then run the convolutions in NHWC: 1.2-1.6x training images/s measured
            for regnetx_002 at 64 px on 2 CPU cores. Same results up to float rounding.
    """

    #: Euler convention of ``forward``'s ``"euler_deg"`` output for a method that predicts
    #: Euler angles directly (LEC-HPE: ``"300wlp"``); its per-angle metrics then use those
    #: angles when the metric's convention is the same. None: the method predicts a rotation.
    euler_output_convention: str | None = None

    #: Constructor arguments that only choose the *initial* weights, which a trained
    #: checkpoint's state dict replaces, with the value every loading path uses instead of
    #: the saved one (:func:`hpelib.load`, :meth:`load_from_checkpoint`, ``hpelib
    #: test/validate/predict --ckpt_path``): loading then downloads no ImageNet weights and
    #: needs none of the initial files. A method adds its own (CLERF ``encoder_checkpoint``,
    #: LEC-HPE ``init_weights``); ``checkpoint_path`` is the old name of ``backbone_weights``.
    INIT_ONLY_HPARAMS: ClassVar[dict[str, Any]] = {
        "pretrained": False,
        "backbone_weights": None,
        "checkpoint_path": None,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _METHODS[qualified_name(cls)] = cls

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        euler_convention: str = "300wlp",
        legacy_6drepnet: bool = False,
        range_angle: str | None = None,
        range_edges: Sequence[float] = (0.0, 30.0, 60.0, 90.0, 180.0),
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        #: Whether the constructor loaded a whole trained model (e.g. LEC-HPE's
        #: ``init_weights``): ``hpelib test`` without ``--ckpt_path`` is an error otherwise.
        self.weights_loaded = False
        self.channels_last = channels_last
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
            )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.euler_convention = euler_convention
        self._metric_kwargs = dict(
            convention=euler_convention,
            legacy_6drepnet=legacy_6drepnet,
            range_angle=range_angle,
            range_edges=tuple(range_edges),
        )
        self.val_metrics = PoseMetrics(convention=euler_convention, legacy_6drepnet=legacy_6drepnet)
        self.test_metrics = nn.ModuleList()

    # ----------------------------------------------------------------- to implement
    def forward(self, images: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images)")

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss")

    def training_forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Outputs used by the training loss; methods with pairs/positives override this."""
        return self(batch["image"])

    def setup(self, stage: str) -> None:
        # Atomic checkpoint writes and safe reads (resume, --ckpt_path) for every trainer
        # that runs an hpelib method; a user's own CheckpointIO plugin is left alone.
        strategy = self.trainer.strategy if self._trainer is not None else None
        if strategy is not None and type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        # Converting the weights is enough: a convolution runs NHWC when its weight is NHWC,
        # and its output (the next layer's input) is then NHWC too.
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        outputs = self.training_forward(batch)
        loss, parts = self.compute_loss(outputs, batch)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def _evaluate(
        self, batch: dict[str, Any], metric: PoseMetrics, prefix: str
    ) -> dict[str, Tensor]:
        outputs = self(batch["image"])
        mask = _rotation_mask(batch)
        if mask.any():
            angles = batch.get("target_angles_deg")
            # A method predicting Euler angles is scored on them (used when in the metric's
            # convention; see hpelib.metrics.pose_errors); the geodesic on the rotation.
            euler, euler_convention = predicted_euler(self, outputs)
            metric.update(
                outputs["rotation"][mask],
                batch["rotation"][mask],
                None if angles is None else angles[mask],
                None if euler is None else euler[mask],
                euler_convention,
            )
            loss, _ = self.compute_loss(outputs, batch)
            # Synced like the metrics, so every rank logs (and may monitor) the same value.
            self.log(
                f"{prefix}/loss",
                loss,
                batch_size=int(mask.sum()),
                add_dataloader_idx=False,
                sync_dist=True,
            )
        return outputs

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def _test_names(self) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = list(getattr(datamodule, "test_names", []) or [])
        loaders = self.trainer.test_dataloaders
        n = len(loaders) if isinstance(loaders, Sequence) else 1
        return names if len(names) == n else [f"set{i}" for i in range(n)] if n > 1 else [""]

    def on_test_start(self) -> None:
        self._test_set_names = self._test_names()
        self.test_metrics = nn.ModuleList(
            PoseMetrics(**self._metric_kwargs) for _ in self._test_set_names
        ).to(self.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._test_set_names[dataloader_idx]
        self._evaluate(batch, self.test_metrics[dataloader_idx], f"test/{name}" if name else "test")

    def on_test_epoch_end(self) -> None:
        summary = {}
        for name, metric in zip(self._test_set_names, self.test_metrics, strict=True):
            values = self._log_metrics(metric, f"test/{name}" if name else "test")
            if values is not None:
                summary[name or "test"] = values
        # trainer.test(verbose=False) silences Lightning's table; honour it for ours too.
        verbose = getattr(self.trainer.test_loop, "verbose", True)
        if summary and verbose and not self.trainer.sanity_checking:
            self._print_summary(summary)

    def _log_metrics(self, metric: PoseMetrics, prefix: str) -> dict[str, Tensor] | None:
        if int(metric.count) == 0 and not torch.distributed.is_initialized():
            return None
        values = metric.compute()
        values["n"] = values.pop("count")
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in values.items() if k != "n"}, add_dataloader_idx=False
        )
        metric.reset()
        return values

    @rank_zero_only
    def _print_summary(self, summary: dict[str, dict[str, Tensor]]) -> None:
        """One row per test set (Lightning's own table repeats every key per dataloader)."""
        from rich.console import Console
        from rich.table import Table

        names = euler_names(self.euler_convention)
        columns = [f"{n}_mae" for n in names] + ["mae", "geodesic"]
        table = Table(title="hpelib test results (degrees)")
        table.add_column("test set", no_wrap=True)
        for column in (*columns, "n"):
            table.add_column(column, justify="right")
        for set_name, values in summary.items():
            cells = [f"{float(values[c]):.2f}" for c in columns]
            table.add_row(set_name, *cells, str(int(values["n"])))
        Console(width=max(100, 24 + 11 * (len(columns) + 1) + max(len(k) for k in summary))).print(
            table
        )

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        outputs = self(batch["image"])
        outputs = {k: v.detach() for k, v in outputs.items()}
        outputs["euler_deg"] = rotation_to_euler(
            outputs["rotation"], self.euler_convention, degrees=True
        )
        if "index" in batch:
            outputs["index"] = batch["index"]
        return outputs

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lets ``hpelib.load(path)`` rebuild the right class without being told.
        checkpoint["hpelib_class_path"] = qualified_name(type(self))
        record = self.preprocessing_record()
        if record is not None:
            checkpoint[PREPROCESSING_KEY] = record

    def preprocessing_record(self) -> dict[str, Any] | None:
        """What inference must repeat, saved in every checkpoint as
        ``checkpoint["hpelib_preprocessing"]`` (read back by
        :func:`hpelib.checkpoint_io.checkpoint_preprocessing`); ``None`` without an attached
        :class:`~hpelib.data.HPEDataModule`. Plain JSON values:

        * ``image_size``, ``mean``, ``std``, ``grayscale``: the network input
          (``HPEDataModule.preprocessing()``);
        * ``dataset``, ``crop_rule``, ``box_source``: the crop of the evaluation data (the
          validation set, else the first test set, else the training set), as
          :func:`evaluation_crop` describes it;
        * ``euler_convention``, ``euler_output_convention``: this module's.
        """
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        describe = getattr(datamodule, "preprocessing", None)
        if not callable(describe):
            return None
        record: dict[str, Any] = {k: v for k, v in dict(describe()).items()}
        specs = (getattr(datamodule, k, None) for k in ("val_spec", "test_spec", "train_spec"))
        spec = next((s for s in map(first_spec, specs) if s is not None), None)
        crop = evaluation_crop(spec) if spec is not None else {}
        record.update(
            dataset=crop.get("dataset"),
            crop_rule=crop.get("crop_rule"),
            box_source=crop.get("box_source"),
            euler_convention=self.euler_convention,
            euler_output_convention=self.euler_output_convention,
        )
        return record

    @classmethod
    def hparams_for_loading(
        cls, hparams: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None
    ) -> dict[str, Any]:
        """Saved hyper-parameters -> the constructor arguments that rebuild the trained
        module: each :data:`INIT_ONLY_HPARAMS` entry the checkpoint has gets its loading
        value. A method whose initial state needs more (OpNet's keypoint-model file) extends
        this, reading shapes from ``state_dict`` when given."""
        out = dict(hparams)
        for key, value in cls.INIT_ONLY_HPARAMS.items():
            if key in out:
                out[key] = value
        return out

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike[str] | IO[bytes],
        map_location: Any = None,
        hparams_file: str | os.PathLike[str] | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> HPEModule:
        """Lightning's ``load_from_checkpoint``, offline and safe:

        * the init-only hyper-parameters (:data:`INIT_ONLY_HPARAMS`) get their loading
          values, so a model fine-tuned from ``pretrained: true`` or a local weights file
          loads without network access and after that file is gone; explicit ``kwargs``
          still win, as in Lightning;
        * the file is read with :func:`hpelib.checkpoint_io.read_checkpoint` (no code runs
          from it; ``weights_only=False`` is the opt-in for a trusted file);
        * the class is the registered method the checkpoint names, so
          ``HPEModule.load_from_checkpoint(path)`` returns a :class:`SixD` for a SixD file.
        """
        from lightning.pytorch.core.saving import (
            _default_map_location,
            load_hparams_from_tags_csv,
            load_hparams_from_yaml,
            pl_load,
        )
        from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

        location = map_location or _default_map_location
        if isinstance(checkpoint_path, str | os.PathLike):
            trust = None if weights_only is None else not weights_only
            source = f"checkpoint {str(checkpoint_path)!r}"
            ckpt = read_checkpoint(checkpoint_path, trust_checkpoint=trust, map_location=location)
            ckpt = _pl_migrate_checkpoint(ckpt, checkpoint_path=checkpoint_path)
        else:  # an open file: Lightning's reader (torch.load, weights_only by default)
            source = "checkpoint"
            ckpt = pl_load(checkpoint_path, map_location=location, weights_only=weights_only)
            ckpt = _pl_migrate_checkpoint(ckpt)
        if hparams_file is not None:
            suffix = str(hparams_file).rsplit(".", 1)[-1].lower()
            if suffix not in ("csv", "yml", "yaml"):
                raise ValueError(".csv, .yml or .yaml is required for `hparams_file`")
            load = load_hparams_from_tags_csv if suffix == "csv" else load_hparams_from_yaml
            ckpt[cls.CHECKPOINT_HYPER_PARAMS_KEY] = load(hparams_file)
        module = module_from_checkpoint(ckpt, source, cls, strict, **kwargs)
        state = ckpt.get("state_dict") or {}
        tensor = next((t for t in state.values() if isinstance(t, Tensor)), None)
        return module.to(tensor.device) if tensor is not None else module

    # ----------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters given to the optimiser (frozen ones excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
