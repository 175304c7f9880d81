"""LEC-HPE: bins and expectation against hand-computed cases, DEC clustering maths, stage
masking, options, and a two-stage toy run."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

import hpelib.rotation as hr
from hpelib.callbacks import KMeansCentroidInit, StageSwitch
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.lechpe import (
    LECHPE,
    LECHPENet,
    angle_loss,
    angle_to_bin,
    bin_edges,
    cluster_kl_loss,
    expected_angle,
    soft_assignment,
    target_distribution,
)


# ----------------------------------------------------------------------------- bins
def test_bin_edges_are_hopenet_edges():
    assert bin_edges().tolist() == list(range(-99, 102, 3))


def test_bin_labels_hand_computed():
    angles = torch.tensor([-99.0, -96.01, -96.0, -0.5, 0.0, 1.5, 98.99, 99.0, -99.01, 150.0, math.nan])
    classes, valid = angle_to_bin(angles)
    assert valid.tolist() == [True] * 7 + [False] * 4
    assert classes[valid].tolist() == [0, 0, 1, 32, 33, 33, 65]


def test_bin_labels_match_numpy_digitize():
    rng = np.random.default_rng(0)
    a = rng.uniform(-98.9, 98.9, 500)
    classes, valid = angle_to_bin(torch.from_numpy(a))
    assert valid.all()
    assert classes.numpy().tolist() == (np.digitize(a, np.arange(-99, 102, 3)) - 1).tolist()


def test_expectation_hand_computed():
    uniform = torch.zeros(66)
    assert float(expected_angle(uniform)) == pytest.approx(0.0, abs=1e-5)
    assert float(expected_angle(uniform, form="left_edge")) == pytest.approx(-1.5, abs=1e-5)
    one_hot = torch.full((66,), -1e4)
    one_hot[33] = 0.0  # the bin [0, 3)
    assert float(expected_angle(one_hot)) == pytest.approx(1.5)
    assert float(expected_angle(one_hot, form="left_edge")) == pytest.approx(0.0)
    two = torch.full((66,), -1e4)
    two[[0, 65]] = 0.0  # half on [-99, -96), half on [96, 99)
    assert float(expected_angle(two)) == pytest.approx(0.0, abs=1e-4)


def test_centered_expectation_is_the_paper_formula():
    logits = torch.randn(64, 66, generator=torch.Generator().manual_seed(0)) * 3
    s = logits.softmax(-1)
    i = torch.arange(1, 67, dtype=torch.float32)
    paper = 3.0 * (s * (i - (1 + 66) / 2)).sum(-1)
    hopenet = 3.0 * (s * torch.arange(66.0)).sum(-1) - 99.0
    # Degrees in float32: sums of 66 terms up to 99 agree to ~1e-5 degrees.
    torch.testing.assert_close(expected_angle(logits), paper, atol=1e-4, rtol=0)
    torch.testing.assert_close(expected_angle(logits, form="left_edge"), hopenet, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="expectation form='middle'"):
        expected_angle(logits, form="middle")


def test_angle_loss_hand_computed_and_rejects_out_of_range():
    logits = torch.zeros(1, 1, 66)  # uniform: CE = log 66, centred expectation 0
    loss, l_class, l_reg = angle_loss(logits, torch.tensor([[10.0]]), alpha=0.5)
    assert float(l_class) == pytest.approx(math.log(66), rel=1e-5)
    assert float(l_reg) == pytest.approx(100.0, rel=1e-5)
    assert float(loss) == pytest.approx(math.log(66) + 50.0, rel=1e-5)
    with pytest.raises(ValueError, match="outside"):
        angle_loss(logits, torch.tensor([[120.0]]))
    masked, _, _ = angle_loss(logits, torch.tensor([[120.0]]), mask=torch.tensor([False]))
    assert float(masked) == 0.0


# ----------------------------------------------------------------------------- clustering
def test_soft_assignment_rows_sum_to_one_and_hand_case():
    q = soft_assignment(torch.randn(20, 8) * 10, torch.randn(5, 8))
    torch.testing.assert_close(q.sum(1), torch.ones(20))
    assert (q > 0).all()
    # (1 + d^2)^-1 = 1 and 1/2 -> q = (2/3, 1/3); far points stay finite.
    q = soft_assignment(torch.tensor([[0.0, 0.0], [1e6, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(q[0], torch.tensor([2 / 3, 1 / 3]))
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(2))


def test_target_distribution_hand_case_and_sharpens():
    q = torch.tensor([[0.6, 0.4], [0.4, 0.6]])
    torch.testing.assert_close(target_distribution(q), torch.tensor([[0.36, 0.16], [0.16, 0.36]]) / 0.52)
    entropy = lambda d: -(d * d.log()).sum(1)  # noqa: E731
    # Balanced clusters (f_j equal): every non-uniform row gets strictly sharper, argmax kept.
    rows = torch.randn(8, 3).softmax(-1)
    q = torch.cat([rows[:, perm] for perm in ([0, 1, 2], [1, 2, 0], [2, 0, 1])])
    p = target_distribution(q)
    assert (entropy(p) < entropy(q)).all()
    assert (p.argmax(1) == q.argmax(1)).all() and (p.max(1).values > q.max(1).values).all()
    # Real soft assignments: sharper on average, rows still distributions, no gradient.
    torch.manual_seed(0)
    q = soft_assignment(torch.randn(64, 4), torch.randn(6, 4) * 2).requires_grad_()
    p = target_distribution(q)
    assert not p.requires_grad
    torch.testing.assert_close(p.sum(1), torch.ones(64))
    assert entropy(p).mean() < entropy(q.detach()).mean()


def test_kl_nonnegative_zero_at_equality_and_grad_through_q_only():
    torch.manual_seed(0)
    for _ in range(20):
        q = torch.rand(16, 7).softmax(-1)
        p = (torch.randn(16, 7) * 3).softmax(-1)
        assert float(cluster_kl_loss(p, q)) >= 0.0
    q = torch.randn(16, 7).softmax(-1)
    assert float(cluster_kl_loss(q.clone(), q)) == 0.0
    one_hot = torch.eye(7)[:3]  # zero target entries (0 log 0 = 0)
    assert float(cluster_kl_loss(one_hot, one_hot.clamp_min(1e-30))) == pytest.approx(0.0, abs=1e-6)
    emb = torch.randn(8, 3, requires_grad=True)
    centroids = torch.randn(4, 3, requires_grad=True)
    q = soft_assignment(emb, centroids)
    cluster_kl_loss(target_distribution(q), q).backward()
    assert emb.grad.abs().sum() > 0 and centroids.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- module
def _batch(angles_deg: list[list[float]], occluded: list[bool] | None = None) -> dict:
    angles = torch.tensor(angles_deg)
    batch = {
        "image": torch.randn(len(angles_deg), 3, 32, 32),
        "rotation": hr.euler_to_rotation(angles, "300wlp", degrees=True),
        "has_rotation": torch.ones(len(angles_deg), dtype=torch.bool),
    }
    if occluded is not None:
        batch["occluded"] = torch.tensor(occluded)
        batch["has_occluded"] = torch.ones(len(occluded), dtype=torch.bool)
    return batch


@pytest.fixture(scope="module")
def module() -> LECHPE:
    torch.manual_seed(0)
    return LECHPE(backbone="test_resnet", num_clusters=3)


def test_forward_rotation_matches_expected_angles(module):
    out = module(torch.randn(4, 3, 32, 32))
    assert out["logits"].shape == (4, 3, 66) and out["q"].shape == (4, 3)
    assert hr.is_rotation_matrix(out["rotation"]).all()
    back = hr.rotation_to_euler(out["rotation"], "300wlp", degrees=True)
    torch.testing.assert_close(back, out["euler_deg"], atol=1e-3, rtol=0)


def test_stage1_ignores_occluded_and_out_of_range(module):
    module.set_stage(1)
    batch = _batch([[10, 20, 5], [0, 0, 0], [-30, 40, 10], [0, 0, 150]], occluded=[False, True, False, False])
    out = module(batch["image"])
    loss, parts = module.compute_loss(out, batch)
    keep = torch.tensor([True, False, True, False])
    sub = {k: v[keep] for k, v in batch.items()}
    sub_loss, _ = module.compute_loss({k: v[keep] for k, v in out.items()}, sub)
    torch.testing.assert_close(loss, sub_loss)
    assert float(parts["angle_fraction"]) == 0.5 and "cluster_loss" not in parts


def test_out_of_range_error_policy():
    strict = LECHPE(backbone="test_resnet", num_clusters=3, out_of_range="error")
    batch = _batch([[0, 0, 0], [0, 10, 120]])
    with pytest.raises(ValueError, match="outside.*out_of_range='mask'"):
        strict.compute_loss(strict(batch["image"]), batch)


def test_stage2_adds_beta_cluster_loss_on_all_samples(module):
    batch = _batch([[10, 20, 5], [0, 0, 0], [-30, 40, 10]], occluded=[False, True, True])
    module.set_stage(2)
    module._centroids_initialized.fill_(False)
    out = module(batch["image"])
    with pytest.raises(RuntimeError, match="KMeansCentroidInit"):
        module.compute_loss(out, batch)
    module.eval()  # validation before k-means (sanity check): angle losses only
    _, parts = module.compute_loss(out, batch)
    assert "cluster_loss" not in parts
    module.train()
    module.init_centroids(out["embedding"].detach()[:3] + 0.1)
    out = module(batch["image"])
    loss, parts = module.compute_loss(out, batch)
    assert float(parts["angle_fraction"]) == 1.0
    expected = parts["angle_loss"] + module.beta * parts["cluster_loss"]
    torch.testing.assert_close(loss.detach(), expected)
    assert float(parts["cluster_loss"]) > 0
    loss.backward()
    assert module.centroids.grad is not None and module.centroids.grad.abs().sum() > 0
    module.zero_grad()


def test_invalid_options_name_the_option():
    for kwargs, name in [
        ({"expectation": "mean"}, "expectation"),
        ({"out_of_range": "clip"}, "out_of_range"),
        ({"stage": 3}, "stage"),
        ({"target_update_interval": 0}, "target_update_interval"),
    ]:
        with pytest.raises(ValueError, match=name):
            LECHPE(backbone="test_resnet", **kwargs)
    with pytest.raises(ValueError, match="num_clusters"):
        LECHPENet("test_resnet", num_clusters=0)


# ----------------------------------------------------------------------------- toy run
class _FrontalGlyphs(torch.utils.data.Dataset):
    """The axis-glyph toy of tests/toy.py with poses inside the bins (|angle| < 50) and an
    occluding square on every other item."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        angles = (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([30.0, 50.0, 30.0])
        self.rotations = hr.euler_to_rotation(angles, "300wlp", degrees=True)
        yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
        c = (size - 1) / 2
        tips = self.rotations.transpose(-1, -2)
        images = torch.zeros(n, 3, size, size)
        for axis in range(3):
            u, v = c + 0.35 * size * tips[:, axis, 0], c + 0.35 * size * tips[:, axis, 1]
            sigma = 0.06 * size * (1.2 - 0.5 * tips[:, axis, 2])
            d2 = (xx - u[:, None, None]) ** 2 + (yy - v[:, None, None]) ** 2
            images[:, axis] = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
        self.occluded = torch.arange(n) % 2 == 1
        images[self.occluded, :, : size // 3, : size // 3] = 0.5
        self.images = (images.clamp(0, 1) * 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.rotations)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "rotation": self.rotations[i], "occluded": self.occluded[i]}


def _fit_two_stages(tmp_path, n_train: int, epochs: int, switch: int) -> tuple[LECHPE, L.Trainer, HPEDataModule, list[int]]:
    L.seed_everything(0)
    dm = HPEDataModule(
        train=_FrontalGlyphs(n_train, seed=0),
        val=_FrontalGlyphs(32, seed=3),
        test={"clean": _FrontalGlyphs(64, seed=1), "all": _FrontalGlyphs(64, seed=2)},
        batch_size=32,
        normalize="none",
    )
    module = LECHPE(
        backbone="test_resnet", num_clusters=4, beta=10.0,
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    )
    stages: list[int] = []

    class Spy(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            stages.append(pl_module.stage)

    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[StageSwitch(epochs=[switch]), KMeansCentroidInit(n_init=1), Spy()],
    )
    trainer.fit(module, dm)
    return module, trainer, dm, stages


def test_two_stage_toy_run_switches_and_reports_metrics(tmp_path):
    module, trainer, dm, stages = _fit_two_stages(tmp_path, n_train=64, epochs=2, switch=1)
    assert stages == [1, 2]
    assert module.centroids_initialized and module.centroids.abs().sum() > 0
    results = trainer.test(module, dm, verbose=False)
    assert {"test/clean/mae", "test/clean/geodesic"} <= set(results[0])
    assert {"test/all/mae", "test/all/geodesic"} <= set(results[1])


def test_two_stage_toy_run_learns(tmp_path):
    module, trainer, dm, stages = _fit_two_stages(tmp_path, n_train=256, epochs=6, switch=4)
    assert stages == [1, 1, 1, 1, 2, 2]
    results = trainer.test(module, dm, verbose=False)
    # Chance level: predicting 0 for every angle (about 18 degrees MAE on this toy).
    angles = hr.rotation_to_euler(dm.test_datasets[0].rotations, "300wlp", degrees=True)
    zero_mae = float(angles.abs().mean())
    assert results[0]["test/clean/mae"] < 0.6 * zero_mae, (results, zero_mae)


def test_init_weights_for_a_separate_stage2_run(tmp_path, module):
    module.set_stage(1)
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    second = LECHPE(backbone="test_resnet", num_clusters=3, stage=2, init_weights=str(path))
    assert second.stage == 2
    torch.testing.assert_close(second.model.angle_heads[0].weight, module.model.angle_heads[0].weight)
    with pytest.raises(FileNotFoundError, match="init_weights"):
        LECHPE(backbone="test_resnet", num_clusters=3, init_weights=str(tmp_path / "missing.ckpt"))


# ----------------------------------------------------------------------------- metrics
def _logits_for(angles_deg: list[list[float]]) -> torch.Tensor:
    """``(B, 3, 66)`` logits whose centred expectation is each angle: two adjacent bins."""
    centres = torch.arange(66) * 3.0 - 97.5
    logits = torch.full((len(angles_deg), 3, 66), -1e4)
    for b, sample in enumerate(angles_deg):
        for a, value in enumerate(sample):
            k = int(torch.searchsorted(centres, torch.tensor(value), right=True)) - 1
            w = (centres[k + 1] - value) / 3.0  # weight of bin k
            logits[b, a, k], logits[b, a, k + 1] = math.log(w), math.log(1 - w)
    return logits


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, labels_deg: list[list[float]]) -> None:
        self.rotations = hr.euler_to_rotation(torch.tensor(labels_deg), "300wlp", degrees=True)

    def __len__(self) -> int:
        return len(self.rotations)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "rotation": self.rotations[i]}


def test_mae_scores_predicted_angles_beyond_90_yaw(tmp_path):
    """Yaw 92 predicted for a label of 88 is a 4 degree yaw error (MAE 4/3), not the 120 of
    decomposing the predicted rotation (which folds yaw to 88, pitch and roll to 180)."""
    from hpelib.evaluate import per_sample_errors

    predicted = [[0.0, 92.0, 0.0], [0.0, 88.0, 0.0]]
    labels = [[0.0, 88.0, 0.0], [0.0, 92.0, 0.0]]
    module = LECHPE(backbone="test_resnet", num_clusters=3)
    logits = _logits_for(predicted)
    module.model.forward = lambda images: {
        "embedding": torch.zeros(images.shape[0], 8),
        "logits": logits[: images.shape[0]],
        "q": torch.full((images.shape[0], 3), 1 / 3),
    }
    out = module(torch.zeros(2, 3, 32, 32))
    torch.testing.assert_close(out["euler_deg"], torch.tensor(predicted), atol=1e-3, rtol=0)
    dm = HPEDataModule(test={"profile": _Labelled(labels)}, batch_size=2, normalize="none")
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    results = trainer.test(module, dm, verbose=False)[0]
    assert results["test/profile/yaw_mae"] == pytest.approx(4.0, abs=1e-3)
    assert results["test/profile/pitch_mae"] == pytest.approx(0.0, abs=1e-3)
    assert results["test/profile/mae"] == pytest.approx(4.0 / 3, abs=1e-3)
    assert results["test/profile/geodesic"] == pytest.approx(4.0, abs=1e-2)
    # hpelib evaluate's per-sample errors agree.
    dm.setup("test")
    errors = per_sample_errors(module, dm.test_datasets[0], dm, batch_size=2)
    np.testing.assert_allclose(errors["mae"].to_numpy(), [4.0 / 3, 4.0 / 3], atol=1e-3)
    np.testing.assert_allclose(errors["geodesic"].to_numpy(), [4.0, 4.0], atol=1e-2)
    # In another metric convention the angles are not LEC-HPE's: the rotation is decomposed.
    clerf = LECHPE(backbone="test_resnet", num_clusters=3, euler_convention="clerf")
    clerf.model.forward = module.model.forward
    results = trainer.test(clerf, dm, verbose=False)[0]
    assert {"test/profile/yaw_mae", "test/profile/mae"} <= set(results)
    assert results["test/profile/geodesic"] == pytest.approx(4.0, abs=1e-2)
