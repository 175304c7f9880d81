"""LEC-HPE as the paper trains it: KL reduction, global cluster frequencies, clean stage-1
batches, and the paper config's augmentation (HopeNet's blur and down-/up-sampling)."""

from __future__ import annotations

import pickle

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

import hpelib.rotation as hr
from hpelib.callbacks import KMeansCentroidInit, StageSwitch
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.transforms import RandomOcclusion
from hpelib.methods.lechpe import (
    LECHPE,
    LECHPEAugmentation,
    NearestResample,
    PILBlur,
    cluster_kl_loss,
    soft_assignment,
    target_distribution,
)


# ----------------------------------------------------------------------------- KL reduction
@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 12), k=st.integers(2, 6), seed=st.integers(0, 1000))
def test_kl_sum_is_batch_size_times_mean(b, k, seed):
    g = torch.Generator().manual_seed(seed)
    q = soft_assignment(torch.randn(b, 4, generator=g), torch.randn(k, 4, generator=g))
    p = target_distribution(q)
    total, mean = cluster_kl_loss(p, q, reduction="sum"), cluster_kl_loss(p, q, reduction="mean")
    torch.testing.assert_close(total, b * mean)
    mask = torch.rand(b, generator=g) < 0.5
    manual = sum(float((p[i] * (p[i] / q[i]).log()).sum()) for i in range(b) if bool(mask[i]))
    assert float(cluster_kl_loss(p, q, mask, reduction="sum")) == pytest.approx(manual, abs=1e-5)


def test_module_uses_the_configured_reduction():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    batch = {
        "image": images,
        "rotation": hr.euler_to_rotation(torch.zeros(4, 3), "300wlp", degrees=True),
    }
    parts = {}
    for reduction in ("sum", "mean"):
        torch.manual_seed(0)
        module = LECHPE(backbone="test_resnet", num_clusters=3, stage=2, kl_reduction=reduction)
        out = module(images)
        module.init_centroids(out["embedding"].detach()[:3] + 0.1)
        _, parts[reduction] = module.compute_loss(module(images), batch)
    torch.testing.assert_close(parts["sum"]["cluster_loss"], 4 * parts["mean"]["cluster_loss"])
    with pytest.raises(ValueError, match="kl_reduction"):
        LECHPE(backbone="test_resnet", kl_reduction="batchmean")
    with pytest.raises(ValueError, match="stage1_occlusion"):
        LECHPE(backbone="test_resnet", stage1_occlusion="on")


def test_target_with_global_frequencies_equals_the_target_of_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    q = soft_assignment(torch.randn(10, 4, generator=g), torch.randn(3, 4, generator=g))
    whole = target_distribution(q)
    f = q.sum(0)
    halves = torch.cat([target_distribution(q[:6], f), target_distribution(q[6:], f)])
    torch.testing.assert_close(halves, whole)
    assert not torch.allclose(target_distribution(q[:6]), whole[:6])  # local f differs


# ----------------------------------------------------------------------------- stage-1 data
class _Faces(torch.utils.data.Dataset):
    """Clean grey faces (random images) with frontal poses; no dataset-level occlusion."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = (torch.rand(n, 3, 32, 32, generator=g) * 255).to(torch.uint8)
        angles = (torch.rand(n, 3, generator=g) - 0.5) * 40
        self.rotations = hr.euler_to_rotation(angles, "300wlp", degrees=True)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "rotation": self.rotations[i]}


@pytest.mark.parametrize("policy", ["none", "masked"])
def test_stage1_batches_hold_no_occluders_unless_masked(tmp_path, policy):
    L.seed_everything(0)
    occlusion = RandomOcclusion(p=1.0)
    dm = HPEDataModule(train=_Faces(16), batch_size=8, augmentation=occlusion, normalize="none")
    module = LECHPE(backbone="test_resnet", num_clusters=2, stage1_occlusion=policy)
    seen: list[tuple[int, bool]] = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            occluded = batch.get("occluded", torch.zeros(1, dtype=torch.bool))
            seen.append((pl_module.stage, bool(occluded.all())))
            assert bool(occluded.all()) == bool(occluded.any())  # p = 1: all or none

    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        limit_train_batches=1, num_sanity_val_steps=0,
        callbacks=[StageSwitch(epochs=[1]), KMeansCentroidInit(n_init=1), Spy()],
    )  # fmt: skip
    trainer.fit(module, dm)
    stage1_occluded = policy == "masked"
    assert seen == [(1, stage1_occluded), (2, True)]
    assert occlusion.p == 1.0  # the configured probability is back after the fit
    pickle.dumps(module)  # still picklable (ddp_spawn pickles the module)


# ----------------------------------------------------------------------------- augmentation
def test_pil_blur_matches_pillow():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(array).filter(ImageFilter.BLUR), dtype=np.float32)
    image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    blurred = PILBlur(p=1.0)({"image": image})["image"][0].permute(1, 2, 0).numpy() * 255
    # Interior pixels (the border handling of PIL differs): equal up to PIL's rounding.
    np.testing.assert_allclose(blurred[2:-2, 2:-2], expected[2:-2, 2:-2], atol=1.0)


def test_nearest_resample_is_block_replication():
    image = torch.rand(2, 3, 12, 12)
    out = NearestResample(factors=[3])({"image": image})["image"]
    blocks = image[:, :, ::3, ::3]
    torch.testing.assert_close(out, blocks.repeat_interleave(3, -1).repeat_interleave(3, -2))
    same = NearestResample(factors=[1])({"image": image})["image"]
    torch.testing.assert_close(same, image)
    with pytest.raises(ValueError, match="factors"):
        NearestResample(factors=[0])


def test_paper_augmentation_mirrors_labels_and_gates_occluders():
    aug = LECHPEAugmentation(mirror_p=1.0, blur_p=0.0, downsample_factors=[1], occlusion_p=0.5)
    assert any(isinstance(m, RandomOcclusion) for m in aug)
    angles = torch.tensor([[10.0, 30.0, 5.0]])
    batch = {
        "image": torch.rand(1, 3, 32, 32),
        "rotation": hr.euler_to_rotation(angles, "300wlp", degrees=True),
    }
    out = LECHPEAugmentation(mirror_p=1.0, blur_p=0.0, downsample_factors=[1], occlusion_p=0.0)(
        batch
    )
    mirrored = hr.rotation_to_euler(out["rotation"], "300wlp", degrees=True)
    torch.testing.assert_close(mirrored, torch.tensor([[10.0, -30.0, -5.0]]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["image"], batch["image"].flip(-1))


# ----------------------------------------------------------------------------- predict
def test_predict_step_keeps_predicted_yaw_beyond_90():
    torch.manual_seed(0)
    module = LECHPE(backbone="test_resnet", num_clusters=2).eval()
    head = module.model.angle_heads[1]  # yaw: all mass on the bin [93, 96)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.bias[64] = 0.0
    out = module.predict_step({"image": torch.rand(2, 3, 32, 32)}, 0)
    torch.testing.assert_close(out["euler_deg"][:, 1], torch.full((2,), 94.5), atol=1e-3, rtol=0)
    decomposed = hr.rotation_to_euler(out["rotation"], "300wlp", degrees=True)
    assert float(decomposed[:, 1].abs().max()) <= 90.0 + 1e-3  # what the rotation alone gives
