"""``hpelib`` command line.

* ``hpelib fit | validate | test | predict --config X.yaml`` — LightningCLI;
* ``hpelib export --ckpt C --output model.onnx`` — ONNX export with a parity check;
* ``hpelib evaluate --config X.yaml --ckpt C [C ...] --variants original sa fa`` — one table.

Examples::

    hpelib fit --config examples/sixd.yaml
    hpelib test --config examples/sixd.yaml --ckpt_path last
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from hpelib.checkpoint_io import TRUST_CHECKPOINT_HELP, read_checkpoint, trusted_checkpoints
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.base import HPEModule, method_class

__all__ = ["HPECLI", "cpu_has_native_bf16", "main"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast
    speeds training up; elsewhere oneDNN emulates it (measured: regnetx_002 at 64 px on an
    AVX2-only 2-core CPU trained 6x slower under ``bf16-mixed`` than in float32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


class HPECLI(LightningCLI):
    """LightningCLI preset for hpelib: any :class:`HPEModule` subclass by ``class_path``,
    the :class:`HPEDataModule`, and the ``seed_everything`` default of 0 for reproducibility."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # --trust_checkpoint holds for this CLI run (model construction, --ckpt_path
        # restore), not for later work in the same Python process.
        self._trust = contextlib.ExitStack()
        with self._trust:
            super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[override]
        parser.set_defaults({"seed_everything": 0})
        parser.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_CHECKPOINT_HELP)
        parser.add_argument(
            "--allow_untrained",
            type=bool,
            default=False,
            help="validate/test/predict without --ckpt_path: run the untrained weights of the "
            "config on purpose (otherwise an error)",
        )

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _parse_ckpt_path(self) -> None:
        """Lightning's version, with hpelib's reader: the ``--ckpt_path`` file is read without
        running code (or trusted with ``--trust_checkpoint``), and the class its
        hyper-parameters name must be a registered hpelib method, so no module it names is
        imported. Its hyper-parameters then override the config's model, as in Lightning
        (which also does it for checkpoints of notebook runs, through ``hpelib_class_path``)."""
        if not self.config.get("subcommand"):
            return
        config = self.config[self.config.subcommand]
        ckpt_path = config.get("ckpt_path")
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        ckpt = read_checkpoint(ckpt_path, trust_checkpoint=bool(config.get("trust_checkpoint")))
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        # Checkpoints of a notebook run have no "_class_path": hpelib's own record names it.
        class_path = hparams.pop("_class_path", None) or ckpt.get("hpelib_class_path")
        if class_path is not None:
            method_class(class_path, f"checkpoint {str(ckpt_path)!r}")
            hparams = {"class_path": class_path, "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": hparams}}, self.config
            )
        except SystemExit:
            sys.stderr.write(f"Parsing the hyper-parameters of --ckpt_path {ckpt_path} failed!\n")
            raise

    def before_instantiate_classes(self) -> None:
        if self._subcommand_config().get("trust_checkpoint"):
            self._trust.enter_context(trusted_checkpoints())

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # After instantiation, so Lightning's own resolution of accelerator="auto" decides.
        self._warn_lagging_last_checkpoint()
        trainer = self.trainer
        precision = str(trainer.precision)
        if (
            precision.startswith("bf16")
            and isinstance(trainer.accelerator, CPUAccelerator)
            and not cpu_has_native_bf16()
        ):
            warnings.warn(
                f"trainer.precision={precision!r} on a CPU without native bf16 (no AVX512-BF16 "
                "or AMX): autocast is emulated there and training runs several times slower "
                "than in float32 (6x measured for regnetx_002). Pass --trainer.precision "
                "32-true on this machine.",
                stacklevel=2,
            )

    def _warn_lagging_last_checkpoint(self) -> None:
        plain = [
            cb for cb in self.trainer.checkpoint_callbacks
            if type(cb) is ModelCheckpoint and cb.save_last
        ]  # fmt: skip
        if plain and self.subcommand == "fit":
            warnings.warn(
                "lightning's ModelCheckpoint(save_last=...) rewrites last.ckpt only when it saves "
                "a top-k checkpoint at the same step, so last.ckpt can hold an older state than "
                "the end of the fit; use class_path: hpelib.callbacks.HPEModelCheckpoint (same "
                "arguments), whose last.ckpt is always the newest state.",
                stacklevel=2,
            )

    def before_validate(self) -> None:
        self._require_trained_weights()

    def before_test(self) -> None:
        self._require_trained_weights()

    def before_predict(self) -> None:
        self._require_trained_weights()

    def _require_trained_weights(self) -> None:
        """validate/test/predict read a checkpoint: with no ``--ckpt_path`` the model holds the
        fresh weights of its config (untrained; at most an ImageNet backbone), and its metrics
        would look like a result. That is an error unless ``--allow_untrained true``, or the
        config itself loads a whole trained model (``HPEModule.weights_loaded``, e.g. LEC-HPE's
        ``init_weights``)."""
        config = self._subcommand_config()
        if config.get("ckpt_path") is None:
            if config.get("allow_untrained") or getattr(self.model, "weights_loaded", False):
                return
            raise ValueError(
                f"hpelib {self.subcommand}: no --ckpt_path, so the model would run with the "
                "untrained weights of the config. Pass --ckpt_path last (the newest checkpoint "
                "of `hpelib fit` with this config) or a checkpoint file; --allow_untrained true "
                "runs the untrained model on purpose."
            )
        self._require_last_checkpoint()

    def _require_last_checkpoint(self) -> None:
        """``--ckpt_path last`` with no last checkpoint: stop with an error. Lightning only
        warns and then evaluates the untrained weights, which prints chance-level metrics
        that look like a result."""
        if self._subcommand_config().get("ckpt_path") != "last":
            return
        folders, found = [], set()
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                folders.append(str(callback.dirpath or self.trainer.default_root_dir))
                found |= callback._find_last_checkpoints(self.trainer)
        if not found:
            where = ", ".join(folders) if folders else "(no ModelCheckpoint callback in the config)"
            raise FileNotFoundError(
                f"--ckpt_path last: no last checkpoint (last*.ckpt) in {where}. Run `hpelib fit` "
                "with this config first (ModelCheckpoint with save_last: true), or pass a "
                "checkpoint file."
            )


def build_cli(args: list[str] | None = None, run: bool = True) -> HPECLI:
    """The ``hpelib fit|validate|test|predict`` CLI as the console script sets it up.

    ``run=False`` parses ``args`` and instantiates the model, datamodule and trainer without
    running a subcommand (``cli.model``, ``cli.datamodule``, ``cli.trainer``).
    """
    return HPECLI(
        HPEModule,
        HPEDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hpelib`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "export":
        from hpelib.export import main as export_main

        export_main(argv[1:])
        return
    if argv and argv[0] == "evaluate":
        from hpelib.evaluate import main as evaluate_main

        evaluate_main(argv[1:])
        return
    build_cli(args)


if __name__ == "__main__":
    main()
