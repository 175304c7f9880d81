"""OpNet: heads, covariances, NLLs against hand computations, masking, schedule, plumbing."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

import hpelib.rotation as hr
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.opnet import (
    CovarianceHead,
    DeformableKeypoints,
    OpNet,
    OpNetModel,
    WarmupStepLR,
    denormalize_points,
    fit_keypoint_model,
    landmark_weights,
    normalize_points,
    quaternion_distance,
    rotation_nll,
    smoothclip,
    synthetic_keypoint_model,
)
from hpelib.methods.opnet import loss as opl
from hpelib.methods.opnet import model as opnet_model
from hpelib.methods.opnet.model import inv_smoothclip, regularized_cholesky, tril_from_features
from tests.toy import AxisGlyphDataset


@pytest.fixture(scope="module")
def module() -> OpNet:
    torch.manual_seed(0)
    return OpNet(backbone="test_resnet")


def _full_batch(n: int = 4, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, size, size, generator=g),
        "rotation": hr.random_rotation(n, generator=g),
        "has_rotation": torch.ones(n, dtype=torch.bool),
        "head_center": 8 + 16 * torch.rand(n, 2, generator=g),
        "has_head_center": torch.ones(n, dtype=torch.bool),
        "head_size": 10 + 10 * torch.rand(n, generator=g),
        "has_head_size": torch.ones(n, dtype=torch.bool),
        "box": torch.cat([8 * torch.rand(n, 2, generator=g), 24 + 8 * torch.rand(n, 2, generator=g)], -1),
        "has_box": torch.ones(n, dtype=torch.bool),
        "landmarks_3d": size * torch.rand(n, 68, 3, generator=g),
        "has_landmarks_3d": torch.ones(n, dtype=torch.bool),
    }


# ------------------------------------------------------------------ heads
def test_quaternion_has_positive_w_unit_norm_and_matches_rotation(module):
    for mode in (True, False):
        module.train(mode)
        out = module(torch.randn(6, 3, 32, 32) * 5)
        q = out["quaternion"]
        assert (q[:, 3] > 0).all()
        assert torch.allclose(q.norm(dim=-1), torch.ones(6), atol=1e-5)
        assert torch.allclose(hr.rotation_from_quaternion(q), out["rotation"], atol=1e-5)
        assert hr.is_rotation_matrix(out["rotation"]).all()
        assert (out["coord"][:, 2] > 0).all() and (out["box"][:, 2:] > out["box"][:, :2]).all()
    module.train()


def test_smoothclip_is_positive_and_inverse():
    x = torch.linspace(-20, 20, 101)
    y = smoothclip(x)
    assert (y > 0).all()
    assert torch.allclose(inv_smoothclip(y[y > 1e-6]), x[y > 1e-6], atol=1e-4)


def test_monochrome_input_equals_luminance():
    torch.manual_seed(0)
    net = OpNetModel("test_resnet", in_chans=1).eval()
    gray = torch.rand(2, 1, 32, 32)
    a = net(gray.expand(-1, 3, -1, -1))["rotation"]
    b = net(gray)["rotation"]
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="in_chans"):
        OpNetModel("test_resnet", in_chans=2)


def test_landmarks_follow_the_deformable_model_equation(module):
    out = module.eval()(torch.randn(3, 3, 32, 32))
    module.train()
    kp = module.model.keypoints(out["shape_params"])
    xy, size, rot = out["coord"][:, :2], out["coord"][:, 2:], out["rotation"]
    expected = torch.cat([xy, torch.zeros_like(size)], -1)[:, None] + size[:, None] * (rot @ kp.mT).mT
    assert torch.allclose(out["landmarks_3d"], expected, atol=1e-5)


# ------------------------------------------------------------------ covariances
@pytest.mark.parametrize("form", ["paper", "released"])
def test_covariance_positive_definite_for_random_features(form):
    torch.manual_seed(0)
    head = CovarianceHead(16, form=form)
    with torch.no_grad():  # large, arbitrary factors (not the near-identity initialisation)
        head.norm.weight.fill_(5.0)
        head.norm.bias.normal_()
    head.train()
    feats = torch.randn(256, 16) * 10
    tril, cov = head(feats)
    assert torch.allclose(cov, cov.mT, atol=1e-4)
    assert torch.allclose(tril @ tril.mT, cov, rtol=1e-4, atol=1e-5)
    # The released form only bounds the factor's diagonal (>= eps), so its covariance can be
    # too ill-conditioned for a float32 product to stay PD; the exact L L^T is PD.
    exact = cov.double() if form == "paper" else tril.double() @ tril.double().mT
    assert (torch.linalg.eigvalsh(exact) > 0).all()
    assert (torch.diagonal(tril, dim1=-2, dim2=-1) > 0).all()


def test_covariance_paper_form_is_m_mt_plus_eps():
    head = CovarianceHead(4, form="paper", eps=1e-3, batchnorm=False)
    z = torch.tensor([[2.0, 3.0, 4.0, 0.5, -1.0, 0.25]])
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(z[0])
    m = torch.tensor([[[2.0, 0, 0], [0.5, 3.0, 0], [-1.0, 0.25, 4.0]]])
    assert torch.equal(tril_from_features(z), m)
    _, cov = head(torch.zeros(1, 4))
    assert torch.allclose(cov, m @ m.mT + 1e-3 * torch.eye(3), atol=1e-6)
    released = CovarianceHead(4, form="released", eps=0.01, batchnorm=False)
    with torch.no_grad():
        released.linear.weight.zero_()
        released.linear.bias.copy_(z[0] * torch.tensor([-1.0, 1, 1, 1, 1, 1]))
    tril, _ = released(torch.zeros(1, 4))
    flipped = m.clone()
    flipped[0, :, 0] = torch.tensor([2.0, -0.5, 1.0])  # column 0 flipped to a positive diagonal
    assert torch.allclose(tril, flipped + 0.01 * torch.eye(3), atol=1e-6)
    with pytest.raises(ValueError, match="form='cholesky'"):
        CovarianceHead(4, form="cholesky")


def _cholesky_of_formed(m: torch.Tensor, eps: float) -> torch.Tensor:
    """The factor as the code computed it before #24: Cholesky of the formed matrix."""
    return torch.linalg.cholesky(m @ m.mT + eps * torch.eye(3, dtype=m.dtype))


@pytest.mark.parametrize("scale", [1e-2, 1.0, 5.0])
def test_regularized_cholesky_is_the_cholesky_factor_of_m_mt_plus_eps(scale):
    g = torch.Generator().manual_seed(0)
    m = (torch.randn(4096, 3, 3, generator=g) * scale).tril()
    exact = _cholesky_of_formed(m.double(), 1e-4)
    got = regularized_cholesky(m, 1e-4)
    assert got.dtype == m.dtype and torch.equal(got, got.tril())
    assert (torch.diagonal(got, dim1=-2, dim2=-1) > 0).all()
    # Within float32 rounding of the exact factor of the same matrix ...
    assert (got.double() - exact).abs().max() <= 1e-6 * max(scale, 1.0) ** 2
    # ... and no further from it than the float32 Cholesky of the formed matrix.
    formed = _cholesky_of_formed(m, 1e-4).double()
    assert (got.double() - exact).abs().max() <= (formed - exact).abs().max()


def test_regularized_cholesky_never_fails_where_cholesky_of_the_formed_matrix_does():
    # Rank-deficient M with large entries: M M^T + eps I is PD, but forming it in float32
    # loses eps and torch.linalg.cholesky fails; the factor from M stays exact.
    m = torch.tensor([[[300.0, 0, 0], [300.0, 0, 0], [1.0, 2.0, 0]]])
    with pytest.raises(torch.linalg.LinAlgError):
        _cholesky_of_formed(m, 1e-4)
    got = regularized_cholesky(m, 1e-4)
    exact = _cholesky_of_formed(m.double(), 1e-4)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), exact, rtol=1e-4, atol=1e-6)


def test_regularized_cholesky_gradient():
    m = torch.randn(3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda x: regularized_cholesky(x.tril(), 1e-2), (m.requires_grad_(),))


@pytest.mark.parametrize("form", ["paper", "released"])
def test_opnet_outputs_equal_the_formulas_before_onnx_export(form, monkeypatch):
    """Every output key of the model is what the pre-#24 code gave: all bit for bit but the
    paper form's scale_tril, which matches torch.linalg.cholesky(M M^T + eps I) to float32
    rounding."""
    torch.manual_seed(0)
    keypoints = DeformableKeypoints(*synthetic_keypoint_model(4, num_identities=16))
    net = OpNetModel("test_resnet", keypoints=keypoints, covariance_form=form).eval()
    with torch.no_grad():  # input-dependent, far from identity factors
        for head in (net.rotation_cov, net.coord_cov):
            head.norm.weight.fill_(2.0)
            head.norm.running_var.fill_(1e-3)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        new = net(images)
        monkeypatch.setattr(opnet_model, "regularized_cholesky", _cholesky_of_formed)
        old = net(images)
    assert new.keys() == old.keys()
    assert new["rotation_scale_tril"].std(0).max() > 0.1  # the factors vary with the input
    for key in new:
        if key.endswith("scale_tril") and form == "paper":
            torch.testing.assert_close(new[key], old[key], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(new[key], old[key]), key


# ------------------------------------------------------------------ NLLs and losses
def test_rotation_nll_equals_hand_computation():
    a = 0.4
    pred = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    target = hr.quaternion_from_rotation(hr.rotation_z(torch.tensor([a])))  # rotvec (0, 0, a)
    s = torch.tensor([0.1, 0.2, 0.5])
    nll = rotation_nll(pred, target, torch.diag(s)[None])
    hand = 0.5 * (a / 0.5) ** 2 + math.log(0.1 * 0.2 * 0.5) + 1.5 * math.log(2 * math.pi)
    assert nll.item() == pytest.approx(hand, rel=1e-5)
    # The error is measured in the predicted head frame: q_hat^-1 q.
    pred = hr.quaternion_from_rotation(hr.rotation_x(torch.tensor([0.3])))
    target = hr.quaternion_multiply(pred, target)
    assert rotation_nll(pred, target, torch.diag(s)[None]).item() == pytest.approx(hand, rel=1e-4)


def test_coord_nll_and_quaternion_distance_hand_values():
    pred, target = torch.tensor([[0.1, -0.2, 0.5]]), torch.tensor([[0.3, -0.2, 0.4]])
    tril = torch.tensor([[[0.5, 0, 0], [0.1, 0.4, 0], [0, 0, 0.2]]])
    cov = (tril @ tril.mT)[0].double()
    d = (target - pred)[0].double()
    hand = 0.5 * d @ torch.linalg.solve(cov, d) + 0.5 * torch.logdet(cov) + 1.5 * math.log(2 * math.pi)
    assert opl.gaussian_nll(pred, target, tril).item() == pytest.approx(hand.item(), rel=1e-5)
    theta = torch.tensor([0.0, 0.7, 2.0, math.pi])
    q = hr.quaternion_from_rotation(hr.rotation_y(theta))
    ident = torch.tensor([[0.0, 0, 0, 1]]).expand(4, 4)
    assert torch.allclose(quaternion_distance(q, ident), torch.sin(theta / 2) ** 2, atol=1e-6)
    assert torch.allclose(quaternion_distance(-q, ident), torch.sin(theta / 2) ** 2, atol=1e-6)
    lap = opl.landmark_laplace_nll(
        torch.zeros(1, 68, 3), torch.full((1, 68, 3), 0.3), torch.full((1, 68, 3), 0.5),
        torch.ones(68), torch.ones(1, 68, 3, dtype=torch.bool),
    )
    assert lap.item() == pytest.approx(0.3 / 0.5 + math.log(2 * 0.5), rel=1e-5)


def test_landmark_weights_zero_eye_centres():
    w = landmark_weights()
    assert w[[37, 38, 40, 41, 43, 44, 46, 47]].eq(0).all()
    assert w[[36, 39, 42, 45, 8, 30]].eq(1).all() and w[0] == pytest.approx(0.8)


def test_gradients_finite_including_perfect_prediction(module):
    batch = _full_batch()
    out = module(batch["image"])
    # Perfect rotation: the rotation vector and geodesic are at their singular point.
    batch["rotation"] = out["rotation"].detach()
    loss, parts = module.compute_loss(out, batch)
    module.zero_grad()
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert parts["rot"] < 1e-6
    assert {"rot", "xy", "size", "box", "landmarks", "shape", "quat_norm",
            "nll_rot", "nll_coord", "nll_box", "nll_landmarks", "nll_shape"} <= set(parts)  # fmt: skip


def test_losses_masked_per_sample(module):
    module.eval()
    batch = _full_batch()
    out = module(batch["image"])
    loss_full, _ = module.compute_loss(out, batch)
    # Sample 3 loses every label but its rotation: changing those labels changes nothing.
    masked = dict(batch)
    for key in ("head_center", "head_size", "box", "landmarks_3d"):
        masked[f"has_{key}"] = torch.tensor([True, True, True, False])
    loss_a, parts_a = module.compute_loss(out, masked)
    scrambled = dict(masked)
    for key in ("head_center", "head_size", "box", "landmarks_3d"):
        scrambled[key] = batch[key].clone()
        scrambled[key][3] = scrambled[key][3] * 3 + 100
    loss_b, _ = module.compute_loss(out, scrambled)
    assert torch.allclose(loss_a, loss_b) and not torch.allclose(loss_a, loss_full)

    # A landmark-only sample (no rotation label, OpNet's mixed datasets): its rotation
    # terms vanish, the total is still divided by the full batch size. (Without 3D
    # landmarks here, whose shape target also needs the rotation label.)
    no_3d = {k: v for k, v in batch.items() if "landmarks_3d" not in k}
    loss_full, _ = module.compute_loss(out, no_3d)
    only_lm = dict(no_3d, has_rotation=torch.tensor([True, True, True, False]))
    loss_c, _ = module.compute_loss(out, only_lm)
    q = hr.quaternion_from_rotation(batch["rotation"])
    per_sample = module.loss_weights["rot"] * opl.quaternion_distance(out["quaternion"], q)
    per_sample_nll = module.nll_total_weight * module.nll_weights["rot"] * rotation_nll(
        out["quaternion"], q, out["rotation_scale_tril"]
    )
    expected = loss_full - (per_sample[3] + per_sample_nll[3]) / 4
    assert loss_c.item() == pytest.approx(expected.item(), rel=1e-5)

    # A batch with only rotation labels (no optional keys at all) trains rotation only.
    loss_d, parts_d = module.compute_loss(out, {"image": batch["image"], "rotation": batch["rotation"]})
    assert set(parts_d) == {"rot", "quat_norm", "nll_rot", "landmarks", "nll_landmarks", "shape", "nll_shape"}
    assert parts_d["landmarks"] == 0 and parts_d["shape"] == 0
    module.train()


def test_landmark_only_2d_labels_mask_depth_and_invisible_points(module):
    batch = _full_batch(2)
    out = module.eval()(batch["image"])
    module.train()
    lm2d = batch["landmarks_3d"][..., :2]
    visible = torch.ones(2, 68, dtype=torch.bool)
    visible[0, :10] = False
    b2 = {"image": batch["image"], "rotation": batch["rotation"], "landmarks_2d": lm2d,
          "has_landmarks_2d": torch.ones(2, dtype=torch.bool), "landmarks_visible": visible,
          "has_landmarks_visible": torch.ones(2, dtype=torch.bool)}  # fmt: skip
    t = module.targets(b2)
    lm, dims = t["landmarks"]
    assert not dims[..., 2].any() and not dims[0, :10].any() and dims[1, :, :2].all()
    b3 = dict(b2, landmarks_2d=lm2d.clone())
    b3["landmarks_2d"][0, :10] += 50  # invisible points do not count
    assert torch.allclose(module.compute_loss(out, b2)[0], module.compute_loss(out, b3)[0])


def test_targets_recover_shape_parameters_from_landmarks(module):
    """3D landmark labels made with the model equation give back its shape parameters."""
    n, size = 3, 64
    kp = module.model.keypoints
    shape = torch.randn(n, kp.num_params)
    rot = hr.random_rotation(n, generator=torch.Generator().manual_seed(1))
    centre_px = torch.tensor([[30.0, 33.0], [20.0, 40.0], [35.0, 31.5]])
    head_size_px = torch.tensor([24.0, 30.0, 20.0])
    xy = normalize_points(centre_px, size, size)
    radius = head_size_px[:, None] / size
    lm = torch.cat([xy, torch.zeros(n, 1)], -1)[:, None] + radius[:, None] * kp(shape) @ rot.mT
    batch = {"image": torch.zeros(n, 1, size, size), "rotation": rot, "head_center": centre_px,
             "head_size": head_size_px, "landmarks_3d": denormalize_points(lm, size, size)}  # fmt: skip
    t = module.targets(batch)
    assert torch.allclose(t["landmarks"][0], lm, atol=1e-5)
    got, mask = module._shape_target(batch, t, kp.num_params)
    assert mask.all() and torch.allclose(got, shape, atol=1e-3)


def test_keypoint_models():
    mean, basis = synthetic_keypoint_model(num_components=6, num_identities=64)
    assert mean.shape == (68, 3) and basis.shape == (6, 68, 3) and torch.isfinite(basis).all()
    # Head-radius units: the face spans about one radius from brows to chin.
    assert 0.5 < (mean[:, 1].max() - mean[:, 1].min()).item() < 2.0
    pts = torch.randn(40, 68, 3)
    m, b = fit_keypoint_model(pts, 5)
    coeff = DeformableKeypoints(m, b).project(pts)
    assert torch.allclose(coeff.var(0), torch.ones(5), atol=1e-3)  # unit-variance modes
    with pytest.raises(ValueError, match="keypoint_model='bfm'"):
        OpNet(backbone="test_resnet", keypoint_model="bfm")
    with pytest.raises(ValueError, match="num_components"):
        fit_keypoint_model(pts, 100)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="loss_weights key 'rotation'"):
        OpNet(backbone="test_resnet", keypoint_model="none", loss_weights={"rotation": 1.0})
    with pytest.raises(ValueError, match="shape_target='bfm'"):
        OpNet(backbone="test_resnet", keypoint_model="none", shape_target="bfm")
    with pytest.raises(ValueError, match="covariance_form='x'"):
        OpNet(backbone="test_resnet", keypoint_model="none", covariance_form="x")


# ------------------------------------------------------------------ schedule
def test_warmup_step_schedule():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = WarmupStepLR(opt, total_steps=100, warmup_fraction=0.05, step_fraction=0.5, gamma=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[2] < lrs[4] < lrs[5] == pytest.approx(1e-3)
    assert lrs[49] == pytest.approx(1e-3) and lrs[50] == pytest.approx(1e-4)
    lazy = WarmupStepLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    with pytest.raises(ValueError, match="total_steps is not set"):
        lazy.step()


# ------------------------------------------------------------------ plumbing
def _fit_toy(tmp_path, samples: int, epochs: int, swa_start: int):
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    L.seed_everything(0)
    made: list[WarmupStepLR] = []
    dm = HPEDataModule(
        train=AxisGlyphDataset(samples, 32, seed=0), val=AxisGlyphDataset(32, 32, seed=1),
        test={"toy": AxisGlyphDataset(64, 32, seed=2)}, batch_size=32, normalize="none",
    )  # fmt: skip
    module = OpNet(
        backbone="test_resnet", in_chans=3, keypoint_model="none",
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        scheduler=lambda o: made.append(WarmupStepLR(o)) or made[-1], scheduler_interval="step",
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[StochasticWeightAveraging(swa_lrs=3e-4, swa_epoch_start=swa_start, annealing_epochs=1)],
    )  # fmt: skip
    trainer.fit(module, dm)
    assert made and made[0].total_steps == epochs * samples // 32  # filled from the trainer
    return trainer.test(module, dm, verbose=False)[0]


def test_opnet_fits_with_schedule_and_swa(tmp_path):
    """Rotation-only toy data (every other label masked) through Lightning, with the paper's
    warm-up/step schedule (total steps filled in automatically) and SWA with its BN epoch."""
    toy = _fit_toy(tmp_path, samples=64, epochs=3, swa_start=2)
    assert {"test/toy/mae", "test/toy/geodesic", "test/toy/yaw_mae"} <= set(toy)
    assert math.isfinite(toy["test/toy/geodesic"])


def test_opnet_learns_toy_poses(tmp_path):
    toy = _fit_toy(tmp_path, samples=256, epochs=6, swa_start=4)
    assert toy["test/toy/geodesic"] < 100.0, toy  # chance is ~126 degrees
