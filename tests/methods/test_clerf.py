"""CLERF: anchor-positive labels, shared augmentation, T_GD positives, mined triplets fed to
the Circle loss, frozen encoder in stage 2, and both stages end to end on toy data."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.miners import TripletMarginMiner

import hpelib.rotation as hr
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.clerf import (
    CLERF,
    AnchorPositiveDataset,
    CLERFContrastiveLoss,
    CLERFSupervised,
    FolderPositiveSource,
    PoseMLP,
    PositiveSource,
    RealFacePositiveSource,
    SharedGeometricAugmentation,
    SyntheticPositiveSource,
    geodesic_cosine,
    make_positives,
    mine_triplets,
    pair_masks,
    split_roll,
)
from tests.toy import AxisGlyphDataset


def _deg(x: float) -> torch.Tensor:
    return torch.tensor(math.radians(x))


def _hard_rotations() -> torch.Tensor:
    """Random poses plus full-range corner cases (facing away, near gimbal lock, big roll)."""
    r = hr.random_rotation(12, generator=torch.Generator().manual_seed(3))
    yaw = torch.tensor([170.0, -135.0, 20.0, 0.0, 45.0]).deg2rad()
    pitch = torch.tensor([10.0, -60.0, 89.9, -89.9, 0.0]).deg2rad()
    roll = torch.tensor([-170.0, 100.0, 30.0, 0.0, 179.0]).deg2rad()
    return torch.cat([r, hr.rotation_from_euler_clerf(yaw, pitch, roll)])


# ----------------------------------------------------------------------------- positives
def test_split_roll_recombines_and_has_zero_roll():
    r = _hard_rotations()
    r_yp, roll = split_roll(r)
    assert torch.allclose(hr.rotation_z(roll) @ r_yp, r, atol=1e-5)
    yaw, pitch, zero = hr.euler_clerf_from_rotation(r_yp)
    assert zero.abs().max() < 1e-4
    y0, p0, _ = hr.euler_clerf_from_rotation(r)
    assert torch.allclose(pitch, p0, atol=1e-4)


def test_synthetic_positive_label_equals_anchor_rotation():
    r = _hard_rotations()
    pos = make_positives(r, SyntheticPositiveSource(image_size=32), torch.Generator().manual_seed(0))
    assert pos["image"].dtype == torch.uint8 and pos["image"].shape == (len(r), 3, 32, 32)
    assert (pos["rotation"] - r).abs().max() < 1e-5
    assert (pos["identity"] >= 1_000_000).all()  # other people than the training identities


class _CentredSource(PositiveSource):
    """One fixed identity, centred, neutral scene: renders comparable pixel for pixel."""

    def render(self, rotations_yp, generator):
        from hpelib.data.synthetic.head import sample_identity_params
        from hpelib.data.synthetic.render import default_scene, render_heads

        params = sample_identity_params([7] * len(rotations_yp))
        out = render_heads(params, default_scene(rotations_yp), 48)
        return {"image": out["image"], "rotation": rotations_yp.float()}


def test_roll_warp_reproduces_a_direct_render_of_the_anchor_pose():
    """The in-plane rotation has the right sign: the warped zero-roll render looks like a
    render made directly at R (inside the disk the rotation keeps in frame)."""
    yaw = torch.tensor([30.0, -120.0]).deg2rad()
    pitch = torch.tensor([15.0, -20.0]).deg2rad()
    roll = torch.tensor([40.0, -75.0]).deg2rad()
    r = hr.rotation_from_euler_clerf(yaw, pitch, roll)
    source = _CentredSource()
    warped = make_positives(r, source, torch.Generator())["image"].float()
    direct = source.render(r, None)["image"].float()
    unrolled = source.render(split_roll(r)[0], None)["image"].float()
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disk = ((xx - 23.5) ** 2 + (yy - 23.5) ** 2) < 21.0**2
    err_warp = (warped - direct).abs()[..., disk].mean()
    err_none = (unrolled - direct).abs()[..., disk].mean()
    assert err_warp < 0.25 * err_none, (float(err_warp), float(err_none))


class _Faces(torch.utils.data.Dataset):
    """Items ``{"image" uint8, "rotation"}`` at the given CLERF (yaw, pitch, roll) degrees."""

    def __init__(self, angles_deg: list[tuple[float, float, float]]) -> None:
        a = torch.tensor(angles_deg).deg2rad()
        self.rotations = hr.rotation_from_euler_clerf(a[:, 0], a[:, 1], a[:, 2])
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (len(a), 3, 32, 32), dtype=torch.uint8, generator=g)

    def __len__(self) -> int:
        return len(self.rotations)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "rotation": self.rotations[i]}


def test_real_face_source_derolls_and_gives_exact_labels():
    faces = _Faces([(10.0, -5.0, 30.0), (-40.0, 15.0, -20.0), (120.0, 0.0, 0.0)])
    source = RealFacePositiveSource(faces, candidates=1)
    _, _, roll = hr.euler_clerf_from_rotation(source.rotations)
    assert roll.abs().max() < 1e-4  # de-rolled: zero roll, same yaw and pitch
    yaw_pitch = hr.euler_clerf_from_rotation(faces.rotations)[:2]
    for got, want in zip(hr.euler_clerf_from_rotation(source.rotations)[:2], yaw_pitch, strict=True):
        assert torch.allclose(got, want, atol=1e-4)
    # The faces' own poses: each face is its own nearest, so the positive is exact.
    positives = make_positives(faces.rotations, source, torch.Generator().manual_seed(0))
    assert hr.geodesic_distance(positives["rotation"], faces.rotations).max() < 1e-3
    # A new pose gets the face nearest in yaw/pitch, rolled to the requested roll.
    query = hr.rotation_from_euler_clerf(_deg(-35.0)[None], _deg(10.0)[None], _deg(50.0)[None])
    got = make_positives(query, source, torch.Generator())["rotation"]
    yaw, pitch, roll = hr.euler_clerf_from_rotation(got)
    assert torch.allclose(torch.stack([yaw, pitch]).rad2deg().flatten(), torch.tensor([-40.0, 15.0]), atol=1e-3)
    assert torch.allclose(roll.rad2deg(), torch.tensor([50.0]), atol=1e-3)
    with pytest.raises(ValueError, match="empty"):
        RealFacePositiveSource(torch.utils.data.Subset(faces, []))


def test_folder_source_uses_nearest_pose_and_keeps_exact_labels(tmp_path):
    from PIL import Image

    rows = []
    for i, (yaw, pitch) in enumerate([(0.0, 0.0), (90.0, 10.0), (-150.0, -30.0)]):
        Image.new("RGB", (20, 20), (40 * i, 80, 120)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{yaw},{pitch}")
    (tmp_path / "poses.csv").write_text("path,yaw,pitch\n" + "\n".join(rows) + "\n")
    source = FolderPositiveSource(tmp_path / "poses.csv", image_size=24)
    r = hr.rotation_from_euler_clerf(
        torch.tensor([90.0, -150.0]).deg2rad(), torch.tensor([10.0, -30.0]).deg2rad(), torch.tensor([25.0, -60.0]).deg2rad()
    )
    pos = make_positives(r, source, torch.Generator().manual_seed(0))
    assert pos["image"].shape == (2, 3, 24, 24)
    assert (pos["rotation"] - r).abs().max() < 1e-5
    # A request between table poses gets the nearest one, with that pose's own label.
    near = hr.rotation_from_euler_clerf(_deg(80.0)[None], _deg(5.0)[None], _deg(0.0)[None])
    got = make_positives(near, source, torch.Generator())["rotation"]
    assert torch.allclose(got, source.rotations[1:2], atol=1e-5)
    with pytest.raises(ValueError, match="max_distance_deg"):
        FolderPositiveSource(tmp_path / "poses.csv", max_distance_deg=1.0).render(near, torch.Generator())
    with pytest.raises(ValueError, match="lacks columns"):
        (tmp_path / "bad.csv").write_text("path,yaw\n0.png,0\n")
        FolderPositiveSource(tmp_path / "bad.csv")


def test_anchor_positive_dataset_collates_a_nested_positive():
    ds = AnchorPositiveDataset(AxisGlyphDataset(4, 32), SyntheticPositiveSource(32), seed=1)
    item = ds[2]
    assert item["positive"]["image"].shape == (3, 32, 32)
    assert (item["positive"]["rotation"] - item["rotation"]).abs().max() < 1e-5
    assert torch.equal(ds[2]["positive"]["image"], item["positive"]["image"])  # seeded
    from hpelib.data.sample import collate_samples

    batch = collate_samples([ds[0], ds[1]])
    assert batch["positive"]["image"].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["clerf", "rotate", "flip"])
def test_shared_augmentation_gives_anchor_and_positive_one_warp(name):
    r = _hard_rotations()
    b = len(r)
    images = torch.rand(b, 3, 24, 24)
    aug = SharedGeometricAugmentation(name, rotation_p=1.0, flip_p=1.0, generator=torch.Generator().manual_seed(0))
    batch = {"image": images, "rotation": r, "positive": {"image": images.clone(), "rotation": r.clone()}}
    out = aug(batch)
    assert (out["rotation"] - out["positive"]["rotation"]).abs().max() < 1e-5
    assert torch.equal(out["image"], out["positive"]["image"])  # the same warp, pixel for pixel
    assert hr.geodesic_distance(out["rotation"], r).min() > 1e-3  # every sample was warped
    # Theorem 3.1: an anchor-positive pair that differs (a nearest-pose positive) keeps its
    # geodesic distance under the shared warp.
    near = r @ hr.rotation_x(torch.linspace(0.05, 0.5, b))
    out = aug({"image": images, "rotation": r, "positive": {"image": images, "rotation": near}})
    d0 = hr.geodesic_distance(r, near)
    d1 = hr.geodesic_distance(out["rotation"], out["positive"]["rotation"])
    assert (d0 - d1).abs().max() < 1e-4


def test_shared_augmentation_errors():
    with pytest.raises(ValueError, match="augmentation='mirror'"):
        SharedGeometricAugmentation("mirror")
    aug = SharedGeometricAugmentation("rotate", rotation_p=1.0)
    batch = {"image": torch.rand(2, 3, 8, 8), "rotation": hr.random_rotation(2),
             "positive": {"image": torch.rand(3, 3, 8, 8), "rotation": hr.random_rotation(3)}}
    with pytest.raises(ValueError, match="one positive per anchor"):
        aug(batch)


# ----------------------------------------------------------------------------- loss
def test_positive_mask_matches_hand_computation():
    z = lambda d: hr.rotation_z(_deg(d))  # noqa: E731
    r = torch.stack([z(0.0), z(30.0), z(40.0), hr.rotation_y(_deg(180.0)), z(-35.0)])
    # cos(30) = 0.866 > 0.8, cos(40) = 0.766 < 0.8, cos(35) = 0.819 > 0.8, cos(65) < 0.8.
    expected = torch.tensor(
        [
            [0, 1, 0, 0, 1],
            [1, 0, 1, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    pos, neg = pair_masks(r, threshold=0.8)
    assert torch.equal(pos, expected)
    assert torch.equal(neg, ~expected & ~torch.eye(5, dtype=torch.bool))
    cos = geodesic_cosine(r)
    assert abs(float(cos[0, 3]) + 1.0) < 1e-6 and abs(float(cos[0, 1]) - math.cos(math.radians(30))) < 1e-6
    pos, neg = pair_masks(r, 0.8, valid=torch.tensor([True, False, True, True, True]))
    assert not pos[1].any() and not pos[:, 1].any() and not neg[1].any() and not neg[:, 1].any()
    with pytest.raises(ValueError, match="T_GD"):
        pair_masks(r, threshold=1.0)


def _clustered(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four well separated poses, 5 samples each jittered by < 6 degrees, so the T_GD rule
    equals class equality; random embeddings."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.stack([torch.eye(3), hr.rotation_y(_deg(90.0)), hr.rotation_y(_deg(180.0)), hr.rotation_x(_deg(90.0))])
    labels = torch.arange(4).repeat_interleave(5)
    axis = torch.nn.functional.normalize(torch.randn(20, 3, generator=g), dim=-1)
    jitter = hr.so3_exp(axis * torch.deg2rad(6.0 * torch.rand(20, 1, generator=g)))
    return centres[labels] @ jitter, labels, torch.randn(20, 8, generator=g)


@pytest.mark.parametrize("kind", ["all", "hard", "semihard"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_mined_triplets_equal_pml_miner_with_equivalent_labels(kind, distance):
    """The paper's miner is pytorch-metric-learning's TripletMarginMiner with its default
    LpDistance (Euclidean); cosine is the named option. With rotation masks equal to class
    equality, hpelib's mining returns exactly the miner's triplets."""
    rotations, labels, emb = _clustered()
    pos, neg = pair_masks(rotations, 0.8)
    assert torch.equal(pos, (labels[:, None] == labels[None]) & ~torch.eye(20, dtype=torch.bool))
    mine = CLERFContrastiveLoss(margin=0.1, type_of_triplets=kind, distance=distance).indices_tuple(emb, rotations)
    pml = {"euclidean": LpDistance(), "cosine": CosineSimilarity()}[distance]
    ref = TripletMarginMiner(margin=0.1, type_of_triplets=kind, distance=pml)(emb, labels)
    if distance == "euclidean":  # the functional default is the paper's distance too
        default = mine_triplets(emb, pos, neg, margin=0.1, type_of_triplets=kind)
        assert all(torch.equal(a, b) for a, b in zip(default, mine, strict=True))
    as_set = lambda t: set(zip(*(x.tolist() for x in t), strict=True))  # noqa: E731
    assert as_set(mine) == as_set(ref) and len(as_set(mine)) > 0
    with pytest.raises(ValueError, match="type_of_triplets"):
        mine_triplets(emb, pos, neg, type_of_triplets="easy")


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_circle_loss_receives_the_intended_triplets(distance):
    """Hand enumeration of (a, p, n) from rotation labels and embedding margins (Euclidean:
    ``|a - n| - |a - p| <= v`` on unit embeddings; cosine: ``s_ap - s_an <= v``); the Circle
    loss gets exactly those and its value equals the paper's formula on them."""
    g = torch.Generator().manual_seed(1)
    rotations = hr.random_rotation(6, generator=g)
    rotations = torch.cat([rotations, rotations @ hr.rotation_z(_deg(10.0))])  # generated positives
    emb = torch.randn(12, 5, generator=g, requires_grad=True)
    loss_fn = CLERFContrastiveLoss(threshold=0.8, margin=0.1, m=0.4, gamma=80.0, distance=distance)
    seen = {}
    original = loss_fn.circle.forward

    def spy(embeddings, labels=None, indices_tuple=None, **kw):
        seen["labels"], seen["triplets"] = labels, indices_tuple
        return original(embeddings, labels, indices_tuple, **kw)

    loss_fn.circle.forward = spy
    loss, stats = loss_fn(emb, rotations)
    assert seen["labels"] is None  # no class ids anywhere
    e = torch.nn.functional.normalize(emb.detach(), dim=1)
    # Violation of the margin, as "distance to n minus distance to p".
    gap = torch.cdist(e, e)[:, None, :] - torch.cdist(e, e)[:, :, None]
    if distance == "cosine":
        gap = (e @ e.T)[:, :, None] - (e @ e.T)[:, None, :]
    expected = set()
    for a in range(12):
        for p in range(12):
            cos_ap = (torch.trace(rotations[a] @ rotations[p].T) - 1) / 2
            if a == p or cos_ap <= 0.8:
                continue
            for n in range(12):
                cos_an = (torch.trace(rotations[a] @ rotations[n].T) - 1) / 2
                if n != a and cos_an <= 0.8 and gap[a, p, n] <= 0.1:
                    expected.add((a, p, n))
    got = set(zip(*(x.tolist() for x in seen["triplets"]), strict=True))
    assert got == expected and len(expected) > 0 and stats["num_triplets"] == len(expected)
    # Circle loss (Sun et al. eq. 6 with PML's reduction over anchors that have triplets).
    m, gamma = 0.4, 80.0
    per_anchor = []
    sim_g = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(emb, dim=1).T
    for a in sorted({t[0] for t in expected}):
        ps = sorted({t[1] for t in expected if t[0] == a})
        ns = sorted({t[2] for t in expected if t[0] == a})
        sp, sn = sim_g[a, ps], sim_g[a, ns]
        lp = -gamma * torch.relu(1 + m - sp.detach()) * (sp - (1 - m))
        ln = gamma * torch.relu(sn.detach() + m) * (sn - m)
        per_anchor.append(torch.nn.functional.softplus(torch.logsumexp(lp, 0) + torch.logsumexp(ln, 0)))
    per_anchor = torch.stack(per_anchor)
    manual = per_anchor[per_anchor > 0].mean()
    assert torch.allclose(loss, manual, rtol=1e-4), (float(loss), float(manual))
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_contrastive_loss_without_triplets_is_zero_with_a_graph():
    emb = torch.randn(3, 4, requires_grad=True)
    loss, stats = CLERFContrastiveLoss()(emb, torch.eye(3).expand(3, 3, 3))  # all positives
    assert float(loss) == 0.0 and loss.requires_grad and stats["num_triplets"] == 0


# ----------------------------------------------------------------------------- module
def test_stage2_freezes_the_encoder():
    L.seed_everything(0)
    module = CLERF(backbone="test_resnet", embedding_dim=32, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    batch = {"image": torch.randn(8, 3, 32, 32), "rotation": hr.random_rotation(8)}
    module.train()
    assert module.stage == 1 and all(p.requires_grad for p in module.model.encoder.parameters())
    module.set_stage(2)
    module.train()  # Lightning calls this every epoch: the encoder must stay in eval mode
    assert not module.model.encoder.training and module.model.head.training
    assert not any(p.requires_grad for p in module.model.encoder.parameters())
    bns = [m for m in module.model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    before = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    head_before = [p.clone() for p in module.model.head.parameters()]
    opt = torch.optim.Adam(module.trainable_parameters(), lr=1e-2)
    loss, parts = module.compute_loss(module.training_forward(batch), batch)
    loss.backward()
    opt.step()
    assert set(parts) == {"geodesic_loss"}
    assert all(p.grad is None for p in module.model.encoder.parameters())
    after = module.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert any(not torch.equal(a, b) for a, b in zip(head_before, module.model.head.parameters(), strict=True))
    # Starting in stage 2: the optimiser never sees the encoder.
    stage2 = CLERF(backbone="test_resnet", embedding_dim=32, stage=2, head_lr=1e-3)
    groups = stage2.trainable_parameters()
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in stage2.model.head.parameters()}


def test_stage1_loss_uses_generated_positives_and_reaches_the_encoder():
    module = CLERF(backbone="test_resnet", embedding_dim=16)
    r = hr.random_rotation(6, generator=torch.Generator().manual_seed(0))
    batch = {"image": torch.randn(6, 3, 32, 32), "rotation": r,
             "positive": {"image": torch.randn(6, 3, 32, 32), "rotation": r.clone()}}
    outputs = module.training_forward(batch)
    assert outputs["embedding"].shape == (12, 16) and outputs["contrastive_rotation"].shape == (12, 3, 3)
    loss, parts = module.compute_loss(outputs, batch)
    assert {"circle_loss", "num_triplets"} <= set(parts) and float(parts["num_triplets"]) > 0
    loss.backward()
    assert all(p.grad is None for p in module.model.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.encoder.parameters())


def test_options_are_validated():
    with pytest.raises(ValueError, match="stage must be"):
        CLERF(backbone="test_resnet", stage=3)
    with pytest.raises(ValueError, match="type_of_triplets"):
        CLERF(backbone="test_resnet", type_of_triplets="easy")
    with pytest.raises(ValueError, match="augmentation="):
        CLERFSupervised(backbone="test_resnet", augmentation="mirror")
    with pytest.raises(FileNotFoundError, match="encoder_checkpoint"):
        CLERF(backbone="test_resnet", encoder_checkpoint="/nonexistent.ckpt")
    with pytest.raises(ValueError, match="embedding_dim"):
        CLERFSupervised(backbone="test_resnet", embedding_dim=0)


class _Recorder(L.Callback):
    """Checks every training batch the module sees: anchors and positives share labels."""

    def __init__(self) -> None:
        self.batches = self.warped = 0
        self.max_label_gap = 0.0
        self.encoder_at_switch: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1
        if "positive" in batch:
            gap = (batch["rotation"] - batch["positive"]["rotation"]).abs().max()
            self.max_label_gap = max(self.max_label_gap, float(gap))
            original = trainer.datamodule.train_dataset.dataset.rotations[batch["index"].cpu()]
            self.warped += int((hr.geodesic_distance(batch["rotation"].cpu(), original) > 1e-3).sum())
        if pl_module.stage == 2 and self.encoder_at_switch is None:
            self.encoder_at_switch = {k: v.clone() for k, v in pl_module.model.encoder.state_dict().items()}


def test_two_stages_in_one_fit_then_test_and_two_run_path(tmp_path):
    from hpelib.callbacks import StageSwitch

    L.seed_everything(0)
    train = AnchorPositiveDataset(AxisGlyphDataset(32, 32, seed=0), SyntheticPositiveSource(32, num_identities=8))
    dm = HPEDataModule(
        train=train, val=AxisGlyphDataset(32, 32, seed=1),
        test={"toy": AxisGlyphDataset(32, 32, seed=2)}, batch_size=16, normalize="none",
    )
    module = CLERF(backbone="test_resnet", embedding_dim=32, head_lr=3e-3, stage2_patience=5,
                   optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    recorder = _Recorder()
    trainer = L.Trainer(
        max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[StageSwitch(epochs=[2]), recorder],
        limit_val_batches=1,
    )
    trainer.fit(module, dm)
    assert module.stage == 2 and module.encoder_frozen
    assert recorder.batches == 8 and recorder.max_label_gap < 1e-5 and recorder.warped > 0
    encoder_end = module.model.encoder.state_dict()
    assert all(torch.equal(recorder.encoder_at_switch[k], encoder_end[k]) for k in encoder_end)
    results = trainer.test(module, dm, verbose=False)
    assert {"test/toy/geodesic", "test/toy/mae", "test/toy/yaw_mae"} <= set(results[0])
    # Two-run path: a stage-2 module initialised from the checkpoint has the same encoder.
    ckpt = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(ckpt)
    stage2 = CLERF(backbone="test_resnet", embedding_dim=32, stage=2, encoder_checkpoint=str(ckpt))
    assert all(torch.equal(v, stage2.model.encoder.state_dict()[k]) for k, v in encoder_end.items())
    assert stage2.stage == 2 and stage2.encoder_frozen


def test_supervised_ablation_trains_encoder_and_head_end_to_end():
    module = CLERFSupervised(backbone="test_resnet", embedding_dim=16)
    batch = {"image": torch.randn(4, 3, 32, 32), "rotation": hr.random_rotation(4)}
    outputs = module.training_forward(batch)
    assert hr.is_rotation_matrix(outputs["rotation"]).all()
    loss, parts = module.compute_loss(outputs, batch)
    loss.backward()
    assert set(parts) == {"geodesic_loss"}
    for part in (module.model.encoder, module.model.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_pose_mlp_orthonormalises_in_float32_under_bf16_autocast():
    head = PoseMLP(16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        r = head(torch.randn(4, 16))
    assert r.dtype == torch.float32
    assert hr.is_rotation_matrix(r, atol=1e-5).all()
