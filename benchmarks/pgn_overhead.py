"""Overhead of the PGN maps relative to the forward pass (the paper's Table 4, docs/design.md §7).

Measured in one run, interleaved (every variant once per repetition, the order rotated), so that
slow drifts of a shared machine hit all variants alike. Forward hooks on ``head.classifier`` and
``head.conv2`` stay registered throughout, so every variant runs the very same forward:

- ``forward``: the model's forward (logits at the input size), the reference of every ratio;
- ``+last(10)``: the same function, then the 10 last-layer maps (p in PGN_PS, labels oh and uni) at
  the feature resolution from the captured ψ and z;
- ``+last+deep(20)``: the same, plus the 10 deeper-layer maps;
- ``PGNModel(...)``: the library's wrapper (its hooks and its checks on every pixel) without maps,
  with the last layer, with both layers (under ``--bf16`` called inside the autocast context).

Ratios are medians of the per-repetition ratios (paired), with the 10 % and 90 % quantiles. The maps
are also timed alone, from the captured ψ and z, because on a shared 2-core CPU the noise of a whole
forward can exceed the 1 % the paper reports; so are the wrapper's checks on every pixel
(:mod:`metaseg_pgn.verify`), beside the maps they guard: the last conv recomputed, the logits
against its resized output, and for the deeper layer the BatchNorm/ReLU chain and the previous
conv (two random projections of its channels). The ψ captured under ``--bf16`` is bfloat16; the maps
are computed outside autocast, in float64, as always.

Usage::

    python benchmarks/pgn_overhead.py                          # compact, 512 x 1024, CPU
    python benchmarks/pgn_overhead.py --device cuda            # resnet50_sized, 1024 x 2048, CUDA
    python benchmarks/pgn_overhead.py --device cuda --bf16     # the forward in bf16 autocast
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from torch import nn

from metaseg_pgn.models import build_model
from metaseg_pgn.pgn import PGN_PS, deeper_layer_pgn, last_layer_pgn, resize_maps
from metaseg_pgn.verify import activation_mismatch, conv_mismatch, resize_mismatch

from metaseg_pgn.wrapper import OUTPUT_PROJECTIONS, PREV_CONV_PROJECTIONS, PGNModel

LABELS = ("oh", "uni")


class Captured:
    """Forward hooks on the model's head: ψ, z (inputs/outputs of the last conv) and ψ_prev.

    The hooks only keep references, and they stay registered for every variant, so the forward
    timed alone is exactly the forward of the variants with maps.
    """

    def __init__(self, model: nn.Module) -> None:
        head = model.head
        self.conv, self.conv_prev, self.bn = head.classifier, head.conv2, head.bn2
        self.psi = self.z = self.psi_prev = self.u = None
        self._handles = [
            self.conv.register_forward_hook(self._last),
            self.conv_prev.register_forward_hook(self._prev),
        ]

    def _last(self, module, inputs, output):
        self.psi, self.z = inputs[0], output

    def _prev(self, module, inputs, output):
        self.psi_prev, self.u = inputs[0], output

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def last_maps(cap: Captured, weights: str):
    """The 10 last-layer maps (PGN_PS × {oh, uni}) at the feature resolution, (B, h, w) each."""
    return last_layer_pgn(cap.psi, cap.z, cap.conv, ps=PGN_PS, labels=LABELS, weights=weights,
                          resolution="feature")


def deep_maps(cap: Captured, weights: str):
    """The 10 deeper-layer maps (head.conv2 through bn2, relu2), (B, h, w) each."""
    return deeper_layer_pgn(cap.psi_prev, cap.conv_prev, cap.bn, cap.psi, cap.z, cap.conv,
                            ps=PGN_PS, labels=LABELS, weights=weights)


def last_checks(cap: Captured, logits: torch.Tensor, align_corners: bool):
    """The wrapper's per-call checks of the last layer (every pixel)."""
    return (conv_mismatch(cap.psi, cap.z, cap.conv),
            resize_mismatch(cap.z, logits, align_corners, OUTPUT_PROJECTIONS))


def deep_checks(cap: Captured):
    """The wrapper's per-call checks of the deeper layer (every element)."""
    return (activation_mismatch(cap.u, cap.bn, cap.psi)[0],
            conv_mismatch(cap.psi_prev, cap.u, cap.conv_prev, PREV_CONV_PROJECTIONS))


def make_variants(model: nn.Module, cap: Captured, x: torch.Tensor, args) -> dict[str, Callable[[], object]]:
    """Callables of the variants, each returning its result (kept until the clock stops).

    The first, ``forward``, is the reference: the model's forward alone (logits at the input size).
    The others run exactly that function and then the maps.
    """
    dev = x.device.type

    def in_precision(fn):
        if args.bf16:
            with torch.autocast(dev, dtype=torch.bfloat16):
                return fn(x)
        return fn(x)

    def forward():
        return in_precision(model)

    def with_last():
        return forward(), last_maps(cap, args.weights)

    def with_deep():
        return forward(), last_maps(cap, args.weights), deep_maps(cap, args.weights)

    variants = {"forward": forward, "+last(10)": with_last, "+last+deep(20)": with_deep}
    if not args.no_wrapper:
        # the library path; labels=() gives the wrapper's own forward (its hooks and checks) without maps
        kw = dict(ps=PGN_PS, weights=args.weights, resolution="feature")
        wrappers = {
            "PGNModel(no maps)": PGNModel(model, model.last_conv_name, labels=(), **kw),
            "PGNModel(last)": PGNModel(model, model.last_conv_name, labels=LABELS, **kw),
            "PGNModel(last+deep)": PGNModel(model, model.last_conv_name, labels=LABELS, deeper=True, **kw),
        }
        for name, w in wrappers.items():
            variants[name] = (lambda w=w: in_precision(w))
    return variants


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds of one call of ``fn``, device synchronised before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    t = time.perf_counter() - t0
    del out
    return t


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """10 %, 50 %, 90 % quantiles (inclusive method)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=10, method="inclusive")
    return q[0], statistics.median(values), q[-1]


def measure(variants: dict[str, Callable[[], object]], repeats: int, warmup: int, sync) -> dict[str, list[float]]:
    """Interleaved timings: per repetition every variant once, the order rotated each time."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            timed(variants[name], sync)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(variants[name], sync))
    return times


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def run(args) -> None:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_name = args.model or ("resnet50_sized" if device.type == "cuda" else "compact")
    size = tuple(args.size) if args.size else ((1024, 2048) if device.type == "cuda" else (512, 1024))
    torch.manual_seed(0)
    model = build_model(model_name, 19).to(device).eval()
    _nontrivial_bn(model)
    x = torch.randn(args.batch, 3, *size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = platform.processor() or platform.machine()

    print(f"torch {torch.__version__}, device {device.type} ({dev_name}), torch threads "
          f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load average before {_load()}")
    print(f"model {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), "
          f"input {args.batch}x3x{size[0]}x{size[1]}, forward {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"maps float64 at the feature resolution, weights={args.weights}, "
          f"{args.repeats} repeats after {args.warmup} warm-up")

    cap = Captured(model)
    try:
        with torch.inference_mode():
            variants = make_variants(model, cap, x, args)
            times = measure(variants, args.repeats, args.warmup, sync)
            # the maps alone, from the ψ, z captured by one more forward
            logits = variants["forward"]()
            sync()
            ac = bool(model.align_corners)
            maps = last_maps(cap, args.weights)
            alone = {
                "softmax+argmax at HxW": lambda: (torch.softmax(logits, dim=1), logits.argmax(1)),
                "last maps (10)": lambda: last_maps(cap, args.weights),
                "  checks: conv": lambda: conv_mismatch(cap.psi, cap.z, cap.conv),
                "  checks: output": lambda: last_checks(cap, logits, ac)[1],
                "deep maps (10)": lambda: deep_maps(cap, args.weights),
                "  checks: BN/ReLU": lambda: activation_mismatch(cap.u, cap.bn, cap.psi),
                "  checks: prev conv": lambda: deep_checks(cap)[1],
                "resize 10 maps to HxW": lambda: resize_maps(maps, size, ac),
            }
            assert all(m.ok for m in last_checks(cap, logits, ac) + deep_checks(cap)), "the checks refuse the model"
            alone_times = measure(alone, args.repeats, args.warmup, sync)
    finally:
        cap.remove()

    ref = times["forward"]
    lo, med_f, hi = quantiles(ref)
    print(f"\n{'variant':<24}{'median s':>10}{'p10':>9}{'p90':>9}   time / forward: median [p10, p90] "
          "of per-repetition ratios")
    print(f"{'forward':<24}{med_f:10.4f}{lo:9.4f}{hi:9.4f}")
    for name in list(times)[1:]:
        lo, med, hi = quantiles(times[name])
        rlo, rmed, rhi = quantiles([t / f for t, f in zip(times[name], ref)])
        print(f"{name:<24}{med:10.4f}{lo:9.4f}{hi:9.4f}   {rmed:.4f} [{rlo:.4f}, {rhi:.4f}]")
    print("\ntimed alone from captured ψ, z (added cost relative to the median forward):")
    for name, ts in alone_times.items():
        lo, med, hi = quantiles(ts)
        print(f"{name:<24}{med:10.4f}{lo:9.4f}{hi:9.4f}   +{100 * med / med_f:.1f} %")
    print(f"load average after {_load()}")


def _nontrivial_bn(model: nn.Module) -> None:
    """Running statistics as after training, so BN is not the identity and ReLU masks are mixed."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["compact", "resnet50_sized"], default=None,
                        help="default: compact on CPU, resnet50_sized on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="default: 512 1024 on CPU, 1024 2048 on CUDA")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--weights", choices=["paper", "gradient"], default="paper")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast for the forward (CUDA); the maps stay float64 outside autocast")
    parser.add_argument("--no-wrapper", action="store_true", help="skip the PGNModel variants")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
