"""Reading and writing checkpoints safely (torch only, no Lightning: models can use it).

Nothing hpelib reads can run code: every checkpoint, weights file and cache goes through
:func:`read_checkpoint`, which unpickles with ``torch.load(weights_only=True)`` and an
allow-list of the few non-tensor types hpelib itself writes (:data:`SAFE_GLOBALS`). A file
that needs anything else is refused with :class:`UnsafeCheckpointError`, naming the file and
the types it asks for. For a file you trust (e.g. an old checkpoint of your own that pickled
a custom object) the one opt-in is ``trust_checkpoint``:

* Python: ``hpelib.load(path, trust_checkpoint=True)``, ``read_checkpoint(path,
  trust_checkpoint=True)``, or ``with trusted_checkpoints(): ...`` around any other call
  (a method's ``encoder_checkpoint``/``init_weights``, its ``backbone_weights``,
  ``trainer.fit(ckpt_path=...)``);
* command line: ``--trust_checkpoint true`` on ``hpelib fit|validate|test|predict|export|evaluate``.

Preprocessing: every checkpoint an :class:`~hpelib.methods.HPEModule` saves with an
:class:`~hpelib.data.HPEDataModule` attached holds ``checkpoint["hpelib_preprocessing"]``
(:data:`PREPROCESSING_KEY`), what inference must repeat (fields: :data:`PREPROCESSING_FIELDS`);
:func:`checkpoint_preprocessing` reads it (and the older ``HPEDataModule`` state record).

Writing: :func:`atomic_torch_save`, and :class:`hpelib.plugins.AtomicCheckpointIO` (installed
by every :class:`~hpelib.methods.HPEModule` at ``setup``) for Lightning's checkpoints, write each checkpoint to a temporary file beside its target and moves it into
place with ``os.replace``, so a full disk or a kill mid-write leaves the previous file whole.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib
import pickle
import re
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointReadError",
    "MissingPreprocessingError",
    "PREPROCESSING_FIELDS",
    "PREPROCESSING_KEY",
    "SAFE_GLOBALS",
    "TRUST_CHECKPOINT_HELP",
    "add_trust_checkpoint_argument",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "atomic_write",
    "checkpoint_preprocessing",
    "read_checkpoint",
    "trust_checkpoint_enabled",
    "trusted_checkpoints",
]

#: Non-tensor types an hpelib checkpoint may hold beyond what ``weights_only`` allows by
#: default (dicts, lists, tensors, numbers, strings, ``OrderedDict``...): file paths given as
#: ``pathlib`` objects to a method's arguments (``encoder_checkpoint``, ``backbone_weights``)
#: end up in its saved hyper-parameters. Each is rebuilt from strings only.
SAFE_GLOBALS: list[Any] = [
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
]

_TRUST: ContextVar[bool] = ContextVar("hpelib_trust_checkpoint", default=False)


class CheckpointReadError(ValueError):
    """A checkpoint file that is empty, truncated or not a PyTorch checkpoint."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that would need unpickling types outside :data:`SAFE_GLOBALS`."""


class MissingPreprocessingError(ValueError):
    """A checkpoint without the preprocessing record inference needs (input size...)."""


#: Top-level checkpoint key of the preprocessing record (written by
#: ``HPEModule.on_save_checkpoint``).
PREPROCESSING_KEY = "hpelib_preprocessing"

#: The record's fields (plain JSON values):
#:
#: * ``image_size`` (int): side of the square network input;
#: * ``mean``, ``std`` (3 floats): normalisation of images in [0, 1], ``(x - mean) / std``;
#: * ``grayscale`` (bool): luminance repeated on 3 channels before normalising;
#: * ``dataset`` (str): class path of the dataset whose crop is described (the evaluation
#:   data of the training run), ``None`` if unknown;
#: * ``crop_rule``: that dataset's crop rule as dataset specs take it (a name such as
#:   ``"6drepnet"``, or ``{"class_path": ..., "init_args": ...}``), ``None`` if unknown;
#: * ``box_source`` (str): its face-box source (AFLW2000/300W-LP ``"pt2d"``...), ``None``
#:   where the dataset has none;
#: * ``euler_convention`` (str): the method's Euler convention (metrics, predictions);
#: * ``euler_output_convention`` (str): convention of Euler angles the network itself
#:   outputs (LEC-HPE), ``None`` for methods that predict a rotation.
PREPROCESSING_FIELDS: tuple[str, ...] = (
    "image_size", "mean", "std", "grayscale", "dataset", "crop_rule", "box_source",
    "euler_convention", "euler_output_convention",
)  # fmt: skip


def checkpoint_preprocessing(ckpt: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The preprocessing record of a loaded checkpoint dict, every field of
    :data:`PREPROCESSING_FIELDS` present (``None`` where the checkpoint does not tell).

    Checkpoints of older hpelib versions kept input size, normalisation and grayscale in the
    datamodule's state (``ckpt["HPEDataModule"]["preprocessing"]``); those are read too, and
    their Euler convention comes from the saved hyper-parameters when they name it.

    Raises:
        MissingPreprocessingError: no record with an input size, naming ``path``.
    """
    record = ckpt.get(PREPROCESSING_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(record, dict) and isinstance(ckpt, dict):
        record = next(
            (v["preprocessing"] for v in ckpt.values()
             if isinstance(v, dict) and isinstance(v.get("preprocessing"), dict)),
            None,
        )  # fmt: skip
    if not isinstance(record, dict) or record.get("image_size") is None:
        raise MissingPreprocessingError(
            f"checkpoint {str(path)!r} has no preprocessing record (input size, normalisation); "
            "it was saved without an HPEDataModule attached to the trainer (train with "
            "`hpelib fit` or trainer.fit(model, datamodule=HPEDataModule(...)))"
        )
    out: dict[str, Any] = {key: record.get(key) for key in PREPROCESSING_FIELDS}
    out["image_size"] = int(out["image_size"])
    out["mean"] = [float(v) for v in (out["mean"] if out["mean"] is not None else (0.0,) * 3)]
    out["std"] = [float(v) for v in (out["std"] if out["std"] is not None else (1.0,) * 3)]
    out["grayscale"] = bool(out["grayscale"])
    if out["euler_convention"] is None:
        hparams = ckpt.get("hyper_parameters") or {}
        out["euler_convention"] = hparams.get("euler_convention")
    return out


@contextlib.contextmanager
def trusted_checkpoints(trust: bool = True) -> Iterator[None]:
    """Within the block, every hpelib read of a checkpoint trusts the file (full unpickling,
    which can run code the file names). Use it only for files you made or trust."""
    token = _TRUST.set(bool(trust))
    try:
        yield
    finally:
        _TRUST.reset(token)


def trust_checkpoint_enabled(trust_checkpoint: bool | None = None) -> bool:
    """``trust_checkpoint`` if given, else the setting of the enclosing
    :func:`trusted_checkpoints` block (``False`` outside one)."""
    return _TRUST.get() if trust_checkpoint is None else bool(trust_checkpoint)


#: Help text of the command-line opt-in (``--trust_checkpoint``) of every hpelib command.
TRUST_CHECKPOINT_HELP = (
    "read checkpoint/weights files with full unpickling, which can run code the file names; "
    "only for files you made or trust (default: refuse anything but tensors and plain data)"
)


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust_checkpoint`` (also spelt ``--trust-checkpoint``) on an argparse parser."""
    parser.add_argument(
        "--trust_checkpoint", "--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP
    )


def _starts_like_pickle(path: Path) -> bool:
    """A zip archive (torch.save) or a pickle stream with a protocol header: junk that the
    unpickler trips over is a damaged file, not an unsafe one."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The types the file asks for beyond the allow-list (best effort, for the message)."""
    try:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        names = [n for n in names if n not in allowed]
        if names:
            return names
    except Exception:  # legacy (non-zip) files: fall back on torch's message
        pass
    return re.findall(r"(?:GLOBAL|global) ([\w.]+(?: [\w.]+)?)", str(err))[:5]


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    what: str = "checkpoint",
    trust_checkpoint: bool | None = None,
    map_location: Any = "cpu",
) -> Any:
    """Load a ``torch.save`` file without running code from it.

    Args:
        path: the file.
        what: how the file is named in errors (``"checkpoint"``, ``"encoder_checkpoint"``...).
        trust_checkpoint: ``True`` unpickles anything (only for files you trust); ``None``
            follows :func:`trusted_checkpoints`.
        map_location: as in ``torch.load``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointReadError: an empty, truncated or non-PyTorch file.
        UnsafeCheckpointError: the file needs types outside :data:`SAFE_GLOBALS`.
    """
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist{where}")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{what} {str(path)!r} is empty (0 bytes)")
    trusted = trust_checkpoint_enabled(trust_checkpoint)
    try:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        unsafe = _unsafe_globals(path, err)
        if trusted or "Weights only load failed" not in message or not (
            unsafe or _starts_like_pickle(path)
        ):
            raise CheckpointReadError(
                f"{what} {str(path)!r} is corrupt or not a PyTorch checkpoint: {message.splitlines()[0]}"
            ) from err
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        names = ", ".join(unsafe) or (
            f"data it cannot check ({detail.group(1).strip() if detail else 'unknown'})"
        )
        raise UnsafeCheckpointError(
            f"{what} {str(path)!r} refused: loading it would unpickle {names}, which hpelib "
            "does not allow (unpickling can run code). If you made this file or trust its "
            "source, pass trust_checkpoint=True (command line: --trust_checkpoint true)."
        ) from None
    except Exception as err:  # torch/zip/unpickler errors of a damaged file vary by version
        first = f"{type(err).__name__}: {str(err).split('. ')[0].splitlines()[0] if str(err) else ''}"
        raise CheckpointReadError(
            f"{what} {str(path)!r} is truncated or not a PyTorch checkpoint "
            f"({path.stat().st_size} bytes): {first}"
        ) from err


def atomic_write(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder (same filesystem), flushed to
    disk, then ``os.replace``: readers see the old file or the new one, never a partial one;
    on failure (full disk, kill) the temporary file is removed and the old file is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_write` (serialised first: an object that fails to
    serialise never touches the disk)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())
