"""Run a paper-reproduction config (``examples/*_paper.yaml`` and 6DRepNet's
``examples/sixd_300wlp.yaml``) for a few steps on the real fixtures in ``../shared/data``.

The config is read as written; only what a small CPU run must change is rewritten:

* dataset roots: 300W-LP -> a ``300W_LP`` tree of copies of the one real fixture sample
  (each copy a different identity, with a ``landmarks/`` file as the release has),
  AFLW2000 -> ``AFLW2000-dev`` (979 real faces), BIWI raw -> the one real BIWI frame,
  FSA-Net's BIWI ``.npz`` -> one written from AFLW2000-dev faces in that format,
  ``FolderPositiveSource`` -> a CSV of AFLW2000-dev faces with their CLERF yaw/pitch;
* every ``pretrained`` -> ``false`` and every ``backbone_weights`` -> ``null`` (no
  downloads here), batch size 2, no workers;
* the trainer: CPU, one device, full precision, no logger (so no ``LearningRateMonitor``),
  a couple of batches per stage and set, ``StageSwitch`` milestones moved so that every
  stage trains, output under ``tmp``.

Everything else (model, optimiser, schedule, loss weights, augmentation, image size) is
the paper config's own. With ``small=True`` the backbone becomes timm's ``test_resnet`` and
every ``image_size`` 64 px, so the same recipe runs in seconds in the default test suite;
the paper's own backbone and size run in the slow suite.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

#: Dataset registry names / class names -> which fixture replaces their root.
_W300LP = {"300wlp", "300w_lp", "w300lp", "Pose300WLP"}
_AFLW = {"aflw2000", "aflw2000_3d", "aflw", "AFLW2000"}
_BIWI_RAW = {"biwi", "biwi_raw", "hpdb", "BIWIRaw"}
_BIWI_NPZ = {"biwi_npz", "fsanet_biwi", "BIWINpz"}

#: Backbone and input size of the small variant (``fixture_config(..., small=True)``).
SMALL_BACKBONE = "test_resnet"
SMALL_IMAGE_SIZE = 64

#: Training-set copies of the 300W-LP fixture (distinct identities, so splits by identity
#: have something on both sides).
W300LP_COPIES = 12


def paper_config_paths() -> list[Path]:
    """Every ``examples/*_paper*.yaml``, and ``examples/sixd_300wlp.yaml`` (6DRepNet's)."""
    return sorted([*EXAMPLES.glob("*_paper*.yaml"), EXAMPLES / "sixd_300wlp.yaml"])


def build_biwi_npz(shared: Path, out: Path, count: int = 12) -> Path:
    """FSA-Net's BIWI ``.npz`` layout (BGR ``image`` (N, 64, 64, 3) uint8, ``pose`` (N, 3)
    yaw/pitch/roll in degrees) holding the first ``count`` AFLW2000-dev images with their
    labels (HopeNet's ``Pose_Para`` order pitch, yaw, roll in radians) and every angle within
    99 degrees, as FSA-Net's file holds."""
    from PIL import Image

    root = shared / "data" / "AFLW2000-dev"
    images, poses = [], []
    for jpg in sorted(root.glob("*.jpg")):
        pitch, yaw, roll = scipy.io.loadmat(jpg.with_suffix(".mat"))["Pose_Para"][0, :3]
        pose = np.degrees([yaw, pitch, roll])
        if np.abs(pose).max() > 99:
            continue
        with Image.open(jpg) as img:
            rgb = np.asarray(img.convert("RGB").resize((64, 64)))
        images.append(rgb[..., ::-1])
        poses.append(pose)
        if len(poses) == count:
            break
    path = out / "BIWI_noTrack.npz"
    np.savez(path, image=np.stack(images), pose=np.asarray(poses))
    return path


def build_300wlp_tree(shared: Path, out: Path, copies: int = W300LP_COPIES) -> Path:
    """A ``300W_LP`` folder holding ``copies`` renamed copies of the real fixture sample in
    ``IBUG/``, each with a ``landmarks/IBUG/<stem>_pts.mat`` (``pts_2d``/``pts_3d`` 68 x 2,
    the fixture's ``pt2d``), as the release lays them out."""
    src = shared / "data" / "fixtures" / "300W_LP" / "IBUG"
    root = out / "300W_LP"
    (root / "IBUG").mkdir(parents=True, exist_ok=True)
    (root / "landmarks" / "IBUG").mkdir(parents=True, exist_ok=True)
    pt2d = scipy.io.loadmat(src / "IBUG_image_008_1_0.mat")["pt2d"]
    for i in range(copies):
        stem = f"IBUG_image_{i:03d}_1_0"
        shutil.copyfile(src / "IBUG_image_008_1_0.jpg", root / "IBUG" / f"{stem}.jpg")
        shutil.copyfile(src / "IBUG_image_008_1_0.mat", root / "IBUG" / f"{stem}.mat")
        pts = np.ascontiguousarray(pt2d.T, dtype=np.float64)
        scipy.io.savemat(root / "landmarks" / "IBUG" / f"{stem}_pts.mat", {"pts_2d": pts, "pts_3d": pts})
    return root


def build_positive_csv(out: Path, image_size: int = 64) -> Path:
    """A PanoHead-style positive folder for ``FolderPositiveSource``: procedural heads
    rendered at a yaw/pitch grid with zero roll (exact labels), saved as PNG, and the table
    ``path, yaw, pitch`` (degrees, CLERF convention)."""
    import pandas as pd
    import torch
    from PIL import Image

    from hpelib.methods.clerf import SyntheticPositiveSource
    from hpelib.rotation import rotation_from_euler_clerf

    folder = out / "positives"
    folder.mkdir(parents=True, exist_ok=True)
    yaw, pitch = torch.meshgrid(
        torch.arange(-180.0, 180.0, 45.0), torch.tensor([-60.0, -20.0, 20.0, 60.0]), indexing="ij"
    )
    yaw, pitch = yaw.flatten(), pitch.flatten()
    rotations = rotation_from_euler_clerf(yaw.deg2rad(), pitch.deg2rad(), torch.zeros_like(yaw))
    rendered = SyntheticPositiveSource(image_size=image_size).render(rotations, torch.Generator().manual_seed(0))
    rows = []
    for i, image in enumerate(rendered["image"]):
        name = f"{i:03d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
        rows.append({"path": name, "yaw": float(yaw[i]), "pitch": float(pitch[i])})
    path = folder / "poses.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


class _Fixtures:
    """Lazily built fixture roots for one config."""

    def __init__(self, shared: Path, tmp: Path) -> None:
        self.shared = shared
        self.tmp = tmp
        self._w300lp: Path | None = None
        self._positives: Path | None = None
        self._biwi_npz: Path | None = None

    def w300lp(self) -> Path:
        if self._w300lp is None:
            self._w300lp = build_300wlp_tree(self.shared, self.tmp)
        return self._w300lp

    def aflw(self) -> Path:
        return self.shared / "data" / "AFLW2000-dev"

    def biwi_raw(self) -> Path:
        return self.shared / "data" / "fixtures" / "BIWI"

    def biwi_npz(self) -> Path:
        if self._biwi_npz is None:
            self._biwi_npz = build_biwi_npz(self.shared, self.tmp)
        return self._biwi_npz

    def positives(self) -> Path:
        if self._positives is None:
            self._positives = build_positive_csv(self.tmp)
        return self._positives


def _root_for(kind: str, fixtures: _Fixtures) -> Path | None:
    if kind in _W300LP:
        return fixtures.w300lp()
    if kind in _AFLW:
        return fixtures.aflw()
    if kind in _BIWI_RAW:
        return fixtures.biwi_raw()
    return None


def _remap(node: Any, fixtures: _Fixtures, small: bool) -> Any:
    """Walk a config node; rewrite dataset roots, positive tables and weight options (and,
    when ``small``, backbones and image sizes)."""
    if isinstance(node, list):
        return [_remap(v, fixtures, small) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _remap(v, fixtures, small) for k, v in node.items()}
    if small:
        if isinstance(node.get("backbone"), str):
            node["backbone"] = SMALL_BACKBONE
        if isinstance(node.get("image_size"), int):
            node["image_size"] = SMALL_IMAGE_SIZE
    if "pretrained" in node:
        node["pretrained"] = False
    if node.get("backbone_weights") not in (None, "") and "backbone" in node:
        node["backbone_weights"] = None
    kind = None
    if "name" in node and ("root" in node or "path" in node):
        kind = str(node["name"]).lower().replace("-", "_")
        target = node
    elif "class_path" in node and isinstance(node.get("init_args"), dict):
        kind = str(node["class_path"]).rsplit(".", 1)[-1]
        target = node["init_args"]
        if kind == "FolderPositiveSource" and "csv" in target:
            target["csv"] = str(fixtures.positives())
    if kind in _BIWI_NPZ and "path" in target:
        target["path"] = str(fixtures.biwi_npz())  # one file, no index cache
    elif kind is not None and "root" in target:
        root = _root_for(kind, fixtures)
        if root is None:
            raise AssertionError(f"the paper-config harness has no fixture for dataset {kind!r}")
        target["root"] = str(root)
        # The fixture trees are tiny and read-only: never a cache beside them.
        target["cache"] = str(fixtures.tmp / "index_cache")
    return node


def _fast_trainer(trainer: dict[str, Any], tmp: Path) -> dict[str, Any]:
    trainer = dict(trainer)
    run = tmp / "run"
    callbacks = []
    switch_epochs: list[int] = []
    for cb in trainer.get("callbacks", []) or []:
        cb = copy.deepcopy(cb)
        name = str(cb.get("class_path", "")).rsplit(".", 1)[-1]
        args = cb.setdefault("init_args", {}) or {}
        cb["init_args"] = args
        if name in {"RichProgressBar", "TQDMProgressBar", "LearningRateMonitor"}:
            continue
        if name in {"HPEModelCheckpoint", "ModelCheckpoint"}:
            args["dirpath"] = str(run / "checkpoints")
        if name == "StageSwitch":
            epochs = args.get("epochs")
            count = 1 if isinstance(epochs, int) else len(epochs)
            switch_epochs = list(range(1, count + 1))
            args["epochs"] = switch_epochs
        callbacks.append(cb)
    trainer.update({
        "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
        "precision": "32-true", "default_root_dir": str(run), "logger": False,
        "enable_progress_bar": False, "enable_model_summary": False,
        "max_epochs": len(switch_epochs) + 1, "max_steps": -1, "max_time": None,
        "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1,
        "num_sanity_val_steps": 0, "callbacks": callbacks,
        "accumulate_grad_batches": 1, "val_check_interval": None, "check_val_every_n_epoch": 1,
    })  # fmt: skip
    return trainer


def fixture_config(path: Path, shared: Path, tmp: Path, small: bool = False) -> Path:
    """Write ``path`` rewritten for a few CPU steps on the fixtures; return the new file.
    ``small``: timm's ``test_resnet`` at 64 px instead of the paper's backbone and size."""
    config = yaml.safe_load(path.read_text())
    fixtures = _Fixtures(shared, tmp)
    config["trainer"] = _fast_trainer(config.get("trainer", {}) or {}, tmp)
    config["model"] = _remap(config["model"], fixtures, small)
    data = _remap(config["data"], fixtures, small)
    data["batch_size"] = 2
    data["eval_batch_size"] = 2
    data["num_workers"] = 0
    data.pop("samples_per_epoch", None)
    config["data"] = data
    out = tmp / path.name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def run_hpelib(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``hpelib <args>`` in a subprocess with this checkout on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpelib.cli", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def walk(node: Any, visit: Callable[[dict[str, Any]], None]) -> None:
    """Call ``visit`` on every mapping in a config tree."""
    if isinstance(node, dict):
        visit(node)
        for v in node.values():
            walk(v, visit)
    elif isinstance(node, list):
        for v in node:
            walk(v, visit)
