"""``PGNModel``: wrap a segmentation model once and get its PGN maps with every forward.

The wrapper runs the model once under ``torch.no_grad`` with forward hooks on its convolutions,
picks the logits from whatever the model returns (:func:`metaseg_pgn.outputs.select_logits`),
finds the last convolution (the one whose output, possibly bilinearly resized, is the logits) and
computes the maps of :mod:`metaseg_pgn.pgn` from that conv's input ψ and output z. With
``deeper=True`` it also finds ``conv_prev → BatchNorm (eval) → ReLU/ReLU6 → [eval Dropout] →
conv_last`` for the deeper-layer maps.

Every call checks, on every pixel, what the factorisation assumes (:mod:`metaseg_pgn.verify`):
the last conv's output is the plain convolution of its own weight and bias, the logits are that
output (resized), and for the deeper layer the pointwise chain and the previous conv. A model that
does not satisfy them is refused with the reason; nothing is assumed from the first call.

Mixed precision: the model may run under ``torch.autocast``; the checks and the maps run outside
it, in float32 (float64 for float64 models), from the captured tensors as the convs read them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from .outputs import Output, check_output_selector, select_logits
from .pgn import (
    LABELS,
    PGN_PS,
    RESOLUTIONS,
    ConvGeometry,
    deeper_layer_pgn,
    last_layer_pgn,
    resize_maps,
)
from .pgn_checks import all_finite, check_labels, check_ps, check_weights
from .verify import activation_mismatch, conv_mismatch, resize_mismatch

__all__ = ["PGNModel", "PGNOutput", "argmax_channels"]

#: Random projections of the previous conv's output channels checked per call (deeper layer): its
#: recomputation costs this many output channels instead of all (see metaseg_pgn.verify).
PREV_CONV_PROJECTIONS = 2
#: Random projections of the C logits compared per output pixel: the check resizes this many
#: channels instead of C (the last conv itself is recomputed with all its channels).
OUTPUT_PROJECTIONS = 2
#: Candidate pairs of C-channel convs tried when explaining a refused output (lraspp's sum).
_PAIR_CANDIDATES = 6


@dataclass
class PGNOutput:
    """What :class:`PGNModel` returns for an image batch.

    Attributes
    ----------
    logits : Tensor, shape (B, C, H, W)
        The model's logits (picked by the wrapper's ``output`` selector), model dtype.
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
    model : nn.Module or callable
        Maps an image batch (B, 3, H, W) to its logits, as a tensor or inside what it returns (see
        ``output``); the logits must be the output of a ``Conv2d`` with C out-channels, optionally
        bilinearly resized. A plain callable (``lambda x: net(pixel_values=x).logits``) works too:
        its convolutions are then found by a global forward hook during each call, and the modules
        are named from the nn.Modules it is bound to or closes over (else ``TypeName#id``). The
        wrapper does not change the train/eval mode (the deeper layer needs eval mode).
    last_conv : str, nn.Conv2d or None
        The last conv, by qualified name in ``model.named_modules()`` or as the module itself. None
        takes the model's own ``last_conv_name`` attribute when it names a ``Conv2d`` (the
        project's DeepLabV3+ has one), else the first call finds it (keeping every conv's input
        and output alive during that call) and remembers it.
    output : None, str, int or callable
        Where the logits are in the model's return value: None tries the tensor itself, key
        ``'out'`` then ``'logits'`` of a dict (torchvision, HuggingFace), attribute ``logits``;
        a str is a key or attribute, an int an index of a tuple, a callable picks them
        (:func:`metaseg_pgn.outputs.select_logits`).
    ps, labels, weights
        As in :func:`metaseg_pgn.pgn.last_layer_pgn`. Empty ``labels`` gives no maps (the checks
        still run).
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
    activation_clip : float or None
        Upper clip of the activation before the last conv found by the latest call (6.0 for a
        ReLU6 that clipped), None for a ReLU.

    Notes
    -----
    A parametrised weight (``torch.nn.utils.parametrize``) is read as the effective kernel, so the
    maps are the gradient norms w.r.t. that kernel (docs/design.md §1), not w.r.t. the
    parametrisation's own tensors. A ``Conv2d`` subclass whose ``forward`` transforms its weight
    (weight standardisation, a cosine classifier) is refused: its kernel is not ``weight``.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Any],
        last_conv: str | nn.Conv2d | None = None,
        *,
        output: Output = None,
        ps: Sequence[float] = PGN_PS,
        labels: Iterable[str] = LABELS,
        weights: str = "paper",
        resolution: str = "feature",
        include_bias: bool | None = None,
        deeper: bool = False,
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
        self.model = model
        self.output = check_output_selector(output)
        self.ps = check_ps(ps)
        self.labels = check_labels(labels)
        check_weights(weights)
        self.weights = weights
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.resolution = resolution
        if include_bias is not None and not isinstance(include_bias, bool):
            raise TypeError(f"include_bias must be True, False or None, got {include_bias!r}")
        self.include_bias = include_bias
        self.deeper = bool(deeper)
        if align_corners is None:
            align_corners = getattr(_root_module(model), "align_corners", False)
        self.align_corners = bool(align_corners)
        # module objects live in tuples, so that nn.Module does not register them as submodules
        self._names: dict[int, str] = {id(m): n for root in _roots(model) for n, m in root.named_modules()}
        self._hint = None  # where last_conv came from, for error messages
        self._last: tuple[nn.Conv2d, ...] = ()
        self._deeper: tuple[nn.Module, ...] = ()  # conv_prev[, bn]
        if last_conv is None:
            hint = getattr(_root_module(model), "last_conv_name", None)
            if isinstance(hint, str) and isinstance(self._module(hint, strict=False), nn.Conv2d):
                last_conv, self._hint = hint, "model.last_conv_name"
        if last_conv is not None:
            self._last = (self._named_conv(last_conv),)
            last_conv = self._name(self._last[0])
        self.last_conv = last_conv
        self.deeper_layers: tuple[str, str | None] | None = None
        self.activation_clip: float | None = None

    def forward(self, x: Tensor) -> PGNOutput:
        """Run the model once, check the factorisation on every pixel and compute the maps.

        Parameters
        ----------
        x : Tensor, shape (B, 3, H, W)

        Returns
        -------
        PGNOutput
            ``probs`` and ``pred`` are computed when first read.

        Raises
        ------
        ValueError
            The logits are not a (resized) conv output, the conv is not the plain convolution of
            its own weight and bias, the deeper layer's chain does not hold, NaN/inf activations.
        """
        calls, out = self._run(x)
        y = select_logits(out, self.output)
        if not all_finite(y):
            raise ValueError("the model output contains NaN/inf, so it cannot be matched to a conv's output "
                             "(and no PGN map would be finite)")
        with parametrize.cached():  # a parametrised weight is evaluated once for checks and maps
            last = self._find_last_conv(calls, y)
            psi = last.input.detach().to(last.output.dtype)  # as the conv read it (autocast rounds)
            prev = bn = None
            if self.deeper:
                prev, bn, self.activation_clip = self._find_deeper(calls, last)
                self._deeper = (prev.module,) + (() if bn is None else (bn.module,))
                self.deeper_layers = (prev.name, None if bn is None else bn.name)
            self._last = (last.module,)
            self.last_conv = last.name
            maps: dict[str, Tensor] = {}
            if self.labels:
                kw = dict(ps=self.ps, labels=self.labels, weights=self.weights)
                if self.resolution == "input":
                    kw.update(resolution="input", output_size=tuple(y.shape[-2:]), align_corners=self.align_corners)
                maps.update(last_layer_pgn(psi, last.output, last.module, include_bias=self.include_bias, **kw))
                if self.deeper:
                    kw.pop("resolution", None)
                    include_prev = self.include_bias and prev.module.bias is not None
                    psi_prev = prev.input.detach().to(prev.output.dtype)
                    maps.update(deeper_layer_pgn(psi_prev, prev.module, None if bn is None else bn.module,
                                                 last.input, last.output, last.module, include_bias=include_prev,
                                                 clip=self.activation_clip, **kw))
        return PGNOutput(logits=y, feature_logits=last.output, maps=maps, align_corners=self.align_corners)

    # ------------------------------------------------------------------------------------------
    # modules and hooks

    def _module(self, name: str, strict: bool = True) -> nn.Module | None:
        for root in _roots(self.model):
            found = dict(root.named_modules()).get(name)
            if found is not None:
                return found
        if strict:
            raise ValueError(f"last_conv={name!r} is not a module of the model")
        return None

    def _name(self, module: nn.Module) -> str:
        return self._names.get(id(module)) or f"{type(module).__name__}#{id(module):x}"

    def _named_conv(self, conv: str | nn.Conv2d) -> nn.Conv2d:
        if isinstance(conv, str):
            module = self._module(conv)
        elif isinstance(conv, nn.Module):
            module = conv
        else:
            raise TypeError(f"last_conv must be a module name, an nn.Conv2d or None, got {conv!r}")
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f"last_conv={conv!r} is a {type(module).__name__}, not an nn.Conv2d")
        ConvGeometry.from_conv(module)  # refuses stride, groups, padding modes early
        return module

    def _watched(self) -> dict[int, nn.Module] | None:
        """The modules to hook by id; None: every Conv2d (and BatchNorm for the deeper layer), for
        a call that still has to find them."""
        if not self._last or (self.deeper and not self._deeper):
            return None
        return {id(m): m for m in self._last + (self._deeper if self.deeper else ())}

    def _run(self, x: Tensor) -> tuple[dict, Any]:
        """Run the model once; returns ({name: [_Call, ...]} plus '__order__', the model's output)."""
        watched = self._watched()
        types = (nn.Conv2d, _BatchNorm) if self.deeper else (nn.Conv2d,)
        calls: dict = {"__order__": []}

        def hook(module, args, output):
            if (id(module) in watched) if watched is not None else isinstance(module, types):
                if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                    call = _Call(self._name(module), module, args[0], output,
                                 (_version(args[0]), _version(output)))
                    calls.setdefault(call.name, []).append(call)
                    calls["__order__"].append(call)

        if isinstance(self.model, nn.Module):
            targets = (watched.values() if watched is not None else
                       [m for m in self.model.modules() if isinstance(m, types)])
            handles = [m.register_forward_hook(hook) for m in targets]
        else:  # a plain callable: its modules are known only while it runs
            handles = [nn.modules.module.register_module_forward_hook(hook)]
        try:
            with torch.no_grad():
                out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return calls, out

    # ------------------------------------------------------------------------------------------
    # the last conv

    def _find_last_conv(self, calls: dict, y: Tensor) -> _Call:
        c = y.shape[1]
        source = f" (from {self._hint})" if self._hint else ""
        if self._last:
            conv = self._last[0]
            name = self._name(conv)
            if conv.out_channels != c:
                raise ValueError(f"last_conv={name!r}{source} has {conv.out_channels} out-channels "
                                 f"but the model output has C={c}")
            candidates = [call for call in calls["__order__"] if call.module is conv]
            if not candidates:
                raise ValueError(f"last_conv={name!r}{source} was not called in the forward pass")
        else:
            candidates = [call for call in reversed(calls["__order__"])
                          if isinstance(call.module, nn.Conv2d) and call.module.out_channels == c]
        found = {}
        for call in candidates:
            found[id(call)] = resize_mismatch(call.output, y, self.align_corners, OUTPUT_PROJECTIONS)
            if found[id(call)].ok:
                _check_single_call(calls, call, "last conv")
                _check_unmodified(call, "last conv")
                ConvGeometry.from_conv(call.module)
                _check_plain_conv(call, "last conv")
                return call
        raise ValueError(self._explain_no_match(calls, candidates, found, y, source))

    def _explain_no_match(self, calls, candidates, found: dict, y: Tensor, source: str) -> str:
        c = y.shape[1]
        head = (f"model output does not come from a Conv2d with C={c} out-channels followed at most by a "
                f"bilinear resize (align_corners={self.align_corners})")
        for call in candidates:
            if _version(call.output) != call.versions[1]:
                return (f"the model modifies the output of the conv {call.name!r} in place after the conv "
                        "ran, so the hooked tensors no longer hold the values the conv wrote")
        if any(resize_mismatch(call.output, y, not self.align_corners).ok for call in candidates):
            return (f"{head}: it does with align_corners={not self.align_corners}: pass "
                    f"align_corners={not self.align_corners}")
        pool = candidates[:_PAIR_CANDIDATES]
        for i, a in enumerate(pool):
            for b in pool[i + 1:]:
                if a.output.shape == b.output.shape and resize_mismatch(a.output + b.output, y, self.align_corners).ok:
                    return (f"{head}: it is the sum of the outputs of two convs, {b.name!r} and {a.name!r} "
                            "(as in torchvision's lraspp_*): the logits are not one conv's output, so the "
                            "'last layer' is not one kernel and the factorisation does not apply")
        if self._last:
            which = f"the output of last_conv={candidates[0].name!r}{source} does not match it"
        else:
            which = f"none of the {len(candidates)} Conv2d calls with {c} out-channels matches it"
        close = [(m, call) for call in candidates for m in [found.get(id(call))]
                 if m is not None and m.relative < 0.5]
        if close:
            m, call = min(close, key=lambda t: t[0].relative)
            return (f"{head}: {which}; the output of {call.name!r} {m.describe()} at the precision of "
                    f"{y.dtype}: an operation after the conv (a scaling, a temperature, a normalisation) "
                    "changes the logits, so they are not that conv's output")
        return f"{head}: {which}"

    # ------------------------------------------------------------------------------------------
    # the deeper layer

    def _find_deeper(self, calls: dict, last: _Call) -> tuple[_Call, _Call | None, float | None]:
        """conv_prev, its BatchNorm (or None) and the activation's clip, with ψ == act(bn(u)) on
        every element, u = conv_prev's output."""
        order = calls["__order__"]
        before = order[:next(i for i, call in enumerate(order) if call is last)]
        psi = last.input
        convs = [call for call in before if isinstance(call.module, nn.Conv2d)]
        bns = [call for call in before if isinstance(call.module, _BatchNorm)]
        closest = None
        for bn in reversed(bns):
            producer = next((c for c in reversed(convs) if _same_tensor(c.output, bn.input)), None)
            if producer is None or bn.input.shape != psi.shape:
                continue
            if bn.module.training:
                raise ValueError(f"the BatchNorm {bn.name!r} before the last conv is in training mode: the "
                                 "deeper-layer factorisation needs eval mode (call model.eval())")
            m, clip = activation_mismatch(producer.output, bn.module, psi)
            if m.ok:
                return self._checked_deeper(calls, producer, bn) + (clip,)
            closest = closest or (bn.name, m)
        for conv in reversed(convs):
            if conv.output.shape == psi.shape:
                m, clip = activation_mismatch(conv.output, None, psi)
                if m.ok:
                    return self._checked_deeper(calls, conv, None) + (clip,)
                closest = closest or (conv.name, m)
        seen = ", ".join(f"{c.name} ({type(c.module).__name__})" for c in before[-6:]) or "none"
        near = "" if closest is None else f"; relu/clip of {closest[0]!r}'s output {closest[1].describe()}"
        raise ValueError(
            f"the deeper-layer factorisation does not apply: the input of the last conv {last.name!r} is "
            "neither relu(bn(u)) (or ReLU6-clipped) for a BatchNorm (eval) fed directly by a Conv2d's "
            f"output u, nor relu(u) of a Conv2d's output, on every element (last hooked calls before it: "
            f"{seen}{near}). It needs conv -> BatchNorm -> ReLU/ReLU6 -> [eval Dropout] -> 1 x 1 conv, so "
            "that a pixel's loss depends on the previous conv's output at that pixel only")

    @staticmethod
    def _checked_deeper(calls, conv: _Call, bn: _Call | None) -> tuple[_Call, _Call | None]:
        _check_single_call(calls, conv, "deeper-layer conv")
        _check_unmodified(conv, "deeper-layer conv")
        ConvGeometry.from_conv(conv.module)
        _check_plain_conv(conv, "deeper-layer conv", PREV_CONV_PROJECTIONS)
        return conv, bn


def _roots(model) -> list[nn.Module]:
    """The nn.Modules ``model`` is, is bound to, or closes over (for names and ``last_conv_name``)."""
    if isinstance(model, nn.Module):
        return [model]
    candidates = [model]
    if isinstance(model, functools.partial):
        candidates += [model.func, *model.args, *model.keywords.values()]
    for cell in getattr(model, "__closure__", None) or ():
        try:
            candidates.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    found: list[nn.Module] = []
    for c in candidates:
        for m in (c, getattr(c, "__self__", None)):  # a module, or a method bound to one
            if isinstance(m, nn.Module) and all(m is not f for f in found):
                found.append(m)
    return found


def _root_module(model) -> nn.Module | None:
    roots = _roots(model)
    return roots[0] if roots else None


def _check_plain_conv(call: _Call, role: str, projections: int | None = None) -> None:
    m = conv_mismatch(call.input, call.output, call.module, projections)
    if not m.ok:
        raise ValueError(
            f"the {role} {call.name!r} ({type(call.module).__name__}) does not compute F.conv2d of its own "
            f"weight and bias: its output {m.describe()}. A Conv2d subclass whose forward transforms "
            "the weight or the result (weight standardisation as in timm's StdConv2d, a cosine "
            "classifier, a scaling) has another kernel than its weight, so the factorisation would "
            "use the wrong one; a plain nn.Conv2d (or a torch.nn.utils.parametrize parametrisation "
            "of its weight) is needed")


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def _version(t: Tensor):
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


def _check_single_call(calls: dict, call: _Call, role: str) -> None:
    n = sum(1 for c in calls["__order__"] if c.module is call.module)
    if n != 1:
        raise ValueError(f"the {role} {call.name!r} is called {n} times in one forward (shared weights): "
                         "its weight gradient sums over the calls, so a pixel's gradient is not one "
                         "outer product")


def _check_unmodified(call: _Call, role: str) -> None:
    if (_version(call.input), _version(call.output)) != call.versions:
        raise ValueError(f"the model modifies the input or output of the {role} {call.name!r} in place "
                         "after the conv ran, so the hooked tensors no longer hold the values the "
                         "conv read and wrote")
