"""CLERF anchor-positive generation and the augmentation shared by anchor and positive.

Paper (Sec. 3.2): for a training image with rotation ``R``, decompose
``R = R_roll (R_pitch R_yaw)`` (:func:`~hpelib.rotation.euler_clerf_from_rotation`), obtain an
image of *another* head at the same yaw and pitch (PanoHead in the paper), then rotate that
image in-plane by the roll, so that its label is ``R`` exactly (eq. 1: an in-plane rotation
left-multiplies the label by ``R_z``). The same random rotate/flip augmentation is then
applied to the anchor and its positive, which keeps them positives (Theorem 3.1: a shared
transform leaves their geodesic distance unchanged).

Pieces:

* :func:`split_roll`: ``R -> (R_yp, roll)`` with ``R = Rz(roll) @ R_yp``.
* Positive sources (``render(rotations_yp, generator) -> {"image", "rotation"}``):
  :class:`SyntheticPositiveSource` (hpelib's procedural heads, the default; exact yaw/pitch)
  and :class:`FolderPositiveSource` (pre-generated images, e.g. PanoHead output, listed in a
  CSV with ``path, yaw, pitch`` in degrees, CLERF convention; the nearest pose is used and
  the positive keeps its own exact label) and :class:`RealFacePositiveSource` (real faces
  de-rolled in-plane; the nearest yaw/pitch is used, exact own label).
* :class:`AnchorPositiveDataset`: wraps any training dataset and adds ``item["positive"]``
  (collated into the nested sub-batch ``batch["positive"]``).
* :class:`SharedGeometricAugmentation`: ONE random warp per anchor, applied to the anchor
  and to its positive (the datamodule would augment nested sub-batches independently).
* :class:`CLERFPaperAugmentation`: the pixel augmentations the paper lists (translation,
  resizing, sharpness, centre crop, colour jitter), for the datamodule's ``augmentation``.
* :class:`CLERFPhotometric`: hpelib's wider photometric set
  (:func:`hpelib.data.transforms.clerf_photometric`) as a class. Both change no rotation
  label, so they may differ between anchor and positive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kornia.augmentation as KA
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from hpelib.data.datamodule import build_dataset_from_spec
from hpelib.data.transforms import (
    PADDING_MODES,
    KorniaPhotometric,
    RandomGeometric,
    RandomInPlaneRotation,
    RandomLineFlip,
    RandomScaleTranslate,
    apply_warp,
    clerf_photometric,
    image_center,
)
from hpelib.rotation import (
    ImageWarp,
    euler_clerf_from_rotation,
    geodesic_distance,
    rotation_from_euler_clerf,
)
from hpelib.specs import instantiate_spec

__all__ = [
    "ROTATION_SENSES",
    "SHARED_AUGMENTATIONS",
    "AnchorPositiveDataset",
    "CLERFPaperAugmentation",
    "CLERFPhotometric",
    "FolderPositiveSource",
    "PositiveSource",
    "RealFacePositiveSource",
    "SharedGeometricAugmentation",
    "SyntheticPositiveSource",
    "make_positives",
    "split_roll",
]

Batch = dict[str, Any]


def split_roll(rotations: Tensor) -> tuple[Tensor, Tensor]:
    """CLERF's decomposition ``R = R_roll @ (R_pitch @ R_yaw)``.

    Args:
        rotations: ``(B, 3, 3)`` internal rotations.

    Returns:
        ``(R_yp (B, 3, 3), roll (B,))`` radians with ``R = Rz(roll) @ R_yp``: ``R_yp`` has
        the yaw and pitch of ``R`` and zero roll. Rotating an image labelled ``R_yp``
        in-plane by ``phi = -roll`` (counter-clockwise as displayed) gives the label ``R``.
    """
    yaw, pitch, roll = euler_clerf_from_rotation(rotations)
    return rotation_from_euler_clerf(yaw, pitch, torch.zeros_like(roll)), roll


class PositiveSource:
    """Interface of the images a positive is made from.

    ``render(rotations_yp (B, 3, 3), generator) -> {"image": (B, 3, S, S) uint8,
    "rotation": (B, 3, 3)}``: heads of other identities at (about) the requested zero-roll
    poses; ``rotation`` is the exact label of each returned image.
    """

    def render(self, rotations_yp: Tensor, generator: torch.Generator) -> Batch:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement render()")


class SyntheticPositiveSource(PositiveSource):
    """Positives from hpelib's procedural head renderer (:mod:`hpelib.data.synthetic`).

    Identities are drawn from ``[identity_offset, identity_offset + num_identities)``; the
    default offset keeps them disjoint from the identities of the synthetic training sets,
    like PanoHead's random new people. Framing, light, expression and background are drawn
    per positive (:func:`~hpelib.data.synthetic.render.sample_scenes`), the pose is exactly
    the requested one.

    Args:
        image_size: rendered size (match the training images).
        num_identities: size of the identity pool.
        identity_offset: first identity id of the pool.
        identity_seed: seed of the identity parameters.
        supersample: anti-aliasing factor of the renderer.
        camera: ``"perspective"`` or ``"weak_perspective"``.
    """

    def __init__(
        self,
        image_size: int = 64,
        num_identities: int = 10_000,
        identity_offset: int = 1_000_000,
        identity_seed: int = 0,
        supersample: int = 1,
        camera: str = "perspective",
    ) -> None:
        from hpelib.data.synthetic.render import SceneConfig

        if num_identities <= 0:
            raise ValueError(f"num_identities must be > 0, got {num_identities}")
        self.image_size, self.num_identities = int(image_size), int(num_identities)
        self.identity_offset, self.identity_seed = int(identity_offset), int(identity_seed)
        self.supersample = int(supersample)
        self.config = SceneConfig(camera=camera)

    def render(self, rotations_yp: Tensor, generator: torch.Generator) -> Batch:
        from hpelib.data.synthetic.head import sample_identity_params
        from hpelib.data.synthetic.render import render_heads, sample_scenes

        b = rotations_yp.shape[0]
        ids = self.identity_offset + torch.randint(0, self.num_identities, (b,), generator=generator)
        scene = sample_scenes(b, generator, "full_range", self.config)
        scene["rotation"] = rotations_yp.detach().float().cpu()
        params = sample_identity_params(ids, self.identity_seed)
        out = render_heads(params, scene, self.image_size, self.config, "cpu", self.supersample)
        return {"image": out["image"], "rotation": scene["rotation"], "identity": ids}


class FolderPositiveSource(PositiveSource):
    """Pre-generated positives (e.g. PanoHead renders) listed in a CSV table.

    The table has columns ``path`` (relative to ``root``, default: the CSV's folder), ``yaw``
    and ``pitch`` in degrees in CLERF's convention (:func:`~hpelib.rotation.rotation_from_euler_clerf`),
    zero roll. For a requested pose, one image is drawn among the ``candidates`` nearest ones
    (geodesic distance), loaded as RGB and resized to ``image_size``; its label is its own
    table pose, so a positive is exact even when the table has no perfect match.

    Args:
        csv: path of the table.
        root: image folder (default: the CSV's folder).
        image_size: output size (square).
        candidates: draw among this many nearest poses (1 = always the nearest).
        max_distance_deg: raise ``ValueError`` when the nearest pose is farther than this.
    """

    def __init__(
        self,
        csv: str | Path,
        root: str | Path | None = None,
        image_size: int = 64,
        candidates: int = 1,
        max_distance_deg: float = 180.0,
    ) -> None:
        import pandas as pd

        csv = Path(csv)
        if not csv.is_file():
            raise FileNotFoundError(f"positive table csv={str(csv)!r} does not exist")
        table = pd.read_csv(csv)
        missing = {"path", "yaw", "pitch"} - set(table.columns)
        if missing:
            raise ValueError(f"positive table {str(csv)!r} lacks columns {sorted(missing)}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.root = Path(root) if root is not None else csv.parent
        self.paths = [str(p) for p in table["path"]]
        yaw = torch.deg2rad(torch.tensor(table["yaw"].to_numpy(), dtype=torch.float64))
        pitch = torch.deg2rad(torch.tensor(table["pitch"].to_numpy(), dtype=torch.float64))
        self.rotations = rotation_from_euler_clerf(yaw, pitch, torch.zeros_like(yaw)).float()
        self.image_size, self.candidates = int(image_size), int(candidates)
        self.max_distance = math.radians(max_distance_deg)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> Tensor:
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as img:
            img = img.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()

    def render(self, rotations_yp: Tensor, generator: torch.Generator) -> Batch:
        rows, nearest = draw_nearest(rotations_yp, self.rotations, self.candidates, generator)
        if bool((nearest > self.max_distance).any()):
            raise ValueError(
                f"no positive within max_distance_deg={math.degrees(self.max_distance):.1f} of "
                f"a requested pose (worst nearest: {math.degrees(float(nearest.max())):.1f} deg)"
            )
        images = torch.stack([self._load(int(i)) for i in rows])
        return {"image": images, "rotation": self.rotations[rows].clone()}


def draw_nearest(
    query: Tensor, table: Tensor, candidates: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """For each ``query (B, 3, 3)`` rotation, one row of ``table (N, 3, 3)`` drawn uniformly
    among its ``candidates`` nearest (geodesic distance).

    Returns:
        ``(rows (B,) int64, nearest (B,))``: the drawn rows and each query's distance to its
        nearest row (radians).
    """
    query = query.float().cpu()
    dist = geodesic_distance(
        query[:, None].expand(-1, len(table), 3, 3), table[None].expand(len(query), -1, 3, 3)
    )
    k = min(int(candidates), len(table))
    near_d, near = dist.topk(k, dim=1, largest=False)
    pick = torch.randint(0, k, (len(query),), generator=generator)
    return near[torch.arange(len(near)), pick], near_d[:, 0]


class RealFacePositiveSource(PositiveSource):
    """CLERF positives from real faces, de-rolled by an in-plane rotation.

    Every face ``j`` of ``dataset`` (label ``R_j = Rz(roll_j) R_yp_j``) is rotated in-plane
    once by its roll, which gives an image labelled exactly ``R_yp_j``: zero roll, the same
    yaw and pitch (the paper's Corollary 3.1.1: an in-plane rotation changes only the roll of
    CLERF's decomposition). :meth:`render` returns, for each requested zero-roll pose, one
    of the ``candidates`` de-rolled faces nearest to it with its own exact label;
    :func:`make_positives` then rolls it to the anchor's roll.

    This stands in for the paper's PanoHead renders where none are at hand: the positive is
    another real face at the nearest available yaw and pitch, so its label is the anchor's
    up to that gap (small for a dense pose distribution, large at rare poses), and with few
    faces it may be the anchor itself.

    Args:
        dataset: the faces (a dataset or spec; items ``{"image" (3, S, S) uint8,
            "rotation" (3, 3)}``), usually the training faces at the evaluation crop. Read
            once, into memory.
        candidates: draw among this many nearest faces (> 1, so a face is not always its
            own positive).
    """

    def __init__(self, dataset: Dataset | Mapping[str, Any], candidates: int = 4) -> None:
        dataset = build_dataset_from_spec(dataset)
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("RealFacePositiveSource: the dataset is empty")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        items = [dataset[i] for i in range(n)]
        images = torch.stack([it["image"] for it in items])
        rotations = torch.stack([it["rotation"] for it in items]).float()
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"RealFacePositiveSource: items must hold (3, S, S) uint8 images, got "
                f"{images.dtype} {tuple(images.shape[1:])}"
            )
        r_yp, roll = split_roll(rotations)
        b, _, h, w = images.shape
        # R = Rz(roll) R_yp and make_positives rolls by ImageWarp.rotation(-roll): undo it.
        warp = ImageWarp.rotation(roll.double(), image_center(h, w, b, torch.float64))
        moved = apply_warp({"image": images.float() / 255.0, "rotation": rotations}, warp)
        self.images = (moved["image"] * 255.0).round().clamp(0, 255).to(torch.uint8)
        self.rotations = moved["rotation"]
        self.candidates = int(candidates)

    def __len__(self) -> int:
        return len(self.images)

    def render(self, rotations_yp: Tensor, generator: torch.Generator) -> Batch:
        """``rotations_yp (B, 3, 3)`` -> ``{"image" (B, 3, S, S) uint8, "rotation" (B, 3, 3)}``."""
        rows, _ = draw_nearest(rotations_yp, self.rotations, self.candidates, generator)
        return {"image": self.images[rows], "rotation": self.rotations[rows].clone()}


def make_positives(
    rotations: Tensor,
    source: PositiveSource,
    generator: torch.Generator,
    padding_mode: str = "zeros",
) -> Batch:
    """Anchor-positives for anchors labelled ``rotations (B, 3, 3)``.

    Renders zero-roll heads at the anchors' yaw/pitch (:func:`split_roll`) and rotates each
    image in-plane by its anchor's roll with ONE :class:`ImageWarp` for image and label, so
    ``positive["rotation"]`` equals ``rotations`` (to float precision) for an exact source.

    Returns:
        ``{"image": (B, 3, S, S) uint8, "rotation": (B, 3, 3), ...}`` (source extras kept).
    """
    r_yp, roll = split_roll(rotations.float())
    rendered = source.render(r_yp, generator)
    image = rendered["image"]
    b, _, h, w = image.shape
    warp = ImageWarp.rotation(-roll.double().cpu(), image_center(h, w, b, torch.float64))
    batch = {"image": image.float() / 255.0, "rotation": rendered["rotation"].float()}
    moved = apply_warp(batch, warp, padding_mode=padding_mode)
    out = dict(rendered)
    out["image"] = (moved["image"] * 255.0).round().clamp(0, 255).to(torch.uint8)
    out["rotation"] = moved["rotation"]
    return out


class AnchorPositiveDataset(Dataset):
    """Adds a generated positive to every item of a training dataset.

    ``item = dataset[i]`` gets ``item[key] = {"image" (3, S, S) uint8, "rotation" (3, 3),
    "identity" ()}`` made by :func:`make_positives`; the collate function turns it into the
    nested sub-batch ``batch[key]``.

    Args:
        dataset: a Dataset or a dataset spec (``class_path``/``name``) of sample dicts.
        source: a :class:`PositiveSource` or its ``class_path`` spec (default: a
            :class:`SyntheticPositiveSource` at the dataset's image size).
        seed: ``None`` draws a fresh positive every time (from torch's RNG, which Lightning
            seeds per worker); an int makes item ``i``'s positive a function of ``(seed, i)``.
        padding_mode: warp padding of the roll rotation (CLERF's OpenCV warps pad black).
        key: name of the nested sample.
    """

    def __init__(
        self,
        dataset: Any,
        source: Any = None,
        seed: int | None = None,
        padding_mode: str = "zeros",
        key: str = "positive",
    ) -> None:
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode={padding_mode!r} is not one of {PADDING_MODES}")
        self.dataset = build_dataset_from_spec(dataset)
        self._source = instantiate_spec(source)
        if isinstance(self._source, Mapping):
            raise ValueError(f"expected a mapping with a 'class_path', got {dict(self._source)!r}")
        self.seed, self.padding_mode, self.key = seed, padding_mode, key

    @property
    def source(self) -> PositiveSource:
        if self._source is None:
            size = int(torch.as_tensor(self.dataset[0]["image"]).shape[-1])
            self._source = SyntheticPositiveSource(image_size=size)
        return self._source

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _generator(self, index: int) -> torch.Generator:
        if self.seed is None:
            return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        from hpelib.data.variants import item_generator

        return item_generator(self.seed, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        rotation = torch.as_tensor(item["rotation"]).float()[None]
        positive = make_positives(rotation, self.source, self._generator(index), self.padding_mode)
        item[self.key] = {k: v[0] for k, v in positive.items()}
        return item


#: Names accepted by :class:`SharedGeometricAugmentation`: ``clerf`` = in-plane rotation
#: (p = 0.5, 0-90 degrees) and flip across a line at 0-90 degrees (p = 0.3), the paper's
#: rotate+flip; ``rotate`` and ``flip`` alone (ablations); ``none``.
SHARED_AUGMENTATIONS: tuple[str, ...] = ("clerf", "rotate", "flip", "none")

#: Sense of the in-plane rotation: ``clockwise`` (the paper's: clockwise as displayed, 0-90
#: degrees) or ``symmetric`` (either sense with probability 1/2, uniform in -90..90 degrees;
#: hpelib's earlier default, kept because the ablation tables of docs/methods/clerf.md were
#: measured with it and because a roll distribution symmetric about 0 needs no flip to
#: reach counter-clockwise rolls).
ROTATION_SENSES: tuple[str, ...] = ("clockwise", "symmetric")


class SharedGeometricAugmentation(nn.Module):
    """CLERF's rotate/flip, one random warp per anchor shared with its nested positive.

    ``forward(batch) -> batch``: samples one :class:`ImageWarp` per sample of ``batch``
    (images ``(B, C, H, W)`` float) and applies it, with its label transform, to the batch
    and to every nested sub-batch named in ``nested`` (same ``B``), so an anchor and its
    positive keep equal labels.

    Args:
        name: one of :data:`SHARED_AUGMENTATIONS`.
        rotation_p, rotation_degrees: in-plane rotation probability and maximum angle.
        rotation: sense of the in-plane rotation, one of :data:`ROTATION_SENSES`
            (``clockwise``, the paper's).
        flip_p, flip_degrees: line-flip probability and maximum line angle.
        padding_mode: warp padding, one of :data:`~hpelib.data.transforms.PADDING_MODES`.
        nested: keys of the sub-batches that share the anchor's warp.
        generator: optional CPU generator.
    """

    def __init__(
        self,
        name: str = "clerf",
        rotation_p: float = 0.5,
        rotation_degrees: float = 90.0,
        flip_p: float = 0.3,
        flip_degrees: float = 90.0,
        padding_mode: str = "zeros",
        nested: Sequence[str] = ("positive",),
        generator: torch.Generator | None = None,
        rotation: str = "clockwise",
    ) -> None:
        super().__init__()
        if name not in SHARED_AUGMENTATIONS:
            raise ValueError(f"augmentation={name!r} is not one of {SHARED_AUGMENTATIONS}")
        if rotation not in ROTATION_SENSES:
            raise ValueError(f"rotation={rotation!r} is not one of {ROTATION_SENSES}")
        transforms = []
        if name in ("clerf", "rotate"):
            clockwise = rotation == "clockwise"
            transforms.append(
                RandomInPlaneRotation(
                    p=rotation_p, max_degrees=rotation_degrees, symmetric=not clockwise,
                    clockwise=clockwise, generator=generator,
                )
            )
        if name in ("clerf", "flip"):
            transforms.append(RandomLineFlip(p=flip_p, max_degrees=flip_degrees, generator=generator))
        self.name = name
        self.geometric = RandomGeometric(transforms, padding_mode=padding_mode) if transforms else None
        self.nested = tuple(nested)

    def forward(self, batch: Batch) -> Batch:
        if self.geometric is None:
            return batch
        warp, active = self.geometric.sample_warp(batch)
        mode, padding = self.geometric.mode, self.geometric.padding_mode
        out = apply_warp(batch, warp, padding, mode, active)
        for key in self.nested:
            sub = batch.get(key)
            if isinstance(sub, dict) and "image" in sub:
                if sub["image"].shape[0] != batch["image"].shape[0]:
                    raise ValueError(
                        f"nested batch {key!r} has {sub['image'].shape[0]} samples, the anchors "
                        f"{batch['image'].shape[0]}: a shared warp needs one positive per anchor"
                    )
                out[key] = apply_warp(sub, warp, padding, mode, active)
        return out


class CLERFPaperAugmentation(nn.Module):
    """The pixel augmentations the CLERF paper lists: translation, resizing, sharpness,
    centre crop and colour jitter, for the datamodule's ``augmentation``.

    ``forward(batch) -> batch`` on float images ``(B, 3, H, W)`` in ``[0, 1]``. None of them
    changes the rotation label (a shift or zoom of the crop keeps the head's orientation),
    so anchors and positives may get different draws. Translation, resizing and the centre
    crop are ONE :class:`~hpelib.data.transforms.RandomScaleTranslate`-style warp per sample
    (landmarks and boxes follow); sharpness and colour jitter are kornia's. The paper names
    the operations without their parameters: every default below is hpelib's choice
    (torchvision's usual values).

    Args:
        translate, translate_p: shift of up to ``translate`` times the image size in x and
            y, with probability ``translate_p``.
        scale, scale_p: resizing (zoom about the centre) by a factor uniform in ``scale``,
            with probability ``scale_p``.
        center_crop: keep the central fraction of the image (then resized back to the input
            size, i.e. a fixed zoom by ``1 / center_crop``); 1.0 turns it off.
        sharpness, sharpness_p: kornia ``RandomSharpness`` factor and probability.
        brightness, contrast, saturation, hue, jitter_p: kornia ``ColorJitter`` ranges and
            probability.
        padding_mode: padding of the warp.
        generator: optional CPU generator for the per-sample decisions.
    """

    def __init__(
        self,
        translate: float = 0.1,
        translate_p: float = 0.5,
        scale: tuple[float, float] = (0.9, 1.1),
        scale_p: float = 0.5,
        center_crop: float = 0.9,
        sharpness: float = 0.5,
        sharpness_p: float = 0.5,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.05,
        jitter_p: float = 0.5,
        padding_mode: str = "zeros",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < center_crop <= 1.0:
            raise ValueError(f"center_crop={center_crop} must be a fraction in (0, 1]")
        zoom = 1.0 / center_crop
        self.geometric = RandomGeometric(
            [
                RandomScaleTranslate(scale=(1.0, 1.0), translate=translate, p=translate_p, generator=generator),
                RandomScaleTranslate(scale=tuple(scale), translate=0.0, p=scale_p, generator=generator),
                RandomScaleTranslate(scale=(zoom, zoom), translate=0.0, p=1.0, generator=generator),
            ],
            padding_mode=padding_mode,
        )
        self.pixel = nn.Sequential(
            KorniaPhotometric(KA.RandomSharpness(sharpness=sharpness, p=1.0), p=sharpness_p, generator=generator),
            KorniaPhotometric(
                KA.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=1.0), p=jitter_p, generator=generator
            ),
        )

    def forward(self, batch: Batch) -> Batch:
        return self.pixel(self.geometric(batch))


class CLERFPhotometric(nn.Module):
    """hpelib's wider photometric set (:func:`hpelib.data.transforms.clerf_photometric`:
    brightness, contrast, hue, gamma, CLAHE, grayscale, blur, noise, channel shuffle, RGB
    shift, coarse dropout, down-sampling) as a class, so a config can name it as the
    datamodule's ``augmentation``; the paper's own list is :class:`CLERFPaperAugmentation`.
    Pixel-only: it can run independently on anchors and positives."""

    def __init__(self) -> None:
        super().__init__()
        self.transforms = clerf_photometric()

    def forward(self, batch: Batch) -> Batch:
        return self.transforms(batch)
