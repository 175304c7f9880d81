"""The label-index cache: an exact round trip of every loader's columns, and no pickle.

A cache file can come with a downloaded dataset folder (``<root>/.hpelib_index/``, read with
``cache="data"``): reading it must never run code, whatever it holds.
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

from hpelib.data.datasets import AFLW2000, Pose300WLP
from hpelib.data.datasets.index_cache import cached_index, read_index, write_index
from hpelib.data.datasets.w300lp import _build_300wlp_index
from tests.data.writers import pt2d, write_3ddfa, write_image


@pytest.fixture(autouse=True)
def _user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HPELIB_CACHE", str(cache))
    return cache


class _CreatesFile:
    """Unpickling this creates ``marker``: what a hostile cache file could do (or worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.fixture
def w300lp_root(tmp_path: Path) -> Path:
    root = tmp_path / "300W_LP"
    write_3ddfa(root / "AFW", "AFW_1_0", (0.1, -0.3, 0.05), Shape_Para=np.ones((199, 1)))
    write_3ddfa(root / "AFW", "AFW_1_1", (0.2, 0.4, -0.1))
    write_3ddfa(root / "HELEN", "HELEN_7_0", (-0.2, 0.5, 0.1))
    write_image(root / "HELEN" / "HELEN_9_0.jpg")  # no label: an index row with an error
    return root


def _assert_same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got.attrs == want.attrs
    for col in want.columns:
        assert got[col].dtype == want[col].dtype, col
        for a, b in zip(want[col], got[col], strict=True):
            assert type(a) is type(b) or (a is pd.NA and b is pd.NA), (col, a, b)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_every_column_kind_round_trips_exactly(tmp_path: Path) -> None:
    index = pd.DataFrame({
        "path": ["AFW/a.jpg", "é/ü.jpg", "ends with NUL\x00", ""],  # pandas' str dtype
        "na_string": pd.array(["a", None, "b", "c"], dtype="string"),
        "error": pd.Series(["", None, math.nan, "bad"], dtype=object),  # pandas 2 style
        "shape_params": pd.Series(
            [np.ones(199, np.float32), math.nan, np.zeros((2, 3)), np.arange(4)], dtype=object
        ),
        "mixed": pd.Series([1, 2.5, True, pd.NA], dtype=object),
        "pitch": [1.0, math.nan, -math.inf, 1e-300],
        "lmz_0": np.array([1, 2, 3, 4], np.float32),
        "identity": np.array([-1, 0, 2**40, 7], np.int64),
        "occluded": [True, False, True, False],
    })  # fmt: skip
    index.attrs.update(skipped=2, filtered=1)
    path = tmp_path / "index.npz"
    write_index(index, path)
    _assert_same_frame(read_index(path), index)
    rows = index.iloc[[3, 1]].copy()  # a non-default row index too
    write_index(rows, path)
    _assert_same_frame(read_index(path), rows)


def test_loader_index_round_trips_and_second_load_reads_no_mat(
    w300lp_root: Path, tmp_path: Path
) -> None:
    mats = sorted(w300lp_root.glob("*/*.mat"))
    images = sorted(w300lp_root.glob("*/*.jpg"))
    built = []

    def build() -> pd.DataFrame:
        built.append(1)
        return _build_300wlp_index(w300lp_root, images, mats, "pt2d", shape_params=True)

    first = cached_index("300wlp", w300lp_root, mats, build, {}, tmp_path / "c")
    assert first["shape_params"].dtype == object and first["error"].ne("").sum() == 1
    second = cached_index("300wlp", w300lp_root, mats, build, {}, tmp_path / "c")
    assert built == [1]
    _assert_same_frame(second, first)
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".npz"]


@pytest.mark.parametrize("payload", ["object_array_npz", "raw_pickle", "pandas_pickle"])
def test_crafted_cache_file_runs_no_code(
    w300lp_root: Path, tmp_path: Path, payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    live = tmp_path / "payload_is_live"
    pickle.loads(pickle.dumps(_CreatesFile(live))).close()
    assert live.exists()  # the payload does create its file when unpickled
    reference = Pose300WLP(w300lp_root, cache=False, train=False, on_invalid="skip")
    Pose300WLP(w300lp_root, cache="data", on_invalid="skip")
    (path,) = (w300lp_root / ".hpelib_index").iterdir()  # the exact file the loader reads
    evil = _CreatesFile(marker)
    if payload == "object_array_npz":
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.array([evil], dtype=object), c0=np.array([evil]))
    elif payload == "raw_pickle":
        path.write_bytes(pickle.dumps(evil))
    else:
        pd.DataFrame({"path": [evil]}).to_pickle(path)
    with caplog.at_level(logging.WARNING, logger="hpelib.data"):
        ds = Pose300WLP(w300lp_root, cache="data", train=False, on_invalid="skip")
    assert not marker.exists()
    assert f"ignoring unreadable index cache {path}" in caplog.text
    assert len(ds) == len(reference) == 3
    assert list(ds.index["path"]) == list(reference.index["path"])
    torch.testing.assert_close(ds._rotation, reference._rotation)
    assert len(read_index(path)) == 4  # rebuilt and rewritten as a valid cache


def test_stale_pickle_cache_is_never_read_and_is_removed(
    w300lp_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Pose300WLP(w300lp_root, cache="data", on_invalid="skip")
    (path,) = (w300lp_root / ".hpelib_index").iterdir()
    stale = path.with_suffix(".pkl")  # the old format's name for the same dataset copy
    marker = tmp_path / "pwned"
    stale.write_bytes(pickle.dumps(_CreatesFile(marker)))
    path.unlink()
    calls = []
    real = scipy.io.loadmat
    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert len(Pose300WLP(w300lp_root, cache="data", on_invalid="skip")) == 3
    assert calls and not marker.exists()  # rebuilt from the .mat files, pickle not read
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("content", ["garbage", "other_npz", "truncated"])
def test_corrupt_cache_is_rebuilt_with_a_warning(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "AFLW2000"
    write_3ddfa(root, "image00001", (0.1, 0.2, 0.3), pt3d_68=np.vstack([pt2d(), np.ones(68)]))
    AFLW2000(root, cache="data")
    (path,) = (root / ".hpelib_index").iterdir()
    if content == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif content == "other_npz":
        with open(path, "wb") as fh:
            np.savez(fh, a=np.arange(3))
    else:
        path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="hpelib.data"):
        ds = AFLW2000(root, cache="data")
    assert len(ds) == 1 and ds[0]["landmarks_3d"].shape == (68, 3)
    assert f"ignoring unreadable index cache {path}" in caplog.text


@pytest.mark.parametrize("off", [None, False, "none", "off", "None"])
def test_cache_off_spellings_write_nothing(off, tmp_path, monkeypatch) -> None:
    from hpelib.data.datasets.index_cache import _cache_folders

    monkeypatch.chdir(tmp_path)
    assert _cache_folders(tmp_path, off) == []
    assert list(tmp_path.iterdir()) == []  # no folder named after the word
