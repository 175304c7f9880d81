"""k-means initialisation of cluster centroids from real embeddings (LEC-HPE, DEC).

At the start of the first training epoch in which the module needs its centroids (its
``stage`` reaches ``stage``) and they are not initialised yet, the callback embeds one
pass of the training dataloader (each rank its own shard, as Lightning distributes it),
gathers the embeddings of all ranks with ``LightningModule.all_gather``, runs k-means
(kornia's, from k-means++ seeds) on the full set, broadcasts rank 0's result, and calls
``module.init_centroids``. Every rank therefore ends up with identical centroids. The module records the
initialisation in its state dict, so a resumed run does not repeat it.

Module protocol: ``embed(images) -> (B, D)``, ``num_clusters``, ``init_centroids((K, D))``,
``centroids_initialized`` and, optionally, ``stage``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from kornia.contrib import KMeans
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

__all__ = ["KMeansCentroidInit", "gather_embeddings", "kmeans"]

_PROTOCOL = ("embed", "init_centroids", "centroids_initialized", "num_clusters")


def _squared_distances(x: Tensor, c: Tensor) -> Tensor:
    return torch.cdist(x, c).pow(2)


def _kmeans_pp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to D^2."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator).item()
    centers = [x[first]]
    d2 = _squared_distances(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point coincides with a centre: any point will do
            idx = torch.randint(n, (1,), generator=generator).item()
        else:
            idx = torch.multinomial((d2 / total).cpu(), 1, generator=generator).item()
        centers.append(x[idx])
        d2 = torch.minimum(d2, _squared_distances(x, x[idx : idx + 1]).squeeze(1))
    return torch.stack(centers)


@contextlib.contextmanager
def _seeded_global_rng(device: torch.device, generator: torch.Generator) -> Iterator[None]:
    """Seed the global RNG of ``device`` from ``generator`` for the block and restore it
    after: kornia's ``KMeans`` draws from the global RNG (a random point for an emptied
    cluster, drawn every iteration), which must neither vary between runs nor shift the
    training's random stream."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    if device.type != "cuda":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index]):
        torch.cuda.default_generators[index].manual_seed(seed)
        yield


def kmeans(
    x: Tensor,
    k: int,
    iterations: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """k-means: kornia's :class:`kornia.contrib.KMeans` (Lloyd's iterations) from k-means++
    seeds, best of ``n_init`` restarts; on ``x``'s device, deterministic for a given
    generator.

    kornia seeds with ``k`` random points; the k-means++ seeding here (each new centre drawn
    with probability proportional to its squared distance to the chosen ones) is kept
    because random seeds fall into merged-blob local minima: on 20 draws of 10 Gaussian
    blobs of 10-200 points in 32-D, best of 3 restarts, random seeds ended with 1.34x the
    inertia (median; up to 1.96x, worse by > 1 % in 18 of 20; measured with kornia 0.9.0).

    Args:
        x: ``(N, D)`` points, ``N >= k``.
        k: number of clusters.
        iterations: maximum Lloyd iterations per restart.
        tol: stop a restart when ``(sum of the centres' shifts)^2 <= tol * s``, ``s`` the data
            scale (mean per-dimension variance of ``x``).
        n_init: restarts, each from new k-means++ seeds; the lowest inertia wins.
        generator: CPU generator for the seeds (default: seeded with 0); it also seeds the
            random points kornia moves emptied clusters to.

    Returns:
        ``(centroids (k, D), labels (N,), inertia ())``, inertia = sum of squared distances
        of the points to their centroid.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects (N, D) points, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1 or n < k:
        raise ValueError(f"kmeans needs 1 <= k <= N points, got k={k} and N={n}")
    if n_init < 1 or iterations < 1:
        raise ValueError(f"kmeans needs n_init >= 1 and iterations >= 1, got {n_init}, {iterations}")
    generator = generator or torch.Generator().manual_seed(0)
    x = x.detach().float()
    tolerance = float(tol * x.var(dim=0).mean().clamp_min(1e-12))
    best: tuple[Tensor, Tensor, Tensor] | None = None
    for _ in range(n_init):
        seeds = _kmeans_pp(x, k, generator)
        fit = KMeans(k, seeds, tolerance=tolerance, max_iterations=iterations)
        with _seeded_global_rng(x.device, generator):
            fit.fit(x)
        centers, labels = fit.cluster_centers, fit.cluster_assignments
        inertia = (x - centers[labels]).pow(2).sum()
        if best is None or inertia < best[2]:
            best = (centers, labels, inertia)
    assert best is not None
    return best


def gather_embeddings(
    local: Tensor, all_gather: Callable[[Tensor], Tensor], world_size: int
) -> Tensor:
    """Concatenate every rank's ``(N_r, D)`` embeddings into ``(sum N_r, D)`` on all ranks.

    ``all_gather`` is ``LightningModule.all_gather`` (``(...) -> (world_size, ...)``); ranks
    may hold different counts, so each pads to the largest and the padding is dropped.
    """
    if world_size <= 1:
        return local
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = all_gather(count).reshape(world_size).tolist()
    padded = local.new_zeros((int(max(counts)), local.shape[1]))
    padded[: local.shape[0]] = local
    gathered = all_gather(padded).reshape(world_size, -1, local.shape[1])
    return torch.cat([gathered[r, : int(c)] for r, c in enumerate(counts)])


def _first_loader(loaders: Any) -> Any:
    if isinstance(loaders, Mapping):
        return next(iter(loaders.values()))
    if isinstance(loaders, Sequence) and not isinstance(loaders, str):
        return loaders[0]
    return loaders


def _images(batch: Any) -> Tensor:
    if isinstance(batch, Mapping):
        return batch["image"]
    if isinstance(batch, Sequence):
        return batch[0]
    return batch


class KMeansCentroidInit(Callback):
    """Initialise the module's centroids by k-means on real training embeddings.

    Args:
        stage: initialise at the start of the first epoch where ``module.stage >= stage``
            (a module without ``stage``: the first epoch).
        max_batches: embed at most this many batches per rank (None: one full pass).
        iterations, tol, n_init: k-means settings (:func:`kmeans`).
        seed: seed of the k-means++ seeding (the same on every rank).
        eval_mode: embed with the module in eval mode (BatchNorm running statistics, no
            dropout), as the embeddings are seen at test time.

    List it after any :class:`~hpelib.callbacks.StageSwitch`: both act at the start of an
    epoch, and the stage must be switched first (checked in ``setup``).
    """

    def __init__(
        self,
        stage: int = 2,
        max_batches: int | None = None,
        iterations: int = 100,
        tol: float = 1e-4,
        n_init: int = 3,
        seed: int = 0,
        eval_mode: bool = True,
    ) -> None:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches={max_batches} must be >= 1 or None")
        self.stage = int(stage)
        self.max_batches = max_batches
        self.iterations, self.tol, self.n_init = int(iterations), float(tol), int(n_init)
        self.seed = int(seed)
        self.eval_mode = eval_mode

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        missing = [name for name in _PROTOCOL if not hasattr(pl_module, name)]
        if missing:
            raise ValueError(
                f"KMeansCentroidInit: {type(pl_module).__name__} lacks {missing} "
                f"(needs {', '.join(_PROTOCOL)})"
            )
        from hpelib.callbacks.stages import StageSwitch

        callbacks = list(trainer.callbacks)
        mine = callbacks.index(self) if self in callbacks else -1
        late = [c for c in callbacks[mine + 1 :] if isinstance(c, StageSwitch)]
        if mine >= 0 and late:
            raise ValueError(
                "KMeansCentroidInit must come after StageSwitch in trainer.callbacks: the "
                "stage has to switch before the centroids are initialised"
            )

    def needs_init(self, pl_module: LightningModule) -> bool:
        """Whether the centroids are due now and not yet initialised."""
        if bool(pl_module.centroids_initialized):
            return False
        stage = getattr(pl_module, "stage", None)
        return stage is None or int(stage) >= self.stage

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.needs_init(pl_module):
            self.initialize(trainer, pl_module)

    @torch.no_grad()
    def collect(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """This rank's ``(N, D)`` embeddings of one pass of the training dataloader (images
        through the same device transfer and on-device augmentation as training)."""
        loader = _first_loader(trainer.train_dataloader)
        if loader is None:
            raise RuntimeError("KMeansCentroidInit: the trainer has no training dataloader")
        was_training = pl_module.training
        if self.eval_mode:
            pl_module.eval()
        chunks: list[Tensor] = []
        try:
            for i, batch in enumerate(loader):
                if self.max_batches is not None and i >= self.max_batches:
                    break
                batch = trainer.strategy.batch_to_device(batch)
                chunks.append(pl_module.embed(_images(batch)).detach().float())
        finally:
            pl_module.train(was_training)
        if not chunks:
            raise RuntimeError("KMeansCentroidInit: the training dataloader yielded no batch")
        return torch.cat(chunks)

    def initialize(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """Embed, gather across ranks, run k-means, broadcast and set; returns the centroids."""
        local = self.collect(trainer, pl_module)
        embeddings = gather_embeddings(local, pl_module.all_gather, trainer.world_size)
        generator = torch.Generator().manual_seed(self.seed)
        centroids, labels, _ = kmeans(
            embeddings, int(pl_module.num_clusters), self.iterations, self.tol, self.n_init, generator
        )
        # Same inputs and seed give the same result on every rank; the broadcast makes it
        # exact even if floating-point reductions differ between devices.
        centroids = trainer.strategy.broadcast(centroids, src=0).to(pl_module.device)
        pl_module.init_centroids(centroids)
        sizes = torch.bincount(labels, minlength=centroids.shape[0]).tolist()
        rank_zero_info(
            f"KMeansCentroidInit: {centroids.shape[0]} centroids from {embeddings.shape[0]} "
            f"embeddings (cluster sizes {sizes})"
        )
        return centroids
