"""``hpelib convert --from 6drepnet --input X.pth --output Y.ckpt``: released weights of
other projects -> hpelib checkpoints (docs/weights.md)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from hpelib.checkpoint_io import (
    CheckpointReadError,
    UnsafeCheckpointError,
    add_trust_checkpoint_argument,
)
from hpelib.weights.release import ConversionError, Release
from hpelib.weights.sixdrepnet import (
    SIXDREPNET,
    SIXDREPNET360,
    convert_6drepnet,
    convert_6drepnet360,
)

__all__ = ["CONVERTERS", "RELEASES", "convert", "main"]

#: ``--from`` name -> converter ``(input, output, reparameterize, trust_checkpoint) -> output``.
CONVERTERS: dict[str, Callable[..., Path]] = {
    "6drepnet": convert_6drepnet,
    "6drepnet360": convert_6drepnet360,
}

#: ``--from`` name -> what the release is and expects.
RELEASES: dict[str, Release] = {r.name: r for r in (SIXDREPNET, SIXDREPNET360)}

_USER_ERRORS = (ConversionError, CheckpointReadError, UnsafeCheckpointError, FileNotFoundError)


def convert(
    source: str,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    reparameterize: bool = False,
    trust_checkpoint: bool | None = None,
) -> Path:
    """Convert the released file ``input`` of release ``source`` (a name of
    :data:`CONVERTERS`) into an hpelib checkpoint at ``output``; returns ``output``.

    Raises:
        ValueError: an unknown ``source``.
        ConversionError: a file that is not that release (the message names it).
    """
    key = str(source).lower()
    if key not in CONVERTERS:
        raise ValueError(f"unknown release {source!r}; known: {', '.join(sorted(CONVERTERS))}")
    return CONVERTERS[key](
        input, output, reparameterize=reparameterize, trust_checkpoint=trust_checkpoint
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpelib convert",
        description="Convert released weights of another project into an hpelib checkpoint "
        "(hpelib.load, hpelib evaluate and hpelib export take it like a trained one).",
    )
    parser.add_argument("--from", required=True, choices=sorted(CONVERTERS), help="the release")
    parser.add_argument("--input", required=True, help="the released weights file (.pth)")
    parser.add_argument("--output", required=True, help="the hpelib checkpoint to write (.ckpt)")
    parser.add_argument(
        "--reparameterize", action="store_true",
        help="fuse a train-form RepVGG release into the deploy form (6drepnet)",
    )  # fmt: skip
    add_trust_checkpoint_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """``hpelib convert`` entry point; prints what it wrote."""
    args = _parser().parse_args(argv)
    source = getattr(args, "from")
    try:
        path = convert(
            source, args.input, args.output, args.reparameterize, args.trust_checkpoint or None
        )
    except _USER_ERRORS as err:
        raise SystemExit(f"hpelib convert: {err}") from err
    release = RELEASES[source]
    print(f"wrote {path} ({release.title})")
    print(f"expects: {release.reference_preprocessing}")
    return path
