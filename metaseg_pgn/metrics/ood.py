"""OoD segmentation metrics of SegmentMeIfYouCan (SMIYC), reproduced, and an unbinned variant.

Three modes, named differently in every output so that numbers of one are never mistaken for
another (DESIGN.md §6 and §6a); every result carries its ``version`` (:data:`VERSIONS`):

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
    AuPRC and 0.052 in FPR95 on tied or saturated scores, ~1e-5 on smooth ones (DESIGN.md §6a).
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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
from scipy import ndimage

Mode = Literal["smiyc", "smiyc2021", "exact"]
Binning = Literal["percentiles", "uniform", "unique"]
Track = Literal["obstacle", "anomaly"]

MODES: tuple[str, ...] = ("smiyc", "smiyc2021", "exact")
#: The modes that reproduce the benchmark (float16 scores, binned curves).
SMIYC_MODES: tuple[str, ...] = ("smiyc", "smiyc2021")

#: What the numbers of each mode are. Every ``compute()`` result and every CSV row names it.
VERSIONS: dict[str, str] = {
    "smiyc": "SegmentMeIfYouCan road-anomaly-benchmark 1c7804e (pixel metrics since 2023-08-24)",
    "smiyc2021": "SegmentMeIfYouCan road-anomaly-benchmark b580f16 (pixel metrics 2021 to "
                 "2023-08-24; AuPRC/AUROC depend on the order of tied thresholds)",
    "exact": "unbinned, metaseg-pgn (average precision, tie-aware FPR95; no benchmark version)",
}

#: Size filters per track: predicted components smaller than ``min_pred_size`` px are removed,
#: ground-truth components smaller than ``min_gt_size`` px are made void.
TRACKS: dict[str, dict[str, int]] = {
    "obstacle": {"min_pred_size": 50, "min_gt_size": 10},
    "anomaly": {"min_pred_size": 500, "min_gt_size": 100},
}

#: The sIoU / PPV thresholds t = 0.25, 0.30, ..., 0.75, computed as the benchmark does
#: (``np.linspace``), so comparisons at the boundaries agree bit for bit.
SIOU_THRESHOLDS: np.ndarray = np.linspace(0.25, 0.75, 11, endpoint=True)

#: Number of bins of the benchmark's percentile binning (``num_bins // 2`` quantiles per class).
SMIYC_PERCENTILE_BINS = 768
#: Number of bins of the benchmark's uniform binning (``PixBinaryClass-uniThr``).
SMIYC_UNIFORM_BINS = 4096
#: Range of the uniform bins per version.
SMIYC_UNIFORM_RANGE: dict[str, tuple[float, float]] = {"smiyc": (-0.01, 1.01), "smiyc2021": (0.0, 1.0)}

_CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _where(frame_id: str | None) -> str:
    return f"frame {frame_id!r}" if frame_id is not None else "frame"


def check_ood_frame(score, label, frame_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate one frame's score map and OoD label and return them as arrays.

    Parameters
    ----------
    score : array_like, shape (H, W), real
        Anomaly score, higher = more anomalous. Must be finite.
    label : array_like, shape (H, W), integer
        0 = in-distribution, 1 = anomaly, 255 = void.
    frame_id : str, optional
        Named in error messages.

    Returns
    -------
    score : ndarray, shape (H, W), the input's float dtype (integers become float64)
    label : ndarray, shape (H, W), uint8

    Raises
    ------
    ValueError
        On a shape mismatch, label values other than 0 / 1 / 255, non-integer labels, or NaN /
        inf scores; the message names the frame and the argument.
    """
    where = _where(frame_id)
    score = np.asarray(score)
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{where}: label must be a 2-D (H, W) map, got shape {label.shape}")
    if score.shape != label.shape:
        raise ValueError(
            f"{where}: score has shape {score.shape} but label has shape {label.shape}"
        )
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise ValueError(f"{where}: label must be an integer map, got dtype {label.dtype}")
    if label.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    else:
        values = np.unique(label)
    bad = values[~np.isin(values, (0, 1, 255))]
    if bad.size:
        raise ValueError(
            f"{where}: label holds values {bad[:10].tolist()} besides 0 / 1 / 255"
        )
    if not (np.issubdtype(score.dtype, np.floating) or np.issubdtype(score.dtype, np.integer)):
        raise ValueError(f"{where}: score must be a real-valued map, got dtype {score.dtype}")
    if np.issubdtype(score.dtype, np.integer):
        score = score.astype(np.float64)
    if not np.all(np.isfinite(score)):
        n = int(np.count_nonzero(~np.isfinite(score)))
        raise ValueError(f"{where}: score holds {n} NaN or inf values")
    return score, label.astype(np.uint8, copy=False)


def to_float16(score: np.ndarray, frame_id: str | None = None) -> np.ndarray:
    """Round a score map to float16 as the benchmark stores it (round to nearest even).

    Raises ``ValueError`` naming the frame when a value overflows the float16 range (|x| > 65504).
    """
    with np.errstate(over="ignore"):
        s16 = np.asarray(score).astype(np.float16)
    if not np.all(np.isfinite(s16)):
        raise ValueError(
            f"{_where(frame_id)}: score exceeds the float16 range (|x| > 65504); "
            "the benchmark stores scores as float16"
        )
    return s16


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    trap = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(trap(y, x))


# --------------------------------------------------------------------------------------------
# Pixel level: curves
# --------------------------------------------------------------------------------------------


@dataclass
class FrameBins:
    """Per-frame histogram of the SMIYC pixel evaluation.

    Attributes
    ----------
    thresholds : ndarray, shape (B,), float64
        Lower edge of each bin (its threshold: a pixel counts as predicted positive at this
        threshold when ``score >= edge``), in descending order.
    tp_rel, fp_rel : ndarray, shape (B,), int64
        Positive / negative pixels falling into each bin.
    n_pos, n_neg : int
        Positive / negative (non-void) pixels of the frame.
    """

    thresholds: np.ndarray
    tp_rel: np.ndarray
    fp_rel: np.ndarray
    n_pos: int
    n_neg: int


def _outer_edges(version: str, vals: np.ndarray) -> np.ndarray:
    """The two edges added to a frame's quantile edges: {0, 1} (2021) or its range ± eps (now)."""
    if version == "smiyc2021":
        return np.array([0.0, 1.0])
    vmin, vmax = float(vals.min()), float(vals.max())
    # In float64, as the benchmark's pinned NumPy 1.23 computes it (scalar arithmetic).
    eps = max((vmax - vmin) * 1e-2, 1e-2)
    return np.array([vmin - eps, vmax + eps])


def smiyc_frame_bins(
    score,
    label,
    *,
    version: str = "smiyc",
    binning: Binning = "percentiles",
    n_bins: int | None = None,
    float16: bool = True,
    frame_id: str | None = None,
) -> FrameBins:
    """Bin one frame's non-void pixels as the benchmark does.

    Parameters
    ----------
    score : array_like, shape (H, W), real
    label : array_like, shape (H, W), integer, 0 / 1 / 255
    version : {"smiyc", "smiyc2021"}
        The benchmark version (see the module docstring): outer edges {vmin − eps, vmax + eps}
        and uniform range [−0.01, 1.01] (``"smiyc"``), or {0, 1} and [0, 1] (``"smiyc2021"``).
    binning : {"percentiles", "uniform", "unique"}
        ``"percentiles"``: edges = unique(outer edges ∪ ``n_bins // 2`` quantiles (evenly spaced
        probabilities, linear interpolation) of the positive scores ∪ as many of the negative
        scores; at most as many quantiles as the class has pixels). ``"uniform"``: ``n_bins``
        equal bins over the version's range (scores outside fall in no bin, as in the
        benchmark). ``"unique"``: every distinct score is an edge (plus the outer edges); not a
        benchmark setting, it shows that the binning is the only difference to the exact curve.
    n_bins : int, optional
        768 for percentiles, 4096 for uniform (the benchmark's settings).
    float16 : bool
        Round scores to float16 first (the benchmark's storage).
    frame_id : str, optional
        Named in error messages.

    Returns
    -------
    FrameBins
        Bins follow ``numpy.histogram``: half-open ``[lo, hi)`` except the last, ``[lo, hi]``.
        ``"smiyc"`` with a frame that has no non-void pixel: no bins.
    """
    if version not in SMIYC_MODES:
        raise ValueError(f"version must be one of {SMIYC_MODES}, got {version!r}")
    score, label = check_ood_frame(score, label, frame_id)
    if float16:
        score = to_float16(score, frame_id)
    roi = label != 255
    gt = label[roi] == 1
    # float16 values are exact in float64; binning in float64 keeps 4096 uniform edges distinct
    # (float16 cannot hold them) and gives the same counts as the benchmark.
    vals = score[roi].astype(np.float64)
    pos, neg = vals[gt], vals[~gt]
    if version == "smiyc" and binning != "uniform" and vals.size == 0:
        empty = np.zeros(0, np.int64)
        return FrameBins(np.zeros(0), empty, empty, 0, 0)
    if binning == "percentiles":
        half = (n_bins or SMIYC_PERCENTILE_BINS) // 2
        parts = [_outer_edges(version, vals)]
        for v in (pos, neg):
            if v.size:
                parts.append(np.quantile(v, np.linspace(0, 1, min(half, v.size))))
        bins: np.ndarray | int = np.unique(np.concatenate(parts).astype(np.float64))
        rng = None
    elif binning == "uniform":
        bins, rng = (n_bins or SMIYC_UNIFORM_BINS), SMIYC_UNIFORM_RANGE[version]
    elif binning == "unique":
        bins, rng = np.unique(np.concatenate([_outer_edges(version, vals), vals])), None
    else:
        raise ValueError(f"binning must be 'percentiles', 'uniform' or 'unique', got {binning!r}")
    tp_rel, _ = np.histogram(pos, bins=bins, range=rng)
    fp_rel, edges = np.histogram(neg, bins=bins, range=rng)
    return FrameBins(
        thresholds=edges[:-1][::-1].astype(np.float64),
        tp_rel=tp_rel[::-1].astype(np.int64),
        fp_rel=fp_rel[::-1].astype(np.int64),
        n_pos=int(pos.size),
        n_neg=int(neg.size),
    )


@dataclass
class PixelCurve:
    """Cumulative confusion counts over decreasing thresholds.

    Attributes
    ----------
    thresholds : ndarray, shape (K,), float64, non-increasing
        A pixel is predicted positive when ``score >= threshold``.
    tp, fp : ndarray, shape (K,), float64
        Positives / negatives predicted positive at each threshold (non-decreasing).
    n_pos, n_neg : int
        Positive / negative pixels in total.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.n_pos

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.n_neg

    @property
    def precision(self) -> np.ndarray:
        """``tp / (tp + fp)``; 1 where nothing is predicted (the current benchmark's convention)."""
        n_pred = self.tp + self.fp
        out = np.ones_like(n_pred)
        np.divide(self.tp, n_pred, out=out, where=n_pred > 0)
        return out

    @property
    def f1(self) -> np.ndarray:
        return 2 * self.tp / (2 * self.tp + self.fp + (self.n_pos - self.tp))


def _check_counts(n_pos: int, n_neg: int) -> None:
    if n_pos == 0:
        raise ValueError(
            "the split has no anomaly (label 1) pixels outside void: precision, recall, AuPRC "
            "and FPR95 are undefined"
        )
    if n_neg == 0:
        raise ValueError(
            "the split has no in-distribution (label 0) pixels outside void: FPR and AUROC are "
            "undefined"
        )


def _pool(frames: Sequence[FrameBins]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    if not frames:
        raise ValueError("no frame was added")
    n_pos = sum(f.n_pos for f in frames)
    n_neg = sum(f.n_neg for f in frames)
    _check_counts(n_pos, n_neg)
    return (
        np.concatenate([f.thresholds for f in frames]),
        np.concatenate([f.tp_rel for f in frames]),
        np.concatenate([f.fp_rel for f in frames]),
        n_pos,
        n_neg,
    )


def smiyc_curve(frames: Sequence[FrameBins]) -> PixelCurve:
    """The current benchmark's pooled curve (HEAD ``1c7804e``), independent of the frame order.

    All frames' bins are pooled; the pixels of all bins with the same threshold form one curve
    point (the benchmark keeps the last index of each run of equal sorted thresholds, at which
    all of them are counted). End points: if the first point predicts something, a point with
    tp = fp = 0 is prepended (threshold = highest threshold + 1); if the last point does not
    predict every pixel (scores outside the uniform range), a point with all pixels is appended
    (threshold = highest threshold of the curve so far − 1, as the benchmark computes it).
    Works for per-frame percentile bins and for uniform bins alike (the latter share their
    thresholds, so pooling sums them).
    """
    thresholds, tp_rel, fp_rel, n_pos, n_neg = _pool(frames)
    uniq, inv = np.unique(thresholds, return_inverse=True)
    tp_u = np.bincount(inv, weights=tp_rel, minlength=uniq.size)
    fp_u = np.bincount(inv, weights=fp_rel, minlength=uniq.size)
    thr, tp, fp = uniq[::-1].astype(np.float64), np.cumsum(tp_u[::-1]), np.cumsum(fp_u[::-1])
    if tp[0] + fp[0] > 0:
        thr, tp, fp = np.r_[thr[0] + 1.0, thr], np.r_[0.0, tp], np.r_[0.0, fp]
    if tp[-1] != n_pos or fp[-1] != n_neg:
        thr, tp, fp = np.r_[thr, thr.max() - 1.0], np.r_[tp, float(n_pos)], np.r_[fp, float(n_neg)]
    return PixelCurve(thr, tp, fp, n_pos, n_neg)


def _drop_empty_prefix(curve: PixelCurve) -> PixelCurve:
    # The 2021 benchmark drops the leading points with no prediction at all.
    keep = (curve.tp + curve.fp) > 0.01
    if not keep.any():
        raise ValueError("no pixel is predicted positive at any threshold")
    first = int(np.argmax(keep))
    return PixelCurve(
        curve.thresholds[first:], curve.tp[first:], curve.fp[first:], curve.n_pos, curve.n_neg
    )


def smiyc2021_curve_from_frames(
    frames: Sequence[FrameBins], tie_order: Literal["numpy", "stable"] = "numpy"
) -> PixelCurve:
    """Pool per-frame bins into one curve as the 2021 benchmark (``b580f16``) does.

    All frames' bins are concatenated in frame order and ordered by threshold descending; the
    counts are accumulated along that order. Equal thresholds of different frames stay separate
    curve points (as in that version), so **their order moves AuPRC and AUROC**:

    - ``tie_order="numpy"`` (default): ``numpy.argsort(thresholds)[::-1]``, the benchmark's
      own call. NumPy's default sort is not stable and its tie order depends on the NumPy
      version and the CPU's SIMD sort (NumPy 1.26 reproduces the benchmark under its pinned
      NumPy 1.23 bit for bit; NumPy 2.x moves AuPRC by up to 0.019 and FPR95 by up to 0.052 on
      tied or saturated scores, ~1e-5 on smooth ones; DESIGN.md §6a).
    - ``tie_order="stable"``: ties in frame order (platform independent, still order dependent).

    Leading points without any predicted pixel are dropped.
    """
    thresholds, tp_rel, fp_rel, n_pos, n_neg = _pool(frames)
    if tie_order == "numpy":
        order = np.argsort(thresholds)[::-1]
    elif tie_order == "stable":
        order = np.argsort(-thresholds, kind="stable")
    else:
        raise ValueError(f"tie_order must be 'numpy' or 'stable', got {tie_order!r}")
    curve = PixelCurve(
        thresholds=thresholds[order],
        tp=np.cumsum(tp_rel[order].astype(np.float64)),
        fp=np.cumsum(fp_rel[order].astype(np.float64)),
        n_pos=n_pos,
        n_neg=n_neg,
    )
    return _drop_empty_prefix(curve)


def smiyc2021_curve_fixed_bins(
    thresholds: np.ndarray, tp_rel: np.ndarray, fp_rel: np.ndarray, n_pos: int, n_neg: int
) -> PixelCurve:
    """The 2021 curve of uniform bins shared by all frames (counts already summed over frames).

    ``thresholds`` descending; one point per bin, as the benchmark's summed confusion matrices.
    """
    _check_counts(n_pos, n_neg)
    curve = PixelCurve(
        thresholds=np.asarray(thresholds, dtype=np.float64),
        tp=np.cumsum(np.asarray(tp_rel, dtype=np.float64)),
        fp=np.cumsum(np.asarray(fp_rel, dtype=np.float64)),
        n_pos=n_pos,
        n_neg=n_neg,
    )
    return _drop_empty_prefix(curve)


def exact_curve(scores: np.ndarray, labels: np.ndarray) -> PixelCurve:
    """The unbinned curve: one point per distinct score, tied scores form one threshold.

    Parameters
    ----------
    scores : ndarray, shape (N,), real
        Scores of the non-void pixels.
    labels : ndarray, shape (N,), bool or 0/1
        True for anomaly pixels.
    """
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    uniq, inv = np.unique(scores, return_inverse=True)
    pos = np.bincount(inv, weights=labels, minlength=uniq.size)
    tot = np.bincount(inv, minlength=uniq.size).astype(np.float64)
    return _curve_from_unique(uniq, pos, tot - pos)


def _curve_from_unique(values: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> PixelCurve:
    # values ascending and distinct; counts per value.
    n_pos, n_neg = int(round(pos.sum())), int(round(neg.sum()))
    _check_counts(n_pos, n_neg)
    return PixelCurve(
        thresholds=values[::-1].astype(np.float64),
        tp=np.cumsum(pos[::-1].astype(np.float64)),
        fp=np.cumsum(neg[::-1].astype(np.float64)),
        n_pos=n_pos,
        n_neg=n_neg,
    )


# --------------------------------------------------------------------------------------------
# Pixel level: scalar metrics from a curve
# --------------------------------------------------------------------------------------------


def _fpr95_index(tpr: np.ndarray) -> int:
    # First point (threshold descending) with TPR >= 0.95; len(tpr) if never reached.
    return int(np.searchsorted(tpr, 0.95, side="left"))


def _threshold_metrics(curve: PixelCurve) -> dict[str, float]:
    """FPR95, best F1 and their thresholds, the same in both benchmark versions.

    ``FPR95`` = FPR at the first point with TPR >= 0.95, no interpolation (1.0 if never
    reached); ``tpr95_threshold`` its threshold (0.0 if never reached); ``best_F1`` and
    ``best_F1_threshold`` at the first maximum of F1.
    """
    tpr, fpr, f1 = curve.tpr, curve.fpr, curve.f1
    i95 = _fpr95_index(tpr)
    if i95 < tpr.size:
        fpr95, thr95 = float(fpr[i95]), float(curve.thresholds[i95])
    else:
        fpr95, thr95 = 1.0, 0.0
    ix = int(np.nanargmax(f1))
    return {"FPR95": fpr95, "best_F1": float(f1[ix]), "best_F1_threshold": float(curve.thresholds[ix]),
            "tpr95_threshold": thr95}


def _ordered(auprc: float, auroc: float, curve: PixelCurve) -> dict[str, float]:
    thr = _threshold_metrics(curve)
    return {"AuPRC": auprc, "FPR95": thr["FPR95"], "AUROC": auroc, "best_F1": thr["best_F1"],
            "best_F1_threshold": thr["best_F1_threshold"], "tpr95_threshold": thr["tpr95_threshold"]}


def smiyc_metrics_from_curve(curve: PixelCurve) -> dict[str, float]:
    """The current benchmark's scalar pixel metrics (HEAD ``1c7804e``) from :func:`smiyc_curve`.

    Returns
    -------
    dict with ``AuPRC`` = Σ_k (R_k − R_{k−1}) · P_k over the curve's points (a step sum; P = 1
    where nothing is predicted), ``AUROC`` (trapezoid of TPR over FPR over the points, end
    points included), and the keys of :func:`_threshold_metrics`. Keys without mode suffix.
    """
    tpr, fpr = curve.tpr, curve.fpr
    return _ordered(float(np.sum(np.diff(tpr) * curve.precision[1:])), _trapezoid(tpr, fpr), curve)


def smiyc2021_metrics_from_curve(curve: PixelCurve) -> dict[str, float]:
    """The 2021 benchmark's scalar pixel metrics (``b580f16``) from its curve.

    Returns
    -------
    dict with ``AuPRC`` (trapezoid of precision over recall, no anchor), ``AUROC`` (trapezoid
    of TPR over FPR, no anchor), and the keys of :func:`_threshold_metrics`. Keys without mode
    suffix. AuPRC and AUROC depend on the order of tied thresholds (see
    :func:`smiyc2021_curve_from_frames`).
    """
    return _ordered(_trapezoid(curve.precision, curve.tpr), _trapezoid(curve.tpr, curve.fpr), curve)


def exact_metrics_from_curve(curve: PixelCurve) -> dict[str, float]:
    """Unbinned pixel metrics from an :func:`exact_curve`.

    Returns
    -------
    dict with ``AP`` = Σ_k (R_k − R_{k−1}) P_k over thresholds descending with R_0 = 0
    (scikit-learn's ``average_precision_score``), ``FPR95`` = FPR at the largest threshold whose
    TPR >= 0.95 (ties are one threshold, so no tie order matters), ``AUROC`` = trapezoid over
    the ROC points with the (0, 0) anchor (scikit-learn's ``roc_auc_score``), ``best_F1`` and
    ``best_F1_threshold`` (largest threshold reaching the maximum F1), ``tpr95_threshold``.
    """
    tpr, fpr, prec, f1 = curve.tpr, curve.fpr, curve.precision, curve.f1
    recall_steps = np.diff(np.concatenate([[0.0], tpr]))
    i95 = _fpr95_index(tpr)  # always < size: the last point has TPR = 1
    ix = int(np.argmax(f1))
    return {
        "AP": float(np.sum(recall_steps * prec)),
        "FPR95": float(fpr[i95]),
        "AUROC": _trapezoid(np.concatenate([[0.0], tpr]), np.concatenate([[0.0], fpr])),
        "best_F1": float(f1[ix]),
        "best_F1_threshold": float(curve.thresholds[ix]),
        "tpr95_threshold": float(curve.thresholds[i95]),
    }


def _suffixed(metrics: dict[str, float], suffix: str) -> dict[str, float]:
    return {f"{k}_{suffix}": v for k, v in metrics.items()}


# --------------------------------------------------------------------------------------------
# Pixel level: streaming object
# --------------------------------------------------------------------------------------------


class PixelOoDMetrics:
    """Pixel-level OoD metrics over a split, frame by frame.

    Parameters
    ----------
    mode : {"smiyc", "smiyc2021", "exact"}
        See the module docstring: the benchmark now, the benchmark before 2023-08-24, unbinned.
    binning : {"percentiles", "uniform", "unique"}
        SMIYC modes only: the benchmark's ``PixBinaryClass`` (default) or
        ``PixBinaryClass-uniThr``; ``"unique"`` (every distinct score an edge, keys
        ``*_{mode}_unique``) is a diagnostic that isolates the effect of the binning.
    float16 : bool
        SMIYC modes only: round scores to float16 first (default, as the benchmark). Turning it
        off is for comparisons only.
    tie_order : {"numpy", "stable"}
        ``smiyc2021`` with percentile bins only: order of equal thresholds of different frames,
        see :func:`smiyc2021_curve_from_frames` (the other modes do not depend on it).

    Memory: the SMIYC modes keep at most ``n_bins`` + 2 bins per frame (percentiles) or one
    fixed histogram (uniform); exact keeps every frame's distinct non-void scores with their
    positive/negative counts (value + 8 bytes per distinct value and frame: about 32 MiB for a
    2-Mpixel float64 frame without ties). For large splits in exact mode, pass float32 scores
    (ties below float32 resolution merge) or use a SMIYC mode.

    Examples
    --------
    >>> m = PixelOoDMetrics("smiyc")
    >>> for fid, score, label in frames:      # doctest: +SKIP
    ...     m.update(score, label, fid)
    >>> m.compute()["AuPRC_smiyc"]            # doctest: +SKIP
    """

    def __init__(
        self,
        mode: Mode = "smiyc",
        binning: Binning = "percentiles",
        float16: bool = True,
        tie_order: Literal["numpy", "stable"] = "numpy",
    ):
        self.mode = _check_mode(mode)
        if tie_order not in ("numpy", "stable"):
            raise ValueError(f"tie_order must be 'numpy' or 'stable', got {tie_order!r}")
        self.tie_order = tie_order
        if binning not in ("percentiles", "uniform", "unique"):
            raise ValueError(
                f"binning must be 'percentiles', 'uniform' or 'unique', got {binning!r}"
            )
        self.binning = binning
        self.float16 = bool(float16)
        self.reset()

    @property
    def suffix(self) -> str:
        """Suffix of every output key: ``smiyc``, ``smiyc_uniform``, ``smiyc2021``,
        ``smiyc2021_uniform``, ``exact`` (``*_unique`` for the diagnostic binning)."""
        if self.mode == "exact":
            return "exact"
        return self.mode + {"percentiles": "", "uniform": "_uniform", "unique": "_unique"}[self.binning]

    def reset(self) -> None:
        """Forget all frames."""
        self.frame_ids: list[str] = []
        self._frames: list = []
        self._fixed: FrameBins | None = None

    def update(self, score, label, frame_id: str | None = None) -> None:
        """Add one frame.

        Parameters
        ----------
        score : array_like, shape (H, W), real, finite
        label : array_like, shape (H, W), integer, 0 / 1 / 255
        frame_id : str, optional
            Named in errors and recorded; defaults to the running index.
        """
        fid = str(frame_id) if frame_id is not None else str(len(self.frame_ids))
        if self.mode == "exact":
            score, label = check_ood_frame(score, label, fid)
            roi = label != 255
            vals, gt = score[roi], label[roi] == 1
            uniq, inv = np.unique(vals, return_inverse=True)
            pos = np.bincount(inv, weights=gt, minlength=uniq.size).astype(np.int32)
            tot = np.bincount(inv, minlength=uniq.size).astype(np.int32)
            self._frames.append((uniq, pos, tot - pos))
        else:
            fb = smiyc_frame_bins(
                score, label, version=self.mode, binning=self.binning, float16=self.float16,
                frame_id=fid,
            )
            if self.binning == "uniform":
                if self._fixed is None:
                    self._fixed = fb
                else:
                    f = self._fixed
                    self._fixed = FrameBins(
                        f.thresholds, f.tp_rel + fb.tp_rel, f.fp_rel + fb.fp_rel,
                        f.n_pos + fb.n_pos, f.n_neg + fb.n_neg,
                    )
            else:
                self._frames.append(fb)
        self.frame_ids.append(fid)

    def curve(self) -> PixelCurve:
        """The pooled curve (thresholds descending) of all frames added so far."""
        if not self.frame_ids:
            raise ValueError("no frame was added")
        if self.mode == "exact":
            vals = np.concatenate([f[0] for f in self._frames])
            pos = np.concatenate([f[1] for f in self._frames])
            neg = np.concatenate([f[2] for f in self._frames])
            uniq, inv = np.unique(vals, return_inverse=True)
            return _curve_from_unique(
                uniq,
                np.bincount(inv, weights=pos, minlength=uniq.size),
                np.bincount(inv, weights=neg, minlength=uniq.size),
            )
        frames = [self._fixed] if self.binning == "uniform" else self._frames
        if self.mode == "smiyc":
            return smiyc_curve(frames)
        if self.binning == "uniform":
            f = self._fixed
            return smiyc2021_curve_fixed_bins(f.thresholds, f.tp_rel, f.fp_rel, f.n_pos, f.n_neg)
        return smiyc2021_curve_from_frames(frames, self.tie_order)

    def compute(self) -> dict:
        """Scalar metrics of the split.

        Returns
        -------
        dict
            ``mode``, ``version`` (:data:`VERSIONS`), ``binning`` and ``float16`` (SMIYC modes),
            ``n_frames``, ``n_pos``, ``n_neg`` and the metrics with the mode suffix (see the
            module docstring), all plain Python numbers.
        """
        curve = self.curve()
        metrics = {"exact": exact_metrics_from_curve, "smiyc": smiyc_metrics_from_curve,
                   "smiyc2021": smiyc2021_metrics_from_curve}[self.mode](curve)
        out: dict = {"mode": self.mode, "version": VERSIONS[self.mode]}
        if self.mode in SMIYC_MODES:
            out["binning"] = self.binning
            out["float16"] = self.float16
        out.update(n_frames=len(self.frame_ids), n_pos=curve.n_pos, n_neg=curve.n_neg)
        out.update(_suffixed(metrics, self.suffix))
        return out


# --------------------------------------------------------------------------------------------
# Component level
# --------------------------------------------------------------------------------------------


@dataclass
class FrameComponents:
    """Component-level results of one frame.

    Attributes
    ----------
    frame_id : str
    sIoU_gt : ndarray, shape (G,), float64
        sIoU of each ground-truth component, in raster order of the components' first pixel.
    PPV : ndarray, shape (P,), float64
        Fraction of each predicted component covered by ground-truth components it touches.
    sIoU_pred : ndarray, shape (P,), float64
        sIoU with the roles of prediction and ground truth exchanged (reported by the benchmark).
    size_gt, size_pred : ndarray, shape (G,) / (P,), int64
        Component sizes in pixels, counted outside void.
    """

    frame_id: str
    sIoU_gt: np.ndarray
    PPV: np.ndarray
    sIoU_pred: np.ndarray
    size_gt: np.ndarray
    size_pred: np.ndarray

    def counts(self, t: float) -> tuple[int, int, int]:
        """(TP, FN, FP) at threshold ``t``: sIoU >= t is a TP, PPV < t a FP."""
        tp = int(np.count_nonzero(self.sIoU_gt >= t))
        return tp, int(self.sIoU_gt.size) - tp, int(np.count_nonzero(self.PPV < t))

    def as_dict(self) -> dict:
        return {
            "frame_id": self.frame_id,
            "sIoU_gt": self.sIoU_gt.tolist(),
            "PPV": self.PPV.tolist(),
            "sIoU_pred": self.sIoU_pred.tolist(),
            "size_gt": self.size_gt.tolist(),
            "size_pred": self.size_pred.tolist(),
        }


def _track_sizes(track: str | None, min_pred_size: int | None, min_gt_size: int | None):
    if track is not None:
        if track not in TRACKS:
            raise ValueError(f"track must be one of {tuple(TRACKS)}, got {track!r}")
        min_pred_size = TRACKS[track]["min_pred_size"] if min_pred_size is None else min_pred_size
        min_gt_size = TRACKS[track]["min_gt_size"] if min_gt_size is None else min_gt_size
    if min_pred_size is None or min_gt_size is None:
        raise ValueError("give a track ('obstacle' or 'anomaly') or both size filters")
    return int(min_pred_size), int(min_gt_size)


def frame_components(
    score,
    label,
    threshold: float,
    *,
    track: Track | None = None,
    min_pred_size: int | None = None,
    min_gt_size: int | None = None,
    float16: bool = True,
    frame_id: str | None = None,
) -> FrameComponents:
    """sIoU, PPV and sizes of one frame's components (the benchmark's component evaluation).

    Steps: prediction = ``score > threshold`` (strict), void pixels set to 0; ground truth =
    ``label == 1``; both labelled with 8-connectivity. Predicted components with fewer than
    ``min_pred_size`` pixels are removed; ground-truth components with fewer than
    ``min_gt_size`` pixels become void (as in the benchmark, this check also covers the
    background "component" 0: a frame whose non-anomaly area is that small becomes all void
    outside the anomalies). Everything below is counted outside void.

    For a gt component k, K̂ = union of predicted components touching it, A = other gt
    components: ``sIoU(k) = |k ∩ K̂| / |(k ∪ K̂) \\ A|``. For a predicted component j,
    ``PPV(j) = |j ∩ (gt components touching j)| / |j|``.

    Parameters
    ----------
    score : array_like, shape (H, W), real, finite
    label : array_like, shape (H, W), integer, 0 / 1 / 255
    threshold : float
        The pixel-level best-F1 threshold of the same method and split.
    track : {"obstacle", "anomaly"}, optional
        Sets the size filters (50 / 10 px resp. 500 / 100 px) unless given explicitly.
    min_pred_size, min_gt_size : int, optional
    float16 : bool
        Round the score to float16 first and compare in float16 (smiyc mode).
    frame_id : str, optional
    """
    min_pred_size, min_gt_size = _track_sizes(track, min_pred_size, min_gt_size)
    fid = str(frame_id) if frame_id is not None else "0"
    score, label = check_ood_frame(score, label, frame_id)
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if float16:
        # The benchmark compares its float16 map with a Python-float threshold; NumPy casts the
        # threshold to float16 for that comparison.
        score = to_float16(score, frame_id)
        with np.errstate(over="ignore"):
            pred = score > np.float16(threshold)
    else:
        pred = score > threshold
    void = label == 255
    pred &= ~void
    gt_lab, n_gt = ndimage.label(label == 1, structure=_CONNECTIVITY_8)
    pred_lab, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_8)

    # Size filters, on the full frame.
    pred_size_full = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    keep_pred = pred_size_full >= min_pred_size
    keep_pred[0] = False
    # Compact ids 1..P for the kept predicted components, in label (raster) order.
    new_id = np.zeros(n_pred + 1, dtype=np.int64)
    new_id[keep_pred] = np.arange(1, int(keep_pred.sum()) + 1)
    pred_lab = new_id[pred_lab]

    gt_size_full = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)
    small_gt = gt_size_full < min_gt_size
    roi = ~void & ~small_gt[gt_lab]

    g = gt_lab[roi].astype(np.int64)
    p = pred_lab[roi]
    n_g, n_p = n_gt + 1, int(keep_pred.sum()) + 1
    size_gt_all = np.bincount(g, minlength=n_g)
    size_pred_all = np.bincount(p, minlength=n_p)
    gt_ids = np.flatnonzero(size_gt_all[1:] > 0) + 1
    pred_ids = np.flatnonzero(size_pred_all[1:] > 0) + 1

    # Sparse contingency table of (gt component, predicted component) overlaps.
    both = (g > 0) & (p > 0)
    pair, cnt = np.unique(g[both] * n_p + p[both], return_counts=True)
    pi, pj = pair // n_p, pair % n_p
    covered_gt = np.bincount(pi, weights=cnt, minlength=n_g)    # |k ∩ all predictions|
    covered_pred = np.bincount(pj, weights=cnt, minlength=n_p)  # |j ∩ all gt components|

    # gt component i: K̂ = {j : M[i, j] > 0}.
    # |K̂| = Σ size_pred[j];  adjustment = Σ_j (covered_pred[j] - M[i, j]).
    khat_size = np.bincount(pi, weights=size_pred_all[pj], minlength=n_g)
    adj_gt = np.bincount(pi, weights=covered_pred[pj] - cnt, minlength=n_g)
    inter_gt = covered_gt
    union_gt = khat_size + size_gt_all - inter_gt - adj_gt
    siou_gt = inter_gt[gt_ids] / union_gt[gt_ids]

    # predicted component j: K = {i : M[i, j] > 0}.
    k_size = np.bincount(pj, weights=size_gt_all[pi], minlength=n_p)
    adj_pred = np.bincount(pj, weights=covered_gt[pi] - cnt, minlength=n_p)
    union_pred = k_size + size_pred_all - covered_pred - adj_pred
    siou_pred = covered_pred[pred_ids] / union_pred[pred_ids]
    ppv = covered_pred[pred_ids] / size_pred_all[pred_ids]

    return FrameComponents(
        frame_id=fid,
        sIoU_gt=siou_gt.astype(np.float64),
        PPV=ppv.astype(np.float64),
        sIoU_pred=siou_pred.astype(np.float64),
        size_gt=size_gt_all[gt_ids].astype(np.int64),
        size_pred=size_pred_all[pred_ids].astype(np.int64),
    )


def aggregate_components(
    frames: Sequence[FrameComponents], suffix: str = "smiyc"
) -> dict:
    """Split-level component metrics, summed over frames as the benchmark does.

    Returns
    -------
    dict
        ``sIoU_gt_{suffix}`` (mean over all gt components of the split), ``PPV_{suffix}`` (mean
        over all predicted components), ``sIoU_pred_{suffix}``, ``F1_mean_{suffix}`` (mean of
        F1(t) over the 11 thresholds), ``F1_25/50/75_{suffix}``, ``TP/FN/FP_mean_{suffix}``,
        ``TP/FN/FP/F1_{t}_{suffix}`` for every t, ``n_gt``, ``n_pred``.

    Raises
    ------
    ValueError
        When the split has no ground-truth component.
    """
    n_gt = sum(int(f.sIoU_gt.size) for f in frames)
    n_pred = sum(int(f.PPV.size) for f in frames)
    if n_gt == 0:
        raise ValueError(
            "the split has no ground-truth anomaly component (after the size filter): sIoU and "
            "component F1 are undefined"
        )
    # Same summation order as the benchmark: per-frame sums, then frames in order.
    siou_gt = sum(np.sum(f.sIoU_gt) for f in frames) / n_gt
    if n_pred:
        ppv = sum(np.sum(f.PPV) for f in frames) / n_pred
        siou_pred = sum(np.sum(f.sIoU_pred) for f in frames) / n_pred
    else:
        ppv = siou_pred = 0.0
    out: dict = {"n_gt": n_gt, "n_pred": n_pred}
    means = {"TP": 0.0, "FN": 0.0, "FP": 0.0, "F1": 0.0}
    per_t: dict = {}
    for t in SIOU_THRESHOLDS:
        tp = fn = fp = 0
        for f in frames:
            a, b, c = f.counts(t)
            tp, fn, fp = tp + a, fn + b, fp + c
        f1 = (2 * tp) / (2 * tp + fn + fp)
        key = int(round(t * 100))
        per_t.update({f"TP_{key}": tp, f"FN_{key}": fn, f"FP_{key}": fp, f"F1_{key}": f1})
        means["TP"] += tp
        means["FN"] += fn
        means["FP"] += fp
        means["F1"] += f1
    out["sIoU_gt"] = float(siou_gt)
    out["PPV"] = float(ppv)
    out["sIoU_pred"] = float(siou_pred)
    for k, v in means.items():
        out[f"{k}_mean"] = v / len(SIOU_THRESHOLDS)
    out.update(per_t)
    meta = {"n_gt", "n_pred"}
    return {k if k in meta else f"{k}_{suffix}": (float(v) if isinstance(v, float) else v)
            for k, v in out.items()}


class ComponentOoDMetrics:
    """Component-level OoD metrics (sIoU, PPV, F1) over a split, frame by frame.

    Parameters
    ----------
    track : {"obstacle", "anomaly"}
        Size filters: 50 / 10 px (obstacle: RoadObstacle21, LostAndFound-NoKnown) or
        500 / 100 px (anomaly: RoadAnomaly21, Fishyscapes).
    threshold : float
        The pixel-level best-F1 threshold of the same method, split and mode
        (``PixelOoDMetrics(mode).compute()["best_F1_threshold_<suffix>"]``).
    mode : {"smiyc", "smiyc2021", "exact"}
        The SMIYC modes round scores to float16 first (both benchmark versions compute the
        components identically; only their threshold differs); otherwise identical.

    Keeps only the per-component numbers (a few floats per component).
    """

    def __init__(self, track: Track, threshold: float, mode: Mode = "smiyc"):
        self.track = track
        self.min_pred_size, self.min_gt_size = _track_sizes(track, None, None)
        self.threshold = float(threshold)
        self.mode = _check_mode(mode)
        self.reset()

    def reset(self) -> None:
        """Forget all frames."""
        self.frames: list[FrameComponents] = []

    def update(self, score, label, frame_id: str | None = None) -> FrameComponents:
        """Add one frame and return its per-component results."""
        fid = str(frame_id) if frame_id is not None else str(len(self.frames))
        fc = frame_components(
            score, label, self.threshold, track=self.track,
            float16=self.mode in SMIYC_MODES, frame_id=fid,
        )
        self.frames.append(fc)
        return fc

    def compute(self) -> dict:
        """Split-level metrics (see :func:`aggregate_components`) plus ``mode``, ``track``,
        ``threshold`` and ``per_frame`` (list of :meth:`FrameComponents.as_dict`)."""
        if not self.frames:
            raise ValueError("no frame was added")
        out: dict = {"mode": self.mode, "version": VERSIONS[self.mode], "track": self.track,
                     "threshold": self.threshold}
        out.update(aggregate_components(self.frames, suffix=self.mode))
        out["per_frame"] = [f.as_dict() for f in self.frames]
        return out


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
    _check_mode(mode)
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
