"""Label access: per-item ``scipy.io.loadmat`` vs hpelib's cached label index.

Writes N synthetic 300W-LP-style ``.mat`` files (+ tiny JPEGs) to a temporary folder and
times, for one epoch's worth of label reads:

* ``loadmat per item``: what a naive loader does in ``__getitem__`` every epoch;
* ``index build``: one pass of :class:`hpelib.data.datasets.Pose300WLP` with an empty cache
  (loadmat once per file + DataFrame);
* ``index from cache``: constructing the dataset again (fingerprint + pickle load);
* ``label access via index``: reading every item's rotation/box from the built index.

Also on ``../shared/data/AFLW2000-dev`` when present. Prints a Markdown table.

    python benchmarks/index_build.py [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from hpelib.data.datasets import AFLW2000, Pose300WLP
from hpelib.data.datasets.base import IndexedPoseDataset

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "AFLW2000-dev"


def write_fake_300wlp(root: Path, n: int) -> None:
    """``n`` label files in ``root/AFW`` with the keys/sizes of real 300W-LP ``.mat`` files."""
    folder = root / "AFW"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for i in range(n):
        stem = f"AFW_{i // 10}_1_{i % 10}"
        scipy.io.savemat(folder / f"{stem}.mat", {
            "Pose_Para": np.concatenate([rng.uniform(-1, 1, 3), [0, 0, 0, 1]])[None].astype(np.float32),
            "pt2d": rng.uniform(50, 400, (2, 68)),
            "Shape_Para": rng.normal(size=(199, 1)), "Exp_Para": rng.normal(size=(29, 1)),
            "Tex_Para": rng.normal(size=(199, 1)), "Illum_Para": rng.normal(size=(1, 10)),
            "Color_Para": rng.normal(size=(1, 7)).astype(np.float32),
            "roi": np.array([[0, 0, 450, 450]], np.int16),
        })  # fmt: skip
        img.save(folder / f"{stem}.jpg")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def per_item_loadmat(mats: list[Path]) -> None:
    for m in mats:
        d = scipy.io.loadmat(str(m))
        _ = d["Pose_Para"][0, :3], d["pt2d"]


def index_access(ds: IndexedPoseDataset) -> None:
    for i in range(len(ds)):
        _ = ds._rotation[i], ds._box[i]


def rows(name: str, mats: list[Path], build: Callable[[], IndexedPoseDataset]) -> list[str]:
    n = len(mats)
    t_mat = timed(lambda: per_item_loadmat(mats))
    t_build = timed(build)
    holder: list[IndexedPoseDataset] = []
    t_cache = timed(lambda: holder.append(build()))
    t_access = timed(lambda: index_access(holder[0]))
    out = []
    for what, t in (
        ("loadmat per item (every epoch)", t_mat),
        ("index build (once)", t_build),
        ("index from cache (construction)", t_cache),
        ("label access via index (every epoch)", t_access),
    ):
        out.append(f"| {name} | {n} | {what} | {t:.3f} | {n / max(t, 1e-9):,.0f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of synthetic .mat files")
    args = parser.parse_args()
    lines = ["| data | items | operation | seconds | items/s |", "|---|---:|---|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HPELIB_CACHE"] = str(Path(tmp) / "cache")
        root = Path(tmp) / "300W_LP"
        write_fake_300wlp(root, args.n)
        mats = sorted((root / "AFW").glob("*.mat"))
        lines += rows("synthetic 300W-LP .mat", mats, lambda: Pose300WLP(root, subsets=["AFW"]))
        if SHARED.is_dir():
            aflw = sorted(SHARED.glob("*.mat"))
            lines += rows("AFLW2000-dev (real)", aflw, lambda: AFLW2000(SHARED, filter_99=False))
        else:
            print(f"(AFLW2000-dev not found at {SHARED.resolve()}: skipped)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
