"""Seconds per 1024 x 2048 frame (19 classes, one core) for the segment feature extraction.

    python benchmarks/features_speed.py [--repeats 5] [--height 1024 --width 2048]

Measures, after one warm-up run, the median over ``--repeats`` runs of

- ``maps``: :func:`metaseg_pgn.maps.softmax_maps` (E, D, V from the probabilities),
- (a) :func:`metaseg_pgn.segments.segment_features` with E and D (+ cprob, sizes, IoU_adj),
- (b) the same with E, D, V and 10 PGN-like float64 maps (values up to ~1e30),
- the maps and (a) again with the probabilities channels-last, ``(H, W, C)``, as MetaSeg stores
  them; the printed ratio channels-last / channels-first comes from these timings of the same run.

MetaSeg's own extractor is not run here, so no speed-up against it is printed: its figure is
quoted as a reference only (docs/design.md §3: about 8.9 s per 1024 x 2048 frame with 19 classes, E
and D only, which includes computing E and D; 2.8 s at 512 x 1024; one core of this kind of
machine, MetaSeg's Cython + Python extractor run unmodified by the design's author). A ratio
against it would compare timings of different runs under different loads. The frame is synthetic
but shaped like Cityscapes: class blobs from a smoothed random field (hundreds to low thousands
of segments), a ground truth that disagrees along the boundaries and in some blobs, and void
regions.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from metaseg_pgn.maps import softmax_maps  # noqa: E402
from metaseg_pgn.segments import segment_features  # noqa: E402

#: Reference, not measured by this script: MetaSeg's extractor, seconds per frame (docs/design.md §3).
METASEG_REFERENCE = ("MetaSeg's own extractor (Cython + Python dicts, E and D, 19 classes, one core of this "
                     "kind of machine; docs/design.md §3): about 8.9 s per 1024 x 2048 frame, 2.8 s at 512 x 1024. "
                     "Not measured in this run, so no ratio is printed against it.")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], height: int, width: int,
                  factor: int, sigma: float) -> np.ndarray:
    """A smooth random field: Gaussian noise at 1/factor resolution, blurred, bilinearly upsampled."""
    low = rng.standard_normal(shape + (height // factor, width // factor)).astype(np.float32)
    low = ndimage.gaussian_filter(low, (0,) * len(shape) + (sigma, sigma))
    zoom = (1,) * len(shape) + (height / low.shape[-2], width / low.shape[-1])
    return ndimage.zoom(low, zoom, order=1)


def make_frame(height: int = 1024, width: int = 2048, n_classes: int = 19, seed: int = 0):
    """Synthetic probabilities (C, H, W) float32, prediction and ground truth (H, W) uint8."""
    rng = np.random.default_rng(seed)
    logits = 12.0 * _smooth_field(rng, (n_classes,), height, width, 8, 3.0)
    logits -= logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    pred = probs.argmax(axis=0).astype(np.uint8)

    # Ground truth: the prediction's logits plus a disagreeing smooth field, and void blobs.
    disagreement = 3.0 * _smooth_field(rng, (n_classes,), height, width, 8, 3.0)
    gt = (logits + disagreement).argmax(axis=0).astype(np.uint8)
    void = _smooth_field(rng, (), height, width, 16, 2.0)
    gt[void > np.quantile(void, 0.93)] = 255
    return probs, pred, gt


def pgn_like_maps(maps: dict[str, np.ndarray], count: int = 10, seed: int = 1) -> dict[str, np.ndarray]:
    """Float64 maps with PGN-like ranges (up to ~1e30 for small p), derived from the entropy."""
    rng = np.random.default_rng(seed)
    base = maps["E"].astype(np.float64) + 0.05 * rng.random(maps["E"].shape)
    out = {}
    for i in range(count):
        p = (0.1, 0.3, 0.5, 1.0, 2.0)[i % 5]
        label = "oh" if i < 5 else "uni"
        out[f"pgn_last_{label}_p{str(p).replace('.', '_').removesuffix('_0')}"] = (
            (1.0 + 9.0 * base) ** (3.0 / p)
        )
    return out


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args()

    probs, pred, gt = make_frame(args.height, args.width)
    maps = softmax_maps(probs)
    ed = {"E": maps["E"], "D": maps["D"]}
    full = {**maps, **pgn_like_maps(maps)}
    table = segment_features(pred, probs, ed, gt)
    print(f"frame {args.height} x {args.width}, {probs.shape[0]} classes, {len(table)} segments, "
          f"{(gt == 255).mean():.1%} void, mean IoU_adj {table['iou'].mean():.3f}, "
          f"max PGN-like value {max(float(m.max()) for m in full.values()):.1e}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    hwc = np.ascontiguousarray(probs.transpose(1, 2, 0))  # MetaSeg's layout
    t_maps = _time(lambda: softmax_maps(probs), args.repeats)
    t_a = _time(lambda: segment_features(pred, probs, ed, gt), args.repeats)
    t_b = _time(lambda: segment_features(pred, probs, full, gt), args.repeats)
    t_maps_hwc = _time(lambda: softmax_maps(hwc, channel_axis=-1), args.repeats)
    t_a_hwc = _time(lambda: segment_features(pred, hwc, ed, gt, channel_axis=-1), args.repeats)

    rows = [
        ("softmax_maps (E, D, V)", t_maps, None),
        ("(a) features: E, D, cprob, IoU_adj", t_a, None),
        ("(a) + softmax_maps", t_a + t_maps, None),
        (f"(b) features: E, D, V, {len(full) - 3} PGN maps, cprob, IoU_adj", t_b, None),
        ("(b) + softmax_maps", t_b + t_maps, None),
        ("softmax_maps, probabilities (H, W, C)", t_maps_hwc, t_maps),
        ("(a) + softmax_maps, probabilities (H, W, C)", t_a_hwc + t_maps_hwc, t_a + t_maps),
    ]
    print(f"median of {args.repeats} runs after warm-up, one core:")
    for name, t, base in rows:
        ratio = f"   (H, W, C) / (C, H, W) = {t / base:4.2f}" if base else ""
        print(f"  {name:<55s} {t:7.3f} s{ratio}")
    print(f"reference: {METASEG_REFERENCE}")
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
