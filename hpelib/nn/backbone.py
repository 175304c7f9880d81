"""Backbone factory over timm: any timm model name, optional ImageNet or local weights."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
from torch import nn

from hpelib.checkpoint_io import read_checkpoint

__all__ = ["create_backbone", "BackboneNotFoundError"]


class BackboneNotFoundError(ValueError):
    """Raised for a backbone name that timm does not know."""


# Arguments create_backbone passes to timm itself.
_SET_HERE = frozenset({"pretrained", "num_classes", "in_chans", "drop_rate", "pretrained_cfg_overlay"})


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    candidates = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(candidates)}?" if candidates else ""
    raise BackboneNotFoundError(
        f"unknown backbone {name!r}: not a timm model name (see timm.list_models()).{hint}"
    )


def create_backbone(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    **kwargs,
) -> tuple[nn.Module, int]:
    """Create a timm feature extractor with global pooling and no classifier.

    Args:
        name: any timm model name (``resnet18``, ``repvgg_b1g2``, ``swinv2_base_window8_256``...).
        pretrained: load timm's pretrained weights (needs network access or a warm cache).
        checkpoint_path: local weights file (timm/ImageNet checkpoint or a state dict) used
            instead of downloading; implies pretrained weights. It is checked with
            :func:`hpelib.checkpoint_io.read_checkpoint` first, so a file that would run code
            when unpickled is refused (whatever timm version loads it afterwards);
            ``.safetensors`` files go to timm directly.
        in_chans: input channels (1 for grayscale models such as OpNet).
        drop_rate: dropout before the (removed) classifier.
        **kwargs: further arguments of the timm model's constructor (a method's
            ``backbone_kwargs``), e.g. ``drop_path_rate``, ``output_stride`` or, for the
            ResNet family, ``layers`` and ``channels`` to build a smaller ResNet.

    Returns:
        ``(module, num_features)``; ``module(images (B, C, H, W)) -> (B, num_features)``.
    """
    _check_name(name)
    reserved = sorted(set(kwargs) & _SET_HERE)
    if reserved:
        raise ValueError(
            f"backbone_kwargs of {name!r} must not set {reserved}: hpelib sets them itself "
            "(use the method's own pretrained / checkpoint_path / in_chans / drop_rate)"
        )
    overlay = None
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        if path.suffix != ".safetensors":  # safetensors holds no code; timm reads it as is
            read_checkpoint(path, what="backbone checkpoint_path")
        overlay = {"file": str(path)}
        pretrained = True
    try:
        model = timm.create_model(
            name,
            pretrained=pretrained,
            num_classes=0,
            in_chans=in_chans,
            drop_rate=drop_rate,
            pretrained_cfg_overlay=overlay,
            **kwargs,
        )
    except TypeError as err:
        if not kwargs:
            raise
        raise ValueError(
            f"backbone {name!r} does not accept backbone_kwargs {kwargs}: {err}"
        ) from err
    except RuntimeError as err:
        # A state dict of the stock architecture loaded into one that kwargs changed.
        if not (kwargs and pretrained):
            raise
        raise ValueError(
            f"the pretrained weights of backbone {name!r} do not fit the architecture that "
            f"backbone_kwargs {kwargs} builds; use pretrained: false or weights of that "
            f"architecture: {err}"
        ) from err
    # Models with a pre-logits conv/linear head (MobileNetV3, LCNet, MobileNetV4...) output
    # `head_hidden_size` features with num_classes=0; `num_features` is the width before it.
    return model, int(getattr(model, "head_hidden_size", None) or model.num_features)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

