"""Every method under 2-process CPU DDP (gloo), from one launch of
``tests/distributed/_ddp_methods.py``: weights stay identical across ranks, the data is
sharded without overlap, CLERF's miner/loss sees the embeddings of all ranks, LEC-HPE's
k-means init uses all ranks' embeddings and gives every rank the same centroids, and
2 processes x 8 samples train exactly like 1 process x 16 (SixD, CLERF stage 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from hpelib.callbacks import kmeans
from hpelib.data.datamodule import HPEDataModule
from tests.distributed._ddp_methods import FITS, equivalence_setup, flat_params
from tests.distributed.launch import run_module

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed gloo unavailable",
)


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """One 2-process launch fitting every entry of FITS (about 35 s on 2 idle cores, most of
    it two interpreter starts)."""
    out = tmp_path_factory.mktemp("ddp_methods")
    run_module("tests.distributed._ddp_methods", [str(out), *FITS], out)
    return out


def _ranks(out: Path, name: str) -> list[dict[str, Any]]:
    return [torch.load(out / f"{name}_rank{r}.pt", weights_only=False) for r in range(2)]


def _epoch_indices(record: dict[str, Any], epoch: int) -> list[int]:
    return torch.cat([s["index"] for s in record["steps"] if s["epoch"] == epoch]).tolist()


# (steps per rank, stage of each step)
EXPECTED = {
    "opnet": (4, [1] * 4),  # samples_per_epoch 32 / (2 ranks x 8) = 2 steps x 2 epochs
    "rankpose": (6, [1] * 6),  # 48 anchors / (2 x 8) = 3 x 2
    "lechpe": (6, [1] * 3 + [2] * 3),
    "clerf": (4, [1] * 2 + [2] * 2),  # 32 / (2 x 8) = 2 x 2
    "sixd": (8, [1] * 8),
    "clerf_stage1": (4, [1] * 4),
}


@pytest.mark.parametrize("name", list(FITS))
def test_every_method_fits_under_ddp_with_identical_weights_on_both_ranks(ddp_out, name):
    r0, r1 = _ranks(ddp_out, name)
    steps, stages = EXPECTED[name]
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["global_step"] == r1["global_step"] == steps
    assert [s["stage"] for s in r0["steps"]] == [s["stage"] for s in r1["steps"]] == stages
    assert torch.isfinite(r0["params"]).all()
    # DDP's gradient all-reduce keeps the replicas bit-identical, centroids and frozen parts too.
    assert torch.equal(r0["params"], r1["params"])
    # Validation metrics are synced across ranks (torchmetrics states), not per-rank values.
    for key in ("val/geodesic", "val/mae"):
        assert r0["metrics"][key] == r1["metrics"][key]


@pytest.mark.parametrize("name", ["rankpose", "lechpe", "clerf", "sixd"])
def test_ranks_get_disjoint_shards_of_the_training_set(ddp_out, name):
    r0, r1 = _ranks(ddp_out, name)
    for epoch in (0, 1):
        i0, i1 = _epoch_indices(r0, epoch), _epoch_indices(r1, epoch)
        assert len(i0) == len(i1) == len(set(i0)) and not set(i0) & set(i1)
    if name == "rankpose":  # every anchor, each with a partner of its identity
        assert sorted(i0 + i1) == list(range(48))
        assert all(
            s["same_identity"] and s["partner"] == s["size"] for r in (r0, r1) for s in r["steps"]
        )


def test_clerf_miner_and_loss_see_the_embeddings_of_both_ranks(ddp_out):
    """Stage 1: each rank holds 8 anchors + 8 positives; the Circle loss and its miner get the
    all_gather of both ranks (32), in rank order, identical on both ranks."""
    r0, r1 = _ranks(ddp_out, "clerf")
    assert all(s["positive"] == s["size"] == 8 for s in r0["steps"] if s["stage"] == 1)
    loss0, loss1 = (torch.load(ddp_out / f"clerf_loss_rank{r}.pt") for r in range(2))
    local = r0["steps"][0]["size"] + r0["steps"][0]["positive"]
    train_sizes = [size for training, size in loss0["calls"] if training]
    assert train_sizes == [2 * local] * 2  # world_size x local batch, both stage-1 steps
    assert loss0["calls"] == loss1["calls"]
    assert torch.equal(loss0["gathered"], loss1["gathered"])
    torch.testing.assert_close(
        loss0["gathered"], torch.cat([loss0["local"], loss1["local"]]), rtol=0, atol=0
    )
    # Stage 2 (after StageSwitch) froze the encoder on both ranks.
    assert torch.equal(r0["encoder"][0], r0["encoder"][1]) and torch.equal(
        r1["encoder"][1], r0["encoder"][1]
    )


def test_lechpe_kmeans_uses_all_ranks_and_gives_identical_centroids(ddp_out):
    k0, k1 = (torch.load(ddp_out / f"lechpe_kmeans_rank{r}.pt") for r in range(2))
    assert torch.equal(k0["centroids"], k1["centroids"])
    i0, i1 = k0["indices"].tolist(), k1["indices"].tolist()
    assert sorted(i0 + i1) == list(range(48))  # the two shards are the whole training set
    assert len(k0["local"]) == len(i0) and len(k1["local"]) == len(i1)

    def run(points: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(k0["seed"])
        return kmeans(points, k0["k"], k0["iterations"], k0["tol"], k0["n_init"], generator)[0]

    # The centroids are k-means of both ranks' embeddings (rank order, as gathered) ...
    torch.testing.assert_close(
        k0["centroids"], run(torch.cat([k0["local"], k1["local"]])), atol=1e-5, rtol=0
    )
    # ... not of one rank's shard.
    assert (k0["centroids"] - run(k0["local"])).abs().max() > 1e-2


class _OneReplica(HPEDataModule):
    """The 1-process reference: Lightning's DDP sampler with one replica, so that the 16
    samples of step i are exactly the union of the two ranks' 8 (rank r takes positions
    r, r+2, ... of the same seed-0 permutation)."""

    def train_dataloader(self):
        sampler = DistributedSampler(
            self.train_dataset, num_replicas=1, rank=0, shuffle=True, seed=0
        )
        return self._loader(self.train_dataset, self.batch_size, shuffle=True, sampler=sampler)


def _one_process(
    name: str, batch_scale: int = 1
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    module, dm, epochs = equivalence_setup(name, world_size=1)
    start = flat_params(module)
    dm["batch_size"] //= batch_scale
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the DDP processes
    try:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(module, _OneReplica(**dm))
    finally:
        torch.set_num_threads(threads)
    return start, flat_params(module), {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("name", ["sixd", "clerf_stage1"])
def test_two_processes_train_like_one_process_on_the_same_global_batch(ddp_out, name):
    """2 x 8 under DDP and 1 x 16 (CLERF: 2 x 4 and 1 x 8) from the same initial weights,
    samples and steps give the same weights and validation metrics.

    Tolerance: float32 results differ only in reduction order (two per-rank means averaged by
    the gloo all-reduce vs one mean; convolutions over 8 vs 16 images), ~1e-7 relative per
    operation, compounding to a few 1e-6 of the weight displacement over these SGD-momentum
    steps (measured: 7e-6 SixD, 2e-6 CLERF; 2e-4 degrees of val/geodesic). The bounds, 1e-4
    relative and 0.01 degree, are 10-50x above that and far below what a real fault gives
    (gradient summed instead of averaged, a rank's loss without the other's embeddings, other
    samples): the control run, the same recipe on half the global batch, is ~0.1-1 away.
    The backbone is GroupNorm-only (CPU has no SyncBatchNorm; BatchNorm statistics of 8 are
    not those of 16) and nothing is random after the seeded initialisation."""
    ddp = _ranks(ddp_out, name)[0]
    start, single, metrics = _one_process(name)
    moved = (single - start).norm()
    assert float((ddp["params"] - single).norm() / moved) < 1e-4
    assert abs(ddp["metrics"]["val/geodesic"] - metrics["val/geodesic"]) < 0.01
    if name == "clerf_stage1":
        # The loss is computed on the gathered global batch: same value, same mined triplets.
        assert ddp["metrics"]["train/num_triplets"] == metrics["train/num_triplets"]
        assert ddp["metrics"]["train/circle_loss"] == pytest.approx(
            metrics["train/circle_loss"], rel=1e-4
        )
    else:  # control: a different global batch is nowhere near the tolerance
        _, half, _ = _one_process(name, batch_scale=2)
        assert float((half - single).norm() / moved) > 0.05
