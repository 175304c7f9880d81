"""Converters from released checkpoints of other projects to hpelib checkpoints
(docs/weights.md): ``hpelib convert --from 6drepnet --input X.pth --output Y.ckpt``, or
:func:`convert` in Python. A converted checkpoint records the release, the preprocessing it
expects and the convention of its outputs; :func:`hpelib.load`, ``hpelib evaluate`` and
``hpelib export`` take it like a trained one."""

from hpelib.weights.convert import CONVERTERS, RELEASES, convert, main
from hpelib.weights.release import (
    CONVERTED_FROM_KEY,
    ConversionError,
    Release,
    ResizeCenterCrop,
    release_state_dict,
)
from hpelib.weights.sixdrepnet import (
    SIXDREPNET,
    SIXDREPNET360,
    convert_6drepnet,
    convert_6drepnet360,
)

__all__ = [
    "CONVERTED_FROM_KEY",
    "CONVERTERS",
    "RELEASES",
    "SIXDREPNET",
    "SIXDREPNET360",
    "ConversionError",
    "Release",
    "ResizeCenterCrop",
    "convert",
    "convert_6drepnet",
    "convert_6drepnet360",
    "main",
    "release_state_dict",
]
