"""OpNet (Welter 2024) as an hpelib method: multi-task heads, uncertainty and the weighted multi-task loss."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hpelib.data.sample import mask_key
from hpelib.methods.base import HPEModule, renamed_backbone_weights
from hpelib.methods.opnet import loss as L
from hpelib.methods.opnet.model import (
    COVARIANCE_FORMS,
    DeformableKeypoints,
    OpNetModel,
    load_keypoint_model,
    normalize_points,
    synthetic_keypoint_model,
)
from hpelib.methods.opnet.schedule import WarmupStepLR
from hpelib.rotation import quaternion_from_rotation

__all__ = ["OpNet", "SHAPE_TARGETS"]

#: Where the shape head's label comes from (see :class:`OpNet`).
SHAPE_TARGETS: tuple[str, ...] = ("auto", "label", "landmarks", "none")


def _mask(batch: Mapping[str, Any], key: str, n: int, device: torch.device) -> Tensor:
    """``has_<key>`` of the batch; all False when the key is absent."""
    if key not in batch:
        return torch.zeros(n, dtype=torch.bool, device=device)
    m = batch.get(mask_key(key))
    return torch.ones(n, dtype=torch.bool, device=device) if m is None else m.to(device).bool()


def _check_weights(
    given: Mapping[str, float] | None, default: Mapping[str, float], what: str
) -> dict[str, float]:
    weights = dict(default)
    for name, value in (given or {}).items():
        if name not in default:
            raise ValueError(f"unknown {what} {name!r}; known: {sorted(default)}")
        weights[name] = float(value)
    return weights


class OpNet(HPEModule):
    """OpNet: backbone -> dropout -> linear heads for quaternion, position/size, box, shape
    parameters (-> 68 3D landmarks), with rotation and position/size covariances.

    Args:
        backbone: timm name: ``mobilenetv1_100`` (default) or ``resnet18`` (the paper's two).
        pretrained, backbone_weights: backbone weights (``pretrained: false`` without network;
            ``backbone_weights``: a local file instead of timm's download).
        in_chans: 1 (monochrome, the paper) or 3; see :class:`OpNetModel`.
        dropout: on the pooled features (0.5).
        uncertainty: predict covariances and train the NLL terms.
        covariance_form: ``"paper"`` (``M M^T + eps I``) or ``"released"`` (``eps I`` added to
            the factor, as the reference code); see :class:`CovarianceHead`.
        covariance_eps: ``eps`` (default 1e-4 for ``paper``, 0.01 for ``released``).
        uncertainty_batchnorm: BatchNorm at the end of the covariance heads (released code).
        keypoint_model: the deformable face model behind the landmark head: ``"synthetic"``
            (PCA of the synthetic generator's landmark model), a path to a file with
            ``mean (68, 3)`` and ``basis (K, 68, 3)`` (``torch.save`` dict or ``.npz``, head
            frame, head-radius units), or ``"none"`` (no shape/landmark heads). The model is
            saved in the checkpoint: loading one does not need the file.
        num_shape_params: ``K`` for ``"synthetic"``.
        learn_keypoint_model: train the mean and basis too.
        shape_target: label of the shape head: ``"label"`` (the batch's ``shape_params``,
            which must be coefficients of the same model), ``"landmarks"`` (least-squares
            coefficients of the de-rotated 3D landmark labels), ``"auto"`` (``label`` where its
            width is ``K``, else ``landmarks``) or ``"none"``.
        loss_weights: overrides of :data:`~hpelib.methods.opnet.loss.DEFAULT_LOSS_WEIGHTS`.
        nll_weights: overrides of :data:`~hpelib.methods.opnet.loss.DEFAULT_NLL_WEIGHTS`.
        nll_total_weight: ``beta_total``.
        landmark_jaw_weight, landmark_eye_weight: per-landmark weights
            (:func:`~hpelib.methods.opnet.loss.landmark_weights`).
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
        grad_clip_max_abs: if set, gradients are rescaled so that their largest absolute
            entry (the inf-norm over all parameters) is at most this, before every optimiser
            step (the released training loop: ``clip_grad_norm_(..., 0.1, norm_type=inf)``).
            Lightning's ``gradient_clip_val`` (a 2-norm or per-value clip) is used when None.
        checkpoint_path: deprecated name of ``backbone_weights``.
        **kwargs: optimiser, scheduler and metric options of :class:`HPEModule`.
    """

    def __init__(
        self,
        backbone: str = "mobilenetv1_100",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        in_chans: int = 1,
        dropout: float = 0.5,
        uncertainty: bool = True,
        covariance_form: str = "paper",
        covariance_eps: float | None = None,
        uncertainty_batchnorm: bool = True,
        keypoint_model: str | Path = "synthetic",
        num_shape_params: int = 10,
        learn_keypoint_model: bool = False,
        shape_target: str = "auto",
        loss_weights: dict[str, float] | None = None,
        nll_weights: dict[str, float] | None = None,
        nll_total_weight: float = L.DEFAULT_NLL_TOTAL_WEIGHT,
        landmark_jaw_weight: float = 0.8,
        landmark_eye_weight: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
        grad_clip_max_abs: float | None = None,
        checkpoint_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        backbone_weights = renamed_backbone_weights(backbone_weights, checkpoint_path, "OpNet")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "checkpoint_path"])
        if covariance_form not in COVARIANCE_FORMS:
            raise ValueError(
                f"covariance_form={covariance_form!r} is not one of {COVARIANCE_FORMS}"
            )
        if shape_target not in SHAPE_TARGETS:
            raise ValueError(f"shape_target={shape_target!r} is not one of {SHAPE_TARGETS}")
        self.loss_weights = _check_weights(loss_weights, L.DEFAULT_LOSS_WEIGHTS, "loss_weights key")
        self.nll_weights = _check_weights(nll_weights, L.DEFAULT_NLL_WEIGHTS, "nll_weights key")
        self.nll_total_weight = float(nll_total_weight)
        if grad_clip_max_abs is not None and grad_clip_max_abs <= 0:
            raise ValueError(f"grad_clip_max_abs must be > 0 or None, got {grad_clip_max_abs}")
        self.grad_clip_max_abs = grad_clip_max_abs
        self.shape_target = shape_target
        keypoints = self._build_keypoints(keypoint_model, num_shape_params, learn_keypoint_model)
        self.model = OpNetModel(
            backbone, pretrained, backbone_weights, in_chans, dropout, keypoints, uncertainty,
            covariance_form, covariance_eps, uncertainty_batchnorm, backbone_kwargs,
        )  # fmt: skip
        self.register_buffer(
            "landmark_weights",
            L.landmark_weights(landmark_jaw_weight, landmark_eye_weight),
            persistent=False,
        )

    @classmethod
    def hparams_for_loading(
        cls, hparams: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None
    ) -> dict[str, Any]:
        """As :meth:`HPEModule.hparams_for_loading`; a keypoint model read from a file is in
        the state dict too (``model.keypoints.mean/basis``), so the module is built with a
        synthetic model of the saved size, whose values the state dict then replaces: the
        file is not needed to load."""
        out = super().hparams_for_loading(hparams, state_dict)
        spec = out.get("keypoint_model")
        basis = (state_dict or {}).get("model.keypoints.basis")
        if spec is not None and str(spec) not in ("synthetic", "none") and basis is not None:
            if tuple(basis.shape[1:]) == (68, 3):  # the synthetic model's 68 points
                out.update(keypoint_model="synthetic", num_shape_params=int(basis.shape[0]))
        return out

    @staticmethod
    def _build_keypoints(spec: str | Path, k: int, learnable: bool) -> DeformableKeypoints | None:
        if str(spec) == "none":
            return None
        if str(spec) == "synthetic":
            mean, basis = synthetic_keypoint_model(k)
        elif Path(spec).suffix in (".pt", ".pth", ".npz"):
            mean, basis = load_keypoint_model(spec)
        else:
            raise ValueError(
                f"keypoint_model={str(spec)!r}: use 'synthetic', 'none' or a .pt/.pth/.npz file path"
            )
        return DeformableKeypoints(mean, basis, learnable)

    # ----------------------------------------------------------------- model
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images)

    # ----------------------------------------------------------------- labels
    def targets(self, batch: Mapping[str, Any]) -> dict[str, tuple[Tensor, Tensor]]:
        """Labels in the model's units with their per-sample masks: ``{name: (value, mask)}``.

        ``quat (B, 4)``, ``xy (B, 2)``, ``size (B, 1)`` (head radius = ``head_size / 2``:
        ``head_size`` is the full head size, e.g. twice an OpNet HDF5 file's ``coords[2]``),
        ``box (B, 4)``, ``landmarks (B, 68, 3)`` with a per-coordinate mask ``(B, 68, 3)``
        (3D labels, depth relative to the head centre as the model's ``[x, y, 0] + size R p``;
        else 2D labels of visible points, without depth), ``shape (B, K)``.
        """
        image = batch["image"]
        n, dev = image.shape[0], image.device
        h, w = image.shape[-2:]
        out: dict[str, tuple[Tensor, Tensor]] = {
            "quat": (
                quaternion_from_rotation(batch["rotation"].to(dev).float()),
                _mask(batch, "rotation", n, dev),
            ),
        }
        if "head_center" in batch:
            out["xy"] = (
                normalize_points(batch["head_center"].float(), h, w),
                _mask(batch, "head_center", n, dev),
            )
        if "head_size" in batch:
            out["size"] = (
                batch["head_size"].float()[:, None] / w,
                _mask(batch, "head_size", n, dev),
            )
        if "box" in batch:
            box = normalize_points(batch["box"].float().reshape(n, 2, 2), h, w).reshape(n, 4)
            out["box"] = (box, _mask(batch, "box", n, dev))
        lm_target = torch.zeros(n, 68, 3, device=dev)
        lm_dims = torch.zeros(n, 68, 3, dtype=torch.bool, device=dev)
        if "landmarks_2d" in batch:
            has2d = _mask(batch, "landmarks_2d", n, dev)
            visible = batch.get("landmarks_visible")
            vis = (
                torch.ones(n, 68, dtype=torch.bool, device=dev)
                if visible is None
                else visible.bool()
            )
            if visible is not None and mask_key("landmarks_visible") in batch:
                vis = vis | ~batch[mask_key("landmarks_visible")].bool()[:, None]
            lm_target[..., :2] = normalize_points(batch["landmarks_2d"].float(), h, w)
            lm_dims[..., :2] = has2d[:, None, None] & vis[..., None]
        if "landmarks_3d" in batch:
            has3d = _mask(batch, "landmarks_3d", n, dev)
            lm3 = normalize_points(batch["landmarks_3d"].float(), h, w)
            lm_target = torch.where(has3d[:, None, None], lm3, lm_target)
            lm_dims = torch.where(has3d[:, None, None], torch.ones_like(lm_dims), lm_dims)
        out["landmarks"] = (lm_target, lm_dims)
        return out

    def _shape_target(
        self, batch: Mapping[str, Any], targets: Mapping[str, tuple[Tensor, Tensor]], k: int
    ) -> tuple[Tensor, Tensor] | None:
        n, dev = batch["image"].shape[0], batch["image"].device
        mode = self.shape_target
        if mode == "none":
            return None
        label_ok = "shape_params" in batch and batch["shape_params"].shape[-1] == k
        if mode == "label" and "shape_params" in batch and not label_ok:
            raise ValueError(
                f"shape_target='label' but the batch's shape_params have {batch['shape_params'].shape[-1]} "
                f"values and the keypoint model {k}; use shape_target='landmarks' or a matching model"
            )
        if mode in ("label", "auto") and label_ok:
            return batch["shape_params"].float(), _mask(batch, "shape_params", n, dev)
        if mode == "label":
            return torch.zeros(n, k, device=dev), torch.zeros(n, dtype=torch.bool, device=dev)
        # "landmarks": undo the pose of the 3D labels, p = R^T (lm - [x, y, 0]) / size, and
        # project onto the basis. Needs 3D landmarks, rotation, centre and size labels.
        needed = ("xy", "size")
        if not all(name in targets for name in needed) or "landmarks_3d" not in batch:
            return torch.zeros(n, k, device=dev), torch.zeros(n, dtype=torch.bool, device=dev)
        mask = _mask(batch, "landmarks_3d", n, dev) & targets["quat"][1]
        for name in needed:
            mask = mask & targets[name][1]
        lm, xy, size = targets["landmarks"][0], targets["xy"][0], targets["size"][0]
        offset = torch.cat([xy, torch.zeros_like(xy[:, :1])], -1)
        safe_size = torch.where(mask[:, None], size, torch.ones_like(size)).clamp_min(1e-6)
        local = (lm - offset[:, None]) @ batch["rotation"].to(dev).float() / safe_size[:, None]
        return self.model.keypoints.project(local).detach(), mask

    # ----------------------------------------------------------------- loss
    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        t = self.targets(batch)
        q_t, has_rot = t["quat"]
        terms: dict[str, tuple[Tensor, Tensor]] = {
            "rot": (L.quaternion_distance(outputs["quaternion"], q_t), has_rot),
            "quat_norm": (
                L.quaternion_norm_penalty(outputs["quaternion_raw"]),
                torch.ones_like(has_rot),
            ),
        }
        nll: dict[str, tuple[Tensor, Tensor]] = {}
        unc = self.model.uncertainty
        coord = outputs["coord"]
        if "xy" in t:
            terms["xy"] = (L.squared_error(coord[:, :2], t["xy"][0]), t["xy"][1])
        if "size" in t:
            terms["size"] = (L.squared_error(coord[:, 2:], t["size"][0]), t["size"][1])
        if "box" in t:
            terms["box"] = (L.box_l2(outputs["box"], t["box"][0]), t["box"][1])
        if unc:
            nll["rot"] = (
                L.rotation_nll(outputs["quaternion"], q_t, outputs["rotation_scale_tril"]),
                has_rot,
            )
            if "xy" in t and "size" in t:
                target = torch.cat([t["xy"][0], t["size"][0]], -1)
                nll["coord"] = (
                    L.gaussian_nll(coord, target, outputs["coord_scale_tril"]),
                    t["xy"][1] & t["size"][1],
                )
            if "box" in t:
                nll["box"] = (
                    L.diagonal_nll(outputs["box"], t["box"][0], outputs["box_scale"]),
                    t["box"][1],
                )
        if self.model.keypoints is not None:
            lm, dims = t["landmarks"]
            has_lm = dims.flatten(1).any(1)
            pred = outputs["landmarks_3d"]
            terms["landmarks"] = (L.landmark_l1(pred, lm, self.landmark_weights, dims), has_lm)
            if unc:
                nll["landmarks"] = (
                    L.landmark_laplace_nll(
                        pred, lm, outputs["landmarks_scale"], self.landmark_weights, dims
                    ),
                    has_lm,
                )
            shape_t = self._shape_target(batch, t, self.model.keypoints.num_params)
            if shape_t is not None:
                terms["shape"] = (L.squared_error(outputs["shape_params"], shape_t[0]), shape_t[1])
                if unc:
                    nll["shape"] = (
                        L.diagonal_nll(outputs["shape_params"], shape_t[0], outputs["shape_scale"]),
                        shape_t[1],
                    )
        return L.combine_losses(
            terms, nll, self.loss_weights, self.nll_weights, self.nll_total_weight
        )

    # ----------------------------------------------------------------- optimisation
    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if self.grad_clip_max_abs is None:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        torch.nn.utils.clip_grad_norm_(
            self.parameters(), self.grad_clip_max_abs, norm_type=float("inf")
        )

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if isinstance(config, dict):
            scheduler = config["lr_scheduler"]["scheduler"]
            if isinstance(scheduler, WarmupStepLR) and scheduler.total_steps is None:
                if self.scheduler_interval != "step":
                    raise ValueError(
                        "WarmupStepLR counts optimisation steps: set scheduler_interval: step"
                    )
                scheduler.total_steps = int(self.trainer.estimated_stepping_batches)
        return config
