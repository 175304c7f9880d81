"""Build a dataset's label index once and cache it (pandas pickle).

Reading 122k ``.mat`` files with ``scipy.io.loadmat`` takes minutes; doing it per item per
epoch would dominate training. Loaders therefore build a ``pandas.DataFrame`` of all labels
once and store it:

* in the user cache dir (``cache="auto"``, the default, or ``"user"``): ``$HPELIB_CACHE`` if
  set, else ``~/.cache/hpelib``, as ``<name>-<root hash>-<key>.pkl`` (hpelib never writes
  into a dataset folder unless asked);
* next to the data, in ``<root>/.hpelib_index/<name>-<key>.pkl`` (``cache="data"``; the
  cache then travels with a copied or moved dataset); falls back to the user dir when the
  folder is not writable;
* in an explicit folder when ``cache`` is a path; never when ``cache`` is ``False``/``None``.

The cache key hashes the label files' relative names, sizes and modification times plus the
loader's options, so adding, removing or touching a file rebuilds the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["CacheSpec", "cached_index", "default_cache_dir", "files_fingerprint"]

logger = logging.getLogger("hpelib.data")

#: ``"auto"`` | ``"data"`` | ``"user"`` | a folder | ``True`` (= auto) | ``False``/``None`` (off).
CacheSpec = bool | str | os.PathLike[str] | None

# Bump when the index layout written by any loader changes, to invalidate old caches.
INDEX_FORMAT_VERSION = 2


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


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def _cache_folders(root: Path, cache: CacheSpec) -> list[Path]:
    if cache is None or cache is False:
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
                index = pd.read_pickle(path)
                logger.debug("%s: label index loaded from %s", name, path)
                return index
            except Exception as err:  # a corrupt cache is rebuilt, never fatal
                logger.warning("%s: ignoring unreadable index cache %s (%s)", name, path, err)
    index = build()
    for folder in folders:
        if not _writable(folder):
            continue
        path = folder / _stem(name, root, folder, key)
        # Atomic replace: concurrent DataLoader workers/ranks never read a half-written file.
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            index.to_pickle(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        # Drop stale indexes of the same dataset copy (other keys, same prefix).
        for old in folder.glob(f"{_prefix(name, root, folder)}-*.pkl"):
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
    return f"{_prefix(name, root, folder)}-{key}.pkl"
