"""Build a dataset's label index once and cache it (plain numpy arrays, never pickle).

Reading 122k ``.mat`` files with ``scipy.io.loadmat`` takes minutes; doing it per item per
epoch would dominate training. Loaders therefore build a ``pandas.DataFrame`` of all labels
once and store it:

* in the user cache dir (``cache="auto"``, the default, or ``"user"``): ``$HPELIB_CACHE`` if
  set, else ``~/.cache/hpelib``, as ``<name>-<root hash>-<key>.npz`` (hpelib never writes
  into a dataset folder unless asked);
* next to the data, in ``<root>/.hpelib_index/<name>-<key>.npz`` (``cache="data"``; the
  cache then travels with a copied or moved dataset); falls back to the user dir when the
  folder is not writable;
* in an explicit folder when ``cache`` is a path; never when ``cache`` is ``False``/``None``.

The cache key hashes the label files' relative names, sizes and modification times plus the
loader's options, so adding, removing or touching a file rebuilds the index.

File format: an uncompressed ``numpy.savez`` archive of plain arrays, read back with
``numpy.load(..., allow_pickle=False)``, so a cache file that came with a downloaded dataset
folder cannot run code when it is read (a pickle could). One member ``__meta__`` holds JSON
(format name and version, row count, index, ``DataFrame.attrs`` and, per column, its name,
dtype and encoding); each column is stored as:

* numeric, boolean or datetime columns: one array of the column's own dtype;
* string columns (pandas ``str``/``string`` dtype): the UTF-8 text of all values, their
  character offsets and a missing-value mask (exact, unlike fixed-width ``U`` arrays that drop
  trailing NULs and pad every value to the longest one);
* ``object`` columns (strings, ``None``, NaN, ``pd.NA``, Python numbers and numeric
  ``numpy`` arrays such as ``shape_params``): a per-value type tag, plus the strings, numbers
  and the arrays' raw data and shapes.

A cache file that does not parse (corrupt, another layout or version, or needing pickle) is
rebuilt with a warning naming it. Old ``.pkl`` caches of earlier versions are never read;
writing a new index deletes those of the same dataset copy in that folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpelib.checkpoint_io import atomic_write

__all__ = ["CacheSpec", "cached_index", "default_cache_dir", "files_fingerprint"]

logger = logging.getLogger("hpelib.data")

#: ``"auto"`` | ``"data"`` | ``"user"`` | a folder | ``True`` (= auto) | ``False``/``None``/
#: ``"none"``/``"off"`` (off).
CacheSpec = bool | str | os.PathLike[str] | None
_OFF = ("none", "off")

# Bump when the index layout written by any loader (or the file format) changes, to
# invalidate old caches. 3: npz without pickle (was a pandas pickle).
INDEX_FORMAT_VERSION = 3

_SUFFIX = ".npz"
_OLD_SUFFIXES = (".pkl",)  # earlier formats: never read, removed when a new index is written
_FORMAT = "hpelib-label-index"
# Tags of the values of an ``object`` column.
_T_STR, _T_NONE, _T_NAN, _T_NA, _T_FLOAT, _T_INT, _T_BOOL, _T_ARRAY = range(8)


class _Unsupported(TypeError):
    """The index holds something this format cannot store (the index is then not cached)."""


def default_cache_dir() -> Path:
    """``$HPELIB_CACHE`` if set, else ``~/.cache/hpelib``."""
    env = os.environ.get("HPELIB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hpelib"


def files_fingerprint(
    root: Path, files: Sequence[Path], options: Mapping[str, Any] | None = None
) -> str:
    """SHA-1 over (relative name, size, mtime_ns) of ``files`` and the JSON of ``options``."""
    h = hashlib.sha1()
    h.update(
        json.dumps(
            {"v": INDEX_FORMAT_VERSION, **(options or {})}, sort_keys=True, default=str
        ).encode()
    )
    for f in sorted(files):
        st = f.stat()
        rel = os.path.relpath(f, root)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


# ------------------------------------------------------------------------------ encoding
def _encode_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (UTF-8 bytes as uint8, character offsets (n + 1,) int64)."""
    text = "".join(values)
    # surrogatepass: file names that are not valid UTF-8 reach Python as lone surrogates.
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    return data, offsets


def _decode_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    text = np.asarray(data, dtype=np.uint8).tobytes().decode("utf-8", "surrogatepass")
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(text):
        raise ValueError("string offsets do not match the stored text")
    bounds = offsets.tolist()
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _encode_column(key: str, col: pd.Series, out: dict[str, np.ndarray]) -> dict[str, Any]:
    dtype = col.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
        out[key] = col.to_numpy()
        return {"enc": "array", "dtype": dtype.str}
    if isinstance(dtype, pd.StringDtype):
        missing = col.isna().to_numpy(dtype=bool)
        values = ["" if m else str(v) for v, m in zip(col.tolist(), missing, strict=True)]
        out[f"{key}.text"], out[f"{key}.offsets"] = _encode_strings(values)
        out[f"{key}.missing"] = missing
        na_nan = isinstance(dtype.na_value, float) and math.isnan(dtype.na_value)
        return {"enc": "string", "storage": dtype.storage, "na": "nan" if na_nan else "NA"}
    if not (isinstance(dtype, np.dtype) and dtype.kind == "O"):
        raise _Unsupported(f"column {col.name!r} has dtype {dtype}")
    tags = np.empty(len(col), dtype=np.int8)
    strings: list[str] = []
    numbers = np.zeros(len(col), dtype=np.float64)
    integers = np.zeros(len(col), dtype=np.int64)
    arrays: dict[str, list[np.ndarray]] = {}
    which = np.full(len(col), -1, dtype=np.int32)
    shapes: list[int] = []
    ndims = np.zeros(len(col), dtype=np.int8)
    for i, v in enumerate(col.tolist()):
        s = ""
        if isinstance(v, str):
            tags[i], s = _T_STR, v
        elif v is None:
            tags[i] = _T_NONE
        elif v is pd.NA:
            tags[i] = _T_NA
        elif isinstance(v, bool | np.bool_):
            tags[i], integers[i] = _T_BOOL, int(v)
        elif isinstance(v, int | np.integer) and -(2**63) <= int(v) < 2**63:
            tags[i], integers[i] = _T_INT, int(v)
        elif isinstance(v, float | np.floating):
            tags[i] = _T_NAN if math.isnan(v) else _T_FLOAT
            numbers[i] = float(v)
        elif isinstance(v, np.ndarray) and v.dtype.kind in "biufc":
            tags[i] = _T_ARRAY
            dt = v.dtype.str
            group = arrays.setdefault(dt, [])
            which[i] = list(arrays).index(dt)
            group.append(np.ascontiguousarray(v).reshape(-1))
            ndims[i] = v.ndim
            shapes.extend(v.shape)
        else:
            raise _Unsupported(f"column {col.name!r} holds a {type(v).__name__}")
        strings.append(s)
    out[f"{key}.tags"] = tags
    out[f"{key}.text"], out[f"{key}.offsets"] = _encode_strings(strings)
    out[f"{key}.float"], out[f"{key}.int"] = numbers, integers
    out[f"{key}.which"], out[f"{key}.ndim"] = which, ndims
    out[f"{key}.shape"] = np.asarray(shapes, dtype=np.int64)
    for k, (dt, parts) in enumerate(arrays.items()):
        out[f"{key}.data{k}"] = np.concatenate(parts) if parts else np.zeros(0, np.dtype(dt))
    return {"enc": "object", "array_dtypes": list(arrays)}


def _decode_column(key: str, spec: Mapping[str, Any], z: Any, n: int) -> Any:
    enc = spec["enc"]
    if enc == "array":
        arr = z[key]
        if arr.dtype.str != spec["dtype"] or arr.shape != (n,):
            raise ValueError(f"{key}: array {arr.dtype}{arr.shape} is not {spec['dtype']}({n},)")
        return arr
    if enc == "string":
        values = _decode_strings(z[f"{key}.text"], z[f"{key}.offsets"])
        missing = z[f"{key}.missing"]
        if len(values) != n or missing.shape != (n,) or missing.dtype != bool:
            raise ValueError(f"{key}: {len(values)} strings for {n} rows")
        kwargs: dict[str, Any] = {"storage": spec["storage"]}
        if spec["na"] == "nan":
            kwargs["na_value"] = np.nan
        dtype = pd.StringDtype(**kwargs)
        return pd.array(
            [dtype.na_value if m else v for v, m in zip(values, missing.tolist(), strict=True)],
            dtype=dtype,
        )
    if enc != "object":
        raise ValueError(f"{key}: unknown column encoding {enc!r}")
    tags = z[f"{key}.tags"]
    strings = _decode_strings(z[f"{key}.text"], z[f"{key}.offsets"])
    numbers, integers = z[f"{key}.float"], z[f"{key}.int"]
    which, ndims, shapes = z[f"{key}.which"], z[f"{key}.ndim"], z[f"{key}.shape"].tolist()
    if any(len(a) != n for a in (tags, strings, numbers, integers, which, ndims)):
        raise ValueError(f"{key}: object column parts do not have {n} rows")
    data = [z[f"{key}.data{k}"] for k in range(len(spec["array_dtypes"]))]
    for arr, dt in zip(data, spec["array_dtypes"], strict=True):
        if arr.dtype.str != dt or arr.ndim != 1:
            raise ValueError(f"{key}: array data is {arr.dtype}, expected {dt}")
    pos = [0] * len(data)
    dim_pos = 0
    values = np.empty(n, dtype=object)
    for i, tag in enumerate(tags.tolist()):
        if tag == _T_STR:
            values[i] = strings[i]
        elif tag == _T_NONE:
            values[i] = None
        elif tag == _T_NA:
            values[i] = pd.NA
        elif tag in (_T_NAN, _T_FLOAT):
            values[i] = float(numbers[i])
        elif tag == _T_INT:
            values[i] = int(integers[i])
        elif tag == _T_BOOL:
            values[i] = bool(integers[i])
        elif tag == _T_ARRAY:
            k, nd = int(which[i]), int(ndims[i])
            shape = tuple(shapes[dim_pos : dim_pos + nd])
            dim_pos += nd
            size = math.prod(shape)
            if not 0 <= k < len(data) or len(shape) != nd or pos[k] + size > len(data[k]):
                raise ValueError(f"{key}: array value {i} lies outside the stored data")
            values[i] = data[k][pos[k] : pos[k] + size].reshape(shape).copy()
            pos[k] += size
        else:
            raise ValueError(f"{key}: unknown value tag {tag}")
    return values


def _json_roundtrips(value: Any) -> bool:
    try:
        return json.loads(json.dumps(value, allow_nan=True)) == value
    except (TypeError, ValueError):
        return False


def encode_index(index: pd.DataFrame) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` cache file of ``index`` (module docstring).

    Raises ``TypeError`` when a column, the row index or ``attrs`` cannot be stored exactly.
    """
    if not index.columns.is_unique or not all(isinstance(c, str) for c in index.columns):
        raise _Unsupported("column names must be unique strings")
    attrs = dict(index.attrs)
    if not _json_roundtrips(attrs):
        raise _Unsupported(f"DataFrame.attrs {attrs!r} are not plain JSON values")
    out: dict[str, np.ndarray] = {}
    columns = []
    for k, name in enumerate(index.columns):
        columns.append({"name": name, **_encode_column(f"c{k}", index[name], out)})
    rows = index.index
    if isinstance(rows, pd.RangeIndex):
        row_spec: dict[str, Any] = {"range": [rows.start, rows.stop, rows.step]}
    else:
        row_spec = {"name": rows.name, **_encode_column("rows", rows.to_series(), out)}
        if not _json_roundtrips(rows.name):
            raise _Unsupported(f"row index name {rows.name!r}")
    meta = {
        "format": _FORMAT,
        "version": INDEX_FORMAT_VERSION,
        "rows": len(index),
        "index": row_spec,
        "columns": columns,
        "attrs": attrs,
    }
    out["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for key, arr in out.items():
        if arr.dtype.hasobject:  # np.savez would pickle it: never write one
            raise _Unsupported(f"{key} would need pickle")
    return out


def decode_index(z: Any) -> pd.DataFrame:
    """The DataFrame of an opened ``.npz`` cache (``numpy.load(..., allow_pickle=False)``);
    ``ValueError``/``KeyError`` when the file is not a valid index of this version."""
    meta = json.loads(np.asarray(z["__meta__"], dtype=np.uint8).tobytes().decode())
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError("not an hpelib label index")
    if meta.get("version") != INDEX_FORMAT_VERSION:
        raise ValueError(f"index format {meta.get('version')}, expected {INDEX_FORMAT_VERSION}")
    n = int(meta["rows"])
    # Series with explicit dtypes: a plain object array of strings would be inferred as the
    # ``str`` dtype by pandas 3, and the round trip would not be exact.
    data = {
        c["name"]: pd.Series(_decode_column(f"c{k}", c, z, n), copy=False)
        if c["enc"] != "object"
        else pd.Series(_decode_column(f"c{k}", c, z, n), dtype=object, copy=False)
        for k, c in enumerate(meta["columns"])
    }
    row_spec = meta["index"]
    if "range" in row_spec:
        rows: pd.Index = pd.RangeIndex(*row_spec["range"])
        if len(rows) != n:
            raise ValueError(f"row index of length {len(rows)} for {n} rows")
    else:
        rows = pd.Index(
            _decode_column("rows", row_spec, z, n),
            dtype=object if row_spec["enc"] == "object" else None,
            name=row_spec["name"],
        )
    index = pd.DataFrame(data, columns=[c["name"] for c in meta["columns"]])
    index.index = rows  # after construction: the Series would otherwise be aligned to it
    index.attrs.update(meta["attrs"])
    return index


def read_index(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a cache file written by :func:`cached_index`; never unpickles anything."""
    with np.load(path, allow_pickle=False) as z:  # a pickle or object array raises ValueError
        return decode_index(z)


def write_index(index: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to ``path`` atomically (concurrent DataLoader workers and ranks never
    read a half-written file); ``TypeError`` for a column the format cannot hold, before
    anything is written."""
    buffer = io.BytesIO()  # a file object: np.savez would append ".npz" to a name
    np.savez(buffer, **encode_index(index))
    atomic_write(path, buffer.getbuffer())


# ------------------------------------------------------------------------------- caching
def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def _cache_folders(root: Path, cache: CacheSpec) -> list[Path]:
    # "none"/"off" mean off (as SyntheticHeads' cache="none"), never a folder of that name.
    if cache is None or cache is False or (isinstance(cache, str) and cache.lower() in _OFF):
        return []
    if cache == "data":
        return [root / ".hpelib_index", default_cache_dir()]
    if cache is True or cache in ("auto", "user"):
        return [default_cache_dir()]
    return [Path(cache)]


def cached_index(
    name: str,
    root: str | os.PathLike[str],
    files: Sequence[Path],
    build: Callable[[], pd.DataFrame],
    options: Mapping[str, Any] | None = None,
    cache: CacheSpec = "auto",
) -> pd.DataFrame:
    """Return the index built by ``build()``, from the cache when its key still matches.

    Args:
        name: dataset name (part of the cache file name).
        root: dataset folder (the key uses names relative to it, so a moved copy still hits).
        files: the label files the index is built from.
        build: builds the DataFrame (the expensive part).
        options: loader options that change the index (part of the key).
        cache: where to cache (module docstring).
    """
    root = Path(root)
    key = files_fingerprint(root, files, options)
    folders = _cache_folders(root, cache)
    for folder in folders:
        path = folder / _stem(name, root, folder, key)
        if path.is_file():
            try:
                index = read_index(path)
                logger.debug("%s: label index loaded from %s", name, path)
                return index
            except Exception as err:  # a corrupt or foreign cache is rebuilt, never fatal
                logger.warning(
                    "%s: ignoring unreadable index cache %s (%s: %s); rebuilding it",
                    name, path, type(err).__name__, err,
                )  # fmt: skip
    index = build()
    for folder in folders:
        if not _writable(folder):
            continue
        path = folder / _stem(name, root, folder, key)
        try:
            write_index(index, path)
        except TypeError as err:  # a column this format cannot hold: use the index uncached
            logger.warning("%s: label index not cached (%s)", name, err)
            return index
        # Drop stale indexes of the same dataset copy (other keys or old formats, same prefix).
        for suffix in (_SUFFIX, *_OLD_SUFFIXES):
            for old in folder.glob(f"{_prefix(name, root, folder)}-*{suffix}"):
                if old != path and len(old.stem) == len(path.stem):
                    old.unlink(missing_ok=True)
        logger.info("%s: label index of %d items cached at %s", name, len(index), path)
        break
    return index


def _prefix(name: str, root: Path, folder: Path) -> str:
    if folder == root / ".hpelib_index":
        return name
    # In the shared user folder the dataset's absolute location tells copies apart.
    return f"{name}-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]}"


def _stem(name: str, root: Path, folder: Path, key: str) -> str:
    return f"{_prefix(name, root, folder)}-{key}{_SUFFIX}"
