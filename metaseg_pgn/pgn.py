"""Pixel-wise gradient norms (PGN) of a segmentation network's last and penultimate convolution.

For a pixel with logits ``z``, softmax ``s`` and the cross entropy against an auxiliary label, the
gradient w.r.t. the kernel of the last convolution is the outer product ``v ⊗ P(ψ)`` of a C-vector
``v`` (see :func:`label_vectors`) and the patch ``P(ψ)`` the conv reads at that pixel. The
entry-wise p-"norm" ``(Σ|x|^p)^(1/p)`` of an outer product factorises::

    PGN_p = ||v||_p · ||P(ψ)||_p            (bias included: ||v||_p · (||P(ψ)||_p^p + 1)^(1/p))

so every map costs a few elementwise passes over ψ and z. The binding definitions are in
``DESIGN.md`` §1; the names of the maps come from :func:`map_name`.

Numerics and cost
-----------------
The passes over the big tensors (ψ: κ × h × w, the logits: C × h × w, the deeper layer's δ) run in
the inputs' precision: float64 for float64 inputs, float32 otherwise. Only the small per-pixel
results (B × h × w per p) are combined in float64, which is where p = 0.1 leaves the float32 range.
Resolution ``"input"`` (the exact option, which resizes the patches) stays float64 throughout.

- One transcendental pass per tensor: ``t = |x|^b`` for the smallest non-integer p (0.1 by
  default); the other fractional p are products (``|x|^0.3 = t³``, ``|x|^0.5 = t⁵``), the
  integer p are ``|x|`` and ``|x|·|x|``, and a product is summed over the channels without being
  formed where einsum can (``Σ t⁵ = Σ t²·t²·t``). Row chunk by row chunk, so the temporaries stay
  in the cache; on the CPU with more than one torch thread, chunks run in parallel.
- float32 on the CPU uses numpy for the elementwise passes: its float32 log/exp are 2-3 times
  faster than torch's pow, and torch's log/sqrt are ~10x slower on inputs with many zeros (ReLU
  outputs). Other devices use the same formulas in torch.
- The softmax is never formed. With ``m1 ≥ m2`` the two largest logits (``ĉ`` the first index of
  ``m1``) and ``e_c = exp(min(z_c − m2, 0))`` (``e_ĉ = 1``): ``Σ_{c≠ĉ} s_c^p = s_2^p · o_p`` with
  ``o_p = Σ_c e_c^p − 1 ∈ [1, C − 1]`` (the second largest logit contributes exactly 1, so
  nothing under- or overflows and the subtraction costs at most a factor 2 in precision), and
  ``Σ_c s_c^p = s_1^p (1 + exp(−p (m1 − m2)) o_p)``, where ``s_1 = 1 / (1 + exp(m2 − m1) o_1)``
  and ``s_2 = exp(m2 − m1) s_1`` are computed in float64 per pixel. Both labels (and
  ``1 − s_ĉ = s_2 o_1`` for the one-hot gradient) share one set of sums. Only the uniform label
  with ``weights="gradient"`` (``s − 1/C``, a cancellation) takes the float64 softmax.
- Accuracy of the float32 path against the float64 computation of the same inputs: every term
  carries a few units of float32 rounding (u = 6e-8); float32 channel sums of non-negative terms
  add ~√κ·u (≤ (κ − 1)·u in the worst case), except for p < 1/4, whose terms are accumulated in
  float64; ``(·)^(1/p)`` multiplies relative errors by 1/p (≤ 4 where the sums are float32).
  Measured ≤ 2e-6 on the compact model's 32k pixels; tested at 1e-5. Exception, inherent to
  float32: an entry of δ (deeper layer) or of ``s − 1/C`` that nearly cancels is accurate only
  relative to the cancelling terms, and small p weigh such entries (up to ~1e-3 at p = 0.1 for δ).
- Guard: a float32 sum that overflows (inf), or a sum for p > 1 so small that terms may have
  underflowed (< 2^-90 at a pixel that is not all zero), is recomputed in float64. NaN/inf in ψ
  are found from the sums (no separate pass) and reported as such; the logits are checked upfront.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Real
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

try:  # float32 log/exp on the CPU (see _chunk_power_sums)
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

__all__ = [
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
LABELS = ("oh", "uni")
WEIGHTS = ("paper", "gradient")
LAYERS = ("last", "deep")
RESOLUTIONS = ("feature", "input")

# Size budget of the largest per-chunk tensor (the bilinearly resized unfolded patches) in
# resolution "input"; the elementwise passes over it hold two or three tensors of this size.
_CHUNK_BYTES = 256 * 2**20


def _outside_autocast(fn):
    """Run ``fn`` with autocast off (CPU and CUDA): the maps' own matrix products and sums must
    stay in float32/float64 whatever precision the model's forward ran in (module notes)."""
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
    _check_p(p)
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
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return f"pgn_{layer}_{label}_p{format_p(p)}"


# ----------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class ConvGeometry:
    """The shape of a stride-1, ungrouped, zero-padded ``nn.Conv2d``: all the PGN needs of it.

    Attributes
    ----------
    out_channels, in_channels : int
        C and κ.
    kernel_size : tuple of int
        ``(kh, kw)``.
    dilation : tuple of int
        ``(dh, dw)``.
    padding : tuple of int
        ``(ph, pw)`` zero rows / columns added on each side.
    has_bias : bool
        Whether the conv has a bias.
    """

    out_channels: int
    in_channels: int
    kernel_size: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    has_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("out_channels", "in_channels"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ConvGeometry.{name} must be an int >= 1, got {value!r}")
        for name, low in (("kernel_size", 1), ("dilation", 1), ("padding", 0)):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) and v >= low for v in value)):
                raise ValueError(f"ConvGeometry.{name} must be a pair of ints >= {low}, got {value!r}")
        if not isinstance(self.has_bias, bool):
            raise TypeError(f"ConvGeometry.has_bias must be a bool, got {self.has_bias!r}")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "ConvGeometry":
        """Read the geometry of ``conv``, refusing convolutions the factorisation does not cover.

        Raises
        ------
        TypeError
            ``conv`` is not an ``nn.Conv2d``.
        ValueError
            stride != 1, groups != 1, a padding mode other than ``"zeros"``, or ``padding="same"``
            that torch would have to apply asymmetrically.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        stride = tuple(conv.stride)
        if stride != (1, 1):
            raise ValueError(
                f"conv has stride {stride}; only stride 1 is supported: the patch sums are box sums "
                "at every position of ψ, which a strided conv does not visit")
        if conv.groups != 1:
            raise ValueError(
                f"conv has groups={conv.groups}; only groups=1 is supported: with groups each output "
                "channel reads a different slice of ψ, so the per-pixel gradient is not a single "
                "outer product v ⊗ P(ψ)")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"conv has padding_mode={conv.padding_mode!r}; only 'zeros' is supported (the patch "
                "sums pad ψ with zeros)")
        kernel = tuple(int(k) for k in conv.kernel_size)
        dilation = tuple(int(d) for d in conv.dilation)
        if conv.padding == "valid":
            padding = (0, 0)
        elif conv.padding == "same":
            totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
            if any(t % 2 for t in totals):
                raise ValueError(
                    f"conv has padding='same' with kernel {kernel} and dilation {dilation}: torch pads "
                    "that asymmetrically (one more row/column at the end), which is not supported")
            padding = (totals[0] // 2, totals[1] // 2)
        else:
            padding = tuple(int(p) for p in conv.padding)
        return cls(
            out_channels=int(conv.out_channels),
            in_channels=int(conv.in_channels),
            kernel_size=kernel,
            dilation=dilation,
            padding=padding,
            has_bias=conv.bias is not None,
        )

    @property
    def patch_size(self) -> int:
        """Entries of one patch ``P(ψ)``: ``κ · kh · kw``."""
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the conv's output for an input of ``height × width``."""
        (kh, kw), (dh, dw), (ph, pw) = self.kernel_size, self.dilation, self.padding
        return height + 2 * ph - dh * (kh - 1), width + 2 * pw - dw * (kw - 1)


def _geometry(conv: nn.Conv2d | ConvGeometry) -> ConvGeometry:
    if isinstance(conv, ConvGeometry):
        return conv
    if isinstance(conv, nn.Conv2d):
        return ConvGeometry.from_conv(conv)
    raise TypeError(f"conv must be an nn.Conv2d or a ConvGeometry, got {type(conv).__name__}")


# ----------------------------------------------------------------------------------------------
# building blocks


def label_vectors(probs: Tensor, label: str, weights: str = "paper") -> Tensor:
    """The per-pixel C-vector ``v`` of the gradient ``v ⊗ P(ψ)``.

    Parameters
    ----------
    probs : Tensor, shape (B, C, ...)
        Softmax probabilities ``s`` (any floating dtype).
    label : {"oh", "uni"}
        Auxiliary label: one-hot of the predicted class ``ĉ = argmax s``, or uniform ``1/C``.
    weights : {"paper", "gradient"}
        ``"paper"`` (the published eq. 5/6): ``oh → s ⊙ (1 − e_ĉ)``, ``uni → (C−1)/C · s``.
        ``"gradient"`` (the true gradient of the cross entropy w.r.t. the logits):
        ``oh → s − e_ĉ``, ``uni → s − 1/C``.

    Returns
    -------
    Tensor, shape (B, C, ...), dtype of ``probs``
    """
    if not isinstance(probs, Tensor) or probs.dim() < 2:
        raise ValueError(f"probs must be a tensor of shape (B, C, ...), got {_describe(probs)}")
    _check_label(label)
    _check_weights(weights)
    c = probs.shape[1]
    if label == "oh":
        one_hot = torch.zeros_like(probs).scatter_(1, probs.argmax(1, keepdim=True), 1.0)
        return probs * (1.0 - one_hot) if weights == "paper" else probs - one_hot
    return probs * ((c - 1) / c) if weights == "paper" else probs - 1.0 / c


@_outside_autocast
def patch_power_sums(
    psi: Tensor,
    geometry: ConvGeometry | nn.Conv2d,
    ps: Sequence[float] = PGN_PS,
    include_bias: bool = False,
) -> Tensor:
    """``||P(ψ)||_p^p`` at every output pixel of the conv, for all p from one pass over ψ.

    Parameters
    ----------
    psi : Tensor, shape (B, κ, h, w)
        The conv's input. float64 is summed in float64, every other dtype in float32 (see the
        module notes for the accuracy and the float64 fallback).
    geometry : ConvGeometry or nn.Conv2d
    ps : sequence of float
        Exponents > 0.
    include_bias : bool
        Add 1 (the bias entry of the patch) to every sum.

    Returns
    -------
    Tensor, shape (len(ps), B, h_out, w_out), float64
        ``Σ`` over the conv's (dilated, zero-padded) ``kh × kw`` window of ``Σ_channels |ψ|^p``,
        where ``(h_out, w_out) = geometry.output_size(h, w)``.
    """
    geometry = _geometry(geometry)
    ps = _check_ps(ps)
    _check_activations(psi=psi)
    psi = psi.detach()
    if psi.shape[1] != geometry.in_channels:
        raise ValueError(f"psi has {psi.shape[1]} channels but the conv reads {geometry.in_channels}")
    h_out, w_out = geometry.output_size(psi.shape[2], psi.shape[3])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"psi of size {tuple(psi.shape)[2:]} is smaller than the conv's window")
    return _patch_sums(psi, geometry, ps, include_bias)


def _patch_sums(psi: Tensor, geometry: ConvGeometry, ps: Sequence[float], include_bias: bool) -> Tensor:
    """:func:`patch_power_sums` without the input checks (the callers made them)."""
    sums = _abs_power_sums(_raw_source(psi), tuple(psi.shape), ps, _work_dtype(psi), psi.device)
    sums = _box_sum(sums, geometry)
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
    size = _check_size(size)
    out = {}
    for name, m in maps.items():
        if not isinstance(m, Tensor) or m.dim() != 3:
            raise ValueError(f"map {name!r} must be a tensor of shape (B, h, w), got {_describe(m)}")
        if tuple(m.shape[1:]) == size:
            out[name] = m.to(torch.float64)
        else:
            resized = F.interpolate(m.to(torch.float64)[:, None], size=size, mode="bilinear",
                                    align_corners=bool(align_corners))
            out[name] = resized[:, 0]
    return out


# ----------------------------------------------------------------------------------------------
# the maps


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
        ``softmax(Up(z))``, computed in chunks of output rows.
    output_size : (H, W) or None
        Size the model resizes its logits to (bilinear); required for ``"input"``.
    align_corners : bool
        ``align_corners`` of that resize.
    chunk_rows : int or None
        Output rows per chunk for ``"input"``; None keeps the chunk's resized patches ≤ 256 MB.

    Returns
    -------
    dict of str to Tensor
        ``map_name("last", label, p)`` → (B, h, w) float64, or (B, H, W) when ``output_size`` is
        given; labels outer, ps inner.

    Notes
    -----
    float64 inputs are computed in float64 throughout; other inputs in float32 with a float64
    per-pixel combination (module notes: relative error ≤ 1e-5 against float64, never inf/NaN).

    Raises
    ------
    ValueError
        NaN/inf in ``psi`` or ``logits``, shapes that do not fit ``conv``, unknown options, or a
        value beyond the float64 range.
    """
    geometry = _geometry(conv)
    ps, labels = _check_ps(ps), _check_labels(labels)
    _check_weights(weights)
    include_bias = _resolve_bias(include_bias, geometry.has_bias)
    _check_conv_io(psi, logits, geometry)
    psi, logits = psi.detach(), logits.detach()
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if resolution == "input":
        if output_size is None:
            raise ValueError("resolution='input' needs output_size=(H, W), the size the model "
                             "resizes its logits to")
        return _input_resolution(psi, logits, geometry, ps, labels, weights, include_bias,
                                 _check_size(output_size), bool(align_corners), chunk_rows)
    if not labels:
        return {}
    tasks, patch_sums = _power_sum_tasks(_raw_source(psi), tuple(psi.shape), ps, _work_dtype(psi), psi.device)
    found = {}
    _run_tasks([lambda: found.update(_label_parts(logits, ps, labels, weights))] + tasks, psi.device)
    patch = _box_sum(patch_sums(), geometry)
    if include_bias:
        patch += 1.0
    maps = _finish("last", {label: part[:2] for label, part in found.items()}, patch, ps, {"psi": psi})
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
    ps, labels, weights
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
    ``K_lastᵀ v`` is one matrix product per label and row chunk, in float64 when any of the
    activations is float64, else in float32 (then an entry of δ that nearly cancels is accurate
    relative to the cancelling terms only; see the module notes).

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
    prev = _geometry(conv_prev)
    ps, labels = _check_ps(ps), _check_labels(labels)
    _check_weights(weights)
    include_bias = _resolve_bias(include_bias, prev.has_bias)
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, Real) or not math.isfinite(clip)
                             or clip <= 0):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    _check_conv_io(psi, logits, last)
    _check_activations(psi_prev=psi_prev, finite=False)
    psi_prev, psi, logits = psi_prev.detach(), psi.detach(), logits.detach()
    if prev.out_channels != last.in_channels:
        raise ValueError(f"conv_prev has {prev.out_channels} out-channels but conv_last reads {last.in_channels}")
    if psi_prev.shape[0] != psi.shape[0] or prev.output_size(*psi_prev.shape[2:]) != tuple(psi.shape[2:]):
        raise ValueError(
            f"conv_prev maps psi_prev {tuple(psi_prev.shape)} to size "
            f"{prev.output_size(*psi_prev.shape[2:])}, but psi is {tuple(psi.shape)}")
    scale = _bn_scale(bn, prev.out_channels).to(device=psi.device)
    if not labels:
        return {}

    dtype = _work_dtype(psi, logits)
    kernel = conv_last.weight.detach().to(device=psi.device, dtype=torch.float64)[:, :, 0, 0]  # (C, κ)
    kernel_t = (kernel * scale[None, :]).t().contiguous()  # (κ, C): γ/σ folded into K
    b, kappa, h, w = psi.shape
    # the label vectors and the ReLU mask alongside the patch sums of ψ_prev, then all δ chunks
    tasks, prev_sums = _power_sum_tasks(_raw_source(psi_prev), tuple(psi_prev.shape), ps,
                                        _work_dtype(psi_prev), psi_prev.device)
    found = {}
    _run_tasks([lambda: found.update(_label_parts(logits, ps, labels, weights, vectors=True)),
                lambda: found.update(mask=_relu_mask(psi, dtype, clip))] + tasks, psi.device)
    mask = found.pop("mask")
    deltas = {}
    tasks = []
    for label, (factor, _, vec) in found.items():
        label_tasks, deltas[label] = _power_sum_tasks(_delta_source(kernel_t, vec, mask), (b, kappa, h, w),
                                                      ps, dtype, psi.device)
        tasks += label_tasks
    _run_tasks(tasks, psi.device)
    patch = _box_sum(prev_sums(), prev)
    if include_bias:
        patch += 1.0
    parts = {label: (found[label][0], deltas[label]()) for label in found}
    maps = _finish("deep", parts, patch, ps, {"psi_prev": psi_prev, "psi": psi})
    return maps if output_size is None else resize_maps(maps, output_size, align_corners)


# ----------------------------------------------------------------------------------------------
# internals: power sums


# Elements of one row chunk of the power sums. CPU: the chunk's temporaries (a few tensors of this
# size) stay in the cache. GPU: few chunks (kernel launches cost more than cache misses), memory
# still bounded (~0.5 GB of float32 temporaries for the ResNet-50-sized model at 1024 x 2048).
_POWER_CHUNK_ELEMS = 2**18
_POWER_CHUNK_ELEMS_GPU = 2**25
# A float32 sum of |x|^p with p > 1 below this may have lost terms to underflow (each lost term is
# below 2^-126, so even 2^11 of them change a sum ≥ 2^-90 by < 2^-25 relative): float64 instead.
_UNDERFLOW = 2.0**-90


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (also for float16/bfloat16 inputs)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _is_integer_p(p: float) -> bool:
    return p == round(p) and 1 <= p <= 16


def _plan(ps: Sequence[float]) -> tuple[float | None, list[tuple[str, int, float]]]:
    """How each power is computed: ``("int", n, p)``: ``x^n`` by products of ``x``;
    ``("frac", m, p)``: ``t^m`` with ``t = x^b`` for b the smallest non-integer p; ``("pow", 0, p)``:
    its own pass. Returns (b, steps in the order of ps)."""
    fractional = [p for p in ps if not _is_integer_p(p)]
    base = min(fractional) if fractional else None
    steps = []
    for p in ps:
        if _is_integer_p(p):
            steps.append(("int", int(round(p)), p))
            continue
        m = int(round(p / base))
        if 1 <= m <= 16 and abs(m * base - p) <= 1e-12 * p:
            steps.append(("frac", m, p))
        else:
            steps.append(("pow", 0, p))
    return base, steps


def _chain(cache: dict[int, Tensor], n: int) -> Tensor:
    """``x^n`` from ``cache`` (``{1: x, ...}``) by products, storing what it computes."""
    if n in cache:
        return cache[n]
    for i in sorted(cache, reverse=True):
        if n - i in cache:
            cache[n] = cache[i] * cache[n - i]
            return cache[n]
    if n % 2 == 0:
        half = _chain(cache, n // 2)
        cache[n] = half * half
    else:
        cache[n] = _chain(cache, n - 1) * cache[1]
    return cache[n]


def _pow(x: Tensor, p: float) -> Tensor:
    """``x^p`` for ``x ≥ 0``. p = 0.5 as ``x · rsqrt(max(x, tiny))``: torch's sqrt and log are an
    order of magnitude slower on inputs with many zeros (ReLU outputs), rsqrt and pow are not.
    (Subnormal x would get ``x · rsqrt(tiny)`` instead of ``sqrt(x)``: an absolute error below
    ``sqrt(tiny)`` ≈ 1e-19 in float32.)"""
    if p == 0.5:
        return x * torch.rsqrt(x.clamp_min(torch.finfo(x.dtype).tiny))
    return torch.pow(x, p)


def _powers(x, ps: Sequence[float], power, cache: dict | None = None):
    """Yield ``x^p`` for p in ps (x ≥ 0). ``power(p)`` computes ``x^p`` for a non-integer p in one
    pass (``pow(x, p)``, or ``exp(p · y)`` when ``x = exp(y)``); the powers that are integer
    multiples of the smallest non-integer p are products of its power, integer p products of x.
    ``x`` may be None: then it is computed when needed (from the fractional powers if 1/b is an
    integer, else ``power(1)``) and left in ``cache[1]``."""
    base, steps = _plan(ps)
    ints = {} if cache is None else cache
    if x is not None:
        ints[1] = x
    fracs: dict[int, Tensor] = {}

    def frac(m: int) -> Tensor:
        if not fracs:
            fracs[1] = power(base)
        return _chain(fracs, m)

    for kind, n, p in steps:
        if kind == "int":
            if 1 not in ints:
                m = round(1.0 / base) if base is not None else 0
                exact = base is not None and 1 <= m <= 16 and abs(m * base - 1.0) <= 1e-12
                ints[1] = frac(m) if exact else power(1.0)
            yield _chain(ints, n)
        elif kind == "frac":
            yield frac(n)
        else:
            yield power(p)


def _chunk_power_sums(x: Tensor | None, ps: Sequence[float], log_x: Tensor | None = None,
                      cache: dict | None = None, nonneg: bool = True) -> list[Tensor]:
    """``[Σ_channels |x|^p for p in ps]`` for x of shape (B, K, ...) (sums (B, ...)), every power
    reduced as soon as it exists. ``nonneg``: x is known to be ≥ 0 (else |x| is taken; the numpy
    path first tries x itself, since log of a negative entry turns a sum into NaN, which is
    detected: a ReLU output then costs no abs pass). ``log_x`` (optional, = log x) gives the fractional powers
    as ``exp(p · log_x)``; ``x`` may be None when ``log_x`` is given (``x = exp(log_x)`` is then
    computed if needed and left in ``cache[1]``, see :func:`_powers`).

    float32 on the CPU runs the elementwise passes in numpy, whose float32 log/exp are 2-3 times
    faster than torch's pow (and than torch's log, which is ~10x slower on inputs with many zeros,
    i.e. ReLU outputs); see :func:`_np_power_sums`.
    """
    ref = x if x is not None else log_x
    if _np is not None and ref.device.type == "cpu" and ref.dtype == torch.float32:
        shape = ref.shape
        flat = [None if t is None else t.numpy().reshape(shape[0], shape[1], -1) for t in (x, log_x)]
        if not nonneg and all(kind == "int" for kind, _, _ in _plan(ps)[1]):
            flat[0] = _np.abs(flat[0])  # no log to reveal negative entries
        sums, xn = _np_power_sums(flat[0], ps, flat[1])
        if not nonneg and _np.isnan(_np.sum([s.sum() for s in sums])):  # negative (or NaN) entries
            sums, xn = _np_power_sums(_np.abs(flat[0]), ps, flat[1])
        if cache is not None and xn is not None:
            cache[1] = torch.from_numpy(xn).view(shape)
        return [torch.from_numpy(t).view(shape[0], *shape[2:]) for t in sums]
    if x is not None and not nonneg:
        x = x.abs()
    if log_x is None:
        def power(p: float) -> Tensor:
            return _pow(x, p)
    else:
        def power(p: float) -> Tensor:
            return torch.mul(log_x, p).exp_()
    return [_channel_sum(y, p) for y, p in zip(_powers(x, ps, power, cache), ps)]


def _np_power_sums(x, ps: Sequence[float], log_x=None) -> tuple[list, object]:
    """``[Σ_k x[:, k]^p for p in ps]`` for a non-negative float32 numpy array (B, K, N), and x.

    One ``t = exp(b · log x)`` for the smallest non-integer p = b; a power ``t^m`` (or ``x^n``) is
    summed without being formed where it is a product of at most three formed ones (``np.einsum``
    multiplies and sums in one pass: ``Σ t³ = Σ t²·t``, ``Σ t⁵ = Σ t²·t²·t``, ``Σ x² = Σ x·x``),
    so the default p cost one log, one exp and one product (``t²``) besides the reductions.
    ``log_x`` (= log x) may be given, and then x may be None (``exp(log_x)``, formed if needed).
    """
    base, steps = _plan(ps)
    ints: dict[int, object] = {} if x is None else {1: x}
    fracs: dict[int, object] = {}
    logs: list = [log_x]

    def exp_of(p: float):
        if logs[0] is None:
            with _np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf, exp(-inf) = 0
                logs[0] = _np.log(x)
        if p == 1.0:
            return _np.exp(logs[0])
        y = _np.multiply(logs[0], _np.float32(p))
        return _np.exp(y, out=y)

    sums = []
    for kind, n, p in steps:
        if kind == "pow":
            sums.append(_np_sum(exp_of(p), p))
        elif kind == "frac":
            if not fracs:
                fracs[1] = exp_of(base)
            sums.append(_np_reduce(fracs, n, p))
        else:
            if not ints:
                ints[1] = exp_of(1.0)
            sums.append(_np_reduce(ints, n, p))
    return sums, ints.get(1)


def _np_reduce(cache: dict, n: int, p: float):
    """Σ over axis 1 of ``y^n`` from the formed powers in ``cache`` ({1: y, ...}), forming more
    (y² first) only where n is not a sum of at most three formed exponents."""
    dtype = _np.float64 if p < _EXACT_SUM_BELOW else None
    while True:
        if n in cache:
            return _np_sum(cache[n], p)
        have = sorted(cache, reverse=True)
        for i in have:
            if n - i in cache:
                return _np.einsum("bkn,bkn->bn", cache[i], cache[n - i], dtype=dtype)
        for i in have:
            for j in have:
                if n - i - j in cache:
                    return _np.einsum("bkn,bkn,bkn->bn", cache[i], cache[j], cache[n - i - j], dtype=dtype)
        if 2 not in cache:
            cache[2] = cache[1] * cache[1]
        else:
            _chain(cache, n)


def _np_sum(y, p: float):
    """Σ over axis 1 of (B, K, N), see :func:`_channel_sum`."""
    if p < _EXACT_SUM_BELOW:
        return y.sum(axis=1, dtype=_np.float64)
    return _channel_sum(torch.from_numpy(y), p).numpy()


# ``(·)^(1/p)`` multiplies the relative error of a sum by 1/p: below this p the float32 terms are
# accumulated in float64 (numpy does it without a float64 copy: ~2x the time of a float32 sum).
_EXACT_SUM_BELOW = 0.25


def _channel_sum(y: Tensor, p: float) -> Tensor:
    """Σ over dim 1 of (B, K, ...). float32 terms: accumulated in float64 for p < 1/4 (the sum's
    error is multiplied by 1/p > 4), else a product with a ones vector (BLAS, float32: relative
    error ~√K·u typically, ≤ (K - 1)·u, u = 6e-8)."""
    if y.dtype == torch.float64:
        return y.sum(1)
    if p < _EXACT_SUM_BELOW:
        return y.sum(1, dtype=torch.float64)
    b, k = y.shape[:2]
    ones = y.new_ones(1, k)
    return torch.matmul(ones, y.reshape(b, k, -1)).view(b, *y.shape[2:])


def _raw_source(t: Tensor):
    """Row chunks of ``t`` (B, K, rows, w) in a given dtype, not known to be non-negative (the
    power sums take |·|)."""
    def source(r0: int, r1: int, dtype: torch.dtype) -> tuple[Tensor, bool]:
        return t[:, :, r0:r1].to(dtype), False
    return source


def _abs_power_sums(source, shape: tuple[int, ...], ps: Sequence[float], dtype: torch.dtype,
                    device: torch.device) -> Tensor:
    """(len(ps), B, h, w) float64: ``Σ`` over dim 1 of ``|x|^p`` for ``x = source(r0, r1, dtype)``
    (``source`` returns the chunk (B, K, r1 - r0, w) and whether it is known to be ≥ 0),
    computed in ``dtype`` by row chunks (in parallel on the CPU, see :func:`_run_tasks`). In
    float32, the p whose sums overflowed or may have underflowed are recomputed in float64."""
    tasks, finish = _power_sum_tasks(source, shape, ps, dtype, device)
    _run_tasks(tasks, device)
    return finish()


def _power_sum_tasks(source, shape: tuple[int, ...], ps: Sequence[float], dtype: torch.dtype,
                     device: torch.device):
    """:func:`_abs_power_sums` as independent row-chunk tasks (to run with other work) and a
    ``finish()`` that applies the float64 fallback and returns the sums."""
    b, k, h, w = shape
    budget = _POWER_CHUNK_ELEMS if device.type == "cpu" else _POWER_CHUNK_ELEMS_GPU
    rows = max(1, budget // max(1, b * k * w))
    out = torch.empty(len(ps), b, h, w, dtype=torch.float64, device=device)

    def chunk(r0: int) -> None:
        r1 = min(h, r0 + rows)
        x, nonneg = source(r0, r1, dtype)
        for i, s in enumerate(_chunk_power_sums(x, ps, nonneg=nonneg)):
            out[i, :, r0:r1] = s

    def finish() -> Tensor:
        if dtype == torch.float64:
            return out
        redo = _float32_trouble(out, ps)
        if redo:
            sub = [ps[i] for i in redo]
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                x, nonneg = source(r0, r1, torch.float64)
                for i, s in zip(redo, _chunk_power_sums(x, sub, nonneg=nonneg)):
                    out[i, :, r0:r1] = s
        return out
    return [lambda r0=r0: chunk(r0) for r0 in range(0, h, rows)], finish


_POOL: ThreadPoolExecutor | None = None
_IN_WORKER = threading.local()


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run_tasks(tasks: Sequence, device: torch.device) -> None:
    """Run the callables; on the CPU with ``torch.get_num_threads() = n > 1`` on the calling thread
    and n - 1 pool threads, which take the next task when free (numpy and torch release the GIL;
    tasks write disjoint outputs). The caller's grad and inference mode (thread-local) are set in
    the workers; tasks started from a worker run sequentially."""
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    threads = min(threads, len(tasks))
    if threads <= 1 or getattr(_IN_WORKER, "active", False):
        for task in tasks:
            task()
        return
    global _POOL
    if _POOL is None or _POOL._max_workers < threads - 1:
        _POOL = ThreadPoolExecutor(threads - 1, thread_name_prefix="metaseg_pgn")
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    queue = iter(range(len(tasks)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loop() -> None:
        while not errors:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                tasks[i]()
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

    def worker() -> None:
        _IN_WORKER.active = True
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                loop()
        finally:
            _IN_WORKER.active = False
    futures = [_POOL.submit(worker) for _ in range(threads - 1)]
    _IN_WORKER.active = True
    try:
        loop()
    finally:
        _IN_WORKER.active = False
        for future in futures:
            future.result()
    if errors:
        raise errors[0]


def _float32_trouble(sums: Tensor, ps: Sequence[float]) -> list[Tensor]:
    """Indices of the p whose sums of float32 terms (P, B, h, w) are not finite, or (p > 1) below
    ``_UNDERFLOW`` where the pixel is not all zero (judged by a p ≤ 1 sum when there is one)."""
    big = [i for i, p in enumerate(ps) if p > 1]
    # fast path: two reductions (the sums are ≥ 0, so their total is finite iff each one is)
    if bool(torch.isfinite(sums.sum())) and all(bool(sums[i].amin() >= _UNDERFLOW) for i in big):
        return []
    bad = ~torch.isfinite(sums).flatten(1).all(1)
    if big:
        low = sums[big] < _UNDERFLOW
        small = [i for i, p in enumerate(ps) if p <= 1]
        if small:
            low &= sums[small[0]] > 0
        bad[big] |= low.flatten(1).any(1)
    return [i for i, flag in enumerate(bad.tolist()) if flag]


def _box_sum(sums: Tensor, geometry: ConvGeometry) -> Tensor:
    """Sum of (P, B, h, w) over the conv's (dilated, zero-padded) window: separable shifted adds."""
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


# ----------------------------------------------------------------------------------------------
# internals: label vectors without the softmax


def _label_parts(z: Tensor, ps: Sequence[float], labels: Sequence[str], weights: str,
                 vectors: bool = False) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
    """Per label ``(factor, sums, vec)``: ``||v||_p^p = factor^p · sums[i]``; with ``vectors``
    also ``vec`` (B, C, h, w) in the work dtype with ``v = factor · vec``. factor (B, h, w) and
    sums (P, B, h, w) are float64. See the module notes for the formulas."""
    dtype = _work_dtype(z)
    f64 = torch.float64
    b, c = z.shape[:2]
    spatial = tuple(z.shape[2:])
    if c == 1:  # s = 1: every v is zero
        zero = z.new_zeros((b, *spatial), dtype=f64)
        return {label: (zero, z.new_ones((len(ps), b, *spatial), dtype=f64),
                        z.new_zeros(z.shape, dtype=dtype) if vectors else None) for label in labels}
    zw = z.to(dtype)
    m1 = zw.amax(1, keepdim=True)
    # 1 at the largest logit, 0 elsewhere (sign is ~4x faster than ==); ĉ is the first maximum
    first = torch.sign(zw - m1).add_(1.0)
    if float(first.sum()) != first.numel() // c:  # a tie somewhere (exact below 2^24 pixels): as argmax
        first = torch.zeros_like(zw).scatter_(1, zw.argmax(1, keepdim=True), 1.0)
    m2 = torch.add(zw, first, alpha=-torch.finfo(dtype).max / 4).amax(1, keepdim=True)
    gap = m1[:, 0].to(f64) - m2[:, 0].to(f64)  # m1 - m2 >= 0, exact
    # z_c - m2 <= 0 off ĉ; 0 at ĉ. Then Σ_c exp(p (z_c - m2)) = 1 + o_p with o_p ≥ 1 (the second
    # largest logit contributes exactly 1), so o_p = sum - 1 loses at most a factor 2 in precision
    shifted = (zw - m2).clamp_max_(0.0)
    cache: dict[int, Tensor] = {}
    need_o1 = 1.0 not in ps
    eps = ps + ((1.0,) if need_o1 else ())
    osums = _chunk_power_sums(None, eps, shifted, cache)
    osums = torch.stack([o.to(f64) for o in osums]).sub_(1.0)  # Σ_{c≠ĉ} exp(p (z_c - m2)) ∈ [1, C - 1]
    o1 = osums[eps.index(1.0)]
    osums = osums[:len(ps)]
    e = cache[1]  # exp(z - m2), 1 at ĉ
    del shifted, cache
    r = torch.exp(-gap)  # s2 / s1
    s1 = 1.0 / (1.0 + r * o1)
    s2 = r * s1
    parts = {}
    for label in labels:
        if label == "oh":
            if weights == "paper":  # s with ĉ set to 0
                vec = e * (1.0 - first) if vectors else None
                parts[label] = (s2, osums, vec)
            else:  # s - e_ĉ: |s_ĉ - 1| = Σ_{c≠ĉ} s_c = s2 · o1
                sums = osums + torch.stack(list(_powers(o1, ps, lambda p: o1.pow(p))))
                vec = torch.addcmul(e, first, -(1.0 + o1[:, None].to(dtype))) if vectors else None
                parts[label] = (s2, sums, vec)
        elif weights == "paper":  # (C-1)/C · s = (C-1)/C · s1 · exp(z - m1)
            sums = torch.stack(list(_powers(r, ps, lambda p: torch.exp(-p * gap)))).mul_(osums).add_(1.0)
            vec = None
            if vectors:
                r_w = r[:, None].to(dtype)
                vec = torch.addcmul(e * r_w, first, 1.0 - r_w)
            parts[label] = ((c - 1) / c * s1, sums, vec)
        else:  # s - 1/C cancels: the float64 softmax
            w64 = torch.softmax(z.to(f64), dim=1) - 1.0 / c
            sums = _abs_power_sums(_raw_source(w64), (b, c, *spatial), ps, dtype, z.device)
            parts[label] = (torch.ones_like(s1), sums, w64.to(dtype) if vectors else None)
    return parts


def _delta_source(kernel_t: Tensor, vec: Tensor, mask: Tensor):
    """Row chunks of ``|δ| / factor = mask ⊙ |K'ᵀ vec|`` (B, κ, rows, w), K' = K · γ/σ, mask the
    ReLU mask 1[ψ > 0] (work dtype)."""
    b, c, _, w = vec.shape
    kappa = kernel_t.shape[0]
    kernels = {}

    def source(r0: int, r1: int, dtype: torch.dtype) -> tuple[Tensor, bool]:
        if dtype not in kernels:
            kernels[dtype] = kernel_t.to(dtype)
        v = vec[:, :, r0:r1].reshape(b, c, (r1 - r0) * w).to(dtype)
        d = torch.matmul(kernels[dtype], v).view(b, kappa, r1 - r0, w).abs_()
        return d.mul_(mask[:, :, r0:r1].to(dtype)), True
    return source


def _relu_mask(psi: Tensor, dtype: torch.dtype, clip: float | None = None) -> Tensor:
    """``1[ψ > 0]`` in ``dtype``: sign(ψ) (several times faster than a comparison), clamped only
    when ψ has negative entries; with ``clip`` also 0 where ``ψ >= clip`` (a clamped activation)."""
    mask = torch.sign(psi.to(dtype))
    if not bool(psi.amin() >= 0):
        mask.clamp_min_(0.0)
    if clip is not None:
        mask.mul_(psi < clip)
    return mask


# ----------------------------------------------------------------------------------------------
# internals: combination


def _root(x: Tensor, p: float) -> Tensor:
    """``x^(1/p)`` (float64, x ≥ 0): products for integer 1/p, sqrt for p = 2."""
    n = 1.0 / p
    if abs(n - round(n)) <= 1e-12 * n and 1 <= round(n) <= 64:
        return _chain({1: x}, int(round(n)))
    if _np is not None and x.device.type == "cpu":  # numpy's float64 pow/sqrt: ~2x faster
        xn = x.numpy()
        return torch.from_numpy(_np.sqrt(xn) if p == 2.0 else _np.power(xn, n))
    if p == 2.0:
        return x.sqrt()
    return x.pow(n)


def _finish(layer: str, parts: Mapping[str, tuple[Tensor, Tensor]], patch: Tensor,
            ps: Sequence[float], inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``factor · (vsums_p · patch_p)^(1/p)`` for every label (``parts[label] = (factor, vsums)``)
    and p, in float64: views of one (labels, P, B, h, w) tensor, labels outer, ps inner.

    The activations in ``inputs`` were not checked for NaN/inf (that is a pass over each): every
    entry enters the sums, so a non-finite value here is either such an input (reported as such)
    or a value beyond the float64 range."""
    labels = list(parts)
    prod = torch.stack([parts[label][1] for label in labels]).mul_(patch)  # (L, P, B, h, w)
    values = torch.stack([_root(prod[:, i], p) for i, p in enumerate(ps)], dim=1)
    values.mul_(torch.stack([parts[label][0] for label in labels])[:, None])
    if not bool(torch.isfinite(values.sum())):
        _check_activations(**inputs)
        bad = [map_name(layer, label, p) for j, label in enumerate(labels) for i, p in enumerate(ps)
               if not torch.isfinite(values[j, i]).all()]
        if bad:
            raise ValueError(f"PGN {', '.join(bad)} exceeds the float64 range: the activations are "
                             "too large for this p")
    return {map_name(layer, label, p): values[j, i] for j, label in enumerate(labels) for i, p in enumerate(ps)}


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
                      chunk_rows) -> dict[str, Tensor]:
    """Resolution "input" of :func:`last_layer_pgn` (inputs already checked), chunk by output row.

    Always in float64, whatever the inputs: float32 resize weights would mix ~1e-7 of a neighbour
    into an entry that is exactly 0 (a ReLU zero on a source pixel), and |x|^0.1 turns that into
    0.2 (a relative error of several % at p = 0.1). This is the exact, not the fast, option."""
    b, _, h, w = logits.shape
    big_h, big_w = size
    (kh, kw), (dh, dw), (ph, pw) = geometry.kernel_size, geometry.dilation, geometry.padding
    dtype = torch.float64
    itemsize = torch.finfo(dtype).bits // 8
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // (b * geometry.patch_size * big_w * itemsize))
    elif not _is_int(chunk_rows) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1 or None, got {chunk_rows!r}")
    rows = _linear_taps(h, big_h, align_corners, logits.device)
    z = logits.to(dtype)
    psi = F.pad(psi.to(dtype), (pw, pw, ph, ph))
    names = [map_name("last", label, p) for label in labels for p in ps]
    maps = {n: torch.empty(b, big_h, big_w, dtype=torch.float64, device=logits.device) for n in names}
    for start in range(0, big_h, chunk_rows):
        taps = tuple(t[start:start + chunk_rows] for t in rows)
        s0, s1 = int(taps[0].min()), int(taps[1].max()) + 1  # source rows of z this chunk reads
        z_up = _resize_cols(_resize_rows(z[:, :, s0:s1], taps, s0), big_w, align_corners)
        # the patches of source rows s0..s1-1 start at padded rows s0..s1-1 of ψ
        window = psi[:, :, s0:s1 + dh * (kh - 1)]
        patches = F.unfold(window, (kh, kw), dilation=(dh, dw)).view(b, geometry.patch_size, s1 - s0, w)
        patches = _resize_cols(_resize_rows(patches, taps, s0), big_w, align_corners)
        patch = _abs_power_sums(_raw_source(patches), tuple(patches.shape), ps, dtype, logits.device)
        del patches
        if include_bias:
            patch += 1.0  # bilinear weights sum to 1, so the bias entry of Up(P) stays 1
        parts = {label: part[:2] for label, part in _label_parts(z_up, ps, labels, weights).items()}
        for n, m in _finish("last", parts, patch, ps, {"psi": psi}).items():
            maps[n][:, start:start + chunk_rows] = m
    return maps


def _bn_scale(bn: nn.BatchNorm2d | None, channels: int) -> Tensor:
    """γ / sqrt(running_var + eps) as float64 (ones without a BatchNorm)."""
    if bn is None:
        return torch.ones(channels, dtype=torch.float64)
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"bn must be an nn.BatchNorm2d or None, got {type(bn).__name__}")
    if bn.training or bn.running_var is None:
        raise ValueError(
            "the BatchNorm must be in eval mode with running statistics (call model.eval()): in "
            "training mode it normalises with batch statistics, which couple all pixels, so the "
            "pixel's gradient is no longer an outer product")
    if bn.num_features != channels:
        raise ValueError(f"bn has {bn.num_features} features but conv_prev has {channels} out-channels")
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(var)
    return gamma / torch.sqrt(var + bn.eps)


# ----------------------------------------------------------------------------------------------
# validation


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"


def _check_p(p) -> None:
    if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or p <= 0:
        raise ValueError(f"every p must be a finite number > 0, got {p!r}")


def _check_ps(ps) -> tuple[float, ...]:
    if isinstance(ps, (str, bytes)) or not isinstance(ps, Iterable):
        raise TypeError(f"ps must be a sequence of numbers > 0, got {ps!r}")
    ps = tuple(ps)
    for p in ps:
        _check_p(p)
    if len({format_p(p) for p in ps}) != len(ps):
        raise ValueError(f"ps has duplicate exponents (same map name): {ps!r}")
    return tuple(float(p) for p in ps)


def _check_label(label) -> None:
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")


def _check_labels(labels) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of labels like ('oh', 'uni'), got the string {labels!r}")
    labels = tuple(labels)
    for label in labels:
        _check_label(label)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicates: {labels!r}")
    return labels


def _check_weights(weights) -> None:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")


def _check_size(size) -> tuple[int, int]:
    if not (isinstance(size, (tuple, list, torch.Size)) and len(size) == 2
            and all(_is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"size must be a pair of ints >= 1 (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def _resolve_bias(include_bias, has_bias: bool) -> bool:
    if include_bias is None:
        return has_bias
    if not isinstance(include_bias, bool):
        raise TypeError(f"include_bias must be True, False or None, got {include_bias!r}")
    if include_bias and not has_bias:
        raise ValueError("include_bias=True but the conv has no bias")
    return include_bias


def _check_activations(finite: bool = True, **tensors: Tensor) -> None:
    """Type and shape; with ``finite`` also no NaN/inf (the PGN functions check ψ lazily, see
    :func:`_finish`)."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise TypeError(f"{name} must be a floating-point tensor of shape (B, channels, h, w), "
                            f"got {_describe(t)}")
        if finite and not _all_finite(t):
            raise ValueError(f"model activations contain NaN/inf ({name})")


def _all_finite(t: Tensor) -> bool:
    """Whether ``t`` has no NaN/inf. A sum is finite iff every entry is, unless it overflows: only
    then (or for 16-bit types, whose sums overflow easily) the elementwise check runs, which is
    ~30 times slower than the sum."""
    if t.dtype in (torch.float32, torch.float64) and bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _check_conv_io(psi: Tensor, logits: Tensor, geometry: ConvGeometry) -> None:
    """Shapes and types; NaN/inf in the logits (ψ is checked lazily, see :func:`_finish`)."""
    _check_activations(psi=psi, finite=False)
    _check_activations(logits=logits)
    if psi.shape[1] != geometry.in_channels:
        raise ValueError(f"psi has {psi.shape[1]} channels but the conv reads {geometry.in_channels}")
    expected = (psi.shape[0], geometry.out_channels, *geometry.output_size(*psi.shape[2:]))
    if tuple(logits.shape) != expected:
        raise ValueError(f"logits have shape {tuple(logits.shape)} but the conv maps psi "
                         f"{tuple(psi.shape)} to {expected}")
