"""HPEDataModule: dataset specs, weighted mixing, test-set names, on-device preparation."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from hpelib.data import collate_samples
from hpelib.data.datamodule import HPEDataModule, build_dataset_from_spec
from tests.data.writers import table_dir
from tests.toy import AxisGlyphDataset


def test_spec_by_class_path_and_instance():
    spec = {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 5}}
    assert len(build_dataset_from_spec(spec)) == 5
    ds = AxisGlyphDataset(3)
    assert build_dataset_from_spec(ds) is ds
    with pytest.raises(ValueError, match="cannot import class_path 'tests.toy.Nope'"):
        build_dataset_from_spec({"class_path": "tests.toy.Nope"})
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_dataset_from_spec({"root": "/x"})


def test_weighted_mix_follows_weights():
    dm = HPEDataModule(
        train=[
            {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 10, "seed": 0}, "weight": 3.0},
            {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 90, "seed": 1}, "weight": 1.0},
        ],
        samples_per_epoch=2000,
        batch_size=100,
    )
    dm.setup("fit")
    assert sum(len(b["index"]) for b in dm.train_dataloader()) == 2000
    # Concatenated indices 0..9 belong to the first dataset (10 items, weight 3 of 4).
    drawn = torch.tensor(list(iter(dm.train_dataloader().sampler)))
    share_first = float((drawn < 10).float().mean())
    assert 0.68 < share_first < 0.82  # expected 0.75


def test_test_sets_are_named_and_missing_stage_errors():
    dm = HPEDataModule(test={"a": AxisGlyphDataset(4), "b": AxisGlyphDataset(6)}, batch_size=2)
    dm.setup("test")
    assert dm.test_names == ["a", "b"]
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [4, 6]
    with pytest.raises(ValueError, match="no train dataset"):
        dm.train_dataloader()


def test_prepare_images_normalises_and_handles_nested_batches():
    ds = AxisGlyphDataset(4, 16)
    samples = [{**ds[i], "partner": ds[(i + 1) % 4]} for i in range(4)]
    batch = collate_samples(samples)
    assert batch["partner"]["image"].shape == (4, 3, 16, 16)
    dm = HPEDataModule(normalize="symmetric", grayscale=True)
    out = dm.prepare_images(batch, train=False)
    for b in (out, out["partner"]):
        assert b["image"].dtype == torch.float32
        assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
        assert torch.equal(b["image"][:, 0], b["image"][:, 1])  # grayscale repeated
    with pytest.raises(ValueError, match="unknown normalize"):
        HPEDataModule(normalize="zscore")


def test_collate_masks_missing_optional_keys():
    ds = AxisGlyphDataset(2, 16)
    a, b = ds[0], ds[1]
    a["box"] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    batch = collate_samples([a, b])
    assert batch["has_box"].tolist() == [True, False]
    assert batch["box"].shape == (2, 4)
    assert batch["has_rotation"].all()
    with pytest.raises(KeyError, match="rotation"):
        collate_samples([{"image": a["image"]}])


def test_specs_from_jsonargparse_namespaces_and_nested_class_paths():
    from jsonargparse import Namespace

    from hpelib.data.variants import SAVariant

    spec = Namespace(class_path="tests.toy.AxisGlyphDataset", init_args=Namespace(num_samples=4))
    assert len(build_dataset_from_spec(spec)) == 4
    nested = {
        "class_path": "hpelib.data.variants.SAVariant",
        "init_args": {"dataset": {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 3}}},
    }
    wrapped = build_dataset_from_spec(nested)
    assert isinstance(wrapped, SAVariant) and len(wrapped) == 3


class _TinyModel(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 9)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.layer(batch["image"].mean((2, 3))).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(dm: HPEDataModule) -> Trainer:
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(_TinyModel(), datamodule=dm)
    return trainer


def _glyphs(n: int) -> dict:
    return {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": n}}


def test_training_set_smaller_than_one_batch_is_an_error_in_fit() -> None:
    # Lightning alone prints "No training batches" and fit returns as if it had trained.
    with pytest.raises(
        ValueError,
        match=r"training set tests\.toy\.AxisGlyphDataset gives 3 item\(s\) per epoch, fewer "
        r"than batch_size=4: .*no training batch.*at most 3",
    ):
        _fit(HPEDataModule(train=_glyphs(3), batch_size=4))
    assert _fit(HPEDataModule(train=_glyphs(4), batch_size=4)).global_step == 1


def test_small_training_set_error_names_the_dataset_and_counts_per_rank(tmp_path) -> None:
    root = table_dir(tmp_path)
    csv = root / "labels.csv"
    pd.DataFrame(
        {"path": ["img/0.png", "img/1.png"], "pitch": [0.0, 1.0], "yaw": [0.0, 2.0], "roll": [0, 3]}
    ).to_csv(csv, index=False)
    dm = HPEDataModule(train={"name": "table", "table": str(csv)}, batch_size=3)
    dm.setup("fit")
    with pytest.raises(ValueError, match=rf"training set table at {re.escape(str(csv))} gives 2"):
        dm.train_dataloader()
    # Under DDP each rank gets ceil(n / world_size) items (DistributedSampler pads).
    dm = HPEDataModule(train=_glyphs(7), batch_size=4)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2)
    assert len(dm.train_dataloader()) == 1
    dm = HPEDataModule(train=_glyphs(6), batch_size=4)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"3 item\(s\) per epoch per process over 2 processes"):
        dm.train_dataloader()
    # Weighted draws: samples_per_epoch is what an epoch holds.
    dm = HPEDataModule(train=_glyphs(50), samples_per_epoch=2, batch_size=4)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"gives 2 item\(s\) per epoch, 50 in the dataset"):
        dm.train_dataloader()
