"""Converters of the released 6DRepNet and 6DRepNet360 weights (Hempel et al.).

* **6DRepNet** (ICIP 2022, github.com/thohemp/6DRepNet): RepVGG-B1g2 (stages ``layer0`` ..
  ``layer4``), global average pooling, ``linear_reg`` (2048 -> 6), Gram-Schmidt. Released
  in the deploy form (one 3x3 conv with bias per block, ``rbr_reparam``; what its test
  script and pip package load); a training snapshot (``model_state_dict`` of
  ``sixdrepnet/train.py``) is the train form (``rbr_dense`` + ``rbr_1x1`` + ``rbr_identity``).
  Both convert, each to the same form of hpelib's ``repvgg_b1g2`` (or the train form
  fused to the deploy form with ``reparameterize=True``).
* **6DRepNet360** (TIP 2024, github.com/thohemp/6DRepNet360): NOT RepVGG: its test script
  builds a ResNet-50 (torchvision ``Bottleneck``, layers ``[3, 4, 6, 3]``), ``AvgPool2d(7)``
  (global pooling at 224 px) and the same ``linear_reg`` + Gram-Schmidt: timm's
  ``resnet50``, whose parameter names are torchvision's.

Both output ``R6``, 300W-LP's label matrix ``Rz(roll) Ry(yaw) Rx(pitch)``, built from the two
6D columns; the converted SixD uses the ``"6drepnet"`` representation
(:data:`hpelib.nn.ROTATION_REPRESENTATIONS`), which maps it into hpelib's convention
(:func:`hpelib.rotation.rotation_from_6drepnet_matrix`), so predictions, metrics and Euler
angles come out as for a model trained in hpelib.

Preprocessing of both test scripts: the AFLW2000 crop from the ``pt2d`` box (``k = 0.2``,
margins ``2k, 2k, 2k, 0.6k``, cut at ``int()``), ``Resize(256)``, ``CenterCrop(224)``, ImageNet
mean/std, RGB: recorded as input size 224, ImageNet normalisation, and the crop rule
:class:`~hpelib.weights.release.ResizeCenterCrop` (``base="6drepnet"``) on AFLW2000's
``pt2d`` box.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from hpelib.nn.repvgg import repvgg_to_timm_state_dict
from hpelib.weights.release import (
    ConversionError,
    Release,
    load_converted_weights,
    release_state_dict,
    write_converted_checkpoint,
)

if TYPE_CHECKING:
    from hpelib.methods import SixD

__all__ = ["SIXDREPNET", "SIXDREPNET360", "convert_6drepnet", "convert_6drepnet360"]

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

#: The test scripts' input: AFLW2000's pt2d crop, then Resize(256) + CenterCrop(224).
_PREPROCESSING: dict[str, Any] = {
    "image_size": 224,
    "mean": _IMAGENET_MEAN,
    "std": _IMAGENET_STD,
    "grayscale": False,
    "dataset": "hpelib.data.datasets.aflw2000.AFLW2000",
    "crop_rule": {
        "class_path": "hpelib.weights.ResizeCenterCrop",
        "init_args": {"base": "6drepnet", "resize": 256, "crop": 224},
    },
    "box_source": "pt2d",
    "euler_convention": "300wlp",
    "euler_output_convention": None,
}

_REFERENCE_PREPROCESSING = (
    "RGB; face crop from the pt2d landmark box with k = 0.2 and margins (2k, 2k, 2k, 0.6k) "
    "on (x_min, y_min, x_max, y_max), cut at int(); torchvision Resize(256), "
    "CenterCrop(224), ToTensor, Normalize(ImageNet mean/std)"
)

_OUTPUT_CONVENTION = (
    "6D -> Gram-Schmidt columns [x, y, z] = R6 = Rz(roll) Ry(yaw) Rx(pitch), 300W-LP's label "
    "matrix; mapped to hpelib's internal rotation by rotation_from_6drepnet_matrix "
    "(SixD representation '6drepnet')"
)

SIXDREPNET = Release(
    name="6drepnet",
    title="6DRepNet (Hempel et al., ICIP 2022), trained on 300W-LP",
    url="https://cloud.ovgu.de/s/Q67RnLDy6JKLRWm/download/6DRepNet_300W_LP_AFLW2000.pth",
    architecture="RepVGG-B1g2 -> global average pool -> Linear(2048, 6) -> Gram-Schmidt",
    preprocessing=_PREPROCESSING,
    reference_preprocessing=_REFERENCE_PREPROCESSING,
    output_convention=_OUTPUT_CONVENTION,
    published={
        "AFLW2000": {"yaw": 3.63, "pitch": 4.91, "roll": 3.37, "mae": 3.97},
        "BIWI": {"yaw": 3.24, "pitch": 4.48, "roll": 2.68, "mae": 3.47},
    },
)

SIXDREPNET360 = Release(
    name="6drepnet360",
    title="6DRepNet360 (Hempel et al., IEEE TIP 2024)",
    url="https://cloud.ovgu.de/s/wWCitDxp9t79xkP/download/6DRepNet360_300W_LP.pth",
    architecture="ResNet-50 -> AvgPool2d(7) -> Linear(2048, 6) -> Gram-Schmidt",
    preprocessing=_PREPROCESSING,
    reference_preprocessing=_REFERENCE_PREPROCESSING,
    output_convention=_OUTPUT_CONVENTION,
)

_HEAD = "linear_reg."


def _split_head(
    weights: Mapping[str, Tensor], source: str, release: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(backbone weights, head weights)`` of a released state dict."""
    head = {k.removeprefix(_HEAD): v for k, v in weights.items() if k.startswith(_HEAD)}
    if set(head) != {"weight", "bias"}:
        raise ConversionError(
            f"{source} has no 6D head ({_HEAD}weight/bias): not a {release} state dict"
        )
    backbone = {k: v for k, v in weights.items() if not k.startswith(_HEAD)}
    return backbone, head


def _sixd_state_dict(
    backbone: Mapping[str, Tensor], head: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    out = {f"model.backbone.{k}": v for k, v in backbone.items()}
    out |= {f"model.head.linear.{k}": v for k, v in head.items()}
    return out


def _build_sixd(backbone: str, backbone_kwargs: dict[str, Any] | None) -> SixD:
    from hpelib.methods import SixD  # on use: importing hpelib.weights stays light

    return SixD(
        backbone=backbone,
        pretrained=False,
        backbone_kwargs=backbone_kwargs,
        representation="6drepnet",
        euler_convention="300wlp",
    )


def convert_6drepnet(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    reparameterize: bool = False,
    trust_checkpoint: bool | None = None,
) -> Path:
    """Convert a released 6DRepNet ``.pth`` (deploy form, or a train-form snapshot) into
    an hpelib SixD checkpoint at ``output``.

    Args:
        input: the released file (a state dict, possibly under ``model_state_dict``, keys
            possibly prefixed ``module.``).
        output: the hpelib checkpoint to write (never the input).
        reparameterize: fuse a train-form release into the deploy form (one 3x3 conv per
            block; same outputs up to float rounding, faster). A deploy release stays one.
        trust_checkpoint: see :func:`hpelib.checkpoint_io.read_checkpoint`.

    Returns:
        ``output``.

    Raises:
        ConversionError: not a 6DRepNet state dict (naming the file and the keys that differ).
    """
    source = f"released weights {str(input)!r}"
    weights = release_state_dict(input, trust_checkpoint)
    if "conv1.weight" in weights and "layer1.0.conv1.weight" in weights:
        raise ConversionError(
            f"{source} is a ResNet (6DRepNet360's backbone): use --from 6drepnet360"
        )
    backbone, head = _split_head(weights, source, "6DRepNet")
    deploy = any(".rbr_reparam." in k for k in backbone)
    module = _build_sixd("repvgg_b1g2", {"reparameterized": True} if deploy else None)
    load_converted_weights(
        module, _sixd_state_dict(repvgg_to_timm_state_dict(backbone), head), source
    )
    if reparameterize and not deploy:
        from timm.models import reparameterize_model

        reparameterize_model(module.model.backbone, inplace=True)
        module.hparams["backbone_kwargs"] = {"reparameterized": True}
        deploy = True
    return write_converted_checkpoint(
        module.eval(), SIXDREPNET, output, input, "deploy" if deploy else "train"
    )


# 6DRepNet's ResNet variant (SixDRepNet2) carries a vestigial layer that nothing uses.
_VESTIGIAL = ("fc_finetune.",)


def convert_6drepnet360(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    reparameterize: bool = False,
    trust_checkpoint: bool | None = None,
) -> Path:
    """Convert a released 6DRepNet360 ``.pth`` (ResNet-50) into an hpelib SixD checkpoint
    at ``output`` (backbone timm ``resnet50``). ``reparameterize`` has no effect (a ResNet
    has no train/deploy forms); the other arguments as in :func:`convert_6drepnet`."""
    source = f"released weights {str(input)!r}"
    weights = release_state_dict(input, trust_checkpoint)
    if any(".rbr_" in k for k in weights):
        raise ConversionError(f"{source} is a RepVGG (6DRepNet's backbone): use --from 6drepnet")
    weights = {k: v for k, v in weights.items() if not k.startswith(_VESTIGIAL)}
    backbone, head = _split_head(weights, source, "6DRepNet360")
    module = _build_sixd("resnet50", None)
    load_converted_weights(module, _sixd_state_dict(backbone, head), source)
    return write_converted_checkpoint(module.eval(), SIXDREPNET360, output, input, "train")
