"""CLERF Fig. 5 in small: embeddings of one head turning a full circle, projected to 2D.

Renders one synthetic identity (centred, neutral light) at ``--steps`` angles over 360
degrees of yaw (or pitch / roll), embeds the images with a CLERF encoder, and plots a PCA
(default) or t-SNE projection of the L2-normalised embeddings, coloured by the angle with a
cyclic colour map and joined in angle order. A representation that has learned pose draws a
closed loop whose colour changes smoothly; a random encoder draws a tangle.

    hpelib fit --config examples/clerf.yaml                       # trains runs/clerf/...
    python examples/clerf_embeddings_plot.py --checkpoint runs/clerf/checkpoints/last.ckpt \
        --out runs/clerf/embeddings_yaw.png
    python examples/clerf_embeddings_plot.py --axis roll --method tsne   # untrained encoder

The image size and normalisation must match the training config (``--size``, ``--normalize``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from hpelib.data.datamodule import NORMALIZATIONS  # noqa: E402
from hpelib.data.synthetic.head import sample_identity_params  # noqa: E402
from hpelib.data.synthetic.render import default_scene, render_heads  # noqa: E402
from hpelib.methods.clerf import CLERF  # noqa: E402
from hpelib.rotation import rotation_from_euler_clerf  # noqa: E402

AXES = ("yaw", "pitch", "roll")


def circle_rotations(axis: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(angles (steps,) degrees, rotations (steps, 3, 3))`` of a full turn about ``axis``
    (CLERF's yaw/pitch/roll, the other two angles zero)."""
    if axis not in AXES:
        raise ValueError(f"axis={axis!r} is not one of {AXES}")
    angles = torch.arange(steps, dtype=torch.float64) * 360.0 / steps - 180.0
    zero = torch.zeros_like(angles)
    rad = torch.deg2rad(angles)
    yaw, pitch, roll = (rad if axis == a else zero for a in AXES)
    # A pitch beyond +/-90 degrees is the same pose as a yaw/roll of 180 with the mirrored
    # pitch; building the matrix from the angles handles it.
    return angles, rotation_from_euler_clerf(yaw, pitch, roll).float()


def embed(module: CLERF, images: torch.Tensor, normalize: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALIZATIONS[normalize])
    with torch.no_grad():
        x = (images.float() / 255.0 - mean) / std
        return torch.nn.functional.normalize(module.model.encoder(x), dim=1)


def project(embeddings: torch.Tensor, method: str) -> torch.Tensor:
    if method == "pca":
        centred = embeddings - embeddings.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        return centred @ v[:2].T
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(embeddings) - 1) / 3)
        return torch.from_numpy(
            TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(embeddings.numpy())
        )
    raise ValueError(f"method={method!r} is not 'pca' or 'tsne'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="CLERF Lightning checkpoint (default: untrained encoder)")
    parser.add_argument("--backbone", default="resnet18", help="without --checkpoint")
    parser.add_argument("--axis", default="yaw", choices=AXES)
    parser.add_argument("--steps", type=int, default=72)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--identity", type=int, default=3)
    parser.add_argument("--normalize", default="imagenet", choices=sorted(NORMALIZATIONS))
    parser.add_argument("--method", default="pca", choices=("pca", "tsne"))
    parser.add_argument("--out", default="runs/clerf/embeddings.png")
    args = parser.parse_args()

    if args.checkpoint:
        module = CLERF.load_from_checkpoint(args.checkpoint, map_location="cpu")
    else:
        module = CLERF(backbone=args.backbone, embedding_dim=256)
    module.eval()
    angles, rotations = circle_rotations(args.axis, args.steps)
    params = sample_identity_params([args.identity] * args.steps)
    images = render_heads(params, default_scene(rotations), args.size, supersample=2)["image"]
    xy = project(embed(module, images, args.normalize), args.method)

    fig, (ax_img, ax) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 1.2]})
    strip = images[:: max(1, args.steps // 8)][:8]
    ax_img.imshow(torch.cat(list(strip.permute(0, 2, 3, 1)), dim=1).numpy())
    ax_img.set_title(f"input: {args.axis} from -180 to 180 degrees (every {360 // len(strip)} shown)")
    ax_img.axis("off")
    closed = torch.cat([xy, xy[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color="0.8", lw=1, zorder=1)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=angles.numpy(), cmap="twilight", vmin=-180, vmax=180, s=28, zorder=2)
    fig.colorbar(sc, ax=ax, label=f"{args.axis} (degrees)")
    ax.set_title(f"{args.method.upper()} of encoder embeddings"
                 + ("" if args.checkpoint else " (untrained encoder)"))
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    # Loop smoothness: mean distance between neighbours over mean distance to all others.
    d = torch.cdist(xy.float(), xy.float())
    ratio = float(d.diagonal(1).mean() / d.mean()) if len(xy) > 2 else math.nan
    print(f"wrote {out} (neighbour/average 2D distance ratio {ratio:.3f}; lower = smoother loop)")


if __name__ == "__main__":
    main()
