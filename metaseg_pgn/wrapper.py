"""``PGNModel``: wrap any segmentation ``nn.Module`` once and get its PGN maps with every forward.

The wrapper runs the model once under ``torch.no_grad`` with forward hooks on its convolutions,
finds the last convolution (the one whose output, possibly bilinearly resized, is the model
output), and computes the maps of :mod:`metaseg_pgn.pgn` from that conv's input ψ and output z.
With ``deeper=True`` it also finds ``conv_prev → BatchNorm2d (eval) → ReLU → [Dropout] → conv_last``
and checks it numerically before computing the deeper-layer maps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pgn import (
    LABELS,
    PGN_PS,
    RESOLUTIONS,
    ConvGeometry,
    _check_labels,
    _check_ps,
    _all_finite,
    _check_weights,
    _linear_taps,
    _resize_cols,
    _resize_rows,
    deeper_layer_pgn,
    last_layer_pgn,
    resize_maps,
)

__all__ = ["PGNModel", "PGNOutput", "argmax_channels"]


@dataclass
class PGNOutput:
    """What :class:`PGNModel` returns for an image batch.

    Attributes
    ----------
    logits : Tensor, shape (B, C, H, W)
        The model output (``out["out"]`` for a dict output), model dtype.
    feature_logits : Tensor, shape (B, C, h, w)
        The last conv's output z (equal to ``logits`` when the model does not resize).
    maps : dict of str to Tensor, float64
        PGN maps named by :func:`metaseg_pgn.pgn.map_name`: (B, h, w) for resolution
        ``"feature"``, (B, H, W) for ``"input"``.
    align_corners : bool
        ``align_corners`` of the model's final resize (used by :meth:`maps_at`).
    probs : Tensor, shape (B, C, H, W)
        ``softmax(logits)``, model dtype: computed on first access (the same softmax any pipeline
        computes from the logits; the maps do not need it) and kept.
    pred : Tensor, shape (B, H, W), int64
        ``argmax(logits)`` (the first maximum), computed on first access and kept.
    """

    logits: Tensor
    feature_logits: Tensor
    maps: dict[str, Tensor] = field(default_factory=dict)
    align_corners: bool = False
    _probs: Tensor | None = field(default=None, repr=False)
    _pred: Tensor | None = field(default=None, repr=False)

    @property
    def probs(self) -> Tensor:
        if self._probs is None:
            self._probs = torch.softmax(self.logits, dim=1)
        return self._probs

    @property
    def pred(self) -> Tensor:
        if self._pred is None:
            self._pred = argmax_channels(self.logits)
        return self._pred

    def maps_at(self, size: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """The maps resized bilinearly (like the logits) to ``size``, default the output size (H, W).

        Returns
        -------
        dict of str to Tensor, each (B, *size) float64
        """
        return resize_maps(self.maps, tuple(self.logits.shape[-2:]) if size is None else size,
                           self.align_corners)


def argmax_channels(y: Tensor, chunk_elems: int = 2**22) -> Tensor:
    """``y.argmax(1)`` for (B, C, H, W), about 30 times faster on CPU.

    torch's argmax over a non-innermost dim is slow on CPU (0.14 s for 19 x 512 x 1024). Here, by
    chunks of rows: ``first = 1 + sign(y - max)`` (1 at the maxima) and the index is
    ``Σ_c c · first_c``, one matrix product; chunks with a tie or a NaN (where that is not one
    index) use torch's argmax, so the result is always argmax's (first maximum).
    """
    if y.dim() != 4 or y.device.type != "cpu" or not y.is_floating_point():
        return y.argmax(1)
    b, c, h, w = y.shape
    out = torch.empty(b, h, w, dtype=torch.int64, device=y.device)
    rows = max(1, chunk_elems // max(1, b * c * w))
    index = torch.arange(c, dtype=y.dtype if y.dtype == torch.float64 else torch.float32).view(1, c)
    for r0 in range(0, h, rows):
        part = y[:, :, r0:r0 + rows]
        if part.dtype not in (torch.float32, torch.float64):
            part = part.float()
        first = torch.sign(part - part.amax(1, keepdim=True)).add_(1.0)
        if float(first.sum()) != first.numel() // c:  # a tie or NaN in this chunk
            out[:, r0:r0 + rows] = part.argmax(1)
            continue
        idx = torch.matmul(index.to(first.dtype), first.reshape(b, c, -1)).view(b, part.shape[2], w)
        out[:, r0:r0 + rows] = idx.round_().long()
    return out


@dataclass
class _Call:
    """One hooked module call: the module's name, the module, its first input and its output."""

    name: str
    module: nn.Module
    input: Tensor
    output: Tensor
    versions: tuple  # version counters of input and output when the hook ran


class PGNModel(nn.Module):
    """A segmentation model that also returns its pixel-wise gradient norms.

    Parameters
    ----------
    model : nn.Module
        Maps (B, 3, H, W) to logits (B, C, H, W) or to a dict with key ``"out"``; its last
        operation must be a ``Conv2d`` with C out-channels, optionally followed by a bilinear resize.
        The wrapper does not change its train/eval mode (the deeper layer needs eval mode).
    last_conv : str or None
        Qualified name of the last conv in ``model.named_modules()``. None takes the model's own
        ``last_conv_name`` attribute when it names a ``Conv2d`` (the project's DeepLabV3+ has one),
        else finds the conv on the first call (keeping every conv's input and output alive during
        that call) and remembers its name. Either way the first call checks that the model output is
        that conv's output (bilinearly resized) on 17 rows, later calls on 3 rows.
    ps, labels, weights
        As in :func:`metaseg_pgn.pgn.last_layer_pgn`. Empty ``labels`` gives no maps.
    resolution : {"feature", "input"}
        ``"feature"``: maps at the last conv's resolution (h, w); ``"input"``: the exact
        per-output-pixel maps (B, H, W) (the deeper-layer maps, defined at (h, w) only, are resized).
    include_bias : bool or None
        None: include each conv's bias iff it has one; False: never; True: as None, but the last conv
        must have a bias.
    deeper : bool
        Also compute the deeper-layer maps (``pgn_deep_*``).
    align_corners : bool or None
        Of the model's final bilinear resize; None reads ``model.align_corners`` (default False).

    Attributes
    ----------
    last_conv : str or None
        The last conv's name (set by the first call when it was None).
    deeper_layers : tuple of (str, str or None) or None
        Names of ``conv_prev`` and its BatchNorm, set by the first call with ``deeper=True``.
    """

    def __init__(
        self,
        model: nn.Module,
        last_conv: str | None = None,
        *,
        ps: Sequence[float] = PGN_PS,
        labels: Iterable[str] = LABELS,
        weights: str = "paper",
        resolution: str = "feature",
        include_bias: bool | None = None,
        deeper: bool = False,
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.ps = _check_ps(ps)
        self.labels = _check_labels(labels)
        _check_weights(weights)
        self.weights = weights
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.resolution = resolution
        if include_bias is not None and not isinstance(include_bias, bool):
            raise TypeError(f"include_bias must be True, False or None, got {include_bias!r}")
        self.include_bias = include_bias
        self.deeper = bool(deeper)
        if align_corners is None:
            align_corners = getattr(model, "align_corners", False)
        self.align_corners = bool(align_corners)
        self._hint = None  # where last_conv came from, for error messages
        if last_conv is None:
            hint = getattr(model, "last_conv_name", None)
            if isinstance(hint, str) and isinstance(dict(model.named_modules()).get(hint), nn.Conv2d):
                last_conv, self._hint = hint, "model.last_conv_name"
        if last_conv is not None:
            self._named_conv(last_conv)
        self.last_conv = last_conv
        self.deeper_layers: tuple[str, str | None] | None = None
        self._verified = False  # the first call checks the structure on more rows

    def forward(self, x: Tensor) -> PGNOutput:
        """Run the model once and compute the maps.

        Parameters
        ----------
        x : Tensor, shape (B, 3, H, W)

        Returns
        -------
        PGNOutput
            ``probs`` and ``pred`` are computed when first read.
        """
        watched = self._watched()
        calls = self._run(x, watched)
        y = self._output(calls.pop("__output__"))
        last = self._find_last_conv(calls, y)
        self.last_conv = last.name

        maps: dict[str, Tensor] = {}
        if self.labels:
            conv = last.module
            kw = dict(ps=self.ps, labels=self.labels, weights=self.weights)
            if self.resolution == "input":
                kw.update(resolution="input", output_size=tuple(y.shape[-2:]), align_corners=self.align_corners)
            maps.update(last_layer_pgn(last.input, last.output, conv, include_bias=self.include_bias, **kw))
            if self.deeper:
                prev, bn = self._find_deeper(calls, last)
                self.deeper_layers = (prev.name, None if bn is None else bn.name)
                kw.pop("resolution", None)
                include_prev = self.include_bias and prev.module.bias is not None
                maps.update(deeper_layer_pgn(prev.input, prev.module, None if bn is None else bn.module,
                                             last.input, last.output, conv, include_bias=include_prev, **kw))
        self._verified = True
        return PGNOutput(logits=y, feature_logits=last.output, maps=maps, align_corners=self.align_corners)

    def _watched(self) -> dict[str, nn.Module]:
        """The modules to hook: the last conv (all convs while it is unknown), and for the deeper
        layer its conv and BatchNorm (all convs and BatchNorms while they are unknown)."""
        if self.last_conv is not None and (not self.deeper or self.deeper_layers is not None):
            names = [self.last_conv] + ([n for n in self.deeper_layers if n is not None] if self.deeper else [])
            cached = getattr(self, "_watched_cache", None)
            if cached is None or cached[0] != names:
                modules = dict(self.model.named_modules())
                self._watched_cache = (names, {n: modules[n] for n in names})
            return dict(self._watched_cache[1])
        modules = dict(self.model.named_modules())
        if self.last_conv is None:
            watched = {n: m for n, m in modules.items() if isinstance(m, nn.Conv2d)}
        else:
            watched = {self.last_conv: self._named_conv(self.last_conv)}
        if self.deeper:
            if self.deeper_layers is None:
                watched.update((n, m) for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)))
            else:
                watched.update((n, modules[n]) for n in self.deeper_layers if n is not None)
        return watched

    # ------------------------------------------------------------------------------------------

    def _named_conv(self, name: str) -> nn.Conv2d:
        modules = dict(self.model.named_modules())
        if not isinstance(name, str) or name not in modules:
            raise ValueError(f"last_conv={name!r} is not a module of the model")
        conv = modules[name]
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"last_conv={name!r} is a {type(conv).__name__}, not an nn.Conv2d")
        ConvGeometry.from_conv(conv)  # refuses stride, groups, padding modes early
        return conv

    def _run(self, x: Tensor, watched: dict[str, nn.Module]) -> dict:
        """Run the model once; returns {name: [_Call, ...]} in call order plus '__output__'."""
        calls: dict = {}
        order: list[_Call] = []

        def hook_for(name):
            def hook(module, args, output):
                if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                    call = _Call(name, module, args[0], output, (_version(args[0]), _version(output)))
                    calls.setdefault(name, []).append(call)
                    order.append(call)
            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in watched.items()]
        try:
            with torch.no_grad():
                out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        calls["__output__"] = out
        calls["__order__"] = order
        return calls

    @staticmethod
    def _output(out) -> Tensor:
        if isinstance(out, Mapping):
            if "out" not in out:
                raise ValueError(f"the model returned a dict without key 'out' (keys {sorted(out)})")
            out = out["out"]
        if not isinstance(out, Tensor) or out.dim() != 4 or not out.is_floating_point():
            raise ValueError(f"the model output must be floating-point logits (B, C, H, W), got "
                             f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
        return out

    def _find_last_conv(self, calls: dict, y: Tensor) -> _Call:
        c = y.shape[1]
        candidates = [call for call in reversed(calls["__order__"]) if isinstance(call.module, nn.Conv2d)
                      and (self.last_conv is None or call.name == self.last_conv)]
        source = f" (from {self._hint})" if self._hint else ""
        if self.last_conv is not None:
            conv = candidates[0].module if candidates else self._named_conv(self.last_conv)
            if conv.out_channels != c:
                raise ValueError(f"last_conv={self.last_conv!r}{source} has {conv.out_channels} out-channels "
                                 f"but the model output has C={c}")
            if not candidates:
                raise ValueError(f"last_conv={self.last_conv!r}{source} was not called in the forward pass")
        rows = 3 if self._verified else 17
        for call in candidates:
            if call.output.shape[:2] == y.shape[:2] and self._is_output(call.output, y, self.align_corners, rows):
                _check_single_call(calls, call, "last conv")
                _check_unmodified(call, "last conv")
                ConvGeometry.from_conv(call.module)
                return call
        hint = ""
        if any(call.output.shape[:2] == y.shape[:2] and self._is_output(call.output, y, not self.align_corners)
               for call in candidates):
            hint = (f" (it does with align_corners={not self.align_corners}: pass "
                    f"align_corners={not self.align_corners})")
        if not _all_finite(y):
            raise ValueError("the model output contains NaN/inf, so it cannot be matched to a conv's output "
                             "(and no PGN map would be finite)")
        which = (f"the output of last_conv={self.last_conv!r}{source} does not match it" if self.last_conv is not None
                 else f"none of the {len(candidates)} Conv2d calls matches it")
        raise ValueError(
            f"model output does not come from a Conv2d with C={c} out-channels followed at most by a "
            f"bilinear resize (align_corners={self.align_corners}): {which}{hint}")

    @staticmethod
    def _is_output(z: Tensor, y: Tensor, align_corners: bool, rows: int = 17) -> bool:
        """Whether ``y`` is ``z`` bilinearly resized, checked on up to ``rows`` evenly spaced rows of
        ``y`` (resizing all of z would cost as much as the model's own final resize)."""
        if z.shape[-2:] == y.shape[-2:]:
            return z is y or _close(z, y)
        h, (big_h, big_w) = z.shape[-2], y.shape[-2:]
        rows = _sample_rows(big_h, rows, y.device)
        row_taps = tuple(t[rows] for t in _linear_taps(h, big_h, align_corners, y.device))
        resized = _resize_cols(_resize_rows(z, row_taps), big_w, align_corners)
        return _close(resized, y[:, :, rows])

    def _find_deeper(self, calls: dict, last: _Call) -> tuple[_Call, _Call | None]:
        """Find conv_prev and its BatchNorm with ψ == relu(bn(u)) (or relu(u)), u = conv_prev's output."""
        order = calls["__order__"]
        before = order[:next(i for i, call in enumerate(order) if call is last)]
        psi = last.input
        # the first call checks whole tensors, later ones (same structure) 3 rows
        rows = _sample_rows(psi.shape[2], 3, psi.device) if self._verified else None

        def part(t: Tensor) -> Tensor:
            return t if rows is None or t.dim() != 4 else t.index_select(2, rows)
        convs = [call for call in before if isinstance(call.module, nn.Conv2d)]
        bns = [call for call in before if isinstance(call.module, nn.BatchNorm2d)]
        for bn in reversed(bns):
            producer = next((c for c in reversed(convs) if _same_tensor(c.output, bn.input)), None)
            if producer is None or bn.input.shape != psi.shape:
                continue
            if bn.module.training:
                raise ValueError(f"the BatchNorm {bn.name!r} before the last conv is in training mode: the "
                                 "deeper-layer factorisation needs eval mode (call model.eval())")
            if _close(torch.relu(_bn_eval(bn.module, part(producer.output))), part(psi)):
                return self._checked_deeper(calls, producer, bn)
        for conv in reversed(convs):
            if conv.output.shape == psi.shape and _close(torch.relu(part(conv.output)), part(psi)):
                return self._checked_deeper(calls, conv, None)
        seen = ", ".join(f"{c.name} ({type(c.module).__name__})" for c in before[-6:]) or "none"
        raise ValueError(
            f"the deeper-layer factorisation does not apply: the input of the last conv {last.name!r} is "
            "neither relu(bn(u)) for a BatchNorm2d (eval) fed directly by a Conv2d's output u, nor relu(u) "
            f"of a Conv2d's output (last hooked calls before it: {seen}). It needs conv -> BatchNorm "
            "-> ReLU -> [eval Dropout] -> 1 x 1 conv, so that a pixel's loss depends on the previous "
            "conv's output at that pixel only")

    @staticmethod
    def _checked_deeper(calls, conv: _Call, bn: _Call | None) -> tuple[_Call, _Call | None]:
        _check_single_call(calls, conv, "deeper-layer conv")
        _check_unmodified(conv, "deeper-layer conv")
        ConvGeometry.from_conv(conv.module)
        return conv, bn


def _bn_eval(bn: nn.BatchNorm2d, u: Tensor) -> Tensor:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm {bn} has no running statistics, so it normalises with batch "
                         "statistics that couple all pixels: the deeper-layer factorisation does not apply")
    return F.batch_norm(u, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal up to the rounding of the lower of the two dtypes (bf16/fp16 autocast included)."""
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype and torch.equal(a, b):
        return True
    eps = max(torch.finfo(a.dtype).eps, torch.finfo(b.dtype).eps)
    tol = max(1e-5, 4 * eps)
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    scale = float(b.abs().max()) if b.numel() else 0.0
    if not math.isfinite(scale):  # NaN/inf: not close (allclose refuses a NaN tolerance)
        return False
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * (1.0 + scale)))


def _sample_rows(height: int, count: int, device: torch.device) -> Tensor:
    """Up to ``count`` evenly spaced row indices (first and last included)."""
    return torch.linspace(0, height - 1, min(height, count), device=device).round().long().unique()


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def _version(t: Tensor):
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


def _check_single_call(calls: dict, call: _Call, role: str) -> None:
    n = len(calls.get(call.name, ()))
    if n != 1:
        raise ValueError(f"the {role} {call.name!r} is called {n} times in one forward (shared weights): "
                         "its weight gradient sums over the calls, so a pixel's gradient is not one "
                         "outer product")


def _check_unmodified(call: _Call, role: str) -> None:
    if (_version(call.input), _version(call.output)) != call.versions:
        raise ValueError(f"the model modifies the input or output of the {role} {call.name!r} in place "
                         "after the conv ran, so the hooked tensors no longer hold the values the "
                         "conv read and wrote")
