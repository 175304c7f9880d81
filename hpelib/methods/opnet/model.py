"""OpNet (Welter, "On the power of data augmentation for head pose estimation", 2024):
the OpenTrack neural-net tracker's pose model as a pure ``nn.Module``.

A small timm backbone on a monochrome crop, global pooling, dropout 0.5 and one linear layer
per head. All 2D quantities (position, size, box, landmarks) are in **normalised crop
coordinates**: ``u_n = (u - (W - 1) / 2) / (W / 2)`` (so the crop spans about [-1, 1]);
see :func:`normalize_points`. The head "size" is the head radius (half the head height) in
the same unit, and the deformable keypoint model is in head-radius units, so

    landmarks_3d = [x, y, 0] + size * R @ (mean + basis @ shape_params)

with ``R`` the predicted rotation (hpelib's internal convention, which is OpNet's quaternion
frame, see :func:`hpelib.rotation.rotation_from_opnet_quaternion`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hpelib.checkpoint_io import read_checkpoint
from hpelib.nn import create_backbone
from hpelib.rotation import rotation_from_quaternion

__all__ = [
    "COVARIANCE_FORMS",
    "CovarianceHead",
    "DeformableKeypoints",
    "LearnedScale",
    "OpNetModel",
    "denormalize_points",
    "fit_keypoint_model",
    "inv_smoothclip",
    "load_keypoint_model",
    "normalize_points",
    "regularized_cholesky",
    "smoothclip",
    "synthetic_keypoint_model",
    "tril_from_features",
]

#: ``"paper"``: ``Sigma = M M^T + eps I``; ``"released"``: the reference code's
#: ``L = M' + eps I`` (``M'`` = ``M`` with columns sign-flipped to a positive diagonal),
#: ``Sigma = L L^T``.
COVARIANCE_FORMS: tuple[str, ...] = ("paper", "released")

_LUMA = (0.299, 0.587, 0.114)


def smoothclip(x: Tensor) -> Tensor:
    """``ELU(x) + 1``: a smooth, strictly positive map that is the identity (+1) for x > 0
    (the paper's "smoothclip", reference ``smoothclip0``).

    Evaluated as ``exp(x)`` for ``x <= 0`` (the same function): ``elu(x) + 1`` rounds to
    exactly 0 in float32 below about -17, which would make ``w = 0`` possible.
    """
    return torch.where(x > 0, x + 1.0, torch.exp(x.clamp_max(0.0)))


def inv_smoothclip(y: Tensor) -> Tensor:
    """Inverse of :func:`smoothclip` for ``y > 0`` (used to initialise biases)."""
    return torch.where(y > 1.0, y - 1.0, torch.log(y.clamp_min(1e-12)))


def normalize_points(points: Tensor, height: int, width: int) -> Tensor:
    """Pixel coordinates ``(..., 2+)`` -> normalised crop coordinates.

    x and y are centred at the crop centre ``((W - 1) / 2, (H - 1) / 2)`` (pixel centres at
    integers) and divided by ``W / 2`` and ``H / 2``; further components (the depth of 3D
    landmarks) are divided by ``W / 2``.
    """
    half = torch.tensor([width / 2.0, height / 2.0], dtype=points.dtype, device=points.device)
    centre = torch.tensor(
        [(width - 1) / 2.0, (height - 1) / 2.0], dtype=points.dtype, device=points.device
    )
    xy = (points[..., :2] - centre) / half
    return torch.cat([xy, points[..., 2:] / (width / 2.0)], dim=-1)


def denormalize_points(points: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`normalize_points`."""
    half = torch.tensor([width / 2.0, height / 2.0], dtype=points.dtype, device=points.device)
    centre = torch.tensor(
        [(width - 1) / 2.0, (height - 1) / 2.0], dtype=points.dtype, device=points.device
    )
    return torch.cat([points[..., :2] * half + centre, points[..., 2:] * (width / 2.0)], dim=-1)


def tril_from_features(z: Tensor) -> Tensor:
    """``(B, 6)`` -> ``(B, 3, 3)`` lower-triangular matrix: ``z[:, :3]`` on the diagonal,
    then ``z[:, 3:]`` at (1, 0), (2, 0), (2, 1) (the reference's order)."""
    b = z.shape[0]
    rows = torch.tensor([0, 1, 2, 1, 2, 2], device=z.device)
    cols = torch.tensor([0, 1, 2, 0, 0, 1], device=z.device)
    m = z.new_zeros(b, 3, 3)
    return m.index_put((torch.arange(b, device=z.device)[:, None], rows[None], cols[None]), z)


def regularized_cholesky(m: Tensor, eps: float) -> Tensor:
    """Lower-triangular ``L`` with positive diagonal and ``L L^T = M M^T + eps I``, for
    ``m`` ``(..., n, n)`` and ``eps > 0``, without forming ``M M^T + eps I``.

    ``M M^T + eps I = A A^T`` with ``A = [M, sqrt(eps) I]`` ``(..., n, 2n)``, so ``L`` is the
    ``R^T`` of a QR of ``A^T``: modified Gram-Schmidt on the rows of ``A``. Two reasons to
    prefer it over ``torch.linalg.cholesky(M M^T + eps I)`` (the same matrix):

    * it is elementary tensor ops (sums, products, square roots), so the model exports to
      ONNX (which has no Cholesky operator) and TorchScript the same way;
    * it never subtracts large squares: in float32 the Cholesky of the formed matrix loses
      about ``|M|^2 * 1e-7`` per entry (1e-3 at ``|M| ~ 1`` on near-singular ``M``) and can
      fail outright, while the row norms here stay within float32 rounding of the exact
      factor (each diagonal entry is at least ``sqrt(eps)`` in exact arithmetic).
    """
    n = m.shape[-1]
    eye = torch.eye(n, dtype=m.dtype, device=m.device).expand_as(m)
    rows = torch.cat([m, math.sqrt(eps) * eye], dim=-1).unbind(-2)  # n rows (..., 2n)
    basis: list[Tensor] = []
    out: list[Tensor] = []
    for i, row in enumerate(rows):
        coeffs = []
        for q in basis:  # remove the components along the earlier (orthonormal) rows
            c = (row * q).sum(-1)
            row = row - c[..., None] * q
            coeffs.append(c)
        diag = torch.linalg.vector_norm(row, dim=-1)
        if i + 1 < n:
            basis.append(row / diag[..., None])
        zeros = [torch.zeros_like(diag)] * (n - 1 - i)
        out.append(torch.stack([*coeffs, diag, *zeros], dim=-1))
    return torch.stack(out, dim=-2)


class CovarianceHead(nn.Module):
    """Input-dependent 3x3 covariance from 6 features (rotation, position/size uncertainty).

    ``features (B, F) -> (scale_tril (B, 3, 3), covariance (B, 3, 3))``. Linear (no bias) ->
    BatchNorm1d (the released code's addendum: "the variance prediction heads have Batchnorm
    at the very end"; initialised so that ``M ~ I`` at the start) -> lower-triangular ``M``:

    * ``form="paper"`` (default): ``Sigma = M M^T + eps I`` (paper), ``scale_tril =
      cholesky(Sigma)`` (computed from ``M`` by :func:`regularized_cholesky`, ONNX-exportable);
      positive definite for every ``M`` since ``eps > 0``.
    * ``form="released"``: the reference code flips column signs so that ``diag(M) >= 0``
      and adds ``eps I`` to the *factor*: ``L = M' + eps I``, ``Sigma = L L^T`` (its
      ``eps = 0.01``); this bounds the factor's diagonal, not the covariance's eigenvalues.
    """

    def __init__(
        self, in_features: int, form: str = "paper", eps: float = 1e-4, batchnorm: bool = True
    ) -> None:
        super().__init__()
        if form not in COVARIANCE_FORMS:
            raise ValueError(f"covariance form={form!r} is not one of {COVARIANCE_FORMS}")
        if eps <= 0:
            raise ValueError(f"covariance eps must be > 0, got {eps}")
        self.form = form
        self.eps = float(eps)
        init = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
        self.linear = nn.Linear(in_features, 6, bias=not batchnorm)
        if batchnorm:
            self.norm: nn.Module = nn.BatchNorm1d(6)
            with torch.no_grad():
                self.norm.weight.mul_(1e-4)
                self.norm.bias.copy_(init)
        else:
            self.norm = nn.Identity()
            with torch.no_grad():
                self.linear.weight.mul_(1e-2)
                self.linear.bias.copy_(init)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        m = tril_from_features(self.norm(self.linear(features)))
        # Under bf16 autocast eps would vanish next to large entries of M M^T and Cholesky
        # could fail: form the covariance in (at least) float32 with autocast off.
        if m.dtype in (torch.float16, torch.bfloat16):
            m = m.float()
        with torch.autocast(m.device.type, enabled=False):
            return self._covariance(m)

    def _covariance(self, m: Tensor) -> tuple[Tensor, Tensor]:
        eye = torch.eye(3, dtype=m.dtype, device=m.device)
        if self.form == "paper":
            cov = m @ m.transpose(-1, -2) + self.eps * eye
            return regularized_cholesky(m, self.eps), cov
        sign = torch.where(torch.diagonal(m, dim1=-2, dim2=-1) < 0, -1.0, 1.0)
        tril = m * sign[:, None, :] + self.eps * eye
        return tril, tril @ tril.transpose(-1, -2)


class LearnedScale(nn.Module):
    """Input-independent learned scale ``(n,)``: ``h^2 + eps`` with ``h`` starting at 1
    (the reference's ``UncorrelatedVarianceParameter``, used as the std/scale of a Normal or
    Laplace NLL for shape parameters, box and landmarks)."""

    def __init__(self, n: int, eps: float = 1e-2) -> None:
        super().__init__()
        self.hidden = nn.Parameter(torch.ones(n))
        self.eps = float(eps)

    def forward(self) -> Tensor:
        return self.hidden.square() + self.eps


class DeformableKeypoints(nn.Module):
    """Linear deformable face model ``shape (B, K) -> (B, 68, 3)``: ``mean + basis @ shape``.

    Args:
        mean: ``(68, 3)`` mean keypoints in the head frame (head-radius units).
        basis: ``(K, 68, 3)`` deformation modes (scaled so that shape parameters of the
            training faces have about unit variance).
        learnable: train mean and basis with the network instead of keeping them fixed.
    """

    def __init__(self, mean: Tensor, basis: Tensor, learnable: bool = False) -> None:
        super().__init__()
        if (
            mean.ndim != 2
            or mean.shape[-1] != 3
            or basis.ndim != 3
            or basis.shape[1:] != mean.shape
        ):
            raise ValueError(
                f"keypoint model needs mean (P, 3) and basis (K, P, 3), got {tuple(mean.shape)} "
                f"and {tuple(basis.shape)}"
            )
        mean, basis = mean.float(), basis.float()
        if learnable:
            self.mean = nn.Parameter(mean.clone())
            self.basis = nn.Parameter(basis.clone())
        else:
            self.register_buffer("mean", mean.clone())
            self.register_buffer("basis", basis.clone())

    @property
    def num_params(self) -> int:
        return int(self.basis.shape[0])

    def forward(self, shape_params: Tensor) -> Tensor:
        return self.mean + torch.einsum("bk,kpc->bpc", shape_params, self.basis)

    def project(self, points: Tensor) -> Tensor:
        """Least-squares shape parameters ``(B, K)`` of head-frame points ``(B, 68, 3)``."""
        a = self.basis.reshape(self.num_params, -1).T  # (3P, K)
        rhs = (points - self.mean).reshape(points.shape[0], -1).T  # (3P, B)
        return torch.linalg.lstsq(a, rhs).solution.T


def fit_keypoint_model(points: Tensor, num_components: int) -> tuple[Tensor, Tensor]:
    """PCA of head-frame keypoints ``(N, 68, 3)`` -> ``(mean (68, 3), basis (K, 68, 3))``.

    Modes are scaled by their standard deviation, so the projections of the fitting set have
    unit variance (a well-conditioned regression target for the shape head).
    """
    n = points.shape[0]
    if num_components < 1 or num_components > min(n - 1, points[0].numel()):
        raise ValueError(
            f"num_components={num_components} must be in [1, {min(n - 1, points[0].numel())}]"
        )
    flat = points.reshape(n, -1).double()
    mean = flat.mean(0)
    _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    std = s[:num_components] / math.sqrt(n - 1)
    basis = vh[:num_components] * std[:, None]
    return mean.reshape(points.shape[1:]).float(), basis.reshape(
        num_components, *points.shape[1:]
    ).float()


def synthetic_keypoint_model(
    num_components: int = 10, num_identities: int = 512, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """PCA keypoint model of the synthetic generator's 68 landmarks
    (:func:`hpelib.data.synthetic.landmarks.head_landmarks`) over ``num_identities`` random
    identities (neutral expression), in head-radius units (landmarks / (scale / 2))."""
    from hpelib.data.synthetic.head import build_head, sample_identity_params
    from hpelib.data.synthetic.landmarks import head_landmarks

    params = sample_identity_params(torch.arange(num_identities), seed=seed)
    prims = build_head(params)
    points = head_landmarks(params, prims) / (0.5 * prims.scale[:, None, None])
    return fit_keypoint_model(points, num_components)


def load_keypoint_model(path: str | Path) -> tuple[Tensor, Tensor]:
    """Load ``{"mean": (68, 3), "basis": (K, 68, 3)}`` from a ``torch.save`` file or a
    ``.npz`` archive."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint_model file {str(path)!r} does not exist")
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            return torch.from_numpy(data["mean"]).float(), torch.from_numpy(data["basis"]).float()
    data = read_checkpoint(path, what="keypoint_model")
    return torch.as_tensor(data["mean"]).float(), torch.as_tensor(data["basis"]).float()


class OpNetModel(nn.Module):
    """``forward(images (B, C, H, W)) -> dict`` of OpNet's predictions.

    Args:
        backbone: timm name; ``mobilenetv1_100`` (default, the paper's fast MobileNetV1-like
            net) or ``resnet18``.
        pretrained, backbone_weights: backbone weights (see :func:`hpelib.nn.create_backbone`).
        in_chans: backbone input channels. 1 (OpNet's monochrome input): a 3-channel input is
            reduced to luminance (``0.299 R + 0.587 G + 0.114 B``, exactly channel 0 for the
            datamodule's ``grayscale: true`` images). 3: images are used as they are.
        dropout: dropout on the pooled features (0.5 in the paper).
        keypoints: deformable keypoint model, or ``None`` for no shape/landmark heads.
        uncertainty: predict covariances / learned scales for the NLL losses.
        covariance_form, covariance_eps, uncertainty_batchnorm: see :class:`CovarianceHead`.
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).

    Outputs (``B`` samples; 2D quantities in normalised crop coordinates, see
    :func:`normalize_points`):
        ``rotation (B, 3, 3)``, ``quaternion (B, 4)`` (x, y, z, w; unit, ``w > 0``),
        ``quaternion_raw (B, 4)`` (before normalisation), ``coord (B, 3)`` (x, y, size),
        ``box (B, 4)`` (x0, y0, x1, y1); with ``keypoints``: ``shape_params (B, K)``,
        ``landmarks_3d (B, 68, 3)``; with ``uncertainty``: ``rotation_scale_tril``,
        ``rotation_cov``, ``coord_scale_tril``, ``coord_cov`` (``(B, 3, 3)``), ``box_scale
        (B, 4)``, ``shape_scale (B, K)``, ``landmarks_scale (B, 68, 3)`` and
        ``rotation_uncertainty (B,)`` = ``sqrt(tr Sigma_rot)`` (radians, the norm plotted
        against the error).
    """

    def __init__(
        self,
        backbone: str = "mobilenetv1_100",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        in_chans: int = 1,
        dropout: float = 0.5,
        keypoints: DeformableKeypoints | None = None,
        uncertainty: bool = True,
        covariance_form: str = "paper",
        covariance_eps: float | None = None,
        uncertainty_batchnorm: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (monochrome) or 3, got {in_chans}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_chans = in_chans
        self.backbone, num_features = create_backbone(
            backbone, pretrained, backbone_weights, in_chans=in_chans, **(backbone_kwargs or {})
        )
        self.dropout = nn.Dropout(dropout)
        self.quat = nn.Linear(num_features, 4)
        self.xy = nn.Linear(num_features, 2)
        self.size = nn.Linear(num_features, 1)
        self.box = nn.Linear(num_features, 4)
        with torch.no_grad():
            # Bias towards small rotations: raw w starts at 0.1 after smoothclip while the
            # vector part starts near 0 (as the reference initialises it).
            self.quat.bias[3] = inv_smoothclip(torch.tensor(0.1))
            self.size.bias.fill_(0.5)
            self.box.bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.5]))
        self.keypoints = keypoints
        if keypoints is not None:
            self.shape = nn.Linear(num_features, keypoints.num_params)
        self.uncertainty = uncertainty
        if uncertainty:
            if covariance_eps is None:
                covariance_eps = 1e-4 if covariance_form == "paper" else 1e-2
            self.rotation_cov = CovarianceHead(
                num_features, covariance_form, covariance_eps, uncertainty_batchnorm
            )
            self.coord_cov = CovarianceHead(
                num_features, covariance_form, covariance_eps, uncertainty_batchnorm
            )
            self.box_scale = LearnedScale(4)
            if keypoints is not None:
                self.shape_scale = LearnedScale(keypoints.num_params)
                self.landmarks_scale = LearnedScale(keypoints.mean.shape[0])

    def features(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, F)`` pooled backbone features (before dropout)."""
        if self.in_chans == 1 and images.shape[1] == 3:
            luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            images = (images * luma).sum(1, keepdim=True)
        elif images.shape[1] != self.in_chans:
            raise ValueError(
                f"OpNetModel expects {self.in_chans} (or 3) channels, got {images.shape[1]}"
            )
        return self.backbone(images)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.dropout(self.features(images))
        z = self.quat(x)
        # Quaternion (x, y, z, w) with w through smoothclip: w > 0 removes the q / -q
        # ambiguity and, with the bias above, favours rotations near identity.
        quat_raw = torch.cat([z[:, :3], smoothclip(z[:, 3:])], dim=-1)
        quat = quat_raw / quat_raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        rotation = rotation_from_quaternion(quat)
        coord = torch.cat([self.xy(x), smoothclip(self.size(x))], dim=-1)
        b = self.box(x)
        half = smoothclip(b[:, 2:])
        out = {
            "rotation": rotation,
            "quaternion": quat,
            "quaternion_raw": quat_raw,
            "coord": coord,
            "box": torch.cat([b[:, :2] - half, b[:, :2] + half], dim=-1),
        }
        if self.keypoints is not None:
            shape = self.shape(x)
            local = self.keypoints(shape)  # (B, 68, 3) head frame, head-radius units
            offset = torch.cat([coord[:, :2], torch.zeros_like(coord[:, :1])], dim=-1)
            out["shape_params"] = shape
            out["landmarks_3d"] = offset[:, None] + coord[:, None, 2:] * local @ rotation.transpose(
                -1, -2
            )
        if self.uncertainty:
            out["rotation_scale_tril"], out["rotation_cov"] = self.rotation_cov(x)
            out["coord_scale_tril"], out["coord_cov"] = self.coord_cov(x)
            out["rotation_uncertainty"] = (
                torch.diagonal(out["rotation_cov"], dim1=-2, dim2=-1).sum(-1).sqrt()
            )
            out["box_scale"] = self.box_scale()[None].expand(x.shape[0], -1)
            if self.keypoints is not None:
                out["shape_scale"] = self.shape_scale()[None].expand(x.shape[0], -1)
                out["landmarks_scale"] = self.landmarks_scale()[None, :, None].expand(
                    x.shape[0], -1, 3
                )
        return out
