"""Numerical checks of what the PGN factorisation assumes about a model, on every pixel.

:class:`metaseg_pgn.wrapper.PGNModel` reads a network's activations through forward hooks and
computes the maps from them (docs/design.md §1). That is exact only if

1. the last conv's output ``z`` is ``F.conv2d(ψ, weight, bias)`` of that module's own parameters
   (a ``Conv2d`` subclass whose ``forward`` standardises or normalises the weight, or scales the
   result, is not: :func:`conv_mismatch`);
2. the model output is ``z``, bilinearly resized at most (:func:`resize_mismatch`);
3. for the deeper layer, ψ is ``relu(bn(u))`` (or clipped, as ReLU6) of the previous conv's output
   ``u``, element by element (:func:`activation_mismatch`), and ``u`` is that conv's plain
   convolution (:func:`conv_mismatch` again).

Each check recomputes the operation from the captured tensors and compares every element with a
tolerance derived from the dtypes involved: for a sum of ``n`` terms, ``4·√n·ε`` of the
Cauchy–Schwarz bound of the terms' magnitudes (ε of the accumulation: float64 for float64 models,
float32 otherwise, TF32 input rounding added on CUDA when torch allows it), plus ε of the
output dtype times the value (bfloat16/float16 outputs under autocast). The logits are compared
with the resized conv output relative to the resized ``|z|`` at each pixel (a resize has 4 terms,
a projection C more): ~1e-14 in float64 and ~2e-6 in float32 (19 classes), so an operation within
1e-5 of the identity after the last conv (``logits / 1.00002``, a freshly initialised BatchNorm)
is found in float64, and in float32 at the pixels where the logits are largest. The conv checks
are looser relative to the logits (√n terms, the Cauchy–Schwarz scale): ~1e-13 in float64, ~1e-5
in float32 (where a rescaled kernel within that is below the float32 maps' own error).

A check can project the output channels on ``m`` fixed random Gaussian directions
(``projections=m``) instead of comparing every channel: a conv with 256 output channels is then
recomputed with ``m`` of them, at ``m/256`` of its cost; an output that differs from the plain
convolution at a pixel passes only if the difference is orthogonal to all ``m`` directions
(probability zero for any difference that does not depend on those directions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .pgn import ConvGeometry, _box_sum, _outside_autocast

__all__ = ["Mismatch", "activation_mismatch", "conv_mismatch", "resize_mismatch"]

#: Multiple of the √n·ε rounding estimate allowed between two computations of the same sum.
SAFETY = 4.0
#: Seed of the fixed random projection directions (the checks are deterministic).
PROJECTION_SEED = 20241129


@dataclass(frozen=True)
class Mismatch:
    """How far a tensor is from its recomputation.

    Attributes
    ----------
    excess : float
        max over elements of ``|got − expected| / tolerance``; the check passes iff ``excess <= 1``
        (NaN fails).
    relative : float
        max ``|got − expected|`` over max ``|expected|``: the size of the difference, for messages.
    """

    excess: float
    relative: float

    @property
    def ok(self) -> bool:
        return self.excess <= 1.0

    def describe(self) -> str:
        return f"differs by up to {self.relative:.2g} of its largest value ({self.excess:.3g} times the tolerance)"


@_outside_autocast
def conv_mismatch(psi: Tensor, z: Tensor, conv: nn.Conv2d, projections: int | None = None) -> Mismatch:
    """Whether ``z`` is ``F.conv2d(psi, conv.weight, conv.bias)`` (stride 1, the conv's padding and
    dilation), on every pixel.

    Parameters
    ----------
    psi : Tensor, shape (B, κ, h_in, w_in)
        The conv's input as hooked (any float dtype).
    z : Tensor, shape (B, C, h, w)
        The conv's output as hooked. Its dtype is the one the conv computed in: under autocast
        (bfloat16/float16) ψ, weight and bias are rounded to it first, as the conv read them.
    conv : nn.Conv2d
        Its ``weight`` and ``bias`` are read once (a parametrised weight is evaluated).
    projections : int or None
        Compare ``m`` random projections of the C channels instead of all C (see module notes).

    Returns
    -------
    Mismatch
    """
    geometry = ConvGeometry.from_conv(conv)
    work = _work(psi, z)
    low = z.dtype
    x = psi.detach().to(low).to(work)
    weight = conv.weight.detach().to(device=z.device, dtype=low).to(work)
    bias = None if conv.bias is None else conv.bias.detach().to(device=z.device, dtype=low).to(work)
    c = weight.shape[0]
    # per pixel ||P(ψ)||_2 over the conv's window, per channel ||k_c||_2: |z_c| <= ||k_c|| ||P|| + |b_c|
    patch = _box_sum(torch.einsum("bchw,bchw->bhw", x, x)[None], geometry)[0].sqrt_()
    knorm = torch.linalg.vector_norm(weight.flatten(1), 2, dim=1)
    babs = torch.zeros_like(knorm) if bias is None else bias.abs()
    n = geometry.patch_size + (bias is not None)
    rho = _rho(n, work) + _conv_input_rounding(z)
    got = z.detach().to(work)
    if projections is None or projections >= c:
        expected = F.conv2d(x, weight, bias, 1, geometry.padding, geometry.dilation)
        scale = knorm.view(1, c, 1, 1) * patch[:, None] + babs.view(1, c, 1, 1)
        tol = scale * rho + expected.abs() * _eps(low)
    else:
        r = _directions(projections, c, work, z.device)
        expected = F.conv2d(x, (r @ weight.flatten(1)).view(-1, *weight.shape[1:]),
                            None if bias is None else r @ bias, 1, geometry.padding, geometry.dilation)
        got = _project(r, got)
        ra = r.abs()
        scale = (ra @ knorm).view(1, -1, 1, 1) * patch[:, None] + (ra @ babs).view(1, -1, 1, 1)
        tol = scale * (rho + _eps(low) + _matmul_rounding(got))
    return _mismatch(got, expected, tol)


@_outside_autocast
def resize_mismatch(z: Tensor, y: Tensor, align_corners: bool, projections: int | None = None) -> Mismatch:
    """Whether the model output ``y`` is ``z`` resized bilinearly (or ``z`` itself at equal size),
    on every pixel.

    Parameters
    ----------
    z : Tensor, shape (B, C, h, w)
    y : Tensor, shape (B, C, H, W)
    align_corners : bool
    projections : int or None
        Compare ``m`` random projections of the C channels (resizing ``m`` channels instead of C).

    Returns
    -------
    Mismatch
    """
    if z.shape[:2] != y.shape[:2]:
        return Mismatch(math.inf, math.inf)
    if z is y:
        return Mismatch(0.0, 0.0)
    work = _work(z, y)
    zz, got = z.detach().to(work), y.detach().to(work)
    n = 4  # a bilinear resize mixes 4 values
    if projections is not None and projections < z.shape[1]:
        r = _directions(projections, z.shape[1], work, z.device)
        # |r·z| ≤ |r|·|z| per pixel, resized along: the scale of the projected values' rounding
        zz = torch.cat([_project(r, zz), _project(r.abs(), zz.abs())], dim=1)
        got = _project(r, got)
        n += z.shape[1]  # the projection's sum
    else:
        zz = torch.cat([zz, zz.abs()], dim=1)
    if zz.shape[-2:] != got.shape[-2:]:
        zz = F.interpolate(zz, size=got.shape[-2:], mode="bilinear", align_corners=align_corners)
    expected, scale = zz.split(got.shape[1], dim=1)
    tol = scale * (_rho(n, work) + _eps(y.dtype) + _eps(z.dtype) + _matmul_rounding(got))
    return _mismatch(got, expected, tol)


@_outside_autocast
def activation_mismatch(u: Tensor, bn: nn.Module | None, psi: Tensor) -> tuple[Mismatch, float | None]:
    """Whether ψ is ``relu(bn(u))``, or ``clamp(bn(u), 0, t)`` (ReLU6: t = 6), on every element.

    Parameters
    ----------
    u : Tensor, shape (B, κ, h, w)
        The previous conv's output.
    bn : BatchNorm module or None
        In eval mode with running statistics (``torch.nn.modules.batchnorm._BatchNorm``: BatchNorm2d,
        SyncBatchNorm).
    psi : Tensor, shape (B, κ, h, w)
        The last conv's input.

    Returns
    -------
    (Mismatch, clip)
        ``clip`` is None for ReLU, else the upper clip ``t`` (the largest ψ) that makes the
        clamped activation match; the mismatch is that of ReLU when neither matches.

    Raises
    ------
    ValueError
        ``bn`` is in training mode or has no running statistics.
    """
    work = _work(u, psi)
    uu = u.detach().to(work)
    # per image and channel: the largest |u| (then |a|·max|u| + |μa| + |β| bounds every term)
    top = torch.maximum(uu.amax((2, 3), keepdim=True), uu.amin((2, 3), keepdim=True).neg_())
    if bn is None:
        pre, scale = uu, top
    else:
        a, shift, mag = _bn_affine(bn, work, u.device)
        pre = torch.addcmul(shift, uu, a)  # γ (u − μ) / σ + β
        scale = top * a.abs() + mag
    got = psi.detach().to(work)
    rho = _rho(4, work) + _eps(u.dtype) + _eps(psi.dtype)
    expected = torch.relu(pre)
    found = _mismatch(got, expected, scale * rho)
    if found.ok or psi.numel() == 0:
        return found, None
    clip = float(psi.max())
    if clip > 0 and math.isfinite(clip):
        clipped = _mismatch(got, pre.clamp(0.0, clip), scale * rho)
        if clipped.ok:
            return clipped, clip
    return found, None


def _bn_affine(bn: nn.Module, work: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """``a = γ/σ``, ``shift = β − μ·a`` and ``|μ·a| + |β|``, each (1, κ, 1, 1) in ``work``."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.training:
        raise ValueError("the BatchNorm before the last conv is in training mode: the deeper-layer "
                         "factorisation needs eval mode (call model.eval())")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the BatchNorm before the last conv has no running statistics, so it normalises "
                         "with batch statistics that couple all pixels: the deeper-layer factorisation "
                         "does not apply")
    f64 = torch.float64
    mean, var = bn.running_mean.detach().to(f64), bn.running_var.detach().to(f64)
    gamma = torch.ones_like(var) if bn.weight is None else bn.weight.detach().to(f64)
    beta = torch.zeros_like(var) if bn.bias is None else bn.bias.detach().to(f64)
    a = gamma / torch.sqrt(var + bn.eps)
    shift = beta - mean * a
    mag = (mean * a).abs() + beta.abs()
    return tuple(t.to(device=device, dtype=work).view(1, -1, 1, 1) for t in (a, shift, mag))


def _mismatch(got: Tensor, expected: Tensor, tol: Tensor) -> Mismatch:
    if got.numel() == 0:
        return Mismatch(0.0, 0.0)
    diff = (got - expected).abs_()
    biggest, top = float(diff.amax()), float(expected.abs().amax())
    excess = float(diff.div_(tol.clamp_min(torch.finfo(tol.dtype).tiny)).amax())
    relative = biggest / top if top > 0 else (0.0 if biggest == 0 else math.inf)
    return Mismatch(excess, relative)


def _project(r: Tensor, x: Tensor) -> Tensor:
    """``Σ_c r[m, c] x[:, c]``: (m, C) directions on (B, C, h, w) → (B, m, h, w)."""
    b, c = x.shape[:2]
    return torch.matmul(r, x.reshape(b, c, -1)).view(b, r.shape[0], *x.shape[2:])


def _directions(m: int, c: int, dtype: torch.dtype, device) -> Tensor:
    """(m, c) fixed Gaussian directions (the same for every call)."""
    g = torch.Generator().manual_seed(PROJECTION_SEED + c)
    return torch.randn(m, c, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _work(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _rho(n: int, work: torch.dtype) -> float:
    """Rounding allowance of a sum of ``n`` terms computed twice in ``work`` precision, relative to
    the sum of the terms' magnitudes."""
    return SAFETY * math.sqrt(max(n, 1)) * _eps(work)


def _conv_input_rounding(z: Tensor) -> float:
    """Relative rounding of a float32 conv's inputs on CUDA with TF32 allowed (10-bit mantissa;
    the model's conv and the recomputation may both round): 2·2^-10, else 0."""
    if z.device.type != "cuda" or z.dtype != torch.float32:
        return 0.0
    return 2.0 * 2.0**-10 if bool(torch.backends.cudnn.allow_tf32) else 0.0


def _matmul_rounding(x: Tensor) -> float:
    """The same for the projections' float32 matrix products on CUDA when TF32 matmul is allowed
    (torch's default, precision "highest", does not)."""
    if x.device.type != "cuda" or x.dtype != torch.float32:
        return 0.0
    mantissa = {"high": 10, "medium": 8}.get(torch.get_float32_matmul_precision())  # TF32, bfloat16
    return 0.0 if mantissa is None else 2.0 * 2.0**-mantissa
