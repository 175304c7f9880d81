"""Datasets of rendered heads: fixed-size, reproducible, cached in memory (or on disk).

Item ``i`` of a dataset is a pure function of ``(seed, split, i)`` and the constructor
options (not of ``num_samples``, the chunking, the worker or the rank): scenes are drawn in
fixed blocks of :data:`BLOCK` items from a generator seeded by ``(seed, split, block)``,
identities from a second generator per block. Identity ids are disjoint across splits
(``train`` ids start at 0, ``val`` at 1 000 000, ``test`` at 2 000 000).

The dataset registry (:mod:`hpelib.data.datasets.registry`) imports these classes and
registers them as ``synthetic``/``synthetic_heads``, ``synthetic_pairs`` and
``synthetic_anchor_positives``; this package does not import the registry, so it depends on
nothing in :mod:`hpelib.data` (the dependency goes one way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import kornia
import torch
from torch import Tensor
from torch.utils.data import Dataset

from hpelib.checkpoint_io import (
    CheckpointReadError,
    UnsafeCheckpointError,
    atomic_torch_save,
    read_checkpoint,
)
from hpelib.data.synthetic.head import _mix64, sample_identity_params
from hpelib.data.synthetic.render import (
    PRESETS,
    SceneConfig,
    render_heads,
    sample_scenes,
)
from hpelib.rotation.conventions import euler_clerf_from_rotation, rotation_from_euler_clerf
from hpelib.rotation.transforms import ImageWarp

logger = logging.getLogger("hpelib.data")

__all__ = [
    "BLOCK",
    "SPLITS",
    "SyntheticAnchorPositives",
    "SyntheticHeads",
    "SyntheticPairs",
    "clerf_roll_free",
    "render_anchor_positives",
]

BLOCK = 256
SPLITS = ("train", "val", "test")
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}
_SPLIT_SALT = {"train": 101, "val": 202, "test": 303}
_CACHE_VERSION = 1
# Keys kept per item (besides the image); masks only with with_masks=True.
_LABEL_KEYS = (
    "rotation", "box", "head_box", "landmarks_2d", "landmarks_visible", "landmarks_3d",
    "head_center", "head_size", "occluded", "occlusion_fraction",
)  # fmt: skip
_MASK_KEYS = ("head_mask", "occlusion_mask")


def _default_cache_dir() -> Path:
    root = os.environ.get("HPELIB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hpelib"
    )
    return Path(root) / "synthetic"


def _chunk_for(image_size: int, supersample: int) -> int:
    """Images per render call: about 1M (supersampled) pixels, which amortises the per-call
    overhead of ``render_heads`` (~2000 small tensor ops) while keeping its transient memory
    around 120 MB."""
    return max(4, min(BLOCK, (1 << 18) // (image_size * supersample) ** 2 * 4))


def clerf_roll_free(rotations: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``R`` into its CLERF roll-free part and roll: ``R = rotate_inplane(R0, -roll)``.

    Args:
        rotations: ``(B, 3, 3)`` internal rotations.

    Returns:
        ``R0 (B, 3, 3)`` = ``rotation_from_euler_clerf(yaw, pitch, 0)`` (same yaw and pitch
        as ``R``) and ``roll (B,)`` radians, with ``Rz(roll) @ R0 == R``.
    """
    yaw, pitch, roll = euler_clerf_from_rotation(rotations)
    return rotation_from_euler_clerf(yaw, pitch, torch.zeros_like(roll)), roll


class SyntheticHeads(Dataset):
    """Rendered heads with perfect labels, as :mod:`hpelib.data.sample` dicts.

    Args:
        num_samples: dataset length.
        image_size: square image size (>= 16).
        preset: ``"full_range"`` (uniform on SO(3), upside-down and facing away included),
            ``"frontal"`` (300W-LP-like ranges) or ``(pitch, yaw, roll)`` degree ranges.
        split: ``"train"``, ``"val"`` or ``"test"``; identity ids never overlap across splits
            and scenes differ.
        seed: master seed.
        num_identities: people in this split (default ``max(1, num_samples // 20)``).
        images_per_identity: consecutive groups of this many items share an identity
            (item ``i`` uses the identity drawn for item ``i - i % images_per_identity``).
        occlusion_prob: probability of one occluder per image (glasses, mask, hat, hand,
            2D patch); ``occluded`` is set when it covers enough of the visible face.
        camera: ``"perspective"`` or ``"weak_perspective"``.
        scene_config: full :class:`SceneConfig` (overrides ``camera``/``occlusion_prob``).
        cache: ``"memory"`` (render everything at construction), ``"disk"`` (same, plus a
            ``.pt`` file under ``cache_dir`` keyed by a hash of the options, reused later)
            or ``"none"`` (render each item on access; slow, for huge virtual datasets).
        cache_dir: where disk caches go (default ``$HPELIB_CACHE`` or ``~/.cache/hpelib``).
        device: device used for rendering (outputs are stored on CPU).
        supersample: anti-aliasing factor of the renderer.
        with_masks: also return ``head_mask`` and ``occlusion_mask`` ``(S, S)`` bool.
        num_threads: torch intra-op threads while rendering at construction (restored
            afterwards); ``None`` keeps torch's setting. On a loaded machine 1 can be many
            times faster than 2 (threads wait for each other).
    """

    def __init__(
        self,
        num_samples: int = 1000,
        image_size: int = 64,
        preset: str | tuple[float, float, float] = "full_range",
        split: str = "train",
        seed: int = 0,
        num_identities: int | None = None,
        images_per_identity: int = 1,
        occlusion_prob: float = 0.0,
        camera: str = "perspective",
        scene_config: SceneConfig | None = None,
        cache: str = "memory",
        cache_dir: str | os.PathLike[str] | None = None,
        device: torch.device | str | None = None,
        supersample: int = 1,
        with_masks: bool = False,
        num_threads: int | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(preset, str) and preset not in PRESETS:
            raise ValueError(
                f"preset must be one of {PRESETS} or (pitch, yaw, roll) ranges, got {preset!r}"
            )
        if cache not in ("memory", "disk", "none"):
            raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")
        if images_per_identity < 1:
            raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.num_threads = num_threads
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.preset = preset if isinstance(preset, str) else tuple(float(x) for x in preset)
        self.split = split
        self.seed = int(seed)
        self.num_identities = int(num_identities or max(1, num_samples // 20))
        if self.num_identities < 1:
            raise ValueError(f"num_identities must be >= 1, got {num_identities}")
        self.images_per_identity = int(images_per_identity)
        base = scene_config or SceneConfig(camera=camera, occlusion_prob=occlusion_prob)
        self.config = base
        self.device = device
        self.supersample = int(supersample)
        self.with_masks = bool(with_masks)
        self.cache = cache
        self._blocks: dict[int, dict[str, Tensor]] = {}
        self._data: dict[str, Tensor] | None = None
        if cache == "none":
            return
        path = None
        if cache == "disk":
            path = Path(cache_dir or _default_cache_dir()) / f"{self.cache_key()}.pt"
            if path.exists():
                try:
                    # No pickle beyond tensors: a cache folder shared or copied from elsewhere
                    # cannot run code; an unreadable one is rendered again and replaced.
                    self._data = read_checkpoint(
                        path, what="SyntheticHeads cache", trust_checkpoint=False
                    )
                    return
                except (CheckpointReadError, UnsafeCheckpointError) as err:
                    logger.warning("ignoring unreadable SyntheticHeads cache: %s", err)
        old_threads = torch.get_num_threads()
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            self._data = self._render_range(0, self.num_samples)
        finally:
            torch.set_num_threads(old_threads)
        if path is not None:  # atomic: concurrent ranks never read a half-written file
            atomic_torch_save(self._data, path)

    # -- reproducible draws ------------------------------------------------------------
    def cache_key(self) -> str:
        """Hash of every option that changes the content."""
        cfg = asdict(self.config)
        cfg["occluder_kinds"] = list(cfg["occluder_kinds"])
        key = dict(
            v=_CACHE_VERSION, n=self.num_samples, s=self.image_size, preset=self.preset,
            split=self.split, seed=self.seed, ids=self.num_identities,
            per=self.images_per_identity, cfg=cfg, ss=self.supersample, masks=self.with_masks,
        )  # fmt: skip
        return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _block_scenes(self, block: int) -> dict[str, Tensor]:
        if block not in self._blocks:
            gen = torch.Generator().manual_seed(_mix64(self.seed, _SPLIT_SALT[self.split], block))
            self._blocks[block] = sample_scenes(BLOCK, gen, self.preset, self.config)
            if len(self._blocks) > 8:  # bounded: only "none" caching revisits blocks
                self._blocks.pop(next(iter(self._blocks)))
        return self._blocks[block]

    def _identity_draws(self, block: int) -> Tensor:
        gen = torch.Generator().manual_seed(_mix64(self.seed, _SPLIT_SALT[self.split], block, 7))
        return torch.randint(self.num_identities, (BLOCK,), generator=gen)

    def identity_of(self, indices: Tensor) -> Tensor:
        """``(N,)`` item indices -> ``(N,)`` int64 identity ids (split offset included)."""
        leaders = indices - indices % self.images_per_identity
        out = torch.empty_like(leaders)
        for block in leaders.div(BLOCK, rounding_mode="floor").unique().tolist():
            sel = leaders // BLOCK == block
            out[sel] = self._identity_draws(block)[leaders[sel] % BLOCK]
        return out + _SPLIT_OFFSET[self.split]

    def scenes(self, start: int, stop: int) -> dict[str, Tensor]:
        """Scene tensors of items ``start .. stop - 1``."""
        parts = []
        for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            lo, hi = max(start, block * BLOCK), min(stop, (block + 1) * BLOCK)
            sc = self._block_scenes(block)
            parts.append({k: v[lo - block * BLOCK : hi - block * BLOCK] for k, v in sc.items()})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _render_range(self, start: int, stop: int) -> dict[str, Tensor]:
        chunk = _chunk_for(self.image_size, self.supersample)
        out: dict[str, list[Tensor]] = {}
        for lo in range(start, stop, chunk):
            hi = min(stop, lo + chunk)
            ids = self.identity_of(torch.arange(lo, hi))
            params = sample_identity_params(ids, self.seed)
            r = render_heads(
                params,
                self.scenes(lo, hi),
                self.image_size,
                self.config,
                self.device,
                self.supersample,
            )
            r["identity"] = ids
            r["shape_params"] = params
            keys = ("image", "identity", "shape_params", *_LABEL_KEYS)
            if self.with_masks:
                keys += _MASK_KEYS
            for k in keys:
                out.setdefault(k, []).append(r[k].cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    # -- Dataset -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        index = index % self.num_samples
        if self._data is not None:
            data, row = self._data, index
        else:
            data, row = self._render_range(index, index + 1), 0
        item = {k: v[row] for k, v in data.items()}
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


class SyntheticPairs(Dataset):
    """Pairs of images of the same identity in two independent poses (RankPose and friends).

    Item ``j`` is the sample dict of image ``a`` with the sample dict of image ``b`` under
    ``"partner"`` (items ``2j`` and ``2j+1`` of a :class:`SyntheticHeads` with
    ``images_per_identity=2``), the nested-pair layout of :class:`hpelib.data.pairs.IdentityPairs`
    that ``collate_samples`` turns into ``batch["partner"]``. Keyword arguments go to
    :class:`SyntheticHeads`.
    """

    def __init__(self, num_pairs: int = 500, **kwargs: Any) -> None:
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
        if "images_per_identity" in kwargs:
            raise ValueError("SyntheticPairs fixes images_per_identity=2")
        kwargs.setdefault("num_identities", max(1, num_pairs // 10))
        self.heads = SyntheticHeads(num_samples=2 * num_pairs, images_per_identity=2, **kwargs)

    def __len__(self) -> int:
        return len(self.heads) // 2

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        return {**self.heads[2 * index], "partner": self.heads[2 * index + 1]}


def render_anchor_positives(
    rotations: Tensor,
    params: Tensor,
    scene: dict[str, Tensor],
    image_size: int = 64,
    config: SceneConfig | None = None,
    mode: str = "warp",
    device: torch.device | str | None = None,
    supersample: int = 1,
) -> dict[str, Tensor]:
    """Render CLERF positives whose label equals ``rotations`` (to float precision).

    ``mode="render"`` renders the heads directly at ``rotations``. ``mode="warp"`` does what
    CLERF does with real images: render at the roll-free pose (same CLERF yaw and pitch,
    roll 0, head centred) and rotate the image in-plane by the roll about its centre with
    :class:`ImageWarp` + kornia; the label is ``ImageWarp.apply_rotation`` of the roll-free
    pose, which equals ``rotations``. In warp mode the per-pixel maps (depth, masks) are
    dropped (they would be stale) and the corners are filled by reflection.

    Args:
        rotations: ``(B, 3, 3)`` anchor rotations.
        params: ``(B, NUM_IDENTITY_PARAMS)`` identities of the positives.
        scene: scenes of the positives (their ``rotation`` entry is replaced).

    Returns:
        :func:`render_heads`-style dict; ``rotation`` is the positives' label.
    """
    if mode not in ("warp", "render"):
        raise ValueError(f"mode must be 'warp' or 'render', got {mode!r}")
    scene = dict(scene)
    if mode == "render":
        scene["rotation"] = rotations.float().cpu()
        return render_heads(params, scene, image_size, config, device, supersample)
    base, roll = clerf_roll_free(rotations.double())
    scene["rotation"] = base.float().cpu()
    scene["translation"] = torch.zeros_like(scene["translation"])  # exact only when centred
    out = render_heads(params, scene, image_size, config, device, supersample)
    b = rotations.shape[0]
    center = torch.full(
        (b, 2), (image_size - 1) / 2, dtype=torch.float64, device=out["image"].device
    )
    warp = ImageWarp.rotation(-roll.to(center), center)
    img = kornia.geometry.transform.warp_affine(
        out["image"].float(), warp.affine.float(), (image_size, image_size),
        align_corners=True, padding_mode="reflection",
    )  # fmt: skip
    res = {
        k: v
        for k, v in out.items()
        if k not in ("depth", "head_mask", "face_mask", "occlusion_mask")
    }
    res["image"] = img.round().clamp(0, 255).to(torch.uint8)
    res["rotation"] = warp.apply_rotation(base.to(center)).float()
    lm2d = warp.apply_points(out["landmarks_2d"].double()).float()
    res["landmarks_2d"] = lm2d
    res["landmarks_3d"] = torch.cat([lm2d, out["landmarks_3d"][..., 2:]], -1)
    res["box"] = torch.cat([lm2d.amin(1), lm2d.amax(1)], -1)
    res["head_box"] = warp.apply_boxes(out["head_box"].double()).float()
    res["head_center"] = warp.apply_points(out["head_center"].double()[:, None])[:, 0].float()
    return res


class SyntheticAnchorPositives(Dataset):
    """CLERF anchor-positive pairs: item ``j`` is the anchor's sample dict with the positive's
    under ``"positive"`` (a nested sub-batch after ``collate_samples``); their rotations are
    equal (to float precision), with another identity, background, light and
    jitter for the positive. ``mode`` as in :func:`render_anchor_positives`. Other keyword
    arguments go to the anchors' :class:`SyntheticHeads`; positives are rendered at
    construction and kept in memory."""

    def __init__(self, num_pairs: int = 500, mode: str = "warp", **kwargs: Any) -> None:
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
        if kwargs.get("cache") == "none":
            raise ValueError("SyntheticAnchorPositives needs cache='memory' or 'disk'")
        self.anchors = SyntheticHeads(num_samples=num_pairs, **kwargs)
        a = self.anchors
        # Positives: a disjoint scene stream (seed salted), identities from the same split.
        self.positive_source = SyntheticHeads(
            num_samples=num_pairs, image_size=a.image_size, preset=a.preset, split=a.split,
            seed=_mix64(a.seed, 99) % (1 << 31), num_identities=a.num_identities,
            scene_config=a.config, cache="none", device=a.device, supersample=a.supersample,
        )  # fmt: skip
        chunk = _chunk_for(a.image_size, a.supersample)
        parts: dict[str, list[Tensor]] = {}
        for lo in range(0, num_pairs, chunk):
            hi = min(num_pairs, lo + chunk)
            ids = self.positive_source.identity_of(torch.arange(lo, hi))
            params = sample_identity_params(ids, a.seed)
            r = render_anchor_positives(
                a._data["rotation"][lo:hi], params, self.positive_source.scenes(lo, hi),
                a.image_size, a.config, mode, a.device, a.supersample,
            )  # fmt: skip
            r["identity"], r["shape_params"] = ids, params
            for k in ("image", "identity", "shape_params", *[k for k in _LABEL_KEYS if k in r]):
                parts.setdefault(k, []).append(r[k].cpu())
        self._positives = {k: torch.cat(v) for k, v in parts.items()}

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, index: int) -> dict[str, Any]:
        anchor = self.anchors[index]
        pos = {k: v[index] for k, v in self._positives.items()}
        pos["index"] = anchor["index"]
        return {**anchor, "positive": pos}
