"""Plot learning curves from Lightning ``CSVLogger`` files (``metrics.csv``).

Two panels over training steps: the training loss (as logged, every ``log_every_n_steps``)
and the validation geodesic error after each validation run. One line per run. Used for
``docs/images/sixd_learning_curves.png``::

    python docs/scripts/make_learning_curves.py \\
        --run "main job (5 min)=runs/sixd/logs/version_0/metrics.csv" \\
        --run "10-minute config=runs/sixd_full_range/logs/version_0/metrics.csv" \\
        --out docs/images/sixd_learning_curves.png

Any ``hpelib fit`` run whose config has a ``CSVLogger`` (every example config) writes such a
file; the same curves are in TensorBoard (``tensorboard --logdir runs/<name>/tensorboard``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

#: Geodesic error of a uniformly random rotation's mean (chance level), degrees.
CHANCE_DEG = 126.5


def read_curves(path: Path, loss: str, val: str) -> tuple[pd.Series, pd.Series]:
    """``(train loss by step, validation metric by step)`` from one ``metrics.csv``."""
    frame = pd.read_csv(path)
    missing = [c for c in ("step", loss, val) if c not in frame.columns]
    if missing:
        raise SystemExit(f"{path}: no column(s) {missing} (has {list(frame.columns)})")
    train = frame.dropna(subset=[loss]).groupby("step")[loss].mean()
    valid = frame.dropna(subset=[val]).groupby("step")[val].mean()
    return train, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=METRICS_CSV")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--loss", default="train/loss", help="training-loss column")
    parser.add_argument("--val", default="val/geodesic", help="validation column (degrees)")
    args = parser.parse_args()

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run {spec!r}: expected LABEL=path/to/metrics.csv")
        train, valid = read_curves(Path(path), args.loss, args.val)
        (line,) = ax_loss.plot(train.index, train.values, lw=0.8, alpha=0.35)
        smooth = train.rolling(10, min_periods=1, center=True).mean()
        ax_loss.plot(smooth.index, smooth.values, lw=1.6, color=line.get_color(), label=label)
        ax_val.plot(valid.index, valid.values, "o-", ms=3.5, color=line.get_color(), label=label)
        last_step, last_val = valid.index[-1], float(valid.iloc[-1])
        ax_val.annotate(
            f"{last_val:.1f}", (last_step, last_val), textcoords="offset points",
            xytext=(4, 4), fontsize=8, color=line.get_color(),
        )  # fmt: skip
    ax_loss.set(xlabel="training step", ylabel=args.loss, yscale="log", title="training loss")
    ax_val.axhline(CHANCE_DEG, color="grey", ls=":", lw=1)
    ax_val.text(0, CHANCE_DEG, " chance", va="bottom", fontsize=8, color="grey")
    ax_val.set(xlabel="training step", ylabel=f"{args.val} (degrees)", ylim=(0, 135),
               title="validation after each epoch")  # fmt: skip
    ax_val.margins(x=0.1)  # room for the final value's label
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
