"""``hpelib export``: every method to ONNX with a parity check, the preprocessing in the
metadata, and clear errors (unsupported operator, bad checkpoint, opset, missing packages)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import hpelib
from hpelib import export as hx
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods import CLERF, LECHPE, OpNet, RankPose, SixD
from tests.toy import AxisGlyphDataset

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

#: name -> (class, constructor arguments, grayscale data)
METHODS = {
    "SixD": (SixD, {}, False),
    "CLERF": (CLERF, {"embedding_dim": 8}, False),
    "OpNet": (OpNet, {}, True),
    "OpNet-released": (OpNet, {"covariance_form": "released"}, True),
    "RankPose": (RankPose, {}, False),
    "LECHPE": (LECHPE, {"num_clusters": 3}, False),
}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Input-dependent, non-trivial outputs: random BatchNorm statistics and affine terms
    (an untrained net's are 0/1), and OpNet's covariance heads far from their near-identity
    start (their BatchNorm scale starts at 1e-4), so that the covariances and their
    factors vary from image to image."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
        for name in ("rotation_cov", "coord_cov"):
            head = getattr(getattr(module, "model", None), name, None)
            if head is not None:
                head.norm.weight.fill_(2.0)
                head.norm.running_var.fill_(1e-2)


def _checkpoint(root: Path, name: str, module: torch.nn.Module, grayscale: bool = False) -> Path:
    """A checkpoint as ``hpelib fit`` leaves it (preprocessing record included): the
    datamodule attached by a zero-step fit, then saved."""
    dm = HPEDataModule(
        train=AxisGlyphDataset(16, 32), batch_size=8, normalize="symmetric", grayscale=grayscale
    )
    trainer = L.Trainer(
        max_steps=0, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, dm)
    path = root / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for i, (name, (cls, kwargs, grayscale)) in enumerate(METHODS.items()):
        torch.manual_seed(i)
        module = cls(backbone="test_resnet", **kwargs)
        _randomise(module, i)
        out[name] = _checkpoint(root, name, module, grayscale)
    return out


def _outputs(module: torch.nn.Module, size: int) -> dict[str, torch.Tensor]:
    """Torch outputs on the parity check's input (seed 0, batch 3)."""
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return module.eval()(x)


# ------------------------------------------------------------------ every method exports
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_exports_with_parity_and_preprocessing(checkpoints, tmp_path, name):
    output = tmp_path / f"{name}.onnx"
    errors = hx.export_onnx(checkpoints[name], output)
    predictor = hpelib.load(checkpoints[name])
    size = predictor.image_size
    keys = hx._tensor_keys(predictor.module, torch.zeros(2, 3, size, size))
    # Parity of every output the method returns, not only the rotation.
    assert list(errors) == keys and keys[0] == "rotation"
    scale = {k: float(v.abs().max()) for k, v in _outputs(predictor.module, size).items()}
    assert all(err <= 1e-4 + 1e-5 * scale[k] for k, err in errors.items()), errors
    model = onnx.load(str(output))
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert [o.name for o in model.graph.output] == keys
    meta = {p.key: p.value for p in model.metadata_props}
    record = json.loads(meta["hpelib_preprocessing"])
    expected = getattr(predictor, "preprocessing", None) or {
        "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "grayscale": name.startswith("OpNet"),
    }  # fmt: skip
    assert {k: record[k] for k in expected} == json.loads(json.dumps(expected))
    assert record["image_size"] == 32 and record["mean"] == [0.5] * 3
    assert record["grayscale"] is name.startswith("OpNet")
    assert meta["hpelib_method"] == f"{type(predictor.module).__module__}.{type(predictor.module).__qualname__}"


def test_opnet_graph_gives_the_covariances_and_landmarks(checkpoints, tmp_path):
    """The exported OpNet runs on a new batch size and returns torch's covariances (which
    vary with the input), their factors and the 3D landmarks."""
    output = tmp_path / "opnet.onnx"
    hx.export_onnx(checkpoints["OpNet"], output)
    predictor = hpelib.load(checkpoints["OpNet"])
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"image": x.numpy()}), strict=True))
    with torch.no_grad():
        expected = predictor.module(x)
    for key in ("rotation_cov", "rotation_scale_tril", "coord_cov", "coord_scale_tril", "landmarks_3d"):
        assert got[key].shape[0] == 5
        np.testing.assert_allclose(got[key], expected[key].numpy(), rtol=1e-4, atol=1e-5)
    tril = torch.from_numpy(got["rotation_scale_tril"])
    assert tril.std(0).max() > 0.05  # not the constant near-identity factor of an untrained head
    torch.testing.assert_close(tril @ tril.mT, torch.from_numpy(got["rotation_cov"]), rtol=1e-4, atol=1e-5)


def test_cli_prints_parity_of_every_output(checkpoints, tmp_path, capsys):
    output = tmp_path / "out" / "m.onnx"
    errors = hx.main(["--ckpt", str(checkpoints["OpNet"]), "--output", str(output)])
    out = capsys.readouterr().out
    assert f"wrote {output}" in out and output.is_file()
    for key in errors:
        assert f"parity {key}: max abs difference" in out
    assert "parity rotation_scale_tril" in out


# ------------------------------------------------------------------ errors
def test_unsupported_operator_names_the_method_and_the_operator(tmp_path, capfd):
    """SixD's 9D representation needs an SVD (roma's Procrustes), which ONNX lacks."""
    ckpt = _checkpoint(tmp_path, "nined", SixD(backbone="test_resnet", representation="9d", loss="raw_mse"))
    capfd.readouterr()
    output = tmp_path / "nined.onnx"
    with pytest.raises(hx.ExportError, match=r"cannot export SixD .*nined\.ckpt.*operator aten::linalg_solve_ex"):
        hx.export_onnx(ckpt, output)
    with pytest.raises(SystemExit, match=r"^hpelib export: cannot export SixD .*operator aten::"):
        hx.main(["--ckpt", str(ckpt), "--output", str(output)])
    assert not output.exists()
    # torch's dump of the whole TorchScript graph stays out of the terminal.
    captured = capfd.readouterr()
    assert "Torch IR graph" not in captured.err + captured.out
    assert "Traceback" not in captured.err


class Rad2DegSixD(SixD):
    """A user's method with an operator torch cannot convert (``aten::rad2deg``)."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(images)
        return {**out, "angle_deg": torch.rad2deg(out["rotation_raw"])}


def test_unconvertible_operator_of_a_user_method(tmp_path, capfd):
    ckpt = _checkpoint(tmp_path, "mine", Rad2DegSixD(backbone="test_resnet"))
    capfd.readouterr()
    with pytest.raises(SystemExit, match=r"^hpelib export: cannot export Rad2DegSixD .*mine\.ckpt.*operator aten::rad2deg has no ONNX"):
        hx.main(["--ckpt", str(ckpt), "--output", str(tmp_path / "mine.onnx")])
    captured = capfd.readouterr()
    assert "Torch IR graph" not in captured.out + captured.err  # printed on the C++ stdout
    assert not (tmp_path / "mine.onnx").exists()


def test_not_an_hpelib_checkpoint_missing_file_and_opset(checkpoints, tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(SystemExit, match=r"hpelib export: checkpoint .*foreign\.ckpt.* not written by an hpelib method"):
        hx.main(["--ckpt", str(foreign), "--output", str(tmp_path / "f.onnx")])
    with pytest.raises(SystemExit, match=r"hpelib export: .*nope\.ckpt.* does not exist"):
        hx.main(["--ckpt", str(tmp_path / "nope.ckpt"), "--output", str(tmp_path / "f.onnx")])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(SystemExit, match=r"hpelib export: .*notes\.ckpt"):
        hx.main(["--ckpt", str(text), "--output", str(tmp_path / "f.onnx")])
    for opset in ("99", "3"):
        with pytest.raises(SystemExit, match=rf"SixD\.ckpt.*opset {opset} is not one .*7\.\.20"):
            hx.main(["--ckpt", str(checkpoints["SixD"]), "--output", str(tmp_path / "f.onnx"), "--opset", opset])
    assert not (tmp_path / "f.onnx").exists()


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_missing_package_names_the_file_and_the_install(checkpoints, tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import onnx` now raises ImportError
    output = tmp_path / "m.onnx"
    named = "SixD.ckpt" if package == "onnx" else "m.onnx"
    with pytest.raises(SystemExit, match=rf"{named}.* needs the {package} package: pip install 'hpelib\[onnx\]'"):
        hx.main(["--ckpt", str(checkpoints["SixD"]), "--output", str(output)])
    assert not output.exists()
    if package == "onnxruntime":  # only the parity check needs it
        assert hx.main(["--ckpt", str(checkpoints["SixD"]), "--output", str(output), "--no-check"]) == {}
        assert output.is_file()


def test_output_may_not_be_the_checkpoint(checkpoints, tmp_path):
    ckpt = tmp_path / "copy.ckpt"
    ckpt.write_bytes(checkpoints["SixD"].read_bytes())
    link = tmp_path / "link.onnx"
    link.symlink_to(ckpt)
    before = ckpt.read_bytes()
    for output in (ckpt, link, tmp_path / "." / "copy.ckpt"):
        with pytest.raises(ValueError, match="is the checkpoint being exported"):
            hx.export_onnx(ckpt, output)
    with pytest.raises(ValueError, match="is a folder"):
        hx.export_onnx(ckpt, tmp_path)
    assert ckpt.read_bytes() == before


def test_failed_parity_writes_nothing(checkpoints, tmp_path, monkeypatch):
    output = tmp_path / "m.onnx"
    output.write_bytes(b"previous export")
    one = np.ones((3, 3, 3), dtype=np.float32)
    pairs = {"rotation": (one, one + 1e-3), "rotation_raw": (one * np.nan, one), "big": (one * 1e3, one * 1e3 + 1e-3)}
    monkeypatch.setattr(hx, "_parity_outputs", lambda *a, **k: pairs)
    with pytest.raises(hx.ExportError, match=r"parity check of SixD .*rotation 1\.00e-03, rotation_raw nan \(atol.*not written"):
        hx.export_onnx(checkpoints["SixD"], output)
    assert output.read_bytes() == b"previous export"
    # 1e-3 on values of 1000 is float32 rounding: within the default rtol, not atol.
    pairs.pop("rotation_raw")
    pairs["rotation"] = (one, one)
    errors = hx.export_onnx(checkpoints["SixD"], output)
    assert errors["big"] == pytest.approx(1e-3, rel=0.1) and output.read_bytes() != b"previous export"
