"""Tests of the tutorial's matrix Fisher method: the normaliser against a Monte-Carlo
estimate, its gradient, and a few training steps on the synthetic heads.

Run with ``PYTHONPATH=examples/add_a_method pytest examples/add_a_method`` (fast: seconds).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from matrix_fisher import MatrixFisher, log_normalizer, matrix_fisher_nll

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic import SyntheticHeads
from hpelib.rotation import is_rotation_matrix, random_rotation


def test_normaliser_is_one_for_the_uniform_distribution():
    assert torch.allclose(log_normalizer(torch.zeros(2, 3, 3)), torch.zeros(2), atol=1e-5)


def test_normaliser_and_gradient_match_monte_carlo():
    # c(F) = E[exp(tr(F^T R))] and d log c / dF = E_p[R], over uniform rotations R.
    g = torch.Generator().manual_seed(0)
    rotations = random_rotation(200_000, generator=g).double()
    fisher = (3.0 * torch.randn(3, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    logits = (fisher.detach() * rotations).sum(dim=(-2, -1))
    log_c = log_normalizer(fisher)
    log_c.backward()
    assert math.isclose(float(log_c), float(logits.logsumexp(0) - math.log(len(rotations))), abs_tol=0.02)
    mean_rotation = (logits.softmax(0)[:, None, None] * rotations).sum(0)
    assert torch.allclose(fisher.grad, mean_rotation, atol=0.02)


def test_gradient_is_finite_where_singular_values_coincide():
    for fisher in (torch.zeros(1, 3, 3), 5.0 * torch.eye(3)[None]):
        fisher.requires_grad_(True)
        log_normalizer(fisher).sum().backward()
        assert torch.isfinite(fisher.grad).all()


def test_nll_prefers_a_distribution_concentrated_at_the_label():
    label = random_rotation(4, generator=torch.Generator().manual_seed(1))
    at_label = matrix_fisher_nll(20.0 * label, label)
    elsewhere = matrix_fisher_nll(20.0 * label.transpose(-1, -2), label)
    assert float(at_label) < 0.0 < float(elsewhere)


def test_forward_gives_the_mode_and_the_concentration():
    module = MatrixFisher(backbone="test_resnet")
    outputs = module(torch.randn(2, 3, 32, 32))
    assert outputs["fisher"].shape == (2, 3, 3) and outputs["concentration"].shape == (2, 3)
    assert is_rotation_matrix(outputs["rotation"]).all()


def test_trains_saves_and_loads_with_hpelib_load(tmp_path):
    L.seed_everything(0)
    heads = SyntheticHeads(num_samples=16, image_size=32, preset="frontal", split="train")
    data = HPEDataModule(train=heads, batch_size=16)
    module = MatrixFisher(backbone="test_resnet", optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    # One batch as the module sees it (uint8 -> float, normalised by the datamodule).
    raw = next(iter(torch.utils.data.DataLoader(heads, batch_size=16)))
    images = raw["image"].clone()  # uint8 (B, 3, H, W)
    batch = data.prepare_images(raw, train=False)

    def nll() -> float:
        module.eval()
        with torch.no_grad():
            loss = float(module.compute_loss(module(batch["image"]), batch)[0])
        module.train()
        return loss

    before = nll()
    trainer = L.Trainer(
        max_steps=15, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, data)
    after = nll()
    assert after < before - 0.5  # the labels became far more likely than under uniform

    trainer.save_checkpoint(tmp_path / "model.ckpt")
    # --8<-- [start:load]
    import matrix_fisher  # defines (registers) the method: hpelib imports no module a file names

    import hpelib

    predictor = hpelib.load(tmp_path / "model.ckpt")  # with the checkpoint's preprocessing
    prediction = predictor.predict(images)  # uint8 or [0, 1] float tensors, paths, PIL images
    mode, concentration = prediction.rotation, prediction.outputs["concentration"]
    # --8<-- [end:load]
    assert isinstance(predictor.module, matrix_fisher.MatrixFisher)
    module.eval()
    with torch.no_grad():
        expected = module(batch["image"])
    assert torch.allclose(mode, expected["rotation"], atol=1e-4)
    assert torch.allclose(concentration, expected["concentration"], atol=1e-3)
