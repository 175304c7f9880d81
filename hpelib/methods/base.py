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

import sys
from collections.abc import Sequence
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from hpelib.data.sample import mask_key
from hpelib.metrics import PoseMetrics
from hpelib.metrics.pose import predicted_euler
from hpelib.plugins import AtomicCheckpointIO
from hpelib.rotation import euler_names, rotation_to_euler

__all__ = ["HPEModule", "method_class", "registered_methods"]

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _METHODS[f"{cls.__module__}.{cls.__qualname__}"] = cls

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
        checkpoint["hpelib_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"

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
