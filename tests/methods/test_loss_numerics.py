"""Numerical robustness of every loss: finite values and input gradients on 1000 cases each.

Each loss is run on ``N = 1000`` random cases of each of five kinds (the Circle loss, whose
mining is cubic in the batch, and the methods' ``compute_loss``: 1000 over the five kinds):
``random``, ``identical`` (prediction equal to the label: the minimum, where many distances
have a kink), ``half_turn`` (180-degree errors, ``R_pred = R @ Rx(pi)`` and random half-turn
axes: the other kink of the geodesic distance and of the quaternion logarithm),
``near_identity`` (errors of 1e-8 .. 1e-3 rad) and ``large`` (raw network outputs scaled by
1e3 .. 1e6). The
loss and its gradients w.r.t. the raw outputs must be finite in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` with bfloat16 outputs (as an autocast
``Linear`` head emits them) against float32 labels. The methods' ``compute_loss`` runs the
same kinds through each module's real heads on a tiny linear backbone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hpelib.rotation as hr
from hpelib.methods import CLERF, LECHPE, CLERFSupervised, HPEModule, OpNet, RankPose, SixD
from hpelib.methods.clerf.loss import CLERFContrastiveLoss
from hpelib.methods.lechpe import loss as lechpe_loss
from hpelib.methods.opnet import loss as opnet_loss
from hpelib.methods.rankpose import loss as rankpose_loss
from hpelib.nn import create_backbone, geodesic_loss

N = 1000
KINDS = ("random", "identical", "half_turn", "near_identity", "large")
PRECISIONS = ("float32", "bf16_autocast")

#: ``(loss function of the leaves, leaves)``: the leaves are the raw network outputs that
#: gradients are checked for; labels are captured by the function.
LossCase = tuple[Callable[..., Tensor], Sequence[Tensor]]


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Small tensors: a second intra-op thread only adds synchronisation (and spins when the
    # machine is shared). Restored for the other test modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generator(*key: str) -> torch.Generator:
    # A stable seed per case (Python's hash() of str is salted per process).
    return torch.Generator().manual_seed(zlib.crc32("/".join(key).encode()))


def _half_turns(n: int, g: torch.Generator) -> Tensor:
    """``(n, 3, 3)`` 180-degree rotations: exactly ``Rx(pi)`` for half, random axes after."""
    rx = hr.elementary_rotation("x", torch.full((n,), math.pi))
    axes = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    random_axes = hr.so3_exp(math.pi * axes)
    return torch.where((torch.arange(n) < n // 2)[:, None, None], rx, random_axes)


def _small_turns(n: int, g: torch.Generator) -> Tensor:
    """``(n, 3, 3)`` rotations by 1e-8 .. 1e-3 rad about random axes."""
    axes = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    angles = 10.0 ** (-8.0 + 5.0 * torch.rand(n, 1, generator=g))
    return hr.so3_exp(axes * angles)


def _predicted(kind: str, label: Tensor, g: torch.Generator) -> Tensor:
    """Predicted rotations ``(n, 3, 3)`` of ``kind`` for ``label`` rotations."""
    n = label.shape[0]
    if kind == "identical":
        return label.clone()
    if kind == "half_turn":
        return label @ _half_turns(n, g)
    if kind == "near_identity":
        return label @ _small_turns(n, g)
    return hr.random_rotation(n, generator=g)


def _scale(kind: str, n: int, g: torch.Generator) -> Tensor:
    """Per-row factor ``(n, 1)`` of the raw outputs: 1e3 .. 1e6 for ``large``, else 1."""
    if kind != "large":
        return torch.ones(n, 1)
    return 10.0 ** (3.0 + 3.0 * torch.rand(n, 1, generator=g))


def _mask(n: int, g: torch.Generator) -> Tensor:
    """Per-sample label mask, about 10% unlabelled."""
    return torch.rand(n, generator=g) > 0.1


def _scale_tril(raw: Tensor) -> Tensor:
    """A Cholesky factor ``(n, 3, 3)`` from a raw ``(n, 3, 3)`` output (positive diagonal)."""
    diag = raw.diagonal(dim1=-2, dim2=-1).abs() + 1e-2
    return torch.tril(raw, diagonal=-1) + torch.diag_embed(diag)


def _rotation_pair(kind: str, g: torch.Generator) -> tuple[Tensor, Tensor]:
    label = hr.random_rotation(N, generator=g)
    return _predicted(kind, label, g), label


def _raw_quaternion(rotation: Tensor, kind: str, g: torch.Generator) -> Tensor:
    """Unnormalised quaternions of ``rotation``, random sign (q and -q: same rotation)."""
    q = hr.quaternion_from_rotation(rotation)
    sign = torch.where(torch.rand(N, 1, generator=g) < 0.5, -1.0, 1.0)
    return q * sign * _scale(kind, N, g)


# --------------------------------------------------------------------------- loss cases
def _geodesic(kind: str, g: torch.Generator) -> LossCase:
    pred, label = _rotation_pair(kind, g)
    raw = hr.rotation_to_6d(pred) * _scale(kind, N, g)  # the 6D head's raw output
    mask = _mask(N, g)
    return (lambda x: geodesic_loss(hr.rotation_from_6d(x), label, mask)), [raw]


def _quaternion_distance(kind: str, g: torch.Generator) -> LossCase:
    pred, label = _rotation_pair(kind, g)
    raw, target = _raw_quaternion(pred, kind, g), hr.quaternion_from_rotation(label)
    return (lambda q: opnet_loss.quaternion_distance(F.normalize(q, dim=-1), target).mean()), [raw]


def _quaternion_norm_penalty(kind: str, g: torch.Generator) -> LossCase:
    pred, _ = _rotation_pair(kind, g)
    return (lambda q: opnet_loss.quaternion_norm_penalty(q).mean()), [
        _raw_quaternion(pred, kind, g)
    ]


def _rotation_nll(kind: str, g: torch.Generator) -> LossCase:
    pred, label = _rotation_pair(kind, g)
    raw, target = _raw_quaternion(pred, kind, g), hr.quaternion_from_rotation(label)
    tril = torch.randn(N, 3, 3, generator=g) * _scale(kind, N, g)[:, :, None]

    def fn(q: Tensor, t: Tensor) -> Tensor:
        return opnet_loss.rotation_nll(F.normalize(q, dim=-1), target, _scale_tril(t)).mean()

    return fn, [raw, tril]


def _vectors(kind: str, g: torch.Generator, *shape: int) -> tuple[Tensor, Tensor]:
    """``(prediction, target)`` of shape ``(N, *shape)`` for the regression losses."""
    target = torch.randn(N, *shape, generator=g)
    if kind == "identical":
        return target.clone(), target
    if kind == "near_identity":
        return target + 1e-7 * torch.randn(N, *shape, generator=g), target
    if kind == "half_turn":  # the sign-flipped target: the largest error of the same size
        return -target, target
    scale = _scale(kind, N, g).reshape(N, *([1] * len(shape)))
    return torch.randn(N, *shape, generator=g) * scale, target


def _gaussian_nll(kind: str, g: torch.Generator) -> LossCase:
    pred, target = _vectors(kind, g, 3)
    tril = torch.randn(N, 3, 3, generator=g)
    return (lambda p, t: opnet_loss.gaussian_nll(p, target, _scale_tril(t)).mean()), [pred, tril]


def _diagonal_nll(kind: str, g: torch.Generator) -> LossCase:
    pred, target = _vectors(kind, g, 4)
    hidden = torch.randn(N, 4, generator=g)  # LearnedScale: scale = h^2 + eps

    def fn(p: Tensor, h: Tensor) -> Tensor:
        return opnet_loss.diagonal_nll(p, target, h.square() + 1e-2).mean()

    return fn, [pred, hidden]


def _squared_error(kind: str, g: torch.Generator) -> LossCase:
    pred, target = _vectors(kind, g, 4)
    return (lambda p: opnet_loss.squared_error(p, target).mean()), [pred]


def _landmark_l1(kind: str, g: torch.Generator) -> LossCase:
    pred, target = _vectors(kind, g, 68, 3)
    dims = torch.rand(N, 68, 3, generator=g) > 0.2
    dims[: N // 10] = False  # no landmark label at all: 0/0 must not appear
    weights = opnet_loss.landmark_weights()
    return (lambda p: opnet_loss.landmark_l1(p, target, weights, dims).mean()), [pred]


def _landmark_laplace_nll(kind: str, g: torch.Generator) -> LossCase:
    pred, target = _vectors(kind, g, 68, 3)
    dims = torch.rand(N, 68, 3, generator=g) > 0.2
    dims[: N // 10] = False
    weights = opnet_loss.landmark_weights()
    hidden = torch.randn(68, generator=g)

    def fn(p: Tensor, h: Tensor) -> Tensor:
        scale = (h.square() + 1e-2)[None, :, None].expand(N, -1, 3)
        return opnet_loss.landmark_laplace_nll(p, target, scale, weights, dims).mean()

    return fn, [pred, hidden]


def _rankpose(absolute: bool) -> Callable[[str, torch.Generator], LossCase]:
    def case(kind: str, g: torch.Generator) -> LossCase:
        pred, label = _rotation_pair(kind, g)
        raw = hr.rotation_to_euler(pred) * _scale(kind, N, g)
        target = hr.rotation_to_euler(label)
        target2 = target.roll(1, 0)  # each sample paired with its neighbour
        mask1, mask2 = _mask(N, g), _mask(N, g)

        def fn(p: Tensor) -> Tensor:
            return rankpose_loss.rankpose_loss(
                p, target, p.roll(1, 0), target2, mask1, mask2, margin=0.1, absolute=absolute
            )[0]

        return fn, [raw]

    return case


def _angle_loss(form: str) -> Callable[[str, torch.Generator], LossCase]:
    def case(kind: str, g: torch.Generator) -> LossCase:
        angles = -99.0 + 198.0 * torch.rand(N, 3, generator=g)  # in the bins [-99, 99)
        classes, _ = lechpe_loss.angle_to_bin(angles)
        peak = 30.0 * F.one_hot(classes, 66).float()  # softmax ~ one-hot at the label bin
        if kind == "identical":
            logits = peak
        elif kind == "near_identity":
            logits = peak + 1e-6 * torch.randn(N, 3, 66, generator=g)
        elif kind == "half_turn":  # all mass on the farthest bin
            logits = 30.0 * F.one_hot(65 - classes, 66).float()
        else:
            logits = torch.randn(N, 3, 66, generator=g) * _scale(kind, N, g)[:, :, None]
        mask = _mask(N, g)
        return (lambda x: lechpe_loss.angle_loss(x, angles, mask, form=form)[0]), [logits]

    return case


def _cluster_kl(kind: str, g: torch.Generator) -> LossCase:
    centroids = torch.randn(10, 16, generator=g)
    own = centroids[torch.randint(0, 10, (N,), generator=g)]
    if kind == "identical":  # embeddings exactly on a centroid
        embeddings = own.clone()
    elif kind == "near_identity":
        embeddings = own + 1e-6 * torch.randn(N, 16, generator=g)
    elif kind == "half_turn":  # far on the opposite side of every centroid
        embeddings = -1e3 * own
    else:
        embeddings = torch.randn(N, 16, generator=g) * _scale(kind, N, g)
    mask = _mask(N, g)

    def fn(e: Tensor, c: Tensor) -> Tensor:
        q = lechpe_loss.soft_assignment(e, c)
        p = lechpe_loss.target_distribution(q)
        return lechpe_loss.cluster_kl_loss(p, q, mask)

    return fn, [embeddings, centroids]


def _circle(kind: str, g: torch.Generator) -> LossCase:
    # Mining is cubic in the batch and each call has a fixed cost: 10 batches of 10 anchors
    # + 10 partners per kind, so 1000 samples over the five kinds.
    loss = CLERFContrastiveLoss()
    chunks, half = N // len(KINDS) // 20, 10
    anchors = hr.random_rotation(chunks * half, generator=g)
    partners = _predicted(kind, anchors, g)
    rotations = torch.cat(
        [anchors.reshape(chunks, half, 3, 3), partners.reshape(chunks, half, 3, 3)], 1
    )
    base = torch.randn(chunks, half, 16, generator=g)
    if kind in ("identical", "half_turn"):  # identical embeddings: positives or hardest negatives
        embeddings = torch.cat([base, base], 1)
    elif kind == "near_identity":
        embeddings = torch.cat([base, base + 1e-6 * torch.randn(base.shape, generator=g)], 1)
    else:
        embeddings = torch.randn(chunks, 2 * half, 16, generator=g)
        embeddings = embeddings * _scale(kind, chunks * 2 * half, g).reshape(chunks, 2 * half, 1)
        if kind == "large":
            embeddings[:, :5] = 0.0  # a dead (all-zero) embedding: cosine of a zero vector

    def fn(e: Tensor) -> Tensor:
        return sum(loss(e[i], rotations[i])[0] for i in range(chunks)) / chunks

    return fn, [embeddings]


LOSSES: dict[str, Callable[[str, torch.Generator], LossCase]] = {
    "nn.geodesic_loss": _geodesic,
    "opnet.quaternion_distance": _quaternion_distance,
    "opnet.quaternion_norm_penalty": _quaternion_norm_penalty,
    "opnet.rotation_nll": _rotation_nll,
    "opnet.gaussian_nll": _gaussian_nll,
    "opnet.diagonal_nll": _diagonal_nll,
    "opnet.squared_error": _squared_error,
    "opnet.landmark_l1": _landmark_l1,
    "opnet.landmark_laplace_nll": _landmark_laplace_nll,
    "rankpose.rankpose_loss": _rankpose(absolute=False),
    "rankpose.rankpose_loss_released": _rankpose(absolute=True),
    "lechpe.angle_loss": _angle_loss("centered"),
    "lechpe.angle_loss_left_edge": _angle_loss("left_edge"),
    "lechpe.cluster_kl_loss": _cluster_kl,
    "clerf.circle_loss": _circle,
}


def _assert_finite(loss: Tensor, inputs: Sequence[Tensor]) -> None:
    assert loss.ndim == 0 and torch.isfinite(loss), f"loss = {loss}"
    grads = torch.autograd.grad(loss.float(), list(inputs), allow_unused=True)
    assert any(g is not None for g in grads), "the loss has no gradient path to its inputs"
    for k, grad in enumerate(grads):
        if grad is not None:
            bad = ~torch.isfinite(grad)
            assert not bad.any(), f"input {k}: {int(bad.sum())} non-finite gradient entries"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_input_gradients_are_finite(name: str, kind: str, precision: str) -> None:
    fn, leaves = LOSSES[name](kind, _generator(name, kind))
    bf16 = precision == "bf16_autocast"
    # Under autocast a Linear head emits bfloat16: the raw outputs arrive in bfloat16.
    inputs = [x.detach().to(torch.bfloat16 if bf16 else torch.float32) for x in leaves]
    inputs = [x.requires_grad_() for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = fn(*inputs)
    _assert_finite(loss, inputs)


# ------------------------------------------------------------------ methods' compute_loss
S = 4  # image side: the tiny backbone is a linear map of the pixels
FEATURES = create_backbone("test_resnet")[1]  # the heads' input size, as with test_resnet
B = N // 5  # samples per compute_loss call: 40 of each kind


def _opnet(keypoints: Path, **kwargs: Any) -> OpNet:
    return OpNet(backbone="test_resnet", keypoint_model=keypoints, **kwargs)


def _lechpe_stage2() -> LECHPE:
    module = LECHPE(backbone="test_resnet", stage=2)
    module.init_centroids(torch.randn(module.centroids.shape, generator=_generator("centroids")))
    return module


METHODS: dict[str, Callable[[Path], HPEModule]] = {
    "sixd": lambda _: SixD(backbone="test_resnet"),
    "sixd_raw_mse": lambda _: SixD(backbone="test_resnet", loss="raw_mse"),
    "sixd_9d": lambda _: SixD(backbone="test_resnet", representation="9d"),  # SVD in the graph
    "sixd_9d_raw_mse": lambda _: SixD(backbone="test_resnet", representation="9d", loss="raw_mse"),
    "rankpose_cosine": lambda _: RankPose(backbone="test_resnet"),
    "rankpose_linear": lambda _: RankPose(backbone="test_resnet", output_layer="linear"),
    "lechpe_stage1": lambda _: LECHPE(backbone="test_resnet", stage=1),
    "lechpe_stage2": lambda _: _lechpe_stage2(),
    "clerf_stage1": lambda _: CLERF(backbone="test_resnet", embedding_dim=32, stage=1),
    "clerf_stage2": lambda _: CLERF(backbone="test_resnet", embedding_dim=32, stage=2),
    "clerf_supervised": lambda _: CLERFSupervised(backbone="test_resnet", embedding_dim=32),
    "opnet": _opnet,
    "opnet_released_covariance": lambda kp: _opnet(kp, covariance_form="released"),
}


def _tiny(module: HPEModule) -> HPEModule:
    """``module`` with its backbone replaced by a linear map of the pixels (cheap, and large
    inputs give large raw head outputs: a real backbone's BatchNorm would bound them)."""
    owner = module.model.encoder if isinstance(module, (CLERF, CLERFSupervised)) else module.model
    in_chans = module.model.in_chans if isinstance(module, OpNet) else 3
    owner.backbone = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * S * S, FEATURES))
    return module


@pytest.fixture(scope="module")
def keypoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random OpNet keypoint model file (the synthetic one takes seconds to build)."""
    g = _generator("keypoints")
    path = tmp_path_factory.mktemp("opnet") / "keypoints.npz"
    np.savez(path, mean=torch.randn(68, 3, generator=g), basis=torch.randn(6, 68, 3, generator=g))
    return path


@pytest.fixture(scope="module")
def modules(keypoints: Path) -> dict[str, HPEModule]:
    """Every method on the tiny backbone, in training mode."""
    torch.manual_seed(0)
    return {name: _tiny(build(keypoints)).train() for name, build in METHODS.items()}


def _by_kind(reference: Tensor, g: torch.Generator) -> Tensor:
    """Labels ``(B, 3, 3)``: one fifth of the rows per kind, relative to ``reference``."""
    groups = reference.chunk(len(KINDS))
    return torch.cat([_predicted(kind, r, g) for kind, r in zip(KINDS, groups, strict=True)])


def _batch(g: torch.Generator) -> dict[str, Any]:
    """Images (the last fifth, the ``large`` kind, scaled by 1e5) and every label OpNet uses."""
    scale = torch.ones(B, 1, 1, 1)
    scale[-B // len(KINDS) :] = 1e5
    images = (torch.rand(B, 3, S, S, generator=g) * scale).requires_grad_()
    partner = (torch.rand(B, 3, S, S, generator=g) * scale).requires_grad_()
    # Each label appears twice: CLERF's contrastive stage then has positive pairs.
    reference = hr.random_rotation(B // 2, generator=g).repeat(2, 1, 1)
    centre = S * torch.rand(B, 2, generator=g)
    return {
        "image": images,
        "rotation": _by_kind(reference, g),
        "has_rotation": _mask(B, g),
        "head_center": centre,
        "head_size": S * (0.2 + torch.rand(B, generator=g)),
        "box": torch.cat([centre - 1.0, centre + 1.0], -1),
        "landmarks_3d": S * torch.rand(B, 68, 3, generator=g),
        "partner": {"image": partner, "rotation": hr.random_rotation(B, generator=g)},
    }


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", list(METHODS))
def test_compute_loss_is_finite_through_the_heads(
    modules: dict[str, HPEModule], method: str, precision: str
) -> None:
    module, bf16 = modules[method], precision == "bf16_autocast"
    g = _generator(method, precision)
    batch = _batch(g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = module.training_forward(batch)
        # Labels relative to the model's own prediction: identical, half-turn, near, ...
        for key, target in (("rotation", batch), ("partner_rotation", batch["partner"])):
            if key in outputs:
                target["rotation"] = _by_kind(outputs[key].detach().float(), g)
        loss, parts = module.compute_loss(outputs, batch)
    assert all(torch.isfinite(v).all() for v in parts.values()), parts
    params = [p for p in module.parameters() if p.requires_grad]
    _assert_finite(loss, [batch["image"], batch["partner"]["image"], *params])


# ---------------------------------------------------------- regressions (fixed bugs)
def test_opnet_eval_covariance_with_large_outputs_under_bf16(keypoints: Path) -> None:
    module = _tiny(_opnet(keypoints)).eval()
    g = _generator("opnet-eval")
    images = torch.rand(B, 3, S, S, generator=g) * 1e6
    batch = {"image": images, "rotation": hr.random_rotation(B, generator=g)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = module.compute_loss(module(images), batch)
    assert torch.isfinite(loss)


def test_degenerate_6d_output_gives_finite_geodesic_loss() -> None:
    raw = torch.zeros(N, 6).index_fill_(1, torch.tensor([4]), 1.0).requires_grad_()
    loss = geodesic_loss(hr.rotation_from_6d(raw), hr.random_rotation(N))
    _assert_finite(loss, [raw])
