"""Procedural 3D heads rendered with perfect labels, in any orientation.

* :mod:`.head`: the parametric, mirror-symmetric head (identities, primitives, landmarks).
* :mod:`.render`: a batched pure-torch ray caster (CPU or GPU, no display) and scene sampling.
* :mod:`.datasets`: :class:`SyntheticHeads`, :class:`SyntheticPairs`,
  :class:`SyntheticAnchorPositives` and the CLERF helpers.
* :mod:`.writer`: :func:`write_table_dataset` (PNG images + ``labels.csv``).

See ``docs/synthetic.md``.
"""

from hpelib.data.synthetic.datasets import (
    BLOCK,
    SPLITS,
    SyntheticAnchorPositives,
    SyntheticHeads,
    SyntheticPairs,
    clerf_roll_free,
    render_anchor_positives,
)
from hpelib.data.synthetic.head import (
    HEAD_PARTS,
    IDENTITY_PARAMS,
    NUM_IDENTITY_PARAMS,
    OCCLUDER_KINDS,
    HeadPrimitives,
    build_head,
    sample_identity_params,
)
from hpelib.data.synthetic.landmarks import head_landmarks
from hpelib.data.synthetic.render import (
    CAMERAS,
    FRONTAL_RANGES_DEG,
    PRESETS,
    SceneConfig,
    default_scene,
    render_heads,
    sample_rotations,
    sample_scenes,
)
from hpelib.data.synthetic.writer import TABLE_COLUMNS, write_table_dataset

__all__ = [
    "BLOCK", "CAMERAS", "FRONTAL_RANGES_DEG", "HEAD_PARTS", "IDENTITY_PARAMS",
    "NUM_IDENTITY_PARAMS", "OCCLUDER_KINDS", "PRESETS", "SPLITS", "TABLE_COLUMNS",
    "HeadPrimitives", "SceneConfig", "SyntheticAnchorPositives", "SyntheticHeads",
    "SyntheticPairs", "build_head", "clerf_roll_free", "default_scene",
    "head_landmarks", "render_anchor_positives", "render_heads", "sample_identity_params",
    "sample_rotations", "sample_scenes", "write_table_dataset",
]  # fmt: skip
