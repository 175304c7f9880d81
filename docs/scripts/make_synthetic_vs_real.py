"""Render docs/images/synthetic_vs_real.png: real faces and procedural heads at the same poses.

Top row: AFLW2000 faces at the evaluation crop (the 6DRepNet rule), picked across the yaw
range; bottom row: a procedural head of the ``frontal`` training distribution (random
identity, framing, light and background, as ``SyntheticHeads`` draws them) rendered at
exactly that face's label. Both with the label's axes drawn (red x, green up, blue facing
direction). Needs an AFLW2000 copy. Run from the repository root:
``python docs/scripts/make_synthetic_vs_real.py --root /path/to/AFLW2000``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from hpelib.data.datasets import AFLW2000
from hpelib.data.synthetic.head import sample_identity_params
from hpelib.data.synthetic.render import SceneConfig, render_heads, sample_scenes
from hpelib.rotation import rotation_to_euler
from hpelib.viz import draw_axes

SIZE, SHOWN = 64, 128
OUT = Path(__file__).resolve().parents[1] / "images" / "synthetic_vs_real.png"
#: Yaws (degrees, 300W-LP convention) the columns are picked near.
COLUMN_YAWS = (-75.0, -45.0, -20.0, 0.0, 20.0, 45.0, 75.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="an AFLW2000 folder")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    faces = AFLW2000(args.root, image_size=SIZE)
    rotations = torch.stack([faces[i]["rotation"] for i in range(len(faces))])
    yaw = rotation_to_euler(rotations.double(), "300wlp", degrees=True)[:, 1]
    picks = [int((yaw - y).abs().argmin()) for y in COLUMN_YAWS]
    chosen = rotations[picks]
    g = torch.Generator().manual_seed(0)
    config = SceneConfig()
    scene = sample_scenes(len(picks), g, "frontal", config)
    scene["rotation"] = chosen.float()
    params = sample_identity_params(torch.arange(len(picks)), 0)
    heads = render_heads(params, scene, SIZE, config)["image"]
    sheet = Image.new("RGB", (SHOWN * len(picks), 2 * SHOWN), "white")
    for col, (i, head) in enumerate(zip(picks, heads, strict=True)):
        for row, image in enumerate((faces[i]["image"], head)):
            pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((SHOWN, SHOWN))
            pil = draw_axes(pil, chosen[col], width=3)
            sheet.paste(pil, (col * SHOWN, row * SHOWN))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
