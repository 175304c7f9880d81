"""Render docs/images/face_synthesis_grid.png: real AFLW2000 faces turned out of plane.

Each row: the source crop (its label's axes drawn), then four synthesised views turning the
head towards profile in equal steps up to 90 degrees of yaw (the 300W-LP recipe), each with
the axes of its exact label and its visible landmarks (green). Needs the AFLW2000-dev copy
(``--root``). Run from the repository root:
``python docs/scripts/make_face_synthesis_grid.py --root /path/to/AFLW2000``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hpelib.data.datasets import AFLW2000
from hpelib.data.synthesis import synthesize_view
from hpelib.rotation import euler_300wlp_from_rotation, rotation_from_euler_300wlp
from hpelib.viz import draw_axes

SIZE, STEPS = 128, 4
OUT = Path(__file__).resolve().parents[1] / "images" / "face_synthesis_grid.png"
#: Source yaws (degrees) the rows are picked near: frontal, slightly and half turned.
ROW_YAWS = (0.0, -15.0, 25.0, -40.0)


def _cell(sample: dict) -> Image.Image:
    centre = sample["landmarks_2d"].mean(dim=0).tolist()
    pil = draw_axes(Image.fromarray(sample["image"].permute(1, 2, 0).numpy()), sample["rotation"],
                    center=centre, size=SIZE / 4, width=2, outline=(0, 0, 0))  # fmt: skip
    draw = ImageDraw.Draw(pil)
    visible = sample.get("landmarks_visible", torch.ones(68, dtype=torch.bool))
    for (x, y), v in zip(sample["landmarks_2d"].tolist(), visible.tolist(), strict=True):
        if v:
            draw.point((x, y), fill=(0, 255, 0))
    return pil


def _views(sample: dict) -> list[dict]:
    pitch, yaw, roll = (float(a) for a in euler_300wlp_from_rotation(sample["rotation"].double()))
    side = math.copysign(1.0, yaw) if abs(yaw) > math.radians(5) else 1.0
    out = []
    for k in range(1, STEPS + 1):
        new_yaw = side * (abs(yaw) + k * (math.radians(90.0) - abs(yaw)) / STEPS)
        angles = torch.tensor([pitch, new_yaw, roll], dtype=torch.float64)
        target = rotation_from_euler_300wlp(angles[0], angles[1], angles[2]).float()
        out.append(synthesize_view(sample, target=target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="an AFLW2000 folder")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    ds = AFLW2000(args.root, image_size=SIZE, box_source="pt3d_68")
    yaws = np.array([
        float(euler_300wlp_from_rotation(ds._rotation[i].double())[1]) for i in range(len(ds))
    ])  # fmt: skip
    rows = []
    for target in ROW_YAWS:
        i = int(np.argmin(np.abs(np.degrees(yaws) - target)))
        s = ds[i]
        rows.append([_cell(s)] + [_cell(v) for v in _views(s)])
    grid = Image.new("RGB", ((STEPS + 1) * SIZE, len(rows) * SIZE), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            grid.paste(cell, (c * SIZE, r * SIZE))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({grid.size[0]} x {grid.size[1]})")


if __name__ == "__main__":
    main()
