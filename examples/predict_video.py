"""Head poses on a video file or a webcam: an annotated video and a CSV of per-frame angles.

Needs OpenCV (``pip install "hpelib[video]"``); the optional face detector needs MediaPipe
(``pip install "hpelib[detect]"``). Faces come from, in this order of precedence:

* ``--boxes boxes.csv``: your own per-frame boxes (``frame, x0, y0, x1, y1``, image pixels;
  several rows per frame for several faces), enlarged by ``--box-margin`` and made square;
* ``--detector mediapipe``: BlazeFace, its boxes converted to the training crop by
  ``--crop-rule`` (``6drepnet`` for 300W-LP/AFLW2000 models, ``synthetic`` for models
  trained on hpelib's synthetic heads; see docs/inference.md);
* neither: the whole frame is the face crop (already-cropped face videos).

Examples::

    python examples/predict_video.py --checkpoint runs/sixd/checkpoints/last.ckpt \\
        --source clip.mp4 --output runs/clip_axes.mp4 --detector mediapipe
    python examples/predict_video.py --checkpoint model.ckpt --source 0 --max-frames 300 \\
        --output webcam.mp4 --detector mediapipe --crop-rule synthetic   # webcam 0, Ctrl-C stops
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by hpelib fit")
    parser.add_argument("--source", required=True, help="video file, or webcam index (0, 1, ...)")
    parser.add_argument("--output", default=None, help="annotated video (.mp4 or .avi)")
    parser.add_argument(
        "--csv", default=None, help="per-frame angles (default: --output with .csv, else poses.csv)"
    )
    faces = parser.add_mutually_exclusive_group()
    faces.add_argument("--boxes", default=None, help="CSV of per-frame boxes: frame,x0,y0,x1,y1")
    faces.add_argument("--detector", choices=["mediapipe"], default=None, help="face detector")
    parser.add_argument(
        "--crop-rule",
        default="6drepnet",
        choices=["6drepnet", "tight", "synthetic", "detector"],
        help="detector box -> training crop (must match the model's training data)",
    )
    parser.add_argument("--box-margin", type=float, default=0.0, help="margin of --boxes per side")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import cv2  # noqa: F401  # only to fail early with the install hint
    except ImportError:
        sys.exit('predict_video.py needs OpenCV: pip install "hpelib[video]"')
    if args.detector == "mediapipe":
        try:
            import mediapipe  # noqa: F401
        except ImportError:
            sys.exit('--detector mediapipe needs MediaPipe 0.10.14: pip install "hpelib[detect]"')

    import hpelib
    from hpelib.video import predict_video

    csv = args.csv or (Path(args.output).with_suffix(".csv") if args.output else Path("poses.csv"))
    predictor = hpelib.load(args.checkpoint, device=args.device, box_margin=args.box_margin)
    table = predict_video(
        predictor,
        args.source,
        output_video=args.output,
        output_csv=csv,
        boxes=args.boxes,
        detector=args.detector,
        crop_rule=args.crop_rule,
        max_frames=args.max_frames,
    )
    frames = table["frame"].nunique() if len(table) else 0
    faces = int((table["face"] >= 0).sum()) if len(table) else 0
    print(f"{frames} frames, {faces} faces -> {csv}" + (f", {args.output}" if args.output else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
