"""``hpelib`` command line (docs/cli.md).

* ``hpelib fit | validate | test | predict --config X.yaml`` — LightningCLI;
* ``hpelib export --ckpt C --output model.onnx`` — ONNX export with a parity check;
* ``hpelib evaluate --config X.yaml --ckpt C [C ...] --variants original sa fa`` — one table.
* ``hpelib convert --from 6drepnet --input X.pth --output Y.ckpt`` — released weights -> hpelib.

Every subcommand spells its options one way, LightningCLI's: ``--name value`` with
underscores, booleans as ``--check false``. The earlier spellings of export/evaluate
(``--no-check``, ``--batch-size 8``, a bare ``--trust_checkpoint``) still work, with a
``FutureWarning``.

Dataset specs take dotted overrides that are checked when the command line is parsed:
``--data.train.root /data/300W_LP`` (a name spec), ``--data.train.init_args.num_samples 512``
(a class_path spec), ``--data.test.aflw2000.root X``, ``--data.train.0.weight 2`` (a list).

Examples::

    hpelib fit --config examples/sixd.yaml
    hpelib test --config examples/sixd.yaml --ckpt_path last
    hpelib predict --config examples/sixd.yaml --ckpt_path last \\
        --data.predict '{name: folder, root: faces/, image_size: 64}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from hpelib.checkpoint_io import TRUST_CHECKPOINT_HELP, read_checkpoint, trusted_checkpoints
from hpelib.data.datamodule import HPEDataModule, dataset_spec_problems
from hpelib.methods.base import HPEModule, method_class
from hpelib.specs import plain_spec

__all__ = [
    "HPECLI",
    "HPESaveConfigCallback",
    "TOOL_SUBCOMMANDS",
    "apply_spec_override",
    "build_cli",
    "cpu_has_native_bf16",
    "main",
    "run_tool",
    "split_spec_overrides",
    "tool_parser",
]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast
    speeds training up; elsewhere oneDNN emulates it (measured: regnetx_002 at 64 px on an
    AVX2-only 2-core CPU trained 6x slower under ``bf16-mixed`` than in float32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


# ------------------------------------------------------------------------- export, evaluate
@dataclass(frozen=True)
class _Tool:
    """A subcommand that is not a Trainer method: a jsonargparse parser in LightningCLI's
    option style, the old argparse spellings it still reads, and how it runs."""

    help: str
    #: Adds the options to a parser; returns old flag -> (new flag, value for an old flag
    #: that took none, or None: keep the value given).
    add_arguments: Callable[[ArgumentParser], dict[str, tuple[str, str | None]]]
    run: Callable[[Namespace], Any]


def _export_arguments(parser: ArgumentParser) -> dict[str, tuple[str, str | None]]:
    parser.add_argument("--ckpt", type=str, required=True, help="checkpoint written by hpelib fit")
    parser.add_argument("--output", type=str, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument(
        "--check", type=bool, default=True,
        help="compare onnxruntime's outputs with torch's on random inputs (pip install "
        "'hpelib[onnx]'); false skips it",
    )  # fmt: skip
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed parity difference")
    parser.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_CHECKPOINT_HELP)
    return {"--no-check": ("--check", "false"), "--trust-checkpoint": ("--trust_checkpoint", "true")}


def _run_export(args: Namespace) -> Any:
    from hpelib.export import main as export_main

    # hpelib.export's own argparse entry point (its prints and error handling), given the
    # flags in its spelling.
    argv = ["--ckpt", args.ckpt, "--output", args.output, "--opset", str(args.opset)]
    argv += ["--atol", repr(float(args.atol))]
    argv += [] if args.check else ["--no-check"]
    argv += ["--trust_checkpoint"] if args.trust_checkpoint else []
    return export_main(argv)


def _mirror_argparse(
    parser: ArgumentParser, source: argparse.ArgumentParser
) -> dict[str, tuple[str, str | None]]:
    """Add ``source``'s options to ``parser`` in LightningCLI's style: ``--dest`` spelt with
    underscores, ``store_true`` flags as booleans with a value (``--no_x`` as ``--x false``).
    Mirrored, not copied, so an option added to the tool's own parser appears here too."""
    legacy: dict[str, tuple[str, str | None]] = {}
    for action in source._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            inverted = action.dest.startswith("no_")
            flag = "--" + (action.dest[3:] if inverted else action.dest)
            parser.add_argument(flag, type=bool, default=inverted, help=action.help)
            legacy |= {o: (flag, "false" if inverted else "true") for o in action.option_strings if o != flag}
            continue
        flag = "--" + action.dest
        # Choices as a Literal type: the help then shows them, not an internal checker.
        kind = Literal[tuple(action.choices)] if action.choices else action.type or str
        options = {"nargs": action.nargs} if action.nargs is not None else {}
        parser.add_argument(
            flag, type=kind if action.default is not None or action.required else Optional[kind],  # noqa: UP045
            default=action.default, required=action.required, help=action.help, **options,
        )  # fmt: skip
        legacy |= {o: (flag, None) for o in action.option_strings if o != flag}
    return legacy


def _argparse_argv(source: argparse.ArgumentParser, args: Namespace) -> list[str]:
    """``args`` parsed by :func:`_mirror_argparse`'s options -> ``source``'s argv."""
    argv: list[str] = []
    for action in source._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            inverted = action.dest.startswith("no_")
            value = args.get(action.dest[3:] if inverted else action.dest)
            argv += [flag] if bool(value) != inverted else []
            continue
        value = args.get(action.dest)
        if value is None:
            continue
        argv += [flag, *map(str, value)] if isinstance(value, list | tuple) else [flag, str(value)]
    return argv


def _evaluate_source() -> argparse.ArgumentParser:
    from hpelib.evaluate import _parser

    return _parser()


def _run_evaluate(args: Namespace) -> Any:
    from hpelib.evaluate import main as evaluate_main

    return evaluate_main(_argparse_argv(_evaluate_source(), args))


def _convert_source() -> argparse.ArgumentParser:
    from hpelib.weights.convert import _parser

    return _parser()


def _convert_main(argv: list[str]) -> Any:
    from hpelib.weights.convert import main as convert_main

    return convert_main(argv)


#: ``hpelib export`` and ``hpelib evaluate``: listed by ``hpelib --help`` with the Trainer's.
TOOL_SUBCOMMANDS: dict[str, _Tool] = {
    "export": _Tool(
        help="Export a checkpoint to ONNX, with a parity check against torch.",
        add_arguments=_export_arguments,
        run=_run_export,
    ),
    "evaluate": _Tool(
        help="Evaluation tables: checkpoints x test sets (and SA/FA/occluded variants), "
        "CSV + Markdown + error CDF plots.",
        add_arguments=lambda parser: _mirror_argparse(parser, _evaluate_source()),
        run=_run_evaluate,
    ),
    "convert": _Tool(
        help="Convert released weights of another project (6DRepNet, 6DRepNet360) into an "
        "hpelib checkpoint (docs/weights.md).",
        add_arguments=lambda parser: _mirror_argparse(parser, _convert_source()),
        run=lambda args: _convert_main(_argparse_argv(_convert_source(), args)),
    ),
}


def _tool_parser_and_legacy(name: str) -> tuple[ArgumentParser, dict[str, tuple[str, str | None]]]:
    tool = TOOL_SUBCOMMANDS[name]
    parser = ArgumentParser(prog=f"hpelib {name}", description=tool.help)
    return parser, tool.add_arguments(parser)


def tool_parser(name: str) -> ArgumentParser:
    """The jsonargparse parser of ``hpelib export`` or ``hpelib evaluate``."""
    return _tool_parser_and_legacy(name)[0]


def _bool_flags(parser: ArgumentParser) -> set[str]:
    return {
        o for a in parser._actions for o in a.option_strings
        if getattr(a, "_typehint", None) is bool
    }  # fmt: skip


def _modernise(name: str, argv: Sequence[str]) -> list[str]:
    """The old spellings of a tool's options -> LightningCLI's, each with a FutureWarning:
    hyphens (``--batch-size``), flags without a value (``--no-check``, ``--trust_checkpoint``)."""
    parser, legacy = _tool_parser_and_legacy(name)
    bools = _bool_flags(parser)
    out: list[str] = []
    for i, token in enumerate(argv):
        flag, eq, value = token.partition("=")
        bare = not eq and (i + 1 == len(argv) or argv[i + 1].startswith("--"))
        if flag in legacy:
            new, implied = legacy[flag]
            shown = f"{new} {implied}" if implied is not None else new
            warnings.warn(
                f"hpelib {name}: {flag} is deprecated, write {shown}", FutureWarning, stacklevel=3
            )
            out += [new, implied] if implied is not None else [f"{new}{eq}{value}" if eq else new]
        elif token in bools and bare:
            warnings.warn(
                f"hpelib {name}: {token} without a value is deprecated, write {token} true",
                FutureWarning, stacklevel=3,
            )  # fmt: skip
            out += [token, "true"]
        else:
            out.append(token)
    return out


def run_tool(name: str, argv: Sequence[str]) -> Any:
    """Parse ``argv`` (old spellings accepted) and run ``hpelib export`` / ``evaluate``."""
    args = tool_parser(name).parse_args(_modernise(name, argv))
    return TOOL_SUBCOMMANDS[name].run(args)


# ------------------------------------------------------------------- dataset spec overrides
_DATA_STAGES = ("train", "val", "test", "predict")
_SPEC_OVERRIDE = re.compile(r"^--data\.(train|val|test|predict)\.(.+)$")


@dataclass(frozen=True)
class SpecOverride:
    """``--data.<stage>.<path> <value>`` from the command line."""

    stage: str
    path: tuple[str, ...]
    value: Any
    flag: str


def _parse_value(text: str) -> Any:
    """A command-line value as jsonargparse reads one: YAML (``512`` -> int, ``null``,
    ``[1, 2]``), and ``1e-4`` as a float (YAML 1.1 would keep it a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value) if re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", value) else value
    return value


def split_spec_overrides(argv: Sequence[str]) -> tuple[list[str], list[SpecOverride]]:
    """Take the dotted dataset-spec overrides (``--data.train.root X``,
    ``--data.test.aflw2000.root=X``) out of ``argv``: jsonargparse cannot merge them into an
    untyped spec (it replaces the whole spec by the one key, which fails much later)."""
    rest: list[str] = []
    found: list[SpecOverride] = []
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        match = _SPEC_OVERRIDE.match(flag)
        if match is None:
            rest.append(argv[i])
            i += 1
            continue
        if not eq:
            if i + 1 == len(argv):
                raise ValueError(f"{flag} expects a value")
            value, i = argv[i + 1], i + 1
        found.append(SpecOverride(match[1], tuple(match[2].split(".")), _parse_value(value), flag))
        i += 1
    return rest, found


def apply_spec_override(spec: Any, path: Sequence[str], value: Any, flag: str = "") -> Any:
    """``spec`` (a dataset spec, a list of them, ``{set: spec}``, or None) with the key at
    ``path`` set to ``value``; the input is not modified.

    In a ``class_path`` spec the keys other than ``class_path``/``init_args``/``weight``/
    ``label`` are constructor arguments (``root`` = ``init_args.root``, as jsonargparse reads
    class specs); in a name spec the arguments sit beside ``name`` (``init_args.root`` =
    ``root``); in a list the first key is the item's index (a one-item list may omit it).
    """
    if not path:
        return value
    head, tail = path[0], path[1:]
    if isinstance(spec, list | tuple):
        items = list(spec)
        if head.isdigit():
            if int(head) >= len(items):
                raise ValueError(f"{flag}: the list has {len(items)} dataset specs (0..{len(items) - 1})")
            items[int(head)] = apply_spec_override(items[int(head)], tail, value, flag)
        elif len(items) == 1:
            items[0] = apply_spec_override(items[0], path, value, flag)
        else:
            raise ValueError(
                f"{flag}: the spec is a list of {len(items)} datasets; name the item by its "
                f"index, e.g. {flag.replace(head, '0.' + head, 1) if flag else '0.' + head}"
            )
        return items
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{flag}: cannot set {'.'.join(path)} inside {spec!r}")
    out = dict(spec)
    if "class_path" in out and head not in ("class_path", "init_args", "weight", "label"):
        head, tail = "init_args", tuple(path)  # a constructor argument
    elif "name" in out and head == "init_args":
        return apply_spec_override(out, tail, value, flag) if tail else {**out, **dict(value)}
    out[head] = apply_spec_override(out.get(head), tail, value, flag)
    return out


def _print_config_flags(argv: Sequence[str]) -> bool:
    return any(t == "--print_config" or t.startswith("--print_config=") for t in argv)


def _free_name(path: Path) -> Path:
    """``path``, or ``stem_1.suffix``, ``stem_2.suffix``... the first that does not exist."""
    n, candidate = 0, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


class HPESaveConfigCallback(SaveConfigCallback):
    """Lightning's config saving (``config.yaml`` in the log folder, replacing an earlier
    run's), except over a config file this run reads: ``hpelib fit --config
    runs/x/config.yaml`` whose log folder is ``runs/x`` saves ``config_1.yaml`` beside it
    instead of rewriting the user's input (with the command line's overrides in it)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            # trainer.log_dir broadcasts: every rank asks for it, not only rank 0.
            target = Path(trainer.log_dir or ".") / self.config_filename
            inputs = {Path(str(p)).resolve() for p in (self.config.get("config") or [])}
            if trainer.is_global_zero and target.resolve() in inputs:
                free = _free_name(target)
                warnings.warn(
                    f"the config of this run is saved as {free}, not over {target}, which it "
                    "was read from",
                    stacklevel=2,
                )
                self.config_filename = free.name
        super().setup(trainer, pl_module, stage)


class _ToolRan(Exception):
    """``hpelib export``/``evaluate`` ran from HPECLI's parse: nothing else is to be done."""


class HPECLI(LightningCLI):
    """LightningCLI preset for hpelib: any :class:`HPEModule` subclass by ``class_path``,
    the :class:`HPEDataModule`, and the ``seed_everything`` default of 0 for reproducibility.

    On top of LightningCLI: ``export`` and ``evaluate`` subcommands, dotted dataset-spec
    overrides checked at parse time (:func:`split_spec_overrides`), a
    :class:`~hpelib.callbacks.PredictionWriter` for ``predict`` when the config has no
    prediction writer, and one results table after ``test`` (hpelib's).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # --trust_checkpoint holds for this CLI run (model construction, --ckpt_path
        # restore), not for later work in the same Python process.
        self._trust = contextlib.ExitStack()
        #: What ``export``/``evaluate`` returned when run through this class.
        self.tool_result: Any = None
        with self._trust:
            try:
                super().__init__(*args, **kwargs)
            except _ToolRan:
                pass  # no model, datamodule or trainer for export/evaluate

    def _add_subcommands(self, parser: Any, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # `hpelib --help` lists export/evaluate beside the Trainer's subcommands. jsonargparse
        # keeps the subcommands action of add_subcommands() on the parser.
        action = parser._subcommands_action
        for name, tool in TOOL_SUBCOMMANDS.items():
            action.add_subcommand(name, tool_parser(name), help=tool.help)

    def _parsed_section(self) -> Any:
        """The parsed config of the subcommand (the whole config without subcommands)."""
        sub = self.config.get("subcommand")
        return self.config[sub] if sub else self.config

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """LightningCLI's parse, plus: old export/evaluate spellings, dotted overrides of the
        dataset specs (``--data.train.root X``) merged into the config's specs, and every
        dataset spec checked against its constructor, so a wrong key stops here
        (exit status 2, the message naming the key) instead of failing later."""
        if isinstance(args, dict | Namespace):
            super().parse_arguments(parser, args)
        else:
            argv = list(sys.argv[1:] if args is None else args)
            if argv and argv[0] in TOOL_SUBCOMMANDS:
                argv = [argv[0], *_modernise(argv[0], argv[1:])]
            try:
                argv, overrides = split_spec_overrides(argv)
            except ValueError as err:
                parser.exit(2, f"hpelib: error: {err}\n")
            if overrides:
                argv = self._merge_spec_overrides(parser, argv, overrides)
            self.config = parser.parse_args(argv)
        sub = self.config.get("subcommand")
        if sub in TOOL_SUBCOMMANDS:
            self.tool_result = TOOL_SUBCOMMANDS[sub].run(self.config[sub])
            raise _ToolRan
        data = self._parsed_section().get("data")
        if data is not None:
            self._exit_on_spec_problems(parser, {s: data.get(s) for s in _DATA_STAGES})

    def _merge_spec_overrides(
        self, parser: Any, argv: list[str], overrides: list[SpecOverride]
    ) -> list[str]:
        """Parse once without the overrides (and without ``--print_config``, which would
        print and exit) to read the specs the config files give, apply the overrides, check
        the result, and return ``argv`` with each changed spec given whole
        (``--data.train={...}``), so that the second parse, ``--print_config`` and the saved
        config.yaml all hold the merged spec."""
        self.config = parser.parse_args([t for t in argv if not _print_config_flags([t])])
        data = self._parsed_section().get("data")
        specs: dict[str, Any] = {}
        for o in overrides:
            base = specs[o.stage] if o.stage in specs else plain_spec(data.get(o.stage))
            try:
                specs[o.stage] = apply_spec_override(base, o.path, o.value, o.flag)
            except ValueError as err:
                parser.exit(2, f"hpelib: error: {err}\n")
        self._exit_on_spec_problems(parser, specs)
        return argv + [f"--data.{stage}={json.dumps(spec, default=str)}" for stage, spec in specs.items()]

    def _exit_on_spec_problems(self, parser: Any, specs: dict[str, Any]) -> None:
        problems = [
            p
            for stage, spec in specs.items()
            for p in dataset_spec_problems(plain_spec(spec), f"data.{stage}", sets=stage == "test")
        ]
        if problems:
            sub = self.config.get("subcommand") if self.config is not None else None
            parser.exit(2, f"hpelib {sub or ''}: error: " + "\n  ".join(problems) + "\n")

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
        (which also does it for checkpoints of notebook runs, through ``hpelib_class_path``).

        The checkpoint's weights replace the initial ones, so the model's init-only arguments
        (:attr:`hpelib.methods.HPEModule.INIT_ONLY_HPARAMS`: ``pretrained``,
        ``backbone_weights``, CLERF ``encoder_checkpoint``...) get their loading values: no
        ImageNet download, no initial-weights file. That holds for a checkpoint file, and for
        ``validate``/``test``/``predict`` with ``last``/``best`` too (``fit --ckpt_path last``
        may find no checkpoint and train from the config's initial weights: left alone)."""
        if not self.config.get("subcommand"):
            return
        subcommand = self.config.subcommand
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if not Path(ckpt_path).is_file():
            if subcommand in ("validate", "test", "predict"):
                self._use_loading_hparams(None)
            return
        ckpt = read_checkpoint(ckpt_path, trust_checkpoint=bool(config.get("trust_checkpoint")))
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        # Checkpoints of a notebook run have no "_class_path": hpelib's own record names it.
        class_path = hparams.pop("_class_path", None) or ckpt.get("hpelib_class_path")
        if hparams:
            if class_path is not None:
                cls = method_class(class_path, f"checkpoint {str(ckpt_path)!r}")
                hparams = cls.hparams_for_loading(hparams, ckpt.get("state_dict"))
                hparams = {"class_path": class_path, "dict_kwargs": hparams}
            try:
                self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
            except SystemExit:
                sys.stderr.write(f"Parsing the hyper-parameters of --ckpt_path {ckpt_path} failed!\n")
                raise
        self._use_loading_hparams(ckpt.get("state_dict"))

    def _use_loading_hparams(self, state_dict: dict[str, Any] | None) -> None:
        """Give the subcommand's model config the loading values of its init-only arguments
        (:meth:`hpelib.methods.HPEModule.hparams_for_loading`), wherever the config holds them
        (``init_args`` or the ``dict_kwargs`` a checkpoint's hyper-parameters went to)."""
        model = self.config[self.config.subcommand].get("model")
        class_path = model.get("class_path") if model is not None else None
        if class_path is None:
            return
        try:
            cls = method_class(class_path, "the config's model")
        except ValueError:  # jsonargparse has checked it is an HPEModule: use its own
            from hpelib.specs import import_object

            cls = import_object(class_path)
        for group in ("init_args", "dict_kwargs"):
            values = model.get(group)
            if not values:
                continue
            plain = values.as_dict() if hasattr(values, "as_dict") else dict(values)
            for key, value in cls.hparams_for_loading(plain, state_dict).items():
                if key in plain and plain[key] != value:
                    values[key] = value

    def before_instantiate_classes(self) -> None:
        if self._subcommand_config().get("trust_checkpoint"):
            self._trust.enter_context(trusted_checkpoints())

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.subcommand == "predict":
            self._add_prediction_writer()
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

    def _add_prediction_writer(self) -> None:
        """``hpelib predict`` writes its predictions: a default
        :class:`~hpelib.callbacks.PredictionWriter` (``predictions.csv`` in
        ``trainer.default_root_dir``) unless the config has a prediction writer."""
        from hpelib.callbacks import PredictionWriter

        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def before_validate(self) -> None:
        self._require_trained_weights()

    def before_test(self) -> None:
        self._require_trained_weights()
        self._one_results_table()

    def _one_results_table(self) -> None:
        """After ``hpelib test`` print hpelib's results table (one row per test set,
        :meth:`HPEModule.on_test_epoch_end`), not Lightning's as well, which repeats every
        key per dataloader. Both print only when the test loop is verbose (``verbose=False``
        would silence hpelib's too), so the loop stays verbose and its printer, for this
        CLI run's trainer, shows only what hpelib's table does not (a ``range_angle``
        breakdown), each key once."""
        if isinstance(self.model, HPEModule):
            loop = self.trainer.test_loop
            loop._print_results = _results_beyond_hpelib_table(type(loop)._print_results)  # type: ignore[method-assign]

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


#: Metric keys that hpelib's test table shows (per-angle MAE, MAE, geodesic) or that are not
#: results (the loss); Lightning's table leaves them out under ``hpelib test``.
_IN_HPELIB_TABLE = ("_mae", "/mae", "/geodesic", "/loss")


def _results_beyond_hpelib_table(
    print_results: Callable[[list[dict[str, Any]], str], None],
) -> Callable[[list[dict[str, Any]], str], None]:
    """Lightning's results printer limited to the keys hpelib's table does not show."""

    def rest_only(results: list[dict[str, Any]], stage: str) -> None:
        rest = [{k: v for k, v in r.items() if not k.endswith(_IN_HPELIB_TABLE)} for r in results]
        if any(rest):
            print_results(rest, stage)

    return rest_only


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
        save_config_callback=HPESaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hpelib`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOL_SUBCOMMANDS:
        # Without building the Trainer's parsers (seconds): the tools need none of them.
        run_tool(argv[0], argv[1:])
        return
    build_cli(args)


if __name__ == "__main__":
    main()
