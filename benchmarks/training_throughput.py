"""Training throughput of every method: Lightning ``Trainer.fit`` vs a plain PyTorch loop.

For each method (SixD, OpNet, RankPose, LECHPE, CLERF) the same module (backbone, heads,
loss, Adam) is trained on the same in-memory synthetic items (rendered once, before any
timing; RankPose items are identity pairs, CLERF items anchor + positive), with the same
DataLoader (batch size, collate, no workers) and image size, twice:

* **Lightning**: ``Trainer.fit(module, HPEDataModule)`` with logging, checkpointing, the
  progress bar, the model summary, validation and the sanity check off;
* **plain**: a hand-written loop: ``for batch in loader``: move to the device, the
  datamodule's ``prepare_images`` (uint8 -> normalised float, the work Lightning's
  ``on_after_batch_transfer`` does), ``module.training_forward``, ``module.compute_loss``,
  ``zero_grad``, ``backward``, ``step``.

Both are timed from the end of optimisation step ``--warmup`` to the end of the last step
(start-up, the first batches and, for Lightning, ``fit``'s set-up are excluded); the table
gives items/s of both and their ratio (Lightning/plain; 1.00 = no overhead), from wall time
and from process CPU time (CPU seconds summed over threads: on a busy host, where wall time
includes waiting for a core, the CPU-time ratio is the steadier figure, best with
``--threads 1``). The ``total s`` columns are wall seconds including start-up and warm-up. CLERF runs with its shared rotate/flip augmentation
off (``augmentation="none"``): it lives in a Lightning hook the plain loop does not call.

    python benchmarks/training_throughput.py            # 64 px, batch 32, 5 + 30 steps
    python benchmarks/training_throughput.py --quick    # 64 px, batch 16, 2 + 8 steps
    python benchmarks/training_throughput.py --methods sixd opnet --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.pairs import IdentityPairs
from hpelib.data.synthetic import SyntheticHeads
from hpelib.methods import CLERF, LECHPE, OpNet, RankPose, SixD
from hpelib.methods.base import HPEModule
from hpelib.methods.clerf import AnchorPositiveDataset, SyntheticPositiveSource

METHODS = ("sixd", "opnet", "rankpose", "lechpe", "clerf")


class InMemory(Dataset):
    """Every item of ``dataset`` computed once (no rendering inside the timed loops)."""

    def __init__(self, dataset: Dataset) -> None:
        self.items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def build(method: str, backbone: str) -> HPEModule:
    """The method module, small settings, Adam 1e-3 (the example configs' optimiser)."""
    adam: Callable[..., torch.optim.Optimizer] = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    common: dict[str, Any] = {"backbone": backbone, "pretrained": False, "optimizer": adam}
    if method == "sixd":
        return SixD(**common)
    if method == "opnet":
        return OpNet(**common, in_chans=1)  # monochrome input, as the paper and opnet.yaml
    if method == "rankpose":
        return RankPose(**common)
    if method == "lechpe":
        return LECHPE(**common)  # stage 1 (angle losses), as the first epochs of lechpe.yaml
    if method == "clerf":
        return CLERF(**common, embedding_dim=256, augmentation="none")  # stage 1: contrastive
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def make_data(method: str, items: int, size: int) -> InMemory:
    """Training items (frontal synthetic heads) in the shape the method trains on."""
    heads = SyntheticHeads(
        items, size, preset="frontal", split="train", seed=0, num_identities=max(1, items // 8)
    )
    if method == "rankpose":
        return InMemory(IdentityPairs(heads, seed=0))
    if method == "clerf":
        return InMemory(
            AnchorPositiveDataset(heads, SyntheticPositiveSource(image_size=size), seed=0)
        )
    return InMemory(heads)


def images_per_item(dataset: Dataset) -> int:
    item = dataset[0]
    return 1 + sum(isinstance(v, dict) and "image" in v for v in item.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def datamodule(dataset: Dataset, batch_size: int) -> HPEDataModule:
    return HPEDataModule(
        train=dataset, batch_size=batch_size, augmentation=None, normalize="imagenet"
    )


def _now(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds, once the device's queued work is done."""
    _sync(device)
    return time.perf_counter(), time.process_time()


class StepTimer(Callback):
    """Wall and CPU time from the end of step ``warmup`` to the end of step ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step  # already counts the step that just ended
        if step == self.warmup:
            self.start = _now(self.device)
        elif step == self.warmup + self.steps:
            self.end = _now(self.device)


#: (timed wall s, timed CPU s, total wall s) of one run.
Timing = tuple[float, float, float]


def run_lightning(
    method: str, backbone: str, dataset: Dataset, batch_size: int, warmup: int, steps: int,
    device: torch.device,
) -> Timing:  # fmt: skip
    """Timing of ``Trainer.fit``."""
    torch.manual_seed(0)
    module = build(method, backbone)
    timer = StepTimer(warmup, steps, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        max_steps=warmup + steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule(dataset, batch_size))
    total = time.perf_counter() - start
    assert timer.start is not None and timer.end is not None, "the timer missed a step"
    return timer.end[0] - timer.start[0], timer.end[1] - timer.start[1], total


def run_plain(
    method: str, backbone: str, dataset: Dataset, batch_size: int, warmup: int, steps: int,
    device: torch.device,
) -> Timing:  # fmt: skip
    """Timing of the hand-written loop."""
    total_start = time.perf_counter()
    torch.manual_seed(0)
    module = build(method, backbone).to(device).train()
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=1e-3)
    dm = datamodule(dataset, batch_size)
    dm.setup("fit")
    loader = dm.train_dataloader()
    step, start = 0, (0.0, 0.0)
    while step < warmup + steps:
        for batch in loader:
            batch = dm.prepare_images(_to_device(batch, device), train=True)
            outputs = module.training_forward(batch)
            loss, _ = module.compute_loss(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == warmup:
                start = _now(device)
            if step == warmup + steps:
                break
    end = _now(device)
    return end[0] - start[0], end[1] - start[1], end[0] - total_start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--size", type=int, default=64, help="image size (px)")
    parser.add_argument("--batch-size", type=int, default=32, help="items per step")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (>= 1)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--items", type=int, default=256, help="dataset size (items)")
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs per loop")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="batch 16, 2 + 8 steps, 64 items")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.warmup, args.steps, args.items = 16, 2, 8, 64
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    L.seed_everything(0, verbose=False)
    # Only the table on stdout; Lightning's start-up notes and hook warnings are noise here.
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    cuda = device.type == "cuda"
    where = (
        torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    )
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} thread(s); {args.backbone}, "
        f"{args.size} px, batch {args.batch_size} items, {args.warmup} warm-up + {args.steps} "
        f"timed steps, {args.items} items in memory, best of {args.repeats}\n"
    )
    print(
        "| method | images/item | plain items/s | Lightning items/s | Lightning/plain (wall) "
        "| Lightning/plain (CPU time) | total s plain | total s Lightning |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods:
        dataset = make_data(method, args.items, args.size)
        config = (method, args.backbone, dataset, args.batch_size, args.warmup, args.steps, device)
        plain: list[Timing] = []
        light: list[Timing] = []
        for _ in range(args.repeats):
            plain.append(run_plain(*config))
            light.append(run_lightning(*config))
        items = args.steps * args.batch_size
        # Best of the repeats: the run least disturbed by other processes.
        p_wall, p_cpu = min(t[0] for t in plain), min(t[1] for t in plain)
        l_wall, l_cpu = min(t[0] for t in light), min(t[1] for t in light)
        print(
            f"| {method} | {images_per_item(dataset)} | {items / p_wall:.1f} | "
            f"{items / l_wall:.1f} | {p_wall / l_wall:.2f} | {p_cpu / l_cpu:.2f} | "
            f"{min(t[2] for t in plain):.1f} | {min(t[2] for t in light):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
