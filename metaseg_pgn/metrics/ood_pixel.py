"""Pixel-level OoD metrics: the benchmark's per-frame bins, its curves (now and 2021), the unbinned curve.

Definitions, modes and output keys: :mod:`metaseg_pgn.metrics.ood` (docs/design.md §6 and §6a).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from .ood_input import SMIYC_MODES, VERSIONS, Mode, check_mode, check_ood_frame, to_float16

Binning = Literal["percentiles", "uniform", "unique"]

#: Number of bins of the benchmark's percentile binning (``num_bins // 2`` quantiles per class).
SMIYC_PERCENTILE_BINS = 768
#: Number of bins of the benchmark's uniform binning (``PixBinaryClass-uniThr``).
SMIYC_UNIFORM_BINS = 4096
#: Range of the uniform bins per version.
SMIYC_UNIFORM_RANGE: dict[str, tuple[float, float]] = {"smiyc": (-0.01, 1.01), "smiyc2021": (0.0, 1.0)}


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
        The benchmark version (see :mod:`metaseg_pgn.metrics.ood`): outer edges {vmin − eps, vmax + eps}
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
      tied or saturated scores, ~1e-5 on smooth ones; docs/design.md §6a).
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
        See :mod:`metaseg_pgn.metrics.ood`: the benchmark now, the benchmark before 2023-08-24, unbinned.
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
        self.mode = check_mode(mode)
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
            ``n_frames``, ``n_pos``, ``n_neg`` and the metrics with the mode suffix (see
            :mod:`metaseg_pgn.metrics.ood`), all plain Python numbers.
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
