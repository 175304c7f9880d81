"""RepVGG-B1g2 (6DRepNet's backbone) as the timm model ``repvgg_b1g2``.

timm ships RepVGG-B1 and -B1g4 but not -B1g2. timm's ByobNet expresses it exactly: the
RepVGG stem block (3x3 conv-bn + 1x1 conv-bn, stride 2, 64 channels), stages of
``(4, 6, 16, 1)`` RepVGG blocks of widths ``(128, 256, 512, 2048)``, each a 3x3 conv-bn +
1x1 conv-bn + identity bn (where shapes allow) and a ReLU, with 2 groups on every second
block of a stage, which is the reference's ``g2_map`` (global layers 2, 4, ..., 26: the
stage lengths 4 and 6 are even, so "every second block of a stage" and "every even global
layer" are the same blocks). Importing :mod:`hpelib.nn` registers it, so ``backbone:
repvgg_b1g2`` works in every hpelib config.

* ``timm.create_model("repvgg_b1g2", reparameterized=True)`` builds the deploy form (one
  3x3 conv with bias per block, timm's ``reparam_conv``) that released deploy weights load
  into; :func:`timm.models.reparameterize_model` turns a trained train-form model into it.
* timm has no ImageNet weights of B1g2: ``pretrained: true`` is an error naming the file to
  give instead, the RepVGG authors' ``RepVGG-B1g2-train.pth`` as ``backbone_weights``. Such
  a file (original RepVGG key names, ``stage0.rbr_dense.conv.weight``...) is renamed to
  timm's by :func:`repvgg_to_timm_state_dict` when timm loads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import timm
from timm.models import build_model_with_cfg, register_model
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg, RepVggBlock
from torch import Tensor

__all__ = ["REPVGG_B1G2_CFG", "REPVGG_B1G2_WEIGHTS_URL", "repvgg_to_timm_state_dict"]

#: Where the RepVGG authors publish the ImageNet weights of B1g2 (Google Drive / Baidu links
#: in their README); 6DRepNet trains from ``RepVGG-B1g2-train.pth``.
REPVGG_B1G2_WEIGHTS_URL = "https://github.com/DingXiaoH/RepVGG#pretrained-models"


def _every_second_block_grouped(groups: int) -> Any:
    """timm group-size rule: ``groups`` groups on blocks 1, 3, 5... of each stage."""
    return lambda chs, idx: chs // groups if (idx + 1) % 2 == 0 else 0


#: RepVGG-B1g2: depths (4, 6, 16, 1), widths 64 * (2, 2, 2, 4) x (1, 2, 4, 8), 2 groups on
#: every second block (as timm's ``repvgg_b1g4`` with 2 groups instead of 4).
REPVGG_B1G2_CFG = ByoModelCfg(
    blocks=tuple(
        ByoBlockCfg(type="rep", d=d, c=c, gs=_every_second_block_grouped(2))
        for d, c in zip((4, 6, 16, 1), (128, 256, 512, 2048), strict=True)
    ),
    stem_type="rep",
    stem_chs=64,
)

_DEFAULT_CFG = {
    "url": "",
    "num_classes": 1000,
    "input_size": (3, 224, 224),
    "pool_size": (7, 7),
    "crop_pct": 0.875,
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "first_conv": ("stem.conv_kxk.conv", "stem.conv_1x1.conv"),
    "classifier": "head.fc",
}
# register_model reads the pretrained config from this module's `default_cfgs`, so it must
# exist before the entry point below is defined.
default_cfgs = timm.models.generate_default_cfgs({"repvgg_b1g2": _DEFAULT_CFG})

# Original RepVGG / 6DRepNet names -> timm's (applied in this order).
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^(?:stage|layer)0\.", "stem."),
    (r"^(?:stage|layer)([1-4])\.", "stages.{stage}."),
    (r"\.rbr_dense\.", ".conv_kxk."),
    (r"\.rbr_1x1\.", ".conv_1x1."),
    (r"\.rbr_identity\.", ".identity."),
    (r"\.rbr_reparam\.", ".reparam_conv."),
    (r"^linear\.", "head.fc."),
)


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        match = re.search(pattern, key)
        if match is None:
            continue
        if "{stage}" in replacement:
            replacement = replacement.format(stage=int(match.group(1)) - 1)
        key = key[: match.start()] + replacement + key[match.end() :]
    return key


def repvgg_to_timm_state_dict(
    state_dict: Mapping[str, Tensor], model: Any = None
) -> dict[str, Tensor]:
    """A RepVGG state dict with the original names (``stage0``..``stage4`` or 6DRepNet's
    ``layer0``..``layer4``; ``rbr_dense``, ``rbr_1x1``, ``rbr_identity``, ``rbr_reparam``;
    ``linear``; a ``module.`` prefix) -> timm ByobNet names. timm names pass unchanged.
    ``model`` is unused (timm's ``pretrained_filter_fn`` signature)."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        out[_rename(key)] = value
    return out


@register_model
def repvgg_b1g2(pretrained: bool = False, reparameterized: bool = False, **kwargs: Any) -> ByobNet:
    """RepVGG-B1g2 (Ding et al. 2021), 6DRepNet's backbone; ``reparameterized=True``: the
    deploy form (one 3x3 conv with bias per block)."""
    if pretrained and reparameterized:
        raise ValueError(
            "backbone 'repvgg_b1g2' with reparameterized=True takes no ImageNet weights (they "
            "are train-form): load them without reparameterized, then reparameterize"
        )
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file"):
        raise ValueError(
            "timm has no ImageNet weights of backbone 'repvgg_b1g2' (pretrained: true): "
            "download RepVGG-B1g2-train.pth from the RepVGG authors "
            f"({REPVGG_B1G2_WEIGHTS_URL}) and give it as `backbone_weights: "
            "/path/to/RepVGG-B1g2-train.pth`, or use `pretrained: false`"
        )
    # Deploy form: the stage blocks are built with their fused conv directly (timm's
    # `inference_mode`; fusing a train-form model instead takes seconds).
    cfg = (
        replace(REPVGG_B1G2_CFG, block_kwargs={"inference_mode": True})
        if reparameterized
        else REPVGG_B1G2_CFG
    )
    model = build_model_with_cfg(
        ByobNet,
        "repvgg_b1g2",
        pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=repvgg_to_timm_state_dict,
        feature_cfg={"flatten_sequential": True},
        **kwargs,
    )
    if reparameterized:
        _finish_deploy_form(model)
    return model


def _finish_deploy_form(model: ByobNet) -> None:
    """timm's stem takes no ``inference_mode``: fused here (3 input channels: quick). timm
    1.0.x builds the ``inference_mode`` conv without padding (wrong outputs, an error on
    small inputs): given the 'same' padding that its own fusion and the reference use."""
    model.stem.reparameterize()
    for block in model.modules():
        conv = getattr(block, "reparam_conv", None) if isinstance(block, RepVggBlock) else None
        if conv is not None:
            conv.padding = tuple(
                d * (k // 2) for k, d in zip(conv.kernel_size, conv.dilation, strict=True)
            )
