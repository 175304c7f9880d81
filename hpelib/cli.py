"""``hpelib`` command line.

* ``hpelib fit | validate | test | predict --config X.yaml`` — LightningCLI;
* ``hpelib export --ckpt C --output model.onnx`` — ONNX export with a parity check;
* ``hpelib evaluate --config X.yaml --ckpt C [C ...] --variants original sa fa`` — one table.

Examples::

    hpelib fit --config examples/sixd.yaml
    hpelib test --config examples/sixd.yaml --ckpt_path last
"""

from __future__ import annotations

import sys
import warnings

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.base import HPEModule

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

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[override]
        parser.set_defaults({"seed_everything": 0})

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # After instantiation, so Lightning's own resolution of accelerator="auto" decides.
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

    def before_validate(self) -> None:
        self._require_last_checkpoint()

    def before_test(self) -> None:
        self._require_last_checkpoint()

    def before_predict(self) -> None:
        self._require_last_checkpoint()

    def _require_last_checkpoint(self) -> None:
        """``--ckpt_path last`` with no last checkpoint: stop with an error. Lightning only
        warns and then evaluates the untrained weights, which prints chance-level metrics
        that look like a result."""
        if self.config[self.subcommand].get("ckpt_path") != "last":
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
