"""Seconds per frame of softmax, PGN and MC dropout: the paper's Table 4 (docs/design.md §7).

Variants, each on one frame (batch 1), everything on the device, nothing copied back:

1. ``softmax``: the model's forward and the softmax at the input size;
2. ``softmax + PGN last (10)``: :class:`metaseg_pgn.wrapper.PGNModel` with the last layer's maps for
   p in (0.1, 0.3, 0.5, 1, 2) and the one-hot and uniform labels (its forward also returns the
   softmax and argmax at the input size);
3. ``+ PGN deep (20)``: the same with the 10 maps of the conv before the last;
4. ``MC dropout (25)``: :func:`metaseg_pgn.baselines.mc_dropout_maps`, 25 full stochastic forwards
   (what the pipeline's ``infer`` runs);
5. ``MC dropout (25), head only``: for context, the network up to the dropout once and only
   dropout → classifier → resize 25 times; the paper's MC-dropout cost (2.5x and 2.1x its softmax
   time for 25 samples) is only possible that way.

The maps are computed at the last conv's resolution (``pgn.resolution=feature``, the pipeline's
default), float64. Timings are interleaved (every variant once per repetition, the order rotated)
after warm-up calls, with ``torch.cuda.synchronize()`` before and after each call on CUDA; the
table gives the median and the ratio of medians to ``softmax``.

Usage::

    python benchmarks/runtime.py                      # compact, 256 x 512, CPU
    python benchmarks/runtime.py --size 1024 2048 --model resnet50_sized --device cuda
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from metaseg_pgn.baselines import PredictiveAccumulator, mc_dropout, mc_dropout_maps  # noqa: E402
from metaseg_pgn.models import build_model  # noqa: E402
from metaseg_pgn.pgn import PGN_PS  # noqa: E402
from metaseg_pgn.wrapper import PGNModel  # noqa: E402

LABELS = ("oh", "uni")

# The paper's Table 4: seconds per 1024 x 2048 frame on a Quadro P6000 (docs/design.md §7).
PAPER = {
    "WideResNet38": {"softmax": 3.02, "pgn": 3.05, "mcd": 7.52},
    "SE-ResNeXt50": {"softmax": 1.08, "pgn": 1.09, "mcd": 2.31},
}


def load_model(name: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The model in eval mode and where its weights come from."""
    if name == "compact":
        try:
            from metaseg_pgn.models.pretrained import available_seeds, load_pretrained

            if available_seeds("synthetic_compact"):
                model = load_pretrained("synthetic_compact", seed=available_seeds("synthetic_compact")[0])
                return model.to(device).eval(), "shipped weights (synthetic_compact)"
        except (ImportError, FileNotFoundError, ValueError) as e:
            print(f"(no shipped weights: {type(e).__name__}: {e})")
    torch.manual_seed(0)
    return build_model(name, 19).to(device).eval(), "random initialisation (no shipped weights)"


class HeadOnlyMCDropout:
    """MC dropout that runs the network up to the dropout layer once and samples only the rest.

    Valid for :class:`~metaseg_pgn.models.deeplab.DeepLabV3Plus`, whose only dropout sits in the head
    right before the classifier (the classifier's output is resized to the input size).
    """

    def __init__(self, model: torch.nn.Module, samples: int) -> None:
        self.model, self.samples = model, samples
        self.dropout, self.classifier = model.head.dropout, model.head.classifier
        self._psi = None
        self._handle = self.dropout.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._psi = inputs[0]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.model.forward_stride4(x)  # eval mode: dropout is the identity here; its input is kept
        acc = PredictiveAccumulator()
        with mc_dropout(self.model):
            for _ in range(self.samples):
                z = self.classifier(self.dropout(self._psi))
                z = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=self.model.align_corners)
                acc.update(torch.softmax(z, dim=1))
        _, e, mi = acc.compute()
        self._psi = None
        return {"mcd_E": e, "mcd_MI": mi}

    def remove(self) -> None:
        self._handle.remove()


def make_variants(model, x: torch.Tensor, samples: int, weights: str) -> dict[str, Callable[[], object]]:
    kw = dict(ps=PGN_PS, labels=LABELS, weights=weights, resolution="feature")
    last = PGNModel(model, model.last_conv_name, **kw)
    deep = PGNModel(model, model.last_conv_name, deeper=True, **kw)
    head_only = HeadOnlyMCDropout(model, samples)
    return {
        "softmax": lambda: torch.softmax(model(x), dim=1),
        "softmax + PGN last (10)": lambda: last(x),
        "  + PGN deep (20)": lambda: deep(x),
        f"MC dropout ({samples})": lambda: mc_dropout_maps(model, x, samples, generator_seed=0),
        f"MC dropout ({samples}), head only": lambda: head_only(x),
    }


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    elapsed = time.perf_counter() - t0
    del out
    return elapsed


def measure(variants: dict[str, Callable[[], object]], repeats: int, warmup: int,
            sync: Callable[[], None]) -> dict[str, list[float]]:
    """Interleaved: per repetition every variant once, the order rotated each time."""
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its kernels once
        dev_name = torch.cuda.get_device_name(device)
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        dev_name = platform.processor() or platform.machine()
        sync = lambda: None  # noqa: E731
    model, origin = load_model(args.model, device)
    size = tuple(args.size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)

    print(f"torch {torch.__version__}, device {device} ({dev_name}), torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average before {_load()}")
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {origin}), "
          f"input 1x3x{size[0]}x{size[1]} float32, PGN maps float64 at the feature resolution, "
          f"weights={args.weights}; {args.repeats} interleaved repeats after {args.warmup} warm-up")

    with torch.inference_mode():
        variants = make_variants(model, x, args.samples, args.weights)
        times = measure(variants, args.repeats, args.warmup, sync)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    ref = med["softmax"]
    print(f"\n{'seconds per frame':<34}{'median':>10}{'min':>10}{'max':>10}{'/ softmax':>11}")
    for name, ts in times.items():
        print(f"{name:<34}{med[name]:10.4f}{min(ts):10.4f}{max(ts):10.4f}{med[name] / ref:10.2f}x")
    print(f"load average after {_load()}")

    print("\nThe paper's Table 4 (Quadro P6000, 1024 x 2048, seconds per frame; ratio to its softmax):")
    print(f"{'network':<16}{'softmax':>10}{'PGN oh+uni':>16}{'MC dropout (25)':>20}")
    for net, row in PAPER.items():
        s = row["softmax"]
        print(f"{net:<16}{s:10.2f}{row['pgn']:9.2f} ({row['pgn'] / s:.2f}x){row['mcd']:12.2f} ({row['mcd'] / s:.2f}x)")
    mcd = f"MC dropout ({args.samples})"
    print(f"{'here: ' + args.model:<16}{ref:10.3f}{med['softmax + PGN last (10)']:9.3f} "
          f"({med['softmax + PGN last (10)'] / ref:.2f}x){med[mcd]:12.3f} ({med[mcd] / ref:.2f}x)   "
          f"[{device.type}, {size[0]} x {size[1]}]")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["compact", "resnet50_sized"], default="compact")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(256, 512))
    parser.add_argument("--samples", type=int, default=25, help="MC dropout samples")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--weights", choices=["paper", "gradient"], default="paper")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
