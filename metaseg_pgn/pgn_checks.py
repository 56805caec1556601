"""What the PGN factorisation accepts: the geometry of a convolution and the checks of the arguments.

Shared by the reference maps (:mod:`metaseg_pgn.pgn`), the fast CPU path (:mod:`metaseg_pgn.pgn_cpu`)
and the wrapper (:mod:`metaseg_pgn.wrapper`). Every check raises one error that names the argument
and the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

LABELS = ("oh", "uni")
WEIGHTS = ("paper", "gradient")


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
            if not is_int(value) or value < 1:
                raise ValueError(f"ConvGeometry.{name} must be an int >= 1, got {value!r}")
        for name, low in (("kernel_size", 1), ("dilation", 1), ("padding", 0)):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 2 and all(is_int(v) and v >= low for v in value)):
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


def geometry_of(conv: nn.Conv2d | ConvGeometry) -> ConvGeometry:
    """``conv`` itself if a :class:`ConvGeometry`, else :meth:`ConvGeometry.from_conv` of it."""
    if isinstance(conv, ConvGeometry):
        return conv
    if isinstance(conv, nn.Conv2d):
        return ConvGeometry.from_conv(conv)
    raise TypeError(f"conv must be an nn.Conv2d or a ConvGeometry, got {type(conv).__name__}")


def bn_scale(bn: nn.BatchNorm2d | None, channels: int) -> Tensor:
    """The BatchNorm's per-channel slope ``γ / sqrt(running_var + eps)``.

    Parameters
    ----------
    bn : nn.BatchNorm2d or None
        Any ``torch.nn.modules.batchnorm._BatchNorm`` in eval mode with running statistics.
    channels : int
        The channels it must have (conv_prev's out-channels).

    Returns
    -------
    Tensor, shape (channels,), float64
        Ones without a BatchNorm.
    """
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


def is_int(x) -> bool:
    """Whether ``x`` is an int (a bool is not)."""
    return isinstance(x, int) and not isinstance(x, bool)


def describe(x) -> str:
    """``x`` in an error message: dtype and shape of a tensor, else type and repr."""
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"


def check_p(p) -> None:
    """Raise ValueError unless ``p`` is a finite real number > 0."""
    if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or p <= 0:
        raise ValueError(f"every p must be a finite number > 0, got {p!r}")


def check_ps(ps) -> tuple[float, ...]:
    """The exponents as a tuple of floats; TypeError/ValueError for a non-sequence, a p <= 0 or two
    p with the same map name."""
    if isinstance(ps, (str, bytes)) or not isinstance(ps, Iterable):
        raise TypeError(f"ps must be a sequence of numbers > 0, got {ps!r}")
    ps = tuple(ps)
    for p in ps:
        check_p(p)
    if len({f"{p:g}" for p in ps}) != len(ps):
        raise ValueError(f"ps has duplicate exponents (same map name): {ps!r}")
    return tuple(float(p) for p in ps)


def check_label(label) -> None:
    """Raise ValueError unless ``label`` is one of :data:`LABELS`."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")


def check_labels(labels) -> tuple[str, ...]:
    """The labels as a tuple (possibly empty); a string or duplicates are refused."""
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of labels like ('oh', 'uni'), got the string {labels!r}")
    labels = tuple(labels)
    for label in labels:
        check_label(label)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicates: {labels!r}")
    return labels


def check_weights(weights) -> None:
    """Raise ValueError unless ``weights`` is one of :data:`WEIGHTS`."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")


def check_size(size) -> tuple[int, int]:
    """``(H, W)`` as ints >= 1, else ValueError."""
    if not (isinstance(size, (tuple, list, torch.Size)) and len(size) == 2
            and all(is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"size must be a pair of ints >= 1 (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def resolve_bias(include_bias, has_bias: bool) -> bool:
    """``include_bias`` with None meaning ``has_bias``; True for a conv without bias is refused."""
    if include_bias is None:
        return has_bias
    if not isinstance(include_bias, bool):
        raise TypeError(f"include_bias must be True, False or None, got {include_bias!r}")
    if include_bias and not has_bias:
        raise ValueError("include_bias=True but the conv has no bias")
    return include_bias


def check_activations(finite: bool = True, **tensors: Tensor) -> None:
    """Type and shape; with ``finite`` also no NaN/inf (the PGN functions check ψ lazily, see
    :func:`metaseg_pgn.pgn.combine`)."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise TypeError(f"{name} must be a floating-point tensor of shape (B, channels, h, w), "
                            f"got {describe(t)}")
        if finite and not all_finite(t):
            raise ValueError(f"model activations contain NaN/inf ({name})")


def all_finite(t: Tensor) -> bool:
    """Whether ``t`` has no NaN/inf. A sum is finite iff every entry is, unless it overflows: only
    then (or for 16-bit types, whose sums overflow easily) the elementwise check runs, which is
    ~30 times slower than the sum."""
    if t.dtype in (torch.float32, torch.float64) and bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def check_conv_io(psi: Tensor, logits: Tensor, geometry: ConvGeometry) -> None:
    """Shapes and types; NaN/inf in the logits (ψ is checked lazily, see
    :func:`metaseg_pgn.pgn.combine`)."""
    check_activations(psi=psi, finite=False)
    check_activations(logits=logits)
    if psi.shape[1] != geometry.in_channels:
        raise ValueError(f"psi has {psi.shape[1]} channels but the conv reads {geometry.in_channels}")
    expected = (psi.shape[0], geometry.out_channels, *geometry.output_size(*psi.shape[2:]))
    if tuple(logits.shape) != expected:
        raise ValueError(f"logits have shape {tuple(logits.shape)} but the conv maps psi "
                         f"{tuple(psi.shape)} to {expected}")
