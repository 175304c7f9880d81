"""How fast is the real-image pipeline, and where does a training step's time go?

Per training item of an AFLW2000 folder (450 x 450 JPEGs, face boxes of about 290 px) at
``--sizes`` px, median milliseconds per item over ``--items`` items (``--repeats`` passes):

* ``hpelib item``: ``AFLW2000(train=True)[i]`` as a training DataLoader worker calls it
  (full JPEG decode, train-time crop jitter, bilinear resize, labels and landmarks moved into
  the crop; the label index is built once, at construction);
* ``decode (full)``: the JPEG decode alone, ``decode_image`` (its share of the item);
* ``decode (reduced scale)``: the decode with PIL's ``draft`` (libjpeg's DCT scaling to
  1/2, 1/4 or 1/8, the largest reduction that keeps the crop at least ``size`` px wide;
  :func:`hpelib.data.datasets.base.decode_image_for_crop`);
* ``hpelib item, reduced_decode=True``: the item with that decode (same crop region and
  labels; the crop and resize then work on the smaller image);
* ``item, decoded image in memory``: the item from an already decoded image (what keeping a
  small dataset's decoded images in RAM buys);
* ``6DRepNet PIL path``: the reference's per-item path (``sixdrepnet/datasets.py``
  ``Pose_300W_LP.__getitem__``, as its train script composes it): ``Image.open`` + convert,
  the ``.mat`` read twice with ``scipy.io.loadmat`` (its ``get_pt2d_from_mat`` and
  ``get_ypr_from_mat``), a random loose crop, mirror with p 0.5, blur with p 0.05,
  ``get_R``, then torchvision ``RandomResizedCrop(size, scale=(0.8, 1))``, ``ToTensor``,
  ``Normalize``.

Then the training step it feeds (``--method`` SixD, the half-width ResNet-10 of
``examples/sixd.yaml``, batch ``--batch-size``, forward + backward + AdamW step, median of
``--steps`` steps) and the share of a step spent making its batch when the items are made in
the training process (``num_workers=0``, the default): ``batch * item / (batch * item +
step)``.

    python benchmarks/real_image_pipeline.py
    python benchmarks/real_image_pipeline.py --root /data/AFLW2000 --sizes 64 128 224
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image, ImageFilter
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aflw_dev_plain_loop import DEFAULT_ROOT  # noqa: E402
from real_faces import HALF_RESNET10  # noqa: E402

from hpelib.data.datasets import AFLW2000  # noqa: E402
from hpelib.data.datasets.base import decode_image, decode_image_for_crop  # noqa: E402
from hpelib.methods import SixD  # noqa: E402

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def per_item_ms(fn: Callable[[int], object], items: int, repeats: int) -> float:
    """Median over ``repeats`` passes of the mean milliseconds per call of ``fn(0..items-1)``."""
    fn(0)  # warm-up: file cache, lazy imports
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(items):
            fn(i)
        passes.append((time.perf_counter() - start) / items * 1e3)
    return statistics.median(passes)


class InMemoryImages:
    """``ds`` with its ``load_image`` served from decoded images held in RAM."""

    def __init__(self, ds: AFLW2000, items: int) -> None:
        self.images = {i: ds.load_image(i) for i in range(items)}
        self.ds = ds
        ds.load_image = self.images.__getitem__  # type: ignore[method-assign]

    def __call__(self, i: int) -> object:
        return self.ds[i]


def get_r(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """6DRepNet's ``utils.get_R`` (radians): ``Rx(pitch) Ry(yaw) Rz(roll)`` as it writes them."""
    x, y, z = pitch, yaw, roll
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sixdrepnet_item(path: Path, transform: Callable, rng: np.random.Generator) -> tuple:
    """6DRepNet's ``Pose_300W_LP.__getitem__`` on an AFLW2000 image + ``.mat`` (same format)."""
    img = Image.open(path).convert("RGB")
    mat = path.with_suffix(".mat")
    pt2d = scipy.io.loadmat(mat)["pt2d"]  # get_pt2d_from_mat
    x_min, y_min = pt2d[0].min(), pt2d[1].min()
    x_max, y_max = pt2d[0].max(), pt2d[1].max()
    k = rng.random() * 0.2 + 0.2
    x_min -= 0.6 * k * abs(x_max - x_min)
    y_min -= 2 * k * abs(y_max - y_min)
    x_max += 0.6 * k * abs(x_max - x_min)
    y_max += 0.6 * k * abs(y_max - y_min)
    img = img.crop((int(x_min), int(y_min), int(x_max), int(y_max)))
    pitch, yaw, roll = scipy.io.loadmat(mat)["Pose_Para"][0][:3]  # get_ypr_from_mat
    if rng.random() < 0.5:
        yaw, roll = -yaw, -roll
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.05:
        img = img.filter(ImageFilter.BLUR)
    rotation = torch.FloatTensor(get_r(pitch, yaw, roll))
    return transform(img), rotation


def step_ms(size: int, batch: int, steps: int) -> float:
    """Median milliseconds of one SixD training step on random inputs (no data loading)."""
    torch.manual_seed(0)
    model = SixD(backbone="resnet18", pretrained=False, backbone_kwargs=dict(HALF_RESNET10))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = {
        "image": torch.randn(batch, 3, size, size),
        "rotation": torch.linalg.qr(torch.randn(batch, 3, 3)).Q,
    }
    times = []
    for k in range(steps + 2):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = model.compute_loss(model.training_forward(data), data)
        loss.backward()
        opt.step()
        if k >= 2:  # two warm-up steps
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(root: Path, size: int, args: argparse.Namespace) -> list[tuple[str, float]]:
    ds = AFLW2000(root, image_size=size, train=True)
    reduced = AFLW2000(root, image_size=size, train=True, reduced_decode=True)
    n = min(args.items, len(ds))
    rng = np.random.default_rng(0)
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size=size, scale=(0.8, 1)),
            transforms.ToTensor(),
            transforms.Normalize(*IMAGENET),
        ]
    )
    rows = [
        ("hpelib item", per_item_ms(ds.__getitem__, n, args.repeats)),
        ("decode (full)", per_item_ms(lambda i: decode_image(ds.image_path(i)), n, args.repeats)),
        (
            "decode (reduced scale)",
            per_item_ms(
                lambda i: decode_image_for_crop(
                    ds.image_path(i), lambda wh: ds.crop_box(i, wh), size
                ),
                n,
                args.repeats,
            ),
        ),
        ("hpelib item, reduced_decode=True", per_item_ms(reduced.__getitem__, n, args.repeats)),
        (
            "6DRepNet PIL path",
            per_item_ms(
                lambda i: sixdrepnet_item(ds.image_path(i), transform, rng), n, args.repeats
            ),
        ),
    ]
    cached = AFLW2000(root, image_size=size, train=True)
    rows.append(
        ("item, decoded image in memory", per_item_ms(InMemoryImages(cached, n), n, args.repeats))
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="an AFLW2000 folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"AFLW2000 folder {str(args.root)!r} not found; pass --root")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"AFLW2000 at {args.root}; {args.items} items, median of {args.repeats} passes; "
        f"torch threads {torch.get_num_threads()}; training step: SixD half-width ResNet-10, "
        f"batch {args.batch_size}, median of {args.steps} steps\n"
    )
    results = {size: dict(measure(args.root, size, args)) for size in args.sizes}
    steps = {size: step_ms(size, args.batch_size, args.steps) for size in args.sizes}
    names = list(next(iter(results.values())))
    head = " | ".join(f"{s} px: ms/item | items/s" for s in args.sizes)
    print(f"| path | {head} |")
    print("|---|" + "---:|---:|" * len(args.sizes))
    for name in names:
        cells = " | ".join(
            f"{results[s][name]:.2f} | {1e3 / results[s][name]:.0f}" for s in args.sizes
        )
        print(f"| {name} | {cells} |")
    print()
    print(
        "| size | training step ms | batch of hpelib items ms | share of the step making the batch |"
    )
    print("|---:|---:|---:|---:|")
    for s in args.sizes:
        data = args.batch_size * results[s]["hpelib item"]
        print(f"| {s} | {steps[s]:.1f} | {data:.1f} | {100 * data / (data + steps[s]):.0f} % |")


if __name__ == "__main__":
    main()
