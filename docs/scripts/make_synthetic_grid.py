"""Render docs/images/synthetic_grid.png: a grid of hpelib.data.synthetic samples.

Rows: full-range poses; 300W-LP-like frontal poses; occluders (glasses, mask, hat, hand,
2D patch); one identity turned about its vertical axis in 45-degree steps, then rolled
upside-down; frontal samples with their 68 landmarks (green visible, red self-occluded) and
face box. Run from the repository root: ``python docs/scripts/make_synthetic_grid.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from hpelib.data.synthetic import (
    SceneConfig,
    default_scene,
    render_heads,
    sample_identity_params,
    sample_scenes,
)
from hpelib.rotation import rotation_from_euler_clerf

SIZE, COLS = 128, 8
OUT = Path(__file__).resolve().parents[1] / "images" / "synthetic_grid.png"


def _row(preset: str, seed: int, config: SceneConfig) -> dict[str, torch.Tensor]:
    scene = sample_scenes(COLS, torch.Generator().manual_seed(seed), preset, config)
    params = sample_identity_params(range(seed * 100, seed * 100 + COLS), seed=0)
    return render_heads(params, scene, SIZE, config, supersample=2)


def _turntable() -> dict[str, torch.Tensor]:
    yaw = torch.arange(COLS - 2, dtype=torch.float32) * math.radians(60)
    rots = [rotation_from_euler_clerf(y, torch.tensor(0.2), torch.tensor(0.0)) for y in yaw]
    rots += [rotation_from_euler_clerf(torch.tensor(0.5), torch.tensor(0.2), torch.tensor(math.pi))]
    rots += [rotation_from_euler_clerf(torch.tensor(0.0), torch.tensor(-1.4), torch.tensor(0.0))]
    scene = default_scene(torch.stack(rots))
    scene["light"] = torch.nn.functional.normalize(
        torch.tensor([[0.4, -0.5, -0.75]]), dim=-1
    ).expand(COLS, 3)
    scene["background"][:, :6] = torch.tensor([0.55, 0.6, 0.7, 0.8, 0.8, 0.85])
    return render_heads(sample_identity_params([7] * COLS), scene, SIZE, supersample=2)


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [
        _row("full_range", 1, SceneConfig()),
        _row("frontal", 2, SceneConfig()),
        _row("frontal", 3, SceneConfig(occlusion_prob=1.0)),
        _turntable(),
    ]
    lm_row = _row("frontal", 4, SceneConfig(translation_jitter=0.03))
    rows.append(lm_row)
    pad = 2
    grid = Image.new("RGB", (COLS * (SIZE + pad) + pad, len(rows) * (SIZE + pad) + pad), "white")
    for r, out in enumerate(rows):
        for c in range(COLS):
            tile = Image.fromarray(out["image"][c].permute(1, 2, 0).numpy())
            if out is lm_row:
                draw = ImageDraw.Draw(tile)
                draw.rectangle(out["box"][c].tolist(), outline=(255, 255, 0))
                for (x, y), v in zip(
                    out["landmarks_2d"][c].tolist(),
                    out["landmarks_visible"][c].tolist(),
                    strict=True,
                ):
                    draw.point((x, y), fill=(0, 255, 0) if v else (255, 0, 0))
            grid.paste(tile, (pad + c * (SIZE + pad), pad + r * (SIZE + pad)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    grid.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
