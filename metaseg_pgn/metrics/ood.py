"""OoD segmentation metrics of SegmentMeIfYouCan (SMIYC), reproduced, and an unbinned variant.

Three modes, named differently in every output so that numbers of one are never mistaken for
another (docs/design.md §6 and §6a); every result carries its ``version`` (:data:`VERSIONS`):

``"smiyc"``
    The benchmark's pixel metrics as its code computes them now (road-anomaly-benchmark HEAD
    ``1c7804e``, changed on 2023-08-24). Scores are rounded to float16 first (the benchmark
    stores them so). Each frame is binned: percentile bins (the benchmark's ``PixBinaryClass``,
    default) with edges = unique({vmin − eps, vmax + eps} ∪ 384 quantiles of the positive ∪ 384
    of the negative scores), vmin/vmax the frame's score range, ``eps = max(0.01·(vmax − vmin),
    0.01)``; or 4096 uniform bins over [−0.01, 1.01] (``PixBinaryClass-uniThr``). The bins of
    all frames are pooled and equal thresholds collapsed into one curve point that counts all
    their pixels; the curve gets its end points ((0, 0) before, (all, all) after, when missing);
    precision is 1 where nothing is predicted; AuPRC = Σ Δrecall · precision (a step sum, like
    scikit-learn's average precision). The result does not depend on the frame order nor on the
    NumPy version. Output keys end in ``_smiyc`` / ``_smiyc_uniform``.
``"smiyc2021"``
    The benchmark's pixel metrics before 2023-08-24 (``b580f16``, unchanged since 2021; the
    leaderboard and papers of that time, including the PGN paper's Tables 2 and 3): bin edges
    include {0, 1} instead of the frame's range, uniform bins cover [0, 1], equal thresholds of
    different frames stay separate curve points in the order ``numpy.argsort`` leaves them,
    leading points without predictions are dropped, AuPRC is the trapezoid of precision over
    recall without a (0, 1) anchor. **Its AuPRC and AUROC depend on the order of tied
    thresholds** (NumPy version and CPU for the benchmark; ``tie_order`` here): up to 0.019 in
    AuPRC and 0.052 in FPR95 on tied or saturated scores, ~1e-5 on smooth ones (docs/design.md §6a).
    Output keys end in ``_smiyc2021`` / ``_smiyc2021_uniform``.
``"exact"``
    No rounding, no bins: every distinct score is a threshold (tied scores are one threshold).
    ``AP_exact`` is average precision (equal to ``sklearn.metrics.average_precision_score``),
    ``FPR95_exact`` the FPR at the largest threshold whose TPR is >= 0.95, ``AUROC_exact`` the ROC
    area with the (0, 0) anchor (equal to ``sklearn.metrics.roc_auc_score``).

Scalar keys per SMIYC mode: ``AuPRC``, ``FPR95``, ``AUROC``, ``best_F1``, ``best_F1_threshold``,
``tpr95_threshold``, each with the mode's suffix. Component metrics (sIoU, PPV, F1) are the same
in all modes (both benchmark versions compute them identically), on the float16-rounded score in
the SMIYC modes and on the score as given in ``"exact"`` mode, at the best-F1 pixel threshold of
the same mode; their keys carry the same suffix (``sIoU_gt_smiyc``, ``F1_mean_exact``, ...).

Where ``"smiyc"`` departs from the benchmark's code: when several frames share the split's
highest score (e.g. saturated scores at float16 1.0), the benchmark's HEAD keeps, besides the
collapsed point, a partial point holding only the tied frame that ``argsort`` happens to put
first; its AuPRC then depends on the tie order (the one place where HEAD still does). We keep
only the collapsed point, the value HEAD gives whenever that top threshold is not tied.
Scores outside the uniform range fall in no uniform bin (as in the benchmark); a frame
without any non-void pixel adds nothing.

Labels are ``(H, W)`` integer maps with 0 = in-distribution, 1 = anomaly, 255 = void; scores are
``(H, W)`` real maps, higher = more anomalous. Void pixels are ignored everywhere.

Defined results at the edges
----------------------------
- A frame without anomaly pixels is fine: it adds negatives (pixel level) and false-positive
  components (component level).
- A split without positive pixels, or without negative pixels: pixel metrics raise
  ``ValueError`` (precision/recall resp. FPR undefined).
- A split without ground-truth components (after the size filter): component metrics raise
  ``ValueError`` (sIoU and F1 undefined).
- A split without predicted components: ``PPV`` and ``sIoU_pred`` are 0.0 (the
  ``zero_division=0`` convention of scikit-learn), every gt component has sIoU 0, so F1 = 0.

The code: :mod:`metaseg_pgn.metrics.ood_input` (modes, versions, input checks),
:mod:`metaseg_pgn.metrics.ood_pixel` (bins, curves, :class:`PixelOoDMetrics`),
:mod:`metaseg_pgn.metrics.ood_components` (sIoU, PPV, F1, :class:`ComponentOoDMetrics`); this
module re-exports their public names and runs both passes over a split (:func:`evaluate_ood`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from .ood_components import (SIOU_THRESHOLDS, TRACKS, ComponentOoDMetrics, FrameComponents, Track,
                             aggregate_components, frame_components)
from .ood_input import MODES, SMIYC_MODES, VERSIONS, Mode, check_mode, check_ood_frame, to_float16
from .ood_pixel import (SMIYC_PERCENTILE_BINS, SMIYC_UNIFORM_BINS, SMIYC_UNIFORM_RANGE, Binning, FrameBins,
                        PixelCurve, PixelOoDMetrics, exact_curve, exact_metrics_from_curve, smiyc2021_curve_fixed_bins,
                        smiyc2021_curve_from_frames, smiyc2021_metrics_from_curve, smiyc_curve, smiyc_frame_bins,
                        smiyc_metrics_from_curve)

__all__ = [
    "MODES", "SMIYC_MODES", "VERSIONS", "TRACKS", "SIOU_THRESHOLDS", "SMIYC_PERCENTILE_BINS", "SMIYC_UNIFORM_BINS",
    "SMIYC_UNIFORM_RANGE", "Mode", "Binning", "Track", "check_mode", "check_ood_frame", "to_float16",
    "FrameBins", "PixelCurve", "smiyc_frame_bins", "smiyc_curve", "smiyc2021_curve_from_frames",
    "smiyc2021_curve_fixed_bins", "exact_curve", "smiyc_metrics_from_curve", "smiyc2021_metrics_from_curve",
    "exact_metrics_from_curve", "PixelOoDMetrics", "FrameComponents", "frame_components", "aggregate_components",
    "ComponentOoDMetrics", "FrameSource", "evaluate_ood",
]

# --------------------------------------------------------------------------------------------
# Both passes over a split
# --------------------------------------------------------------------------------------------

FrameSource = Callable[[], Iterable[tuple[str, np.ndarray, np.ndarray]]]


def _frames(source) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    if callable(source):
        return iter(source())
    if iter(source) is source:
        raise TypeError(
            "evaluate_ood reads the frames twice: pass a sequence or a callable returning a "
            "fresh iterable, not an iterator"
        )
    return iter(source)


def evaluate_ood(source, *, track: Track, mode: Mode = "smiyc") -> dict:
    """Pixel and component metrics of one method on one split (two passes over the frames).

    Parameters
    ----------
    source : sequence of (frame_id, score, label), or a callable returning a fresh iterable
        Read twice: once for the pixel curve, once for the components at its best-F1 threshold.
    track : {"obstacle", "anomaly"}
    mode : {"smiyc", "smiyc2021", "exact"}

    Returns
    -------
    dict
        ``{"pixel": ..., "component": ...}`` and, in the SMIYC modes, ``"pixel_uniform"`` (the
        benchmark's 4096-bin variant), each the ``compute()`` result of its object.
    """
    check_mode(mode)
    pixel = PixelOoDMetrics(mode)
    uniform = PixelOoDMetrics(mode, binning="uniform") if mode in SMIYC_MODES else None
    for fid, score, label in _frames(source):
        pixel.update(score, label, fid)
        if uniform is not None:
            uniform.update(score, label, fid)
    out: dict = {"pixel": pixel.compute()}
    if uniform is not None:
        out["pixel_uniform"] = uniform.compute()
    thr = out["pixel"][f"best_F1_threshold_{pixel.suffix}"]
    comp = ComponentOoDMetrics(track, thr, mode)
    for fid, score, label in _frames(source):
        comp.update(score, label, fid)
    out["component"] = comp.compute()
    return out
