"""Converters of the released 6DRepNet / 6DRepNet360 weights: the converted hpelib model
gives the reference model's rotations (in hpelib's convention) on the same input, for the
train-time and the deploy form, and loads, predicts and evaluates like a trained one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hpelib
from hpelib.checkpoint_io import read_checkpoint
from hpelib.rotation import rotation_from_6drepnet_matrix, rotation_from_euler_300wlp
from hpelib.weights import CONVERTED_FROM_KEY, ConversionError, ResizeCenterCrop, convert
from tests.weights.reference_sixdrepnet import (
    SixDRepNet,
    SixDRepNet360,
    compute_rotation_matrix_from_ortho6d,
    get_R,
    randomise_,
    repvgg_model_convert,
)

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _x(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _rotation(ckpt, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hpelib.load(ckpt).module(x)["rotation"]


def _reference(model, x: torch.Tensor) -> torch.Tensor:
    """The reference's R6, in hpelib's convention."""
    with torch.no_grad():
        return rotation_from_6drepnet_matrix(model(x))


@pytest.fixture(scope="module")
def sixdrepnet(tmp_path_factory):
    """A random reference 6DRepNet, released as a train-form snapshot (``model_state_dict``,
    DataParallel ``module.`` keys, optimiser state) and as a deploy state dict, and converted."""
    root = tmp_path_factory.mktemp("6drepnet")
    train = randomise_(SixDRepNet(deploy=False), 0)
    deploy = repvgg_model_convert(train)
    torch.save(
        {"epoch": 30, "model_state_dict": {f"module.{k}": v for k, v in train.state_dict().items()},
         "optimizer_state_dict": {"state": {}, "param_groups": []}},
        root / "train.tar",
    )  # fmt: skip
    torch.save(deploy.state_dict(), root / "6DRepNet_300W_LP_AFLW2000.pth")
    ckpts = {
        "train": convert("6drepnet", root / "train.tar", root / "train.ckpt"),
        "deploy": convert("6drepnet", root / "6DRepNet_300W_LP_AFLW2000.pth", root / "deploy.ckpt"),
        "fused": convert("6drepnet", root / "train.tar", root / "fused.ckpt", reparameterize=True),
    }
    return {"train": train, "deploy": deploy, "ckpt": ckpts, "root": root}


@pytest.mark.parametrize("form", ["train", "deploy", "fused"])
def test_6drepnet_outputs_equal_the_reference(sixdrepnet, form):
    x = _x(64)
    expected = _reference(sixdrepnet["deploy" if form == "deploy" else "train"], x)
    got = _rotation(sixdrepnet["ckpt"][form], x)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    ckpt = read_checkpoint(sixdrepnet["ckpt"][form])
    assert ckpt[CONVERTED_FROM_KEY]["form"] == ("train" if form == "train" else "deploy")
    assert ckpt["hyper_parameters"]["representation"] == "6drepnet"
    fused = any("reparam_conv" in k for k in ckpt["state_dict"])
    assert fused is (form != "train")


def test_predictor_repeats_the_release_preprocessing(sixdrepnet):
    """hpelib.load(...).predict on an image in [0, 1] equals the reference on the image
    normalised as its test script does (224 px, ImageNet mean/std, RGB), angles included."""
    predictor = hpelib.load(sixdrepnet["ckpt"]["deploy"])
    prep = predictor.preprocessing
    assert prep["image_size"] == 224 and not prep["grayscale"]
    np.testing.assert_allclose(prep["mean"], _MEAN.flatten().tolist())
    np.testing.assert_allclose(prep["std"], _STD.flatten().tolist())
    assert prep["crop_rule"]["class_path"] == "hpelib.weights.ResizeCenterCrop"
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    pred = predictor.predict(image)
    expected = _reference(sixdrepnet["deploy"], (image - _MEAN) / _STD)
    torch.testing.assert_close(pred.rotation, expected, atol=2e-5, rtol=0)
    # The reference test script's angles (its decomposition of R6, in degrees).
    with torch.no_grad():
        r6 = sixdrepnet["deploy"]((image - _MEAN) / _STD)[0]
    pitch = math.atan2(r6[2, 1], r6[2, 2])
    yaw = math.atan2(-r6[2, 0], math.hypot(r6[0, 0], r6[1, 0]))
    roll = math.atan2(r6[1, 0], r6[0, 0])
    assert pred.names == ("pitch", "yaw", "roll")
    np.testing.assert_allclose(pred.euler_deg[0].numpy(), np.degrees([pitch, yaw, roll]), atol=1e-3)


@pytest.fixture(scope="module")
def sixdrepnet360(tmp_path_factory):
    torchvision = pytest.importorskip("torchvision")
    root = tmp_path_factory.mktemp("6drepnet360")
    model = randomise_(SixDRepNet360(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], 6), 2)
    torch.save(model.state_dict(), root / "6DRepNet360_300W_LP.pth")
    return model, convert("6drepnet360", root / "6DRepNet360_300W_LP.pth", root / "360.ckpt"), root


def test_6drepnet360_outputs_equal_the_reference(sixdrepnet360):
    model, ckpt, _ = sixdrepnet360
    x = _x(224, n=1)  # the reference pools with AvgPool2d(7): 224 px only
    torch.testing.assert_close(_rotation(ckpt, x), _reference(model, x), atol=2e-5, rtol=0)
    assert read_checkpoint(ckpt)["hyper_parameters"]["backbone"] == "resnet50"


def test_a_known_rotation_comes_out_in_hpelib_convention(sixdrepnet360):
    """A release whose head outputs the 6D form of the 300W-LP label of (pitch, yaw, roll)
    whatever the image: the converted model predicts hpelib's rotation of those angles and
    reports the same angles."""
    model, _, root = sixdrepnet360
    pitch, yaw, roll = 0.3, -0.6, 0.2
    r6 = torch.tensor(get_R(pitch, yaw, roll), dtype=torch.float32)
    state = dict(model.state_dict())
    state["linear_reg.weight"] = torch.zeros_like(state["linear_reg.weight"])
    state["linear_reg.bias"] = torch.cat([r6[:, 0], r6[:, 1]])
    torch.testing.assert_close(compute_rotation_matrix_from_ortho6d(state["linear_reg.bias"][None])[0], r6)
    torch.save(state, root / "constant.pth")
    predictor = hpelib.load(convert("6drepnet360", root / "constant.pth", root / "constant.ckpt"))
    pred = predictor.predict(torch.rand(1, 3, 224, 224))
    expected = rotation_from_euler_300wlp(torch.tensor(pitch), torch.tensor(yaw), torch.tensor(roll))
    torch.testing.assert_close(pred.rotation[0], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(pred.euler_deg[0].numpy(), np.degrees([pitch, yaw, roll]), atol=1e-3)


# ------------------------------------------------------------------------------- errors
def test_wrong_release_damaged_file_and_output_over_input(sixdrepnet, sixdrepnet360, tmp_path):
    root = sixdrepnet["root"]
    _, _, root360 = sixdrepnet360
    with pytest.raises(ConversionError, match="--from 6drepnet360"):
        convert("6drepnet", root360 / "6DRepNet360_300W_LP.pth", tmp_path / "x.ckpt")
    with pytest.raises(ConversionError, match="--from 6drepnet"):
        convert("6drepnet360", root / "6DRepNet_300W_LP_AFLW2000.pth", tmp_path / "x.ckpt")
    state = torch.load(root360 / "6DRepNet360_300W_LP.pth")
    del state["layer4.2.bn3.running_var"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(ConversionError, match=r"cut\.pth.*missing \(1\): model\.backbone\.layer4\.2\.bn3\.running_var"):
        convert("6drepnet360", tmp_path / "cut.pth", tmp_path / "x.ckpt")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ConversionError, match=r"other\.pth.*no 6D head"):
        convert("6drepnet", tmp_path / "other.pth", tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="unknown release 'hopenet'"):
        convert("hopenet", tmp_path / "other.pth", tmp_path / "x.ckpt")
    source = root / "6DRepNet_300W_LP_AFLW2000.pth"
    size = source.stat().st_size
    with pytest.raises(ConversionError, match="released file itself"):
        convert("6drepnet", source, source)
    assert source.stat().st_size == size and not (tmp_path / "x.ckpt").exists()


# ---------------------------------------------------------------------------- crop rule
def test_resize_center_crop_keeps_what_resize_and_center_crop_keep():
    """Resize(256) of the shorter side then CenterCrop(224) keeps the central square of side
    224/256 of the shorter side of the dataset crop."""
    rule = ResizeCenterCrop(base="full")
    np.testing.assert_allclose(rule(np.full(4, np.nan), (128, 256), None), [8, 72, 120, 184])
    # AFLW2000's reference crop of a landmark box, cut at int() first.
    box = np.array([100.0, 120.0, 200.0, 260.0])
    base = np.trunc(ResizeCenterCrop(base="6drepnet", resize=1, crop=1)._rule(box, (450, 450), None))
    side = min(base[2] - base[0], base[3] - base[1]) * 224 / 256
    centre = (base[:2] + base[2:]) / 2
    np.testing.assert_allclose(ResizeCenterCrop()(box, (450, 450), None), [*(centre - side / 2), *(centre + side / 2)])
    with pytest.raises(ValueError, match="crop <= resize"):
        ResizeCenterCrop(resize=224, crop=256)


def test_evaluate_gives_aflw2000_the_release_crop(sixdrepnet):
    from hpelib.evaluate import specs_for_checkpoint

    prep = hpelib.load(sixdrepnet["ckpt"]["deploy"]).preprocessing
    specs = specs_for_checkpoint({"aflw": {"name": "aflw2000", "root": "/data/AFLW2000", "image_size": 64}}, prep)
    rule = specs["aflw"]["crop_rule"]
    assert isinstance(rule, ResizeCenterCrop) and (rule.base, rule.resize, rule.crop) == ("6drepnet", 256, 224)
    assert specs["aflw"]["image_size"] == 224 and specs["aflw"]["box_source"] == "pt2d"


# ----------------------------------------------------------------------------- the CLI
def test_hpelib_convert_on_the_command_line(sixdrepnet360, tmp_path, capsys):
    from hpelib.cli import main

    model, ckpt, root = sixdrepnet360
    output = tmp_path / "6drepnet360.ckpt"
    main(["convert", "--from", "6drepnet360", "--input", str(root / "6DRepNet360_300W_LP.pth"),
          "--output", str(output)])  # fmt: skip
    assert f"wrote {output}" in capsys.readouterr().out
    written, expected = read_checkpoint(output), read_checkpoint(ckpt)
    assert written["state_dict"].keys() == expected["state_dict"].keys()
    assert all(torch.equal(v, expected["state_dict"][k]) for k, v in written["state_dict"].items())
    assert written[CONVERTED_FROM_KEY] == expected[CONVERTED_FROM_KEY]
    torch.save({"linear_reg.weight": torch.zeros(6, 3)}, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match=r"hpelib convert: .*other\.pth"):
        main(["convert", "--from", "6drepnet", "--input", str(tmp_path / "other.pth"), "--output", str(output)])


# ------------------------------------------------------------ export and evaluate
@pytest.fixture(scope="module")
def small_converted(tmp_path_factory):
    """A checkpoint in the converters' exact form (record, provenance, representation
    '6drepnet') around a tiny backbone: export and evaluate in seconds."""
    from hpelib.methods import SixD
    from hpelib.weights import SIXDREPNET
    from hpelib.weights.release import write_converted_checkpoint

    root = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    module = SixD(backbone="test_resnet", representation="6drepnet").eval()
    source = root / "release.pth"
    torch.save(module.state_dict(), source)
    return write_converted_checkpoint(module, SIXDREPNET, root / "small.ckpt", source, "deploy")


def test_a_converted_checkpoint_exports_with_parity(small_converted, tmp_path):
    pytest.importorskip("onnxruntime")
    from hpelib.export import export_onnx

    errors = export_onnx(small_converted, tmp_path / "model.onnx")
    assert set(errors) == {"rotation", "rotation_raw"} and max(errors.values()) < 1e-4


def test_a_converted_checkpoint_evaluates_on_aflw2000_with_the_release_crop(small_converted, shared_dir):
    from hpelib.evaluate import evaluate

    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip("no AFLW2000-dev")
    subset = {"class_path": "hpelib.data.splits.SplitDataset", "init_args": {
        "dataset": {"name": "aflw2000", "root": str(root)}, "fraction": 0.99, "part": "val"}}  # fmt: skip
    table, _ = evaluate([small_converted], {"aflw": subset}, batch_size=8)
    assert table.loc[0, "n"] > 0 and np.isfinite(table.loc[0, "geodesic"])


@pytest.mark.slow
def test_the_converted_repvgg_deploy_model_exports_with_parity(sixdrepnet, tmp_path):
    """The real RepVGG-B1g2 at 224 px (10 s to a minute on 2 busy CPU cores)."""
    pytest.importorskip("onnxruntime")
    from hpelib.export import export_onnx

    errors = export_onnx(sixdrepnet["ckpt"]["deploy"], tmp_path / "6drepnet.onnx")
    assert max(errors.values()) < 1e-4


def test_the_6drepnet_representation_is_the_release_output_in_hpelib_convention():
    from hpelib.methods import SixD
    from hpelib.nn import RotationHead

    raw = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))
    got = RotationHead(4, "6drepnet").to_rotation(raw)
    torch.testing.assert_close(got, rotation_from_6drepnet_matrix(compute_rotation_matrix_from_ortho6d(raw)), atol=1e-6, rtol=0)
    torch.testing.assert_close(got @ got.transpose(-1, -2), torch.eye(3).expand(5, 3, 3), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="raw_mse.*'6d' or '9d'.*'6drepnet'"):
        SixD(backbone="test_resnet", loss="raw_mse", representation="6drepnet")


def test_hpelib_help_lists_convert(capsys):
    import re

    from hpelib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert re.search(r"^\s+convert\s", capsys.readouterr().out, re.M)
