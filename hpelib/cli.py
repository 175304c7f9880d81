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

from lightning.pytorch.cli import LightningCLI

from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.base import HPEModule

__all__ = ["HPECLI", "main"]


class HPECLI(LightningCLI):
    """LightningCLI preset for hpelib: any :class:`HPEModule` subclass by ``class_path``,
    the :class:`HPEDataModule`, and the ``seed_everything`` default of 0 for reproducibility."""

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[override]
        parser.set_defaults({"seed_everything": 0})


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
    HPECLI(
        HPEModule,
        HPEDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
