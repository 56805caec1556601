"""Pixel-wise gradient norms (PGN) of a segmentation network's last and penultimate convolution.

For a pixel with logits ``z``, softmax ``s`` and the cross entropy against an auxiliary label, the
gradient w.r.t. the kernel of the last convolution is the outer product ``v ⊗ P(ψ)`` of a C-vector
``v`` (see :func:`label_vectors`) and the patch ``P(ψ)`` the conv reads at that pixel. The
entry-wise p-"norm" ``(Σ|x|^p)^(1/p)`` of an outer product factorises::

    PGN_p = ||v||_p · ||P(ψ)||_p            (bias included: ||v||_p · (||P(ψ)||_p^p + 1)^(1/p))

so every map costs a few elementwise passes over ψ and s. All norms are computed in float64 (p = 0.1
raises sums of a few thousand entries to the 10th power, beyond the float32 range). The binding
definitions are in ``DESIGN.md`` §1; the names of the maps come from :func:`map_name`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        The conv's input.
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
    if psi.shape[1] != geometry.in_channels:
        raise ValueError(f"psi has {psi.shape[1]} channels but the conv reads {geometry.in_channels}")
    h_out, w_out = geometry.output_size(psi.shape[2], psi.shape[3])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"psi of size {tuple(psi.shape[2:])} is smaller than the conv's window")
    return _patch_sums(psi, geometry, ps, include_bias)


def _patch_sums(psi: Tensor, geometry: ConvGeometry, ps: Sequence[float], include_bias: bool) -> Tensor:
    """:func:`patch_power_sums` without the input checks (the callers made them)."""
    sums = _power_sums(psi.to(torch.float64), ps, dim=1).transpose(0, 1)  # (B, P, h, w)
    if geometry.kernel_size != (1, 1) or geometry.padding != (0, 0):
        box = sums.new_ones(len(ps), 1, *geometry.kernel_size)
        sums = F.conv2d(sums, box, padding=geometry.padding, dilation=geometry.dilation, groups=len(ps))
    sums = sums.transpose(0, 1)
    return sums + 1.0 if include_bias else sums


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
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if resolution == "input":
        if output_size is None:
            raise ValueError("resolution='input' needs output_size=(H, W), the size the model "
                             "resizes its logits to")
        return _input_resolution(psi, logits, geometry, ps, labels, weights, include_bias,
                                 _check_size(output_size), bool(align_corners), chunk_rows)
    probs = torch.softmax(logits.to(torch.float64), dim=1)
    patch = _patch_sums(psi, geometry, ps, include_bias)
    maps = _combine("last", probs, patch, ps, labels, weights)
    return maps if output_size is None else resize_maps(maps, output_size, align_corners)


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
        The BatchNorm between ``conv_prev`` and the ReLU, in eval mode; None when there is none.
    psi : Tensor, shape (B, κ, h, w)
        ``relu(bn(u))``, the input of ``conv_last`` (its positive entries give the ReLU mask).
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

    Returns
    -------
    dict of str to Tensor
        ``map_name("deep", label, p)`` → (B, h, w) float64 (or (B, H, W) with ``output_size``).

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
    _check_conv_io(psi, logits, last)
    _check_activations(psi_prev=psi_prev)
    if prev.out_channels != last.in_channels:
        raise ValueError(f"conv_prev has {prev.out_channels} out-channels but conv_last reads {last.in_channels}")
    if psi_prev.shape[0] != psi.shape[0] or prev.output_size(*psi_prev.shape[2:]) != tuple(psi.shape[2:]):
        raise ValueError(
            f"conv_prev maps psi_prev {tuple(psi_prev.shape)} to size "
            f"{prev.output_size(*psi_prev.shape[2:])}, but psi is {tuple(psi.shape)}")
    scale = _bn_scale(bn, prev.out_channels).to(device=psi.device)

    probs = torch.softmax(logits.to(torch.float64), dim=1)
    kernel = conv_last.weight.detach().to(device=psi.device, dtype=torch.float64)[:, :, 0, 0]  # (C, κ)
    factor = (psi > 0).to(torch.float64) * scale[None, :, None, None]  # (B, κ, h, w)
    patch = _patch_sums(psi_prev, prev, ps, include_bias)
    maps = {}
    for label in labels:
        delta = factor * torch.einsum("ck,bchw->bkhw", kernel, label_vectors(probs, label, weights))
        maps.update(_norms("deep", label, _power_sums(delta, ps, dim=1), patch, ps))
    return maps if output_size is None else resize_maps(maps, output_size, align_corners)


# ----------------------------------------------------------------------------------------------
# internals


def _power_sums(x: Tensor, ps: Sequence[float], dim: int) -> Tensor:
    """(len(ps), ...) float64: ``Σ_dim |x|^p`` for every p.

    p = 1, 2, 0.5 use abs, square and sqrt (exact, cheaper); every other p shares one ``log|x|``
    and costs one ``exp`` pass (zeros give log = -inf and exp(p · -inf) = 0).
    """
    abs_x = x.abs() if x.dtype == torch.float64 else x.to(torch.float64).abs_()
    log_abs = abs_x.log() if any(p not in (0.5, 1.0, 2.0) for p in ps) else None
    sums = []
    for p in ps:
        if p == 1.0:
            sums.append(abs_x.sum(dim))
        elif p == 2.0:
            sums.append(abs_x.square().sum(dim))
        elif p == 0.5:
            sums.append(abs_x.sqrt().sum(dim))
        else:
            sums.append(torch.mul(log_abs, p).exp_().sum(dim))
    return torch.stack(sums)


def _norms(layer: str, label: str, vsums: Tensor, patch: Tensor, ps: Sequence[float]) -> dict[str, Tensor]:
    """``(Σ|v|^p · ||P||_p^p)^(1/p)`` per p, with a clear error instead of inf."""
    out = {}
    for i, p in enumerate(ps):
        value = (vsums[i] * patch[i]).pow(1.0 / p)
        if not torch.isfinite(value).all():
            raise ValueError(f"PGN {map_name(layer, label, p)} exceeds the float64 range: the "
                             "activations are too large for this p")
        out[map_name(layer, label, p)] = value
    return out


def _combine(layer: str, probs: Tensor, patch: Tensor, ps: Sequence[float], labels: Sequence[str],
             weights: str) -> dict[str, Tensor]:
    maps = {}
    for label in labels:
        vsums = _power_sums(label_vectors(probs, label, weights), ps, dim=1)
        maps.update(_norms(layer, label, vsums, patch, ps))
    return maps


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
    lam = lam.view(-1, 1)
    return x.index_select(2, i0 - offset) * (1.0 - lam) + x.index_select(2, i1 - offset) * lam


def _resize_cols(x: Tensor, width: int, align_corners: bool) -> Tensor:
    """Linear resize of (B, K, rows, w) along the columns only: torch's bilinear kernel with the row
    count unchanged, which maps every row to itself exactly."""
    return F.interpolate(x, size=(x.shape[2], width), mode="bilinear", align_corners=align_corners)


def _input_resolution(psi, logits, geometry, ps, labels, weights, include_bias, size, align_corners,
                      chunk_rows) -> dict[str, Tensor]:
    """Resolution "input" of :func:`last_layer_pgn` (inputs already checked), chunk by output row."""
    b, _, h, w = logits.shape
    big_h, big_w = size
    (kh, kw), (dh, dw), (ph, pw) = geometry.kernel_size, geometry.dilation, geometry.padding
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // (b * geometry.patch_size * big_w * 8))
    elif not _is_int(chunk_rows) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1 or None, got {chunk_rows!r}")
    rows = _linear_taps(h, big_h, align_corners, logits.device)
    z = logits.to(torch.float64)
    psi = F.pad(psi.to(torch.float64), (pw, pw, ph, ph))
    names = [map_name("last", label, p) for label in labels for p in ps]
    maps = {n: z.new_empty(b, big_h, big_w) for n in names}
    for start in range(0, big_h, chunk_rows):
        taps = tuple(t[start:start + chunk_rows] for t in rows)
        s0, s1 = int(taps[0].min()), int(taps[1].max()) + 1  # source rows of z this chunk reads
        z_up = _resize_cols(_resize_rows(z[:, :, s0:s1], taps, s0), big_w, align_corners)
        # the patches of source rows s0..s1-1 start at padded rows s0..s1-1 of ψ
        window = psi[:, :, s0:s1 + dh * (kh - 1)]
        patches = F.unfold(window, (kh, kw), dilation=(dh, dw)).view(b, geometry.patch_size, s1 - s0, w)
        patches = _resize_cols(_resize_rows(patches, taps, s0), big_w, align_corners)
        patch = _power_sums(patches, ps, dim=1)
        del patches
        if include_bias:
            patch += 1.0  # bilinear weights sum to 1, so the bias entry of Up(P) stays 1
        chunk = _combine("last", torch.softmax(z_up, dim=1), patch, ps, labels, weights)
        for n in names:
            maps[n][:, start:start + chunk_rows] = chunk[n]
    return maps


def _bn_scale(bn: nn.BatchNorm2d | None, channels: int) -> Tensor:
    """γ / sqrt(running_var + eps) as float64 (ones without a BatchNorm)."""
    if bn is None:
        return torch.ones(channels, dtype=torch.float64)
    if not isinstance(bn, nn.BatchNorm2d):
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


def _check_activations(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise TypeError(f"{name} must be a floating-point tensor of shape (B, channels, h, w), "
                            f"got {_describe(t)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"model activations contain NaN/inf ({name})")


def _check_conv_io(psi: Tensor, logits: Tensor, geometry: ConvGeometry) -> None:
    _check_activations(psi=psi, logits=logits)
    if psi.shape[1] != geometry.in_channels:
        raise ValueError(f"psi has {psi.shape[1]} channels but the conv reads {geometry.in_channels}")
    expected = (psi.shape[0], geometry.out_channels, *geometry.output_size(*psi.shape[2:]))
    if tuple(logits.shape) != expected:
        raise ValueError(f"logits have shape {tuple(logits.shape)} but the conv maps psi "
                         f"{tuple(psi.shape)} to {expected}")
