"""Backbone factory over timm: any timm model name, optional ImageNet or local weights.

ImageNet weights (``pretrained=True``) are looked up in the local caches first (Hugging Face
hub cache, then torch hub's ``checkpoints`` folder) and loaded from there without any network
request; only weights that are in neither are downloaded by timm. Without network access that
is an immediate :class:`PretrainedWeightsUnavailableError` naming the backbone and the local
weights file to pass instead (``backbone_weights``), not minutes of download retries.
"""

from __future__ import annotations

import difflib
import os
import socket
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import timm
from torch import nn

from hpelib.checkpoint_io import read_checkpoint
from hpelib.nn import repvgg as _repvgg  # noqa: F401  (registers timm's missing repvgg_b1g2)

__all__ = [
    "BackboneNotFoundError",
    "PretrainedWeightsUnavailableError",
    "cached_pretrained_weights",
    "count_parameters",
    "create_backbone",
]


class BackboneNotFoundError(ValueError):
    """Raised for a backbone name that timm does not know."""


class PretrainedWeightsUnavailableError(ConnectionError):
    """``pretrained=True`` for weights that are not cached locally, without network access."""


# Arguments create_backbone passes to timm itself.
_SET_HERE = frozenset({"pretrained", "num_classes", "in_chans", "drop_rate", "pretrained_cfg_overlay"})

#: Seconds the network probe waits for a TCP connection to the weights' host (or proxy)
#: before ``pretrained=True`` fails; DNS failures return at once.
NETWORK_PROBE_TIMEOUT_S = 5.0

# timm's Hugging Face weight files: the safetensors form is tried first, as timm does.
_HF_FILES = {"pytorch_model.bin": ("model.safetensors", "pytorch_model.bin"),
             "open_clip_pytorch_model.bin": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")}  # fmt: skip


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    candidates = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(candidates)}?" if candidates else ""
    raise BackboneNotFoundError(
        f"unknown backbone {name!r}: not a timm model name (see timm.list_models()).{hint}"
    )


def _hf_filenames(filename: str | None) -> tuple[str, ...]:
    """The files timm reads for a hub weights name, safetensors first."""
    name = filename or "pytorch_model.bin"
    if name in _HF_FILES:
        return _HF_FILES[name]
    if name.endswith(".bin"):
        return (name[:-4] + ".safetensors", name)
    return (name,)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hf_endpoint() -> str:
    """The hub's address (``HF_ENDPOINT`` may name a mirror)."""
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:
        return "https://huggingface.co"


def _torch_hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _weight_sources(name: str) -> tuple[str | None, str | None, str | None]:
    """``(hf_hub_id, hf_filename, url)`` timm would fetch ``name``'s weights from."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None, None, None
    return cfg.hf_hub_id or None, cfg.hf_hub_filename, cfg.url or None


def cached_pretrained_weights(name: str) -> Path | None:
    """The local file holding timm's pretrained weights of ``name``, if a previous download
    left one: the Hugging Face hub cache (``HF_HUB_CACHE``, default
    ``~/.cache/huggingface/hub``) or torch hub's ``<TORCH_HOME>/hub/checkpoints``; else
    ``None``. Looks at files only, never at the network."""
    hf_id, hf_filename, url = _weight_sources(name)
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # timm then falls back on the URL
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = hf_id.partition("@")
            for filename in _hf_filenames(hf_filename):
                try:
                    found = try_to_load_from_cache(repo, filename, revision=revision or None)
                except (ValueError, OSError):  # an id the hub library rejects: not cached
                    found = None
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found)
    if url:
        candidate = _torch_hub_checkpoints() / os.path.basename(urllib.parse.urlparse(url).path)
        if candidate.is_file():
            return candidate
    return None


def _offline_by_setting() -> bool:
    """``HF_HUB_OFFLINE`` (read by huggingface_hub at import, or set since) asks for no
    network access."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(url: str) -> str | None:
    """``None`` when a TCP connection to ``url``'s host (or the HTTPS proxy) opens within
    :data:`NETWORK_PROBE_TIMEOUT_S`; else why not. One probe instead of the downloaders'
    retries (huggingface_hub retries for about a minute before failing)."""
    proxy = urllib.request.getproxies().get(urllib.parse.urlparse(url).scheme or "https")
    target = urllib.parse.urlparse(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return None
    try:
        with socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"cannot connect to {host}:{port} ({err})"


def _weights_unavailable(name: str, why: str) -> PretrainedWeightsUnavailableError:
    hf_id, _, url = _weight_sources(name)
    where = f"huggingface.co/{hf_id}" if hf_id else url
    return PretrainedWeightsUnavailableError(
        f"pretrained: true for backbone {name!r} needs its ImageNet weights ({where}), which "
        f"are not in the local caches, and {why}. Pass a local weights file instead: "
        "`backbone_weights: /path/to/file` (a timm state dict, .safetensors/.pth/.bin, e.g. "
        f"the model.safetensors of {where} fetched on a machine with network), or copy a "
        f"cache that holds them: Hugging Face hub cache {_hf_cache_dir()} (HF_HUB_CACHE / "
        f"HF_HOME) or torch hub {_torch_hub_checkpoints()} (TORCH_HOME). Or use "
        "`pretrained: false`. Loading a trained hpelib checkpoint never needs these weights."
    )


def _pretrained_file(name: str) -> Path | None:
    """Where ``pretrained=True`` takes ``name``'s weights from: a cached file, or ``None``
    to let timm download them (network checked first: an immediate error without it)."""
    cached = cached_pretrained_weights(name)
    if cached is not None:
        return cached
    hf_id, _, url = _weight_sources(name)
    if not (hf_id or url):
        return None  # timm names the model without pretrained weights itself
    if _offline_by_setting():
        raise _weights_unavailable(name, "HF_HUB_OFFLINE is set (no network access)")
    why = _reachable(_hf_endpoint() if hf_id else str(url))
    if why is not None:
        raise _weights_unavailable(name, f"the network is unreachable: {why}")
    return None


def _renamed_checkpoint_path(kwargs: dict[str, Any], backbone_weights: Any) -> Any:
    """``checkpoint_path`` (the old name of ``backbone_weights``) must not reach timm, whose
    ``create_model(checkpoint_path=...)`` would unpickle the file itself."""
    if "checkpoint_path" not in kwargs:
        return backbone_weights
    old = kwargs.pop("checkpoint_path")
    if old is None:
        return backbone_weights
    if backbone_weights is not None:
        raise ValueError("give backbone_weights only (checkpoint_path is its old name)")
    warnings.warn(
        "create_backbone(checkpoint_path=...) is deprecated: the argument is now "
        "backbone_weights",
        FutureWarning,  # shown to users by default, unlike DeprecationWarning
        stacklevel=3,
    )
    return old


def create_backbone(
    name: str,
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> tuple[nn.Module, int]:
    """Create a timm feature extractor with global pooling and no classifier.

    Args:
        name: any timm model name (``resnet18``, ``repvgg_b1g2``, ``swinv2_base_window8_256``...).
        pretrained: load timm's ImageNet weights: from the local cache when a download left
            them there (no network request), else downloaded by timm; without network access
            that is an immediate :class:`PretrainedWeightsUnavailableError` naming the
            backbone and how to pass a local file.
        backbone_weights: local weights file (timm/ImageNet checkpoint or a state dict) used
            instead of downloading; implies pretrained weights. It is checked with
            :func:`hpelib.checkpoint_io.read_checkpoint` first, so a file that would run code
            when unpickled is refused (whatever timm version loads it afterwards);
            ``.safetensors`` files go to timm directly. (``checkpoint_path``, its old name,
            is still read, with a ``FutureWarning``.)
        in_chans: input channels (1 for grayscale models such as OpNet).
        drop_rate: dropout before the (removed) classifier.
        **kwargs: further arguments of the timm model's constructor (a method's
            ``backbone_kwargs``), e.g. ``drop_path_rate``, ``output_stride`` or, for the
            ResNet family, ``layers`` and ``channels`` to build a smaller ResNet.

    Returns:
        ``(module, num_features)``; ``module(images (B, C, H, W)) -> (B, num_features)``.
    """
    _check_name(name)
    backbone_weights = _renamed_checkpoint_path(kwargs, backbone_weights)
    reserved = sorted(set(kwargs) & _SET_HERE)
    if reserved:
        raise ValueError(
            f"backbone_kwargs of {name!r} must not set {reserved}: hpelib sets them itself "
            "(use the method's own pretrained / backbone_weights / in_chans / drop_rate)"
        )
    path = Path(backbone_weights) if backbone_weights is not None else None
    if path is None and pretrained:
        path = _pretrained_file(name)
    overlay = None
    if path is not None:
        if path.suffix != ".safetensors":  # safetensors holds no code; timm reads it as is
            read_checkpoint(path, what="backbone_weights")
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
