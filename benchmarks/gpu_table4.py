"""The paper's Table 4 on a GPU: PGN's cost beside the forward pass and MC dropout, plus the
per-pixel autograd check of both layers on the device. One prepared script (issue 13).

For each model and precision, at 1024 x 2048 by default, batch 1, everything on the device:

- ``forward``: the model's forward alone (logits at the input size), the reference of every ratio;
- ``checks only``: :class:`metaseg_pgn.wrapper.PGNModel` without maps: its forward, hooks and
  the checks it runs on every call on every pixel (:mod:`metaseg_pgn.verify`);
- ``+ last (10)``: the wrapper with the 10 last-layer maps (p in PGN_PS, labels oh and uni);
- ``+ last + deep (20)``: the same with the 10 deeper-layer maps;
- ``MC dropout (25)``: :func:`metaseg_pgn.baselines.mc_dropout_maps` as the pipeline runs it (the
  project's DeepLabV3+ samples only its head, torchvision's model runs 25 full forwards).

Models: ``deeplabv3plus_r50`` (:func:`metaseg_pgn.models.resnet50_sized`, ~40 M parameters,
output stride 8) and ``tv_deeplabv3_r50`` (torchvision's ``deeplabv3_resnet50``, imported only
here, random initialisation); ``deeplabv3plus_compact`` (1 M parameters) for quick smoke runs.
BatchNorm statistics are calibrated on random images first, so that activations and ReLU masks
look like a trained network's. Precisions: ``fp32`` (torch's defaults,
TF32 convolutions where allowed) and ``bf16`` (the forward under ``torch.autocast``; checks and
maps run outside autocast from the captured tensors). Timings: warm-up calls, then interleaved
repeats (every variant once per repetition, the order rotated), ``torch.cuda.synchronize()``
before and after each call; the table gives medians and the ratio of medians to ``forward``.

The autograd check runs each model in float64 on the device at ``--check-size``: the wrapper's
maps of both layers against the norms of per-pixel gradients from ``torch.autograd`` at sampled
pixels of the last conv's output (maximum relative error reported; it must be < 1e-9). The
autocast check runs the float32 model under float16 and bfloat16 autocast: the wrapper (every
check on every pixel) must accept it, and its maps must equal the float64 computation from the
tensors the convs read and wrote within the float32 path's bounds (1e-5; 3e-3 for the deeper
layer's p < 1).

Usage::

    python benchmarks/gpu_table4.py --out gpu_table4.json                     # on the GPU machine
    python benchmarks/gpu_table4.py --device cpu --size 64 128 --repeats 1 --out /tmp/t4.json  # smoke,
                                                                          # fp32 only (see --precisions)

Expected duration on an H200: about 3 minutes (torchvision's 25-sample MC dropout dominates).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime import PAPER, measure  # noqa: E402

from metaseg_pgn.baselines import mc_dropout_maps  # noqa: E402
from metaseg_pgn.io import write_json  # noqa: E402
from metaseg_pgn.models import compact, resnet50_sized  # noqa: E402
from metaseg_pgn.pgn import LABELS, PGN_PS, deeper_layer_pgn, last_layer_pgn, map_name  # noqa: E402
from metaseg_pgn.wrapper import PGNModel  # noqa: E402

NUM_CLASSES = 19
MODELS = ("deeplabv3plus_r50", "tv_deeplabv3_r50", "deeplabv3plus_compact")
DEFAULT_MODELS = MODELS[:2]  # the compact model is for quick smoke runs
PRECISIONS = ("fp32", "bf16")
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: Upper bound of the autograd check's maximum relative error (float64 on the device).
AUTOGRAD_RTOL = 1e-9


def build(name: str, device: torch.device, calibration_size) -> tuple[nn.Module, dict]:
    """The model in eval mode with calibrated BatchNorm statistics, and the wrapper's arguments."""
    torch.manual_seed(0)
    if name in ("deeplabv3plus_r50", "deeplabv3plus_compact"):
        model = (resnet50_sized if name == "deeplabv3plus_r50" else compact)(NUM_CLASSES)
        kw = dict(last_conv="head.classifier", output=None)
    elif name == "tv_deeplabv3_r50":
        from torchvision.models.segmentation import deeplabv3_resnet50  # only on machines where it imports

        model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)
        kw = dict(last_conv="classifier.4", output="out", align_corners=False)
    else:
        raise ValueError(f"unknown model {name!r}; known: {MODELS}")
    model = model.to(device)
    calibrate_batchnorm(model, device, size=calibration_size)
    return model.eval(), kw


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, device: torch.device, size, steps: int = 2) -> None:
    """Running statistics from a few random images (cumulative average), as after training."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    g = torch.Generator(device="cpu").manual_seed(1)
    for _ in range(steps):
        model(torch.randn(2, 3, *size, generator=g).to(device))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def make_variants(name: str, model: nn.Module, kw: dict, x: torch.Tensor, precision: str,
                  samples: int) -> dict[str, Callable[[], object]]:
    dev = x.device.type
    pgn = dict(ps=PGN_PS, weights="paper", resolution="feature", **kw)
    wrappers = {
        "checks only": PGNModel(model, labels=(), **pgn),
        "+ last (10)": PGNModel(model, labels=LABELS, **pgn),
        "+ last + deep (20)": PGNModel(model, labels=LABELS, deeper=True, **pgn),
    }

    def in_precision(fn):
        if precision == "bf16":
            with torch.autocast(dev, dtype=torch.bfloat16):
                return fn(x)
        return fn(x)

    variants = {"forward": lambda: in_precision(model)}
    variants.update({label: (lambda w=w: in_precision(w)) for label, w in wrappers.items()})
    variants[f"MC dropout ({samples})"] = lambda: in_precision(
        lambda images: mc_dropout_maps(model, images, samples, generator_seed=0, output=kw["output"]))
    return variants


def autograd_check(name: str, model: nn.Module, kw: dict, device: torch.device, size, pixels: int) -> dict:
    """Both layers' maps of a float64 copy against per-pixel autograd at sampled pixels."""
    m64 = copy.deepcopy(model).double().eval()
    torch.manual_seed(2)
    x = torch.randn(1, 3, *size, dtype=torch.float64, device=device)
    wrapped = PGNModel(m64, deeper=True, **kw)
    out = wrapped(x)
    modules = dict(m64.named_modules())
    last, prev = modules[wrapped.last_conv], modules[wrapped.deeper_layers[0]]
    for p in m64.parameters():
        p.requires_grad_(False)
    params = {"last": [last.weight] + ([last.bias] if last.bias is not None else []), "deep": [prev.weight]}
    for group in params.values():
        for p in group:
            p.requires_grad_(True)
    captured = {}
    handle = last.register_forward_hook(lambda m, i, o: captured.update(z=o))
    try:
        m64(x)
    finally:
        handle.remove()
    z = captured["z"]
    _, _, h, w = z.shape
    g = torch.Generator().manual_seed(3)
    where = [(0, 0, 0), (0, h - 1, w - 1)] + [
        (0, int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))) for _ in range(pixels)]
    worst = {"last": 0.0, "deep": 0.0}
    for label in LABELS:
        for b, i, j in where:
            s = torch.softmax(z[b, :, i, j], 0)
            c = s.shape[0]
            if label == "oh":  # the paper's eq. 5: weights s with the predicted class set to 0
                target = torch.zeros_like(s).scatter_(0, s.argmax().view(1), 1.0)
                weight = (s * (1 - target)).detach()
            else:  # eq. 6: (C - 1)/C · s
                weight = ((c - 1) / c * s).detach()
            loss = (weight * z[b, :, i, j]).sum()  # d loss / d z = the paper's weight vector
            for layer, group in params.items():
                grads = torch.autograd.grad(loss, group, retain_graph=True)
                flat = torch.cat([t.flatten() for t in grads]).abs()
                for p in PGN_PS:
                    ref = float((flat ** p).sum() ** (1.0 / p))
                    got = float(out.maps[map_name(layer, label, p)][b, i, j])
                    worst[layer] = max(worst[layer], abs(got - ref) / max(abs(ref), 1e-300))
    del m64, out, z
    return {"model": name, "size": list(size), "pixels": len(where), "dtype": "float64",
            "max_rel_error_last": worst["last"], "max_rel_error_deep": worst["deep"],
            "ok": max(worst.values()) < AUTOGRAD_RTOL}


def autocast_check(name: str, model: nn.Module, kw: dict, device: torch.device, size, dtype: torch.dtype) -> dict:
    """Under autocast in ``dtype``: the wrapper's maps (both layers) against the float64 computation
    from the tensors the convs read and wrote (captured by hooks in the same forward), and the
    checks must not refuse the model (they run on every pixel)."""
    torch.manual_seed(4)
    x = torch.randn(1, 3, *size, device=device)
    wrapped = PGNModel(model, deeper=True, **kw)
    with torch.autocast(device.type, dtype=dtype):
        wrapped(x)  # finds the layers
    modules = dict(model.named_modules())
    last, prev = modules[wrapped.last_conv], modules[wrapped.deeper_layers[0]]
    bn = None if wrapped.deeper_layers[1] is None else modules[wrapped.deeper_layers[1]]
    got = {}
    hooks = [last.register_forward_hook(lambda m, i, o: got.update(psi=i[0], z=o)),
             prev.register_forward_hook(lambda m, i, o: got.update(prev=i[0], u=o))]
    try:
        with torch.autocast(device.type, dtype=dtype):
            out = wrapped(x)
    finally:
        for h in hooks:
            h.remove()
    f64 = torch.float64
    z = got["z"].to(f64)
    expected = last_layer_pgn(got["psi"].to(got["z"].dtype).to(f64), z, last)
    expected.update(deeper_layer_pgn(got["prev"].to(got["u"].dtype).to(f64), prev, bn, got["psi"].to(f64), z, last,
                                     clip=wrapped.activation_clip))
    worst = {"last": 0.0, "deep": 0.0, "deep_p<1": 0.0}
    for key, m in out.maps.items():
        rel = float(((m - expected[key]).abs() / expected[key].abs().clamp_min(1e-300)).max())
        group = "last" if "last" in key else ("deep_p<1" if key.endswith(("p0_1", "p0_3", "p0_5")) else "deep")
        worst[group] = max(worst[group], rel)
    ok = worst["last"] <= 1e-5 and worst["deep"] <= 1e-5 and worst["deep_p<1"] <= 3e-3
    return {"model": name, "autocast": str(dtype).replace("torch.", ""), "size": list(size),
            "logits_dtype": str(got["z"].dtype).replace("torch.", ""),
            **{f"max_rel_error_{k}": v for k, v in worst.items()}, "ok": ok}


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        dev_name = torch.cuda.get_device_name(device)
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        dev_name = platform.processor() or platform.machine()
        sync = lambda: None  # noqa: E731
    size = tuple(args.size)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, device {device} ({dev_name}), input 1x3x{size[0]}x{size[1]}, "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up, MC dropout {args.samples} samples")
    report = {"device": dev_name, "device_type": device.type, "torch": torch.__version__, "size": list(size),
              "repeats": args.repeats, "warmup": args.warmup, "samples": args.samples, "timings": [],
              "autograd": [], "autocast": [], "skipped": []}
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    for name in args.models:
        try:
            model, kw = build(name, device, (min(size[0], 256), min(size[1], 512)))
        except ImportError as e:  # torchvision does not import on the CPU machines (docs/design.md §9)
            print(f"{name}: skipped ({type(e).__name__}: {e})")
            report["skipped"].append({"model": name, "reason": f"{type(e).__name__}: {e}"})
            continue
        for precision in args.precisions:
            with torch.inference_mode():
                variants = make_variants(name, model, kw, x, precision, args.samples)
                times = measure(variants, args.repeats, args.warmup, sync)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            for v, ts in times.items():
                report["timings"].append({"model": name, "precision": precision, "variant": v,
                                          "median_s": med[v], "min_s": min(ts), "max_s": max(ts),
                                          "ratio_to_forward": med[v] / med["forward"], "times_s": ts})
            print_block(name, precision, med)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for dtype in args.autocast_check:
            check = autocast_check(name, model, kw, device, tuple(args.check_size), AUTOCAST[dtype])
            report["autocast"].append(check)
            print(f"autocast check {name} ({dtype}, logits {check['logits_dtype']}): max rel. error vs float64 "
                  f"from the captured tensors: last {check['max_rel_error_last']:.1e}, deep "
                  f"{check['max_rel_error_deep']:.1e} (p < 1: {check['max_rel_error_deep_p<1']:.1e}) "
                  f"-> {'ok' if check['ok'] else 'FAILED'}")
        if not args.no_autograd:
            check = autograd_check(name, model, kw, device, tuple(args.check_size or size), args.check_pixels)
            report["autograd"].append(check)
            print(f"autograd check {name} (float64, {check['pixels']} pixels at {tuple(check['size'])}): max rel. "
                  f"error last {check['max_rel_error_last']:.2e}, deep {check['max_rel_error_deep']:.2e} "
                  f"-> {'ok' if check['ok'] else 'FAILED'}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - started
    print("\nThe paper's Table 4 (Quadro P6000, 1024 x 2048): PGN oh+uni / softmax = "
          + ", ".join(f"{net} {row['pgn'] / row['softmax']:.3f}" for net, row in PAPER.items())
          + f"; this run took {report['seconds']:.0f} s")
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return report


def print_block(name: str, precision: str, med: dict[str, float]) -> None:
    ref = med["forward"]
    print(f"\n{name}, {precision}{'':<10}{'median s':>10}{'/ forward':>11}{'added':>10}")
    for v, t in med.items():
        added = "" if v == "forward" else f"{100 * (t - ref) / ref:+.1f} %"
        print(f"  {v:<30}{t:10.4f}{t / ref:10.3f}x{added:>10}")
    if "checks only" in med:
        maps = med["+ last (10)"] - med["checks only"]
        print(f"  maps alone (last - checks only): {100 * maps / ref:+.2f} % of the forward; "
              f"checks: {100 * (med['checks only'] - ref) / ref:+.2f} %")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(1024, 2048))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="default: fp32 bf16 on CUDA; fp32 on the CPU, where bf16 autocast without "
                             "native bf16 instructions took 30 s per 64 x 128 forward (emulated)")
    parser.add_argument("--samples", type=int, default=25, help="MC dropout samples")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--check-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size of the float64 autograd check (default: --size, capped at 512 x 1024)")
    parser.add_argument("--check-pixels", type=int, default=12, help="random pixels of the autograd check")
    parser.add_argument("--no-autograd", action="store_true")
    parser.add_argument("--autocast-check", nargs="*", choices=list(AUTOCAST), default=None,
                        help="autocast dtypes whose maps are checked against float64 from the captured "
                             "tensors (default: fp16 bf16 on CUDA, none on the CPU, where bf16 is emulated)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.autocast_check is None:
        args.autocast_check = list(AUTOCAST) if args.device.startswith("cuda") else []
    if args.precisions is None:
        args.precisions = list(PRECISIONS) if args.device.startswith("cuda") else ["fp32"]
    if args.check_size is None:
        args.check_size = [min(args.size[0], 512), min(args.size[1], 1024)]
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    return run(args)


if __name__ == "__main__":
    main()
