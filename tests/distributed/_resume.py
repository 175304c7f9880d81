"""Script behind tests/distributed/test_resume.py: fits through the real CLI that are run to
the end, killed mid-epoch (``os._exit``: no teardown, no final checkpoint) or resumed with
``--ckpt_path last``.

``python -m tests.distributed._resume OUT RUN [RUN ...]`` with ``RUN = SCENARIO:MODE``
(modes ``full``, ``killed``, ``resumed``; scenarios in :data:`SCENARIOS`). Every run is a
forked child of this process, so a killed run really dies and a resumed run starts from
nothing but the checkpoint files, while the imports are paid once. Each child writes
``OUT/<scenario>_<mode>.pt`` (final state and per-step record) or, when killed,
``OUT/<scenario>_killed.json``; this process writes the exit codes to ``OUT/status.json``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

#: Exit code of a run killed by :class:`KillAtStep`.
KILLED = 86


def _heads(n: int, split: str = "train", seed: int = 0) -> dict[str, Any]:
    return {
        "class_path": "hpelib.data.synthetic.SyntheticHeads",
        "init_args": {"num_samples": n, "image_size": 32, "preset": "frontal", "split": split,
                      "seed": seed, "num_threads": 1},
    }  # fmt: skip


_ADAM = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}}
_SIXD = {
    "class_path": "hpelib.methods.SixD",
    "init_args": {
        "backbone": "test_resnet", "optimizer": _ADAM, "scheduler_interval": "step",
        "scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 5, "gamma": 0.5}},
    },
}  # fmt: skip
_CLERF = {
    "class_path": "hpelib.methods.CLERF",
    "init_args": {"backbone": "test_resnet", "embedding_dim": 16, "head_lr": 0.003,
                  "augmentation": "none", "optimizer": _ADAM},
}  # fmt: skip
_CLERF_TRAIN = {
    "class_path": "hpelib.data.synthetic.SyntheticAnchorPositives",
    "init_args": {"num_pairs": 32, "image_size": 32, "preset": "full_range", "num_threads": 1},
}

#: scenario -> model, train data, epochs, checkpoint every k steps, kill after step m,
#: strategy, extra callbacks. SixD: 48 samples / batch 8 = 6 steps per epoch, 3 epochs.
#: CLERF: 32 / 8 = 4 steps per epoch, stage 2 from epoch 1, 3 epochs.
SCENARIOS: dict[str, dict[str, Any]] = {
    # Checkpoints at epoch ends (k = steps per epoch); killed mid-epoch 1 (step 9 of 18).
    "sixd": dict(model=_SIXD, train=_heads(48), epochs=3, every=6, kill=9, strategy="ddp"),
    # Checkpoint mid-epoch (step 4 of epoch 0's 6), killed at step 7 (epoch 1).
    "sixd_mid": dict(model=_SIXD, train=_heads(48), epochs=3, every=4, kill=7, strategy="ddp"),
    # The default single-device strategy: shuffled by a RandomSampler.
    "sixd_plain": dict(model=_SIXD, train=_heads(48), epochs=3, every=6, kill=9, strategy="auto"),
    # Two stages: checkpoint at the end of epoch 1 (in stage 2), killed mid-epoch 2.
    "clerf": dict(model=_CLERF, train=_CLERF_TRAIN, epochs=3, every=8, kill=10, strategy="ddp",
                  callbacks=[{"class_path": "hpelib.callbacks.StageSwitch", "init_args": {"epochs": [1]}}]),
}  # fmt: skip


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


def _stage_state(pl_module: L.LightningModule) -> dict[str, Any]:
    state: dict[str, Any] = {"stage": int(getattr(pl_module, "stage", 1))}
    encoder = getattr(getattr(pl_module, "model", None), "encoder", None)
    if encoder is not None:  # CLERF
        state.update(
            encoder_frozen=bool(pl_module.encoder_frozen),
            encoder_requires_grad=any(p.requires_grad for p in encoder.parameters()),
            encoder_training=bool(encoder.training),
            head_training=bool(pl_module.model.head.training),
            encoder=flat_params(encoder),
        )
    return state


class Record(L.Callback):
    """Saves, per training step, the global step, epoch, item indices and stage state, and
    at the end the weights, the optimiser's LR and the metrics."""

    def __init__(self, path: str) -> None:
        self.path, self.steps = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "index": batch["index"].cpu(),
        }
        if not self.steps:  # the first step of this process: where a resumed run starts
            step.update(_stage_state(pl_module))
        self.steps.append(step)

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {"steps": self.steps, "params": flat_params(pl_module), "global_step": trainer.global_step,
             "lr": [g["lr"] for g in trainer.optimizers[0].param_groups],
             "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
             **_stage_state(pl_module)},
            self.path,
        )  # fmt: skip


class KillAtStep(L.Callback):
    """Kills the process after optimiser step ``step`` (``os._exit``: nothing runs after)."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            state = _stage_state(pl_module)
            state.pop("encoder", None)
            Path(self.path).write_text(json.dumps({"global_step": trainer.global_step, **state}))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(KILLED)


def config(out: Path, scenario: str, mode: str) -> dict[str, Any]:
    s = SCENARIOS[scenario]
    run = out / f"{scenario}_{'full' if mode == 'full' else 'interrupted'}"
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": s["every"],
                       "save_last": True, "save_top_k": -1}},
        *s.get("callbacks", []),
        {"class_path": "tests.distributed._resume.Record", "init_args": {"path": str(out / f"{scenario}_{mode}.pt")}},
    ]  # fmt: skip
    if mode == "killed":
        path = str(out / f"{scenario}_killed.json")
        callbacks.append(
            {
                "class_path": "tests.distributed._resume.KillAtStep",
                "init_args": {"step": s["kill"], "path": path},
            }
        )
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "strategy": s["strategy"], "max_epochs": s["epochs"],
            "default_root_dir": str(run), "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "callbacks": callbacks,
        },
        "model": s["model"],
        "data": {"train": s["train"], "val": _heads(16, "val", 3), "batch_size": 8},
    }  # fmt: skip


def run(out: Path, scenario: str, mode: str) -> None:
    from hpelib.cli import main as cli

    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]  # the CLI reads its arguments from ``args`` only
    path = out / f"{scenario}_{mode}.yaml"
    path.write_text(yaml.safe_dump(config(out, scenario, mode)))
    cli(["fit", "--config", str(path), *(["--ckpt_path", "last"] if mode == "resumed" else [])])


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    status: dict[str, int] = {}
    for item in argv[1:]:
        scenario, mode = item.split(":")
        pid = os.fork()
        if pid == 0:  # the run, in a child process
            code = 1
            try:
                run(out, scenario, mode)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        status[item] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    (out / "status.json").write_text(json.dumps(status))
    print(json.dumps(status))


if __name__ == "__main__":
    main(sys.argv[1:])
