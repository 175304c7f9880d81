"""ONNX export of a trained hpelib method with a parity check against torch.

``hpelib export --ckpt run/last.ckpt --output model.onnx`` writes a graph with input
``image`` ``(batch, 3, S, S)`` (already normalised as in training; the normalisation is
recorded in the model's metadata) and one output per tensor the method returns (always
``rotation`` ``(batch, 3, 3)``), then runs it with onnxruntime (``pip install hpelib[onnx]``)
on random inputs and compares with the torch outputs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hpelib.checkpoint_io import add_trust_checkpoint_argument

__all__ = ["export_onnx", "onnx_parity", "main"]


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
    with torch.no_grad():
        outputs = module(example)
    keys = [k for k, v in outputs.items() if isinstance(v, Tensor) and v.shape[:1] == example.shape[:1]]
    return ["rotation"] + sorted(k for k in keys if k != "rotation")


def onnx_parity(path: str | Path, module: nn.Module, keys: Sequence[str], image_size: int, batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Max absolute difference per output between onnxruntime and torch on random inputs."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("the ONNX parity check needs onnxruntime: pip install 'hpelib[onnx]'") from err
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    module = module.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = module(x)
    return {k: float(np.abs(g - expected[k].numpy()).max()) for k, g in zip(keys, got, strict=True)}


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
    trust_checkpoint: bool | None = None,
) -> dict[str, float]:
    """Export ``checkpoint`` to ONNX at ``output``; returns the parity errors (empty if
    ``check`` is False) and raises ``RuntimeError`` when an output differs by more than ``atol``.
    The checkpoint is read as by :func:`hpelib.load` (``trust_checkpoint`` likewise)."""
    from hpelib.predict import load

    predictor = load(checkpoint, trust_checkpoint=trust_checkpoint)
    module = predictor.module.eval()
    size = predictor.image_size
    example = torch.zeros(2, 3, size, size)
    keys = _tensor_keys(module, example)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # The wrapper must be in eval mode: the exporter restores the wrapper's mode afterwards,
    # recursively, which would leave BatchNorm in training mode for the parity check.
    torch.onnx.export(
        _OutputsAsTuple(module, keys).eval(),
        (example,),
        str(output),
        input_names=["image"],
        output_names=list(keys),
        dynamic_axes={"image": {0: "batch"}, **{k: {0: "batch"} for k in keys}},
        opset_version=opset,
        dynamo=False,
    )
    _write_metadata(output, predictor)
    if not check:
        return {}
    errors = onnx_parity(output, module, keys, size)
    worst = max(errors.values())
    if worst > atol:
        raise RuntimeError(f"ONNX parity check failed for {output}: max abs difference {errors} > {atol}")
    return errors


def _write_metadata(path: Path, predictor) -> None:
    """Record the preprocessing in the ONNX file (needs the onnx package; skipped without)."""
    try:
        import onnx
    except ImportError:
        return
    model = onnx.load(str(path))
    meta = {
        "image_size": predictor.image_size,
        "mean": predictor.mean.flatten().tolist(),
        "std": predictor.std.flatten().tolist(),
        "grayscale": predictor.grayscale,
        "rotation_convention": "hpelib internal: head->camera, x right, y down, z into the scene",
    }
    entry = model.metadata_props.add()
    entry.key, entry.value = "hpelib_preprocessing", json.dumps(meta)
    onnx.save(model, str(path))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="hpelib export", description="Export a checkpoint to ONNX.")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    parser.add_argument("--atol", type=float, default=1e-4)
    add_trust_checkpoint_argument(parser)
    args = parser.parse_args(argv)
    errors = export_onnx(
        args.ckpt, args.output, args.opset, not args.no_check, args.atol, args.trust_checkpoint
    )
    print(f"wrote {args.output}")
    for key, err in errors.items():
        print(f"parity {key}: max abs difference {err:.2e}")
    return errors
