"""Scenes of the procedural heads: camera and framing (:class:`SceneConfig`), pose sampling
(:func:`sample_rotations`) and per-image scene tensors (:func:`sample_scenes`,
:func:`default_scene`) that :func:`hpelib.data.synthetic.render.render_heads` draws."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hpelib.data.synthetic.head import (
    NUM_OCCLUDER_PARAMS,
    OCCLUDER_KINDS,
)
from hpelib.rotation.sampling import random_rotation, sample_rotation_euler_range

__all__ = [
    "CAMERAS",
    "FRONTAL_RANGES_DEG",
    "NUM_BACKGROUND_PARAMS",
    "PRESETS",
    "SceneConfig",
    "default_scene",
    "sample_rotations",
    "sample_scenes",
]

CAMERAS = ("perspective", "weak_perspective")
PRESETS = ("full_range", "frontal")
# 300W-LP-like ranges (pitch, yaw, roll) in degrees, 300W-LP Euler convention.
FRONTAL_RANGES_DEG = (40.0, 90.0, 35.0)
_COARSE, _FINE = 4, 12  # background noise grids
NUM_BACKGROUND_PARAMS = 12 + 3 * _COARSE * _COARSE + 3 * _FINE * _FINE


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn and framed (everything except the head and its pose).

    Attributes:
        camera: ``"perspective"`` or ``"weak_perspective"``.
        camera_distance: head-centre depth in head heights (perspective strength).
        head_fill: head height (crown to chin) over the image size at nominal scale.
        translation_jitter: head-centre shift, uniform in ``+/-`` this fraction of the image.
        scale_jitter: relative head-size change, uniform in ``+/-`` this fraction.
        occlusion_prob: probability that a sample gets one occluder.
        occluder_kinds: which of :data:`OCCLUDER_KINDS` may be drawn.
        expression_prob: probability of a random eye closure / open mouth.
        occluded_threshold: fraction of visible face pixels an occluder must cover for the
            sample's ``occluded`` flag.
    """

    camera: str = "perspective"
    camera_distance: float = 8.0
    head_fill: float = 0.55
    translation_jitter: float = 0.05
    scale_jitter: float = 0.1
    occlusion_prob: float = 0.0
    occluder_kinds: tuple[str, ...] = field(default=OCCLUDER_KINDS)
    expression_prob: float = 0.3
    occluded_threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {self.camera!r}")
        if not 0.0 <= self.occlusion_prob <= 1.0:
            raise ValueError(f"occlusion_prob must be in [0, 1], got {self.occlusion_prob}")
        unknown = set(self.occluder_kinds) - set(OCCLUDER_KINDS)
        if unknown or not self.occluder_kinds:
            raise ValueError(
                f"occluder_kinds must be a non-empty subset of {OCCLUDER_KINDS}, got "
                f"{self.occluder_kinds!r}"
            )
        if self.camera_distance <= 1.0:
            raise ValueError(f"camera_distance must be > 1 head height, got {self.camera_distance}")
        if not 0.05 <= self.head_fill <= 2.0:
            raise ValueError(f"head_fill must be in [0.05, 2], got {self.head_fill}")


def sample_rotations(
    n: int, preset: str | tuple[float, float, float], generator: torch.Generator
) -> Tensor:
    """``(n, 3, 3)`` rotations: ``"full_range"`` (uniform on SO(3)), ``"frontal"``
    (300W-LP-like ranges :data:`FRONTAL_RANGES_DEG`) or explicit ``(pitch, yaw, roll)``
    ranges in degrees (300W-LP convention)."""
    if isinstance(preset, str):
        if preset == "full_range":
            return random_rotation(n, generator=generator)
        if preset == "frontal":
            return sample_rotation_euler_range(n, FRONTAL_RANGES_DEG, "300wlp", generator)
        raise ValueError(
            f"preset must be one of {PRESETS} or (pitch, yaw, roll) ranges, got {preset!r}"
        )
    if len(preset) != 3:
        raise ValueError(f"preset ranges must be (pitch, yaw, roll) degrees, got {preset!r}")
    return sample_rotation_euler_range(n, tuple(float(x) for x in preset), "300wlp", generator)


def sample_scenes(
    n: int,
    generator: torch.Generator,
    preset: str | tuple[float, float, float] = "full_range",
    config: SceneConfig | None = None,
) -> dict[str, Tensor]:
    """Draw ``n`` scenes (pose, framing, light, expression, occluders, background).

    Returns a dict of CPU tensors with leading dimension ``n``: ``rotation (n, 3, 3)``,
    ``translation (n, 2)`` pixels/size, ``scale (n,)``, ``light (n, 3)`` unit vector towards
    the light in camera axes, ``ambient (n,)``, ``diffuse (n,)``, ``eye_closure (n,)``,
    ``mouth_open (n,)``, ``occluder_flags (n, 5)`` bool, ``occluder_params (n, 10)``,
    ``background (n, NUM_BACKGROUND_PARAMS)``. The draw order is fixed, so the same generator
    state gives the same scenes.
    """
    cfg = config or SceneConfig()
    rot = sample_rotations(n, preset, generator)
    u = torch.rand(n, 12, generator=generator)
    translation = (2 * u[:, 0:2] - 1) * cfg.translation_jitter
    scale = 1 + (2 * u[:, 2] - 1) * cfg.scale_jitter
    # Light from the camera's hemisphere, up to ~70 degrees off-axis.
    az, el = 2 * math.pi * u[:, 3], 1.2 * u[:, 4].sqrt()
    light = torch.stack([el.sin() * az.cos(), el.sin() * az.sin(), -el.cos()], -1)
    ambient = 0.3 + 0.25 * u[:, 5]
    diffuse = 0.55 + 0.4 * u[:, 6]
    expressive = u[:, 7] < cfg.expression_prob
    eye_closure = torch.where(expressive & (u[:, 8] < 0.5), u[:, 9], torch.zeros(n))
    mouth_open = torch.where(expressive & (u[:, 8] >= 0.3), u[:, 10], torch.zeros(n))
    occ_u = torch.rand(n, 2, generator=generator)
    kinds = torch.tensor([OCCLUDER_KINDS.index(k) for k in cfg.occluder_kinds])
    kind = kinds[(occ_u[:, 1] * len(kinds)).long().clamp_max(len(kinds) - 1)]
    flags = torch.zeros(n, len(OCCLUDER_KINDS), dtype=torch.bool)
    flags[torch.arange(n), kind] = occ_u[:, 0] < cfg.occlusion_prob
    occluder_params = torch.rand(n, NUM_OCCLUDER_PARAMS, generator=generator)
    background = torch.rand(n, NUM_BACKGROUND_PARAMS, generator=generator)
    return {
        "rotation": rot.float(),
        "translation": translation,
        "scale": scale,
        "light": light,
        "ambient": ambient,
        "diffuse": diffuse,
        "eye_closure": eye_closure,
        "mouth_open": mouth_open,
        "occluder_flags": flags,
        "occluder_params": occluder_params,
        "background": background,
    }


def default_scene(rotations: Tensor) -> dict[str, Tensor]:
    """A neutral scene per rotation ``(B, 3, 3)``: centred head, nominal scale, light along
    the optical axis, no expression or occluder, mid-grey flat background. Edit its entries
    to build controlled renders (tests, figures)."""
    b = rotations.shape[0]
    bg = torch.full((b, NUM_BACKGROUND_PARAMS), 0.5)
    bg[:, 7:12] = 0.0  # no noise, no stripes
    return {
        "rotation": rotations.float().cpu(),
        "translation": torch.zeros(b, 2),
        "scale": torch.ones(b),
        "light": torch.tensor([0.0, 0.0, -1.0]).expand(b, 3).clone(),
        "ambient": torch.full((b,), 0.35),
        "diffuse": torch.full((b,), 0.7),
        "eye_closure": torch.zeros(b),
        "mouth_open": torch.zeros(b),
        "occluder_flags": torch.zeros(b, len(OCCLUDER_KINDS), dtype=torch.bool),
        "occluder_params": torch.full((b, NUM_OCCLUDER_PARAMS), 0.5),
        "background": bg,
    }

