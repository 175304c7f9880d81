"""ONNX export of a trained hpelib method with a parity check against torch.

``hpelib export --ckpt run/last.ckpt --output model.onnx`` writes a graph with input
``image`` ``(batch, 3, S, S)`` (already normalised as in training; the preprocessing is
recorded in the model's metadata under ``hpelib_preprocessing``, the method's class path
under ``hpelib_method``) and one output per tensor the method returns (always ``rotation``
``(batch, 3, 3)`` first, then the others by name, e.g. OpNet's ``rotation_cov``), then runs
it with onnxruntime (``pip install hpelib[onnx]``) on random inputs and compares with the
torch outputs. The file is written only once the graph has passed that check (atomically:
an existing file at ``--output`` stays whole until then).

A method that uses an operation ONNX has no form of (e.g. SixD's ``representation="9d"``,
an SVD) is an :class:`ExportError` naming the method and the operator.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import pickle
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from hpelib.checkpoint_io import add_trust_checkpoint_argument, atomic_write

if TYPE_CHECKING:
    import onnx

    from hpelib.predict import Predictor

__all__ = ["ExportError", "OPSETS", "export_onnx", "module_to_onnx", "onnx_parity", "main"]


def _exporter_opsets() -> range:
    try:
        from torch.onnx import _constants

        return range(_constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1)
    except (ImportError, AttributeError):  # a private module: torch 2.x's range otherwise
        return range(7, 21)


#: Opsets of torch's TorchScript-based ONNX exporter (the one hpelib uses).
OPSETS: range = _exporter_opsets()

_INSTALL = "pip install 'hpelib[onnx]'"


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported: an operator without an ONNX form, an invalid
    graph, or a graph whose outputs differ from torch's (the message names the file)."""


class _OutputsAsTuple(nn.Module):
    """ONNX graphs need positional outputs: the method's dict in a fixed key order."""

    def __init__(self, module: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.keys = tuple(keys)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        outputs = self.module(image)
        return tuple(outputs[k] for k in self.keys)


def _tensor_keys(module: nn.Module, example: Tensor) -> list[str]:
    """The batched tensor outputs of ``module`` on ``example`` ``(B, 3, S, S)``:
    ``rotation`` first, then the others sorted by name."""
    with torch.no_grad():
        outputs = module(example)
    keys = [
        k for k, v in outputs.items() if isinstance(v, Tensor) and v.shape[:1] == example.shape[:1]
    ]
    return ["rotation"] + sorted(k for k in keys if k != "rotation")


def onnx_parity(
    model: str | Path | bytes,
    module: nn.Module,
    keys: Sequence[str],
    image_size: int,
    batch: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Max absolute difference per output between onnxruntime and torch on random inputs.

    Args:
        model: the ONNX file, or its serialised bytes.
        module: the torch method (put in eval mode here).
        keys: the graph's output names, in order (each a key of ``module``'s output dict).
        image_size: side ``S`` of the ``(batch, 3, S, S)`` standard-normal input.
        batch: batch size; differs from the export's (2) so that a batch size baked into
            the graph shows up here.
        seed: seed of the random input.

    Returns:
        ``{key: max |onnx - torch|}``; NaN where one side has a NaN the other has not.
    """
    pairs = _parity_outputs(model, module, keys, image_size, batch, seed)
    return {k: _max_abs_difference(g, e) for k, (g, e) in pairs.items()}


def _parity_outputs(
    model: str | Path | bytes,
    module: nn.Module,
    keys: Sequence[str],
    image_size: int,
    batch: int = 3,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{key: (onnxruntime output, torch output)}`` on one random input (see
    :func:`onnx_parity` for the arguments)."""
    ort = _import_onnxruntime("the ONNX parity check")
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    module = module.eval()
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = module(x)
    return {k: (g, expected[k].numpy()) for k, g in zip(keys, got, strict=True)}


def _agree(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> bool:
    """``|got - expected| <= atol + rtol |expected|`` everywhere (NaN only where both are):
    float32 rounding grows with the values, e.g. OpNet's covariances in the hundreds."""
    return got.shape == expected.shape and bool(
        np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    )


def _max_abs_difference(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return float("inf")
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))  # equal infs/NaNs agree
    diff = np.where(same, 0.0, np.abs(got.astype(np.float64) - expected.astype(np.float64)))
    return float(diff.max(initial=0.0))


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
    trust_checkpoint: bool | None = None,
    rtol: float = 1e-5,
) -> dict[str, float]:
    """Export ``checkpoint`` to ONNX at ``output``; returns the parity errors per output
    (max absolute difference; empty if ``check`` is False). Every output element must agree
    with torch's to ``atol + rtol * |torch's value|``.

    The checkpoint is read as by :func:`hpelib.load` (``trust_checkpoint`` likewise). Errors
    name the file: ``ValueError`` for an opset outside :data:`OPSETS`, an ``output`` that is
    the checkpoint or a folder, or a checkpoint that is not an hpelib one;
    ``FileNotFoundError`` for a missing checkpoint; ``ImportError`` without ``onnx`` (or
    ``onnxruntime`` when ``check``); :class:`ExportError` for an operator without an ONNX
    form or an output that differs from torch's by more than that (nothing is written
    then).
    """
    from hpelib.predict import load

    checkpoint, output = Path(checkpoint), Path(output)
    _check_arguments(checkpoint, output, opset)
    onnx = _import_onnx(f"exporting {str(checkpoint)!r}")
    if check:
        _import_onnxruntime(
            f"the parity check of {str(output)!r}", "; or skip the check: --check false"
        )
    predictor = load(checkpoint, trust_checkpoint=trust_checkpoint)
    module = predictor.module.eval()
    method = type(module).__name__
    size = predictor.image_size
    model, keys = module_to_onnx(
        module, torch.zeros(2, 3, size, size), opset, f"{method} ({str(checkpoint)!r})"
    )
    _check_graph(onnx, model, f"{method} ({str(checkpoint)!r})")
    _write_metadata(model, predictor)
    data = model.SerializeToString()
    errors: dict[str, float] = {}
    if check:
        pairs = _parity_outputs(data, module, keys, size)
        errors = {k: _max_abs_difference(g, e) for k, (g, e) in pairs.items()}
        bad = [k for k, (g, e) in pairs.items() if not _agree(g, e, atol, rtol)]
        if bad:
            raise ExportError(
                f"ONNX parity check of {method} ({str(checkpoint)!r}) failed: max abs difference "
                f"{', '.join(f'{k} {errors[k]:.2e}' for k in bad)} (atol={atol:g}, "
                f"rtol={rtol:g}); {str(output)!r} was not written (--check false writes it unchecked)"
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, data)
    return errors


def _check_arguments(checkpoint: Path, output: Path, opset: int) -> None:
    """Refuse, before any work, an unknown opset and an output that would destroy the
    checkpoint (the user's input) or is a folder."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ValueError(
            f"cannot export {str(checkpoint)!r}: opset {opset!r} is not one torch's ONNX exporter "
            f"supports ({OPSETS.start}..{OPSETS.stop - 1}; default 17)"
        )
    if output.is_dir():
        raise ValueError(f"output {str(output)!r} is a folder; give a file name such as model.onnx")
    same = output.resolve() == checkpoint.resolve()
    with contextlib.suppress(OSError):
        same = same or (output.exists() and os.path.samefile(output, checkpoint))
    if same:
        raise ValueError(
            f"output {str(output)!r} is the checkpoint being exported; writing it would destroy "
            "the checkpoint"
        )


def _import_onnx(purpose: str) -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"{purpose} needs the onnx package: {_INSTALL}") from err
    return onnx


def _import_onnxruntime(purpose: str, hint: str = "") -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"{purpose} needs the onnxruntime package: {_INSTALL}{hint}") from err
    return onnxruntime


def _flush_all() -> None:
    """Flush Python's and the C library's output buffers (C++ ``std::cout`` writes through
    the latter, fully buffered when it is not a terminal)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _output_captured() -> Iterator[Callable[[], str]]:
    """Send file descriptors 1 and 2 to a temporary file for the block; yields a reader.

    torch's TorchScript exporter prints the whole TorchScript graph (hundreds of lines, on
    the C++ stdout) when it fails, and the reason of an operator failing inside a Python
    autograd function only on the C++ stderr: both are kept out of the terminal and read.
    """
    _flush_all()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no descriptor 1 or 2 (a detached process): nothing to capture
        yield str
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)

        def read() -> str:
            _flush_all()
            tmp.seek(0)
            return tmp.read().decode(errors="replace")

        try:
            yield read
        finally:
            _flush_all()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def module_to_onnx(
    module: nn.Module, example: Tensor, opset: int = 17, what: str | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """Trace a method's network into an in-memory ONNX model (no file, no parity check).

    Args:
        module: returns a dict of tensors for ``images (B, C, S, S)`` (an :class:`HPEModule`
            or a bare model such as :class:`~hpelib.methods.opnet.OpNetModel`); traced in
            eval mode.
        example: ``(B, C, S, S)`` input fixing ``C`` and ``S`` (the batch size stays free;
            use ``B >= 2`` so that a batch size of 1 is not baked in).
        opset: one of :data:`OPSETS`.
        what: how errors name the model (default: its class name).

    Returns:
        The model (input ``image``; outputs ``rotation`` first, then the other batched
        tensor outputs by name) and its output names.

    Raises:
        ExportError: an operator without an ONNX form, naming ``what`` and the operator.
    """
    what = what or type(module).__name__
    module = module.eval()
    keys = _tensor_keys(module, example)
    return _trace_to_onnx(module, keys, example, opset, what), keys


def _trace_to_onnx(
    module: nn.Module, keys: Sequence[str], example: Tensor, opset: int, what: str
) -> onnx.ModelProto:
    """Trace ``module`` (its outputs ``keys``) on ``example`` into an in-memory ONNX model;
    an operator without an ONNX form is an :class:`ExportError` naming ``what`` and it."""
    import onnx

    buffer = io.BytesIO()
    with _output_captured() as log, warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and the tracer's notes on Python-side
        # shape checks: the parity check on another batch size is what guards the trace.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            # The wrapper must be in eval mode: the exporter restores the wrapper's mode
            # afterwards, recursively, which would leave BatchNorm in training mode.
            torch.onnx.export(
                _OutputsAsTuple(module, keys).eval(),
                (example,),
                buffer,
                input_names=["image"],
                output_names=list(keys),
                dynamic_axes={"image": {0: "batch"}, **{k: {0: "batch"} for k in keys}},
                opset_version=opset,
                dynamo=False,
                verbose=False,
            )
        except Exception as err:
            raise ExportError(_unsupported_message(what, opset, err, log())) from err
        noise = log()
    if noise.strip():  # a successful export's C++ warnings still reach the user
        print(noise, file=sys.stderr, end="")
    return onnx.load_from_string(buffer.getvalue())


def _unsupported_message(what: str, opset: int, err: Exception, log: str) -> str:
    """The reason an export failed, in one line: the operator torch could not convert, or
    the first line of torch's message.

    An operator failing inside a Python autograd function (roma's SVD-based Procrustes) is
    reported only in the C++ ``log``; the exception then names a later, innocent operator
    (``aten::flatten``), so the log's operators come first and replace it.
    """
    message = str(err)
    ops = re.findall(r"Exporting the operator '([^']+)'", log)
    ops = ops or re.findall(r"Exporting the operator '([^']+)'", message)
    ops = ops or re.findall(r"[Cc]ouldn't export operator '?([\w.]+::[\w.]+)", message)
    python_ops = list(dict.fromkeys(re.findall(r"Unable to inline PythonOp: (\w+)", log)))
    inside = f" (in the autograd function {', '.join(python_ops)})" if python_ops else ""
    if ops:
        names = ", ".join(dict.fromkeys(ops))
        return (
            f"cannot export {what} to ONNX opset {opset}: operator {names}{inside} has no ONNX "
            "conversion; use an option of the method without it, or give the method a form of "
            "it built from ONNX operators"
        )
    first = message.strip().splitlines()[0] if message.strip() else type(err).__name__
    return f"cannot export {what} to ONNX opset {opset}: {first}"


def _check_graph(onnx: Any, model: onnx.ModelProto, what: str) -> None:
    """The model is valid and uses only standard ONNX operators (a torch operator passed
    through as a custom node would load nowhere)."""
    custom = sorted(
        {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    )
    if custom:
        raise ExportError(f"cannot export {what}: the graph has non-standard operators {custom}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"the ONNX graph of {what} is invalid: {err}") from err


def _preprocessing_record(predictor: Predictor) -> dict[str, Any]:
    """What a user of the graph must do to an image: the predictor's record when it has
    one, else input size, normalisation and grayscale; plus the rotation convention."""
    record = getattr(predictor, "preprocessing", None)
    if record is None:
        record = {
            "image_size": predictor.image_size,
            "mean": predictor.mean.flatten().tolist(),
            "std": predictor.std.flatten().tolist(),
            "grayscale": predictor.grayscale,
        }
    return {
        **record,
        "rotation_convention": record.get(
            "rotation_convention",
            "hpelib internal: head->camera, x right, y down, z into the scene",
        ),
    }


def _write_metadata(model: onnx.ModelProto, predictor: Predictor) -> None:
    """Record the preprocessing (JSON) and the method's class path in ``model``."""
    module = predictor.module
    entries = {
        "hpelib_preprocessing": json.dumps(_preprocessing_record(predictor)),
        "hpelib_method": f"{type(module).__module__}.{type(module).__qualname__}",
    }
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


#: What ``hpelib export`` reports as one line (``hpelib export: ...``), without a traceback.
_USER_ERRORS = (ExportError, ImportError, OSError, ValueError, pickle.UnpicklingError)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """``hpelib export`` entry point; prints the parity errors."""
    parser = argparse.ArgumentParser(
        prog="hpelib export", description="Export a checkpoint to ONNX."
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--opset", type=int, default=17, help=f"{OPSETS.start}..{OPSETS.stop - 1}")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    parser.add_argument("--atol", type=float, default=1e-4, help="parity: absolute tolerance")
    parser.add_argument("--rtol", type=float, default=1e-5, help="parity: relative tolerance")
    add_trust_checkpoint_argument(parser)
    args = parser.parse_args(argv)
    try:
        errors = export_onnx(
            args.ckpt, args.output, args.opset, not args.no_check, args.atol,
            args.trust_checkpoint, rtol=args.rtol,
        )  # fmt: skip
    except _USER_ERRORS as err:
        raise SystemExit(f"hpelib export: {err}") from err
    print(f"wrote {args.output}")
    for key, err in errors.items():
        print(f"parity {key}: max abs difference {err:.2e}")
    return errors
