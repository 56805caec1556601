"""Pixel-wise gradient norms (PGN) of a segmentation network's last and penultimate convolution.

This module is the specification: a short reference implementation of ``docs/design.md`` §1 in torch,
float64 throughout, which runs on every device other than the CPU (CUDA). On the CPU the public
functions run the fast path of :mod:`metaseg_pgn.pgn_cpu`, which computes the same maps (tested
against this reference) with fewer passes over the big tensors.

For a pixel with logits ``z``, softmax ``s`` and the cross entropy against an auxiliary label, the
gradient w.r.t. the kernel of the last convolution is the outer product ``v ⊗ P(ψ)`` of the
C-vector ``v`` (:func:`label_vectors`) and the patch ``P(ψ)`` that the conv reads at that pixel
(:func:`torch.nn.functional.unfold`). The entry-wise p-"norm" ``(Σ|x|^p)^(1/p)`` of an outer
product factorises::

    PGN_p = ||v||_p · ||P(ψ)||_p            (bias included: ||v||_p · (||P(ψ)||_p^p + 1)^(1/p))

where ``||P(ψ)||_p^p`` is a box sum over the conv's window of ``Σ_channels |ψ|^p``
(:func:`patch_power_sums`). The deeper layer replaces ``v`` by
``δ = 1[ψ > 0] ⊙ γ/σ ⊙ (K_lastᵀ v)`` and ψ by the input of the previous conv. Both factors are
combined in float64 (:func:`combine`): for p = 0.1 the value is ``(Σ|x|^p)^10``, beyond the float32
range for large patches; no map holds inf or NaN (a value beyond float64 is an error).

The names of the maps come from :func:`map_name`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from numbers import Real
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pgn_checks import (
    LABELS,
    WEIGHTS,
    ConvGeometry,
    bn_scale,
    check_activations,
    check_conv_io,
    check_label,
    check_labels,
    check_p,
    check_ps,
    check_size,
    check_weights,
    describe,
    geometry_of,
    is_int,
    resolve_bias,
)

__all__ = [
    "BACKENDS",
    "LABELS",
    "LAYERS",
    "PGN_PS",
    "RESOLUTIONS",
    "WEIGHTS",
    "ConvGeometry",
    "deeper_layer_pgn",
    "format_p",
    "label_vectors",
    "last_layer_pgn",
    "map_name",
    "patch_power_sums",
    "resize_maps",
]

PGN_PS = (0.1, 0.3, 0.5, 1.0, 2.0)
LAYERS = ("last", "deep")
RESOLUTIONS = ("feature", "input")
#: ``"auto"``: the fast path (:mod:`metaseg_pgn.pgn_cpu`) for CPU tensors, the reference otherwise;
#: ``"reference"``: this module's float64 reference on any device; ``"cpu"``: the fast path.
BACKENDS = ("auto", "reference", "cpu")

# Size budget of the largest per-chunk tensor (the bilinearly resized unfolded patches) in
# resolution "input"; the elementwise passes over it hold two or three tensors of this size.
_CHUNK_BYTES = 256 * 2**20


def _outside_autocast(fn):
    """Run ``fn`` with autocast off (CPU and CUDA): the maps' own matrix products and sums must
    stay in float32/float64 whatever precision the model's forward ran in."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", enabled=False))
            return fn(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------------------------
# names


def format_p(p: float) -> str:
    """Format an exponent for map names: ``0.1 → "0_1"``, ``0.5 → "0_5"``, ``1 → "1"``, ``2 → "2"``.

    Parameters
    ----------
    p : float
        A finite exponent > 0.

    Returns
    -------
    str
        ``f"{p:g}"`` with the decimal point replaced by ``_``.
    """
    check_p(p)
    return f"{p:g}".replace(".", "_")


def map_name(layer: str, label: str, p: float) -> str:
    """Name of a PGN map: ``pgn_{layer}_{label}_p{format_p(p)}``, e.g. ``pgn_last_uni_p0_5``.

    Parameters
    ----------
    layer : {"last", "deep"}
    label : {"oh", "uni"}
    p : float

    Returns
    -------
    str
    """
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    check_label(label)
    return f"pgn_{layer}_{label}_p{format_p(p)}"


# ----------------------------------------------------------------------------------------------
# the two factors


def label_vectors(probs: Tensor, label: str, weights: str = "paper") -> Tensor:
    """The per-pixel C-vector ``v`` of the gradient ``v ⊗ P(ψ)`` (what the reference maps use).

    Parameters
    ----------
    probs : Tensor, shape (B, C, ...)
        Softmax probabilities ``s`` (any floating dtype, summing to 1 over dim 1).
    label : {"oh", "uni"}
        Auxiliary label: one-hot of the predicted class ``ĉ = argmax s`` (the first maximum), or
        uniform ``1/C``.
    weights : {"paper", "gradient"}
        ``"paper"`` (the published eq. 5/6): ``oh → s ⊙ (1 − e_ĉ)``, ``uni → (C−1)/C · s``.
        ``"gradient"`` (the true gradient of the cross entropy w.r.t. the logits):
        ``oh → s − e_ĉ``, ``uni → s − 1/C``. The entry ``s_ĉ − 1`` is computed as
        ``−Σ_{c≠ĉ} s_c`` (equal when ``Σ s = 1``), which keeps it accurate when ``s_ĉ`` rounds to 1.

    Returns
    -------
    Tensor, shape (B, C, ...), dtype of ``probs``
    """
    if not isinstance(probs, Tensor) or probs.dim() < 2:
        raise ValueError(f"probs must be a tensor of shape (B, C, ...), got {describe(probs)}")
    check_label(label)
    check_weights(weights)
    c = probs.shape[1]
    if label == "uni":
        return probs * ((c - 1) / c) if weights == "paper" else probs - 1.0 / c
    one_hot = torch.zeros_like(probs).scatter_(1, probs.argmax(1, keepdim=True), 1.0)
    others = probs * (1.0 - one_hot)
    return others if weights == "paper" else others - one_hot * others.sum(1, keepdim=True)


def _power_sums(x: Tensor, ps: Sequence[float]) -> Tensor:
    """``[Σ_dim1 |x|^p for p in ps]``: (len(ps), B, ...) float64 for x of shape (B, K, ...)."""
    a = x.to(torch.float64).abs()
    return torch.stack([a.pow(p).sum(1) for p in ps])


def _label_sums(logits: Tensor, ps: Sequence[float], labels: Sequence[str], weights: str) -> dict[str, Tensor]:
    """``||v||_p^p`` per label: (len(ps), B, ...) float64 from the float64 softmax of the logits."""
    probs = torch.softmax(logits.to(torch.float64), dim=1)
    return {label: _power_sums(label_vectors(probs, label, weights), ps) for label in labels}


def _box_sum(sums: Tensor, geometry: ConvGeometry) -> Tensor:
    """Sum of (P, B, h, w) over the conv's (dilated, zero-padded) window: (P, B, h_out, w_out).

    The same as ``F.unfold(sums, kernel, dilation, padding).sum(1)`` (tested), as separable shifted
    adds, which do not form the kh·kw copies."""
    (kh, kw), (dh, dw), (ph, pw) = geometry.kernel_size, geometry.dilation, geometry.padding
    if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
        return sums
    h_out, w_out = geometry.output_size(sums.shape[2], sums.shape[3])
    padded = F.pad(sums, (pw, pw, ph, ph))
    rows = padded[:, :, 0:h_out].clone()
    for i in range(1, kh):
        rows += padded[:, :, i * dh:i * dh + h_out]
    out = rows[..., 0:w_out].clone()
    for j in range(1, kw):
        out += rows[..., j * dw:j * dw + w_out]
    return out


def combine(layer: str, parts: Mapping[str, tuple[Tensor | None, Tensor]], patch: Tensor,
            ps: Sequence[float], inputs: Mapping[str, Tensor],
            root: Callable[[Tensor, float], Tensor] | None = None) -> dict[str, Tensor]:
    """The maps ``factor · (vsums_p · patch_p)^(1/p)`` in float64, checked for inf/NaN.

    Parameters
    ----------
    layer : {"last", "deep"}
    parts : mapping of label to (factor, vsums)
        ``factor`` (B, h, w) float64 or None (1); ``vsums`` (P, B, h, w) float64 with
        ``||v||_p^p = factor^p · vsums[i]``.
    patch : Tensor, shape (P, B, h, w), float64
        ``||P(ψ)||_p^p`` (plus 1 with the bias).
    ps : sequence of float
    inputs : mapping of str to Tensor
        The activations that entered the sums. They were not checked for NaN/inf (a pass over
        each): every entry enters the sums, so a non-finite map is either such an input (reported
        as such) or a value beyond the float64 range.
    root : callable, optional
        ``root(x, p) = x^(1/p)`` for x ≥ 0 (default ``x.pow(1/p)``).

    Returns
    -------
    dict of str to Tensor
        ``map_name(layer, label, p)`` → (B, h, w) float64; labels outer, ps inner.
    """
    root = root or (lambda x, p: x.pow(1.0 / p))
    labels = list(parts)
    prod = torch.stack([parts[label][1] for label in labels]).mul_(patch)  # (L, P, B, h, w)
    values = torch.stack([root(prod[:, i], p) for i, p in enumerate(ps)], dim=1)
    for j, label in enumerate(labels):
        if parts[label][0] is not None:
            values[j].mul_(parts[label][0])
    if not bool(torch.isfinite(values.sum())):
        check_activations(**inputs)
        bad = [map_name(layer, label, p) for j, label in enumerate(labels) for i, p in enumerate(ps)
               if not torch.isfinite(values[j, i]).all()]
        if bad:
            raise ValueError(f"PGN {', '.join(bad)} exceeds the float64 range: the activations are "
                             "too large for this p")
    return {map_name(layer, label, p): values[j, i] for j, label in enumerate(labels) for i, p in enumerate(ps)}


def _fast(device: torch.device, backend: str) -> bool:
    """Whether ``backend`` means the fast CPU path for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
    return backend == "cpu" or (backend == "auto" and device.type == "cpu")


def _sums_function(device: torch.device, backend: str) -> Callable[[Tensor, Sequence[float]], Tensor]:
    """``Σ_channels |x|^p`` as (P, B, h, w) float64: the fast path's or the reference's."""
    if _fast(device, backend):
        from . import pgn_cpu  # pgn_cpu builds on this module
        return pgn_cpu.abs_power_sums
    return _power_sums


# ----------------------------------------------------------------------------------------------
# the maps


@_outside_autocast
def patch_power_sums(
    psi: Tensor,
    geometry: ConvGeometry | nn.Conv2d,
    ps: Sequence[float] = PGN_PS,
    include_bias: bool = False,
    backend: str = "auto",
) -> Tensor:
    """``||P(ψ)||_p^p`` at every output pixel of the conv, for all p.

    Parameters
    ----------
    psi : Tensor, shape (B, κ, h, w)
        The conv's input (any floating dtype).
    geometry : ConvGeometry or nn.Conv2d
    ps : sequence of float
        Exponents > 0.
    include_bias : bool
        Add 1 (the bias entry of the patch) to every sum.
    backend : {"auto", "reference", "cpu"}
        See :data:`BACKENDS`.

    Returns
    -------
    Tensor, shape (len(ps), B, h_out, w_out), float64
        ``Σ`` over the conv's (dilated, zero-padded) ``kh × kw`` window of ``Σ_channels |ψ|^p``,
        where ``(h_out, w_out) = geometry.output_size(h, w)``.
    """
    geometry = geometry_of(geometry)
    ps = check_ps(ps)
    check_activations(psi=psi)
    psi = psi.detach()
    if psi.shape[1] != geometry.in_channels:
        raise ValueError(f"psi has {psi.shape[1]} channels but the conv reads {geometry.in_channels}")
    h_out, w_out = geometry.output_size(psi.shape[2], psi.shape[3])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"psi of size {tuple(psi.shape)[2:]} is smaller than the conv's window")
    sums = _box_sum(_sums_function(psi.device, backend)(psi, ps), geometry)
    return sums.add_(1.0) if include_bias else sums


@_outside_autocast
def resize_maps(
    maps: Mapping[str, Tensor], size: tuple[int, int], align_corners: bool = False
) -> dict[str, Tensor]:
    """Resize feature-resolution maps bilinearly, the way the model resizes its logits.

    Parameters
    ----------
    maps : mapping of str to Tensor, each of shape (B, h, w)
    size : (H, W)
    align_corners : bool

    Returns
    -------
    dict of str to Tensor, each of shape (B, H, W), float64
    """
    size = check_size(size)
    out = {}
    for name, m in maps.items():
        if not isinstance(m, Tensor) or m.dim() != 3:
            raise ValueError(f"map {name!r} must be a tensor of shape (B, h, w), got {describe(m)}")
        if tuple(m.shape[1:]) == size:
            out[name] = m.to(torch.float64)
        else:
            resized = F.interpolate(m.to(torch.float64)[:, None], size=size, mode="bilinear",
                                    align_corners=bool(align_corners))
            out[name] = resized[:, 0]
    return out


@_outside_autocast
def last_layer_pgn(
    psi: Tensor,
    logits: Tensor,
    conv: nn.Conv2d | ConvGeometry,
    *,
    ps: Sequence[float] = PGN_PS,
    labels: Iterable[str] = LABELS,
    weights: str = "paper",
    include_bias: bool | None = None,
    resolution: str = "feature",
    output_size: tuple[int, int] | None = None,
    align_corners: bool = False,
    chunk_rows: int | None = None,
    backend: str = "auto",
) -> dict[str, Tensor]:
    """PGN of the last convolution ``logits = conv(psi)``.

    Parameters
    ----------
    psi : Tensor, shape (B, κ, h_in, w_in)
        The conv's input.
    logits : Tensor, shape (B, C, h, w)
        The conv's output ``z``.
    conv : nn.Conv2d or ConvGeometry
    ps : sequence of float
        Exponents p > 0.
    labels : iterable of {"oh", "uni"}
    weights : {"paper", "gradient"}
        See :func:`label_vectors`.
    include_bias : bool or None
        Include the bias gradient; None means "iff the conv has a bias".
    resolution : {"feature", "input"}
        ``"feature"``: the maps at the conv's resolution, then (if ``output_size`` is given)
        resized bilinearly to it. ``"input"``: the exact value at every pixel of the model output
        ``Up(z)`` of size ``output_size``: ``||v_ab||_p · ||Up(P(ψ))_ab||_p`` with ``v`` from
        ``softmax(Up(z))``, computed in float64 in chunks of output rows.
    output_size : (H, W) or None
        Size the model resizes its logits to (bilinear); required for ``"input"``.
    align_corners : bool
        ``align_corners`` of that resize.
    chunk_rows : int or None
        Output rows per chunk for ``"input"``; None keeps the chunk's resized patches ≤ 256 MB.
    backend : {"auto", "reference", "cpu"}
        See :data:`BACKENDS`.

    Returns
    -------
    dict of str to Tensor
        ``map_name("last", label, p)`` → (B, h, w) float64, or (B, H, W) when ``output_size`` is
        given; labels outer, ps inner.

    Notes
    -----
    The reference computes in float64. The fast CPU path computes float32 (and 16-bit) inputs in
    float32 with a float64 per-pixel combination: relative error ≤ 1e-5 against the reference
    (:mod:`metaseg_pgn.pgn_cpu`), never inf/NaN.

    Raises
    ------
    ValueError
        NaN/inf in ``psi`` or ``logits``, shapes that do not fit ``conv``, unknown options, or a
        value beyond the float64 range.
    """
    geometry = geometry_of(conv)
    ps, labels = check_ps(ps), check_labels(labels)
    check_weights(weights)
    include_bias = resolve_bias(include_bias, geometry.has_bias)
    check_conv_io(psi, logits, geometry)
    psi, logits = psi.detach(), logits.detach()
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    fast = _fast(psi.device, backend)
    if resolution == "input":
        if output_size is None:
            raise ValueError("resolution='input' needs output_size=(H, W), the size the model "
                             "resizes its logits to")
        return _input_resolution(psi, logits, geometry, ps, labels, weights, include_bias,
                                 check_size(output_size), bool(align_corners), chunk_rows,
                                 _sums_function(psi.device, backend))
    if not labels:
        return {}
    if fast:
        from . import pgn_cpu
        maps = pgn_cpu.last_layer(psi, logits, geometry, ps, labels, weights, include_bias)
    else:
        patch = _box_sum(_power_sums(psi, ps), geometry)
        if include_bias:
            patch += 1.0
        parts = {label: (None, sums) for label, sums in _label_sums(logits, ps, labels, weights).items()}
        maps = combine("last", parts, patch, ps, {"psi": psi})
    return maps if output_size is None else resize_maps(maps, output_size, align_corners)


@_outside_autocast
def deeper_layer_pgn(
    psi_prev: Tensor,
    conv_prev: nn.Conv2d | ConvGeometry,
    bn: nn.BatchNorm2d | None,
    psi: Tensor,
    logits: Tensor,
    conv_last: nn.Conv2d,
    *,
    ps: Sequence[float] = PGN_PS,
    labels: Iterable[str] = LABELS,
    weights: str = "paper",
    include_bias: bool | None = None,
    output_size: tuple[int, int] | None = None,
    align_corners: bool = False,
    clip: float | None = None,
    backend: str = "auto",
) -> dict[str, Tensor]:
    """PGN of the penultimate convolution in ``logits = conv_last(relu(bn(conv_prev(psi_prev))))``.

    With a 1 × 1 ``conv_last`` and the pointwise BatchNorm (eval mode) and ReLU in between, the
    pixel's loss depends on ``u = conv_prev(psi_prev)`` at that pixel only, and the gradient w.r.t.
    ``conv_prev``'s kernel is ``δ ⊗ P(psi_prev)`` with
    ``δ = 1[ψ > 0] ⊙ γ / sqrt(running_var + eps) ⊙ (K_lastᵀ v)``. Dropout in eval mode between the
    ReLU and ``conv_last`` is the identity and changes nothing.

    Parameters
    ----------
    psi_prev : Tensor, shape (B, κ', h_in, w_in)
        Input of ``conv_prev``.
    conv_prev : nn.Conv2d or ConvGeometry
        The penultimate conv (κ' → κ channels).
    bn : nn.BatchNorm2d or None
        The BatchNorm between ``conv_prev`` and the ReLU, in eval mode; None when there is none
        (any ``torch.nn.modules.batchnorm._BatchNorm``, e.g. SyncBatchNorm, is accepted).
    psi : Tensor, shape (B, κ, h, w)
        ``relu(bn(u))``, the input of ``conv_last`` (its positive entries give the ReLU mask), or
        ``clamp(bn(u), 0, clip)`` with ``clip`` given.
    logits : Tensor, shape (B, C, h, w)
        Output of ``conv_last``.
    conv_last : nn.Conv2d
        The 1 × 1 last conv (its weights enter δ).
    ps, labels, weights, backend
        As in :func:`last_layer_pgn`.
    include_bias : bool or None
        Include the gradient of ``conv_prev``'s bias; None means "iff conv_prev has a bias".
    output_size : (H, W) or None
        Resize the maps bilinearly to this size (the maps are defined at the feature resolution).
    align_corners : bool
    clip : float or None
        The activation's upper clip (6 for ReLU6): the mask is then ``1[0 < ψ < clip]``, where
        the clamp's derivative is 1. None: a ReLU, mask ``1[ψ > 0]``.

    Returns
    -------
    dict of str to Tensor
        ``map_name("deep", label, p)`` → (B, h, w) float64 (or (B, H, W) with ``output_size``).

    Notes
    -----
    The fast CPU path computes ``K_lastᵀ v`` in float32 unless an activation is float64: an entry
    of δ that nearly cancels is then accurate relative to the cancelling terms only.

    Raises
    ------
    ValueError
        ``conv_last`` not 1 × 1, ``bn`` in training mode or without running statistics, shapes
        that do not chain, NaN/inf activations.
    """
    if not isinstance(conv_last, nn.Conv2d):
        raise TypeError(f"conv_last must be an nn.Conv2d (its weights enter δ), got {type(conv_last).__name__}")
    last = ConvGeometry.from_conv(conv_last)
    if last.kernel_size != (1, 1) or last.padding != (0, 0):
        raise ValueError(
            f"the deeper-layer PGN needs a 1 x 1 last conv without padding, got kernel "
            f"{last.kernel_size} and padding {last.padding}: a larger kernel mixes neighbouring "
            "pixels, so a pixel's loss depends on conv_prev's output at several pixels and its "
            "gradient w.r.t. conv_prev's kernel is no longer one outer product")
    prev = geometry_of(conv_prev)
    ps, labels = check_ps(ps), check_labels(labels)
    check_weights(weights)
    include_bias = resolve_bias(include_bias, prev.has_bias)
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, Real) or not math.isfinite(clip)
                             or clip <= 0):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    check_conv_io(psi, logits, last)
    check_activations(psi_prev=psi_prev, finite=False)
    psi_prev, psi, logits = psi_prev.detach(), psi.detach(), logits.detach()
    if prev.out_channels != last.in_channels:
        raise ValueError(f"conv_prev has {prev.out_channels} out-channels but conv_last reads {last.in_channels}")
    if psi_prev.shape[0] != psi.shape[0] or prev.output_size(*psi_prev.shape[2:]) != tuple(psi.shape[2:]):
        raise ValueError(
            f"conv_prev maps psi_prev {tuple(psi_prev.shape)} to size "
            f"{prev.output_size(*psi_prev.shape[2:])}, but psi is {tuple(psi.shape)}")
    scale = bn_scale(bn, prev.out_channels).to(device=psi.device)
    fast = _fast(psi.device, backend)
    if not labels:
        return {}
    kernel = conv_last.weight.detach().to(device=psi.device, dtype=torch.float64)[:, :, 0, 0]  # (C, κ)
    kernel_t = (kernel * scale[None, :]).t().contiguous()  # (κ, C): γ/σ folded into K
    if fast:
        from . import pgn_cpu
        maps = pgn_cpu.deeper_layer(psi_prev, prev, psi, logits, kernel_t, ps, labels, weights,
                                    include_bias, clip)
    else:
        patch = _box_sum(_power_sums(psi_prev, ps), prev)
        if include_bias:
            patch += 1.0
        mask = psi > 0 if clip is None else (psi > 0) & (psi < clip)
        probs = torch.softmax(logits.to(torch.float64), dim=1)
        parts = {}
        for label in labels:
            delta = torch.einsum("kc,bchw->bkhw", kernel_t, label_vectors(probs, label, weights))
            parts[label] = (None, _power_sums(delta * mask, ps))
        maps = combine("deep", parts, patch, ps, {"psi_prev": psi_prev, "psi": psi})
    return maps if output_size is None else resize_maps(maps, output_size, align_corners)


# ----------------------------------------------------------------------------------------------
# resolution "input"


def _linear_taps(n_in: int, n_out: int, align_corners: bool, device: torch.device):
    """Source indices i0, i1 (int64) and weight λ of i1 (float64) of torch's 1-D linear resize."""
    dst = torch.arange(n_out, dtype=torch.float64, device=device)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, src - i0


def _resize_rows(x: Tensor, taps, offset: int = 0) -> Tensor:
    """Linear resize of (B, K, rows, w) along the rows with taps from :func:`_linear_taps`, whose
    indices count from row ``offset`` of the full map."""
    i0, i1, lam = taps
    lam = lam.view(-1, 1).to(x.dtype)
    return x.index_select(2, i0 - offset) * (1.0 - lam) + x.index_select(2, i1 - offset) * lam


def _resize_cols(x: Tensor, width: int, align_corners: bool) -> Tensor:
    """Linear resize of (B, K, rows, w) along the columns only: torch's bilinear kernel with the row
    count unchanged, which maps every row to itself exactly."""
    return F.interpolate(x, size=(x.shape[2], width), mode="bilinear", align_corners=align_corners)


def _input_resolution(psi, logits, geometry, ps, labels, weights, include_bias, size, align_corners,
                      chunk_rows, power_sums) -> dict[str, Tensor]:
    """Resolution "input" of :func:`last_layer_pgn` (inputs already checked), chunk by output row,
    with ``power_sums`` (:func:`_sums_function`) for the resized patches.

    Always in float64, whatever the inputs: float32 resize weights would mix ~1e-7 of a neighbour
    into an entry that is exactly 0 (a ReLU zero on a source pixel), and |x|^0.1 turns that into
    0.2 (a relative error of several % at p = 0.1)."""
    b, _, h, w = logits.shape
    big_h, big_w = size
    (kh, kw), (dh, dw), (ph, pw) = geometry.kernel_size, geometry.dilation, geometry.padding
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // (b * geometry.patch_size * big_w * 8))
    elif not is_int(chunk_rows) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1 or None, got {chunk_rows!r}")
    rows = _linear_taps(h, big_h, align_corners, logits.device)
    z = logits.to(torch.float64)
    psi = F.pad(psi.to(torch.float64), (pw, pw, ph, ph))
    names = [map_name("last", label, p) for label in labels for p in ps]
    maps = {n: torch.empty(b, big_h, big_w, dtype=torch.float64, device=logits.device) for n in names}
    for start in range(0, big_h, chunk_rows):
        taps = tuple(t[start:start + chunk_rows] for t in rows)
        s0, s1 = int(taps[0].min()), int(taps[1].max()) + 1  # source rows of z this chunk reads
        z_up = _resize_cols(_resize_rows(z[:, :, s0:s1], taps, s0), big_w, align_corners)
        # the patches of source rows s0..s1-1 start at padded rows s0..s1-1 of ψ
        window = psi[:, :, s0:s1 + dh * (kh - 1)]
        patches = F.unfold(window, (kh, kw), dilation=(dh, dw)).view(b, geometry.patch_size, s1 - s0, w)
        patch = power_sums(_resize_cols(_resize_rows(patches, taps, s0), big_w, align_corners), ps)
        del patches
        if include_bias:
            patch += 1.0  # bilinear weights sum to 1, so the bias entry of Up(P) stays 1
        parts = {label: (None, sums) for label, sums in _label_sums(z_up, ps, labels, weights).items()}
        for n, m in combine("last", parts, patch, ps, {"psi": psi}).items():
            maps[n][:, start:start + chunk_rows] = m
    return maps
