"""Segment-level OoD post-processing (Meta-OoD) with softmax and gradient features.

Chan, Rottmann & Gottschalk (ICCV 2021, docs/design.md §11) threshold a pixel OoD score into candidate
components, describe each candidate by MetaSeg-style features, train a meta classifier (true OoD
object or false positive) on held-out frames and remove the candidates it rejects. Here the
features may come from the softmax (as in Meta-OoD), from the PGN maps, or from both.

Definitions (the benchmark's component evaluation, :func:`metaseg_pgn.metrics.ood.frame_components`):

- *Candidates* of one frame: the 8-connected components of ``score > threshold`` (strict; in
  ``smiyc`` mode the float16-rounded score against the float16 threshold, as the benchmark
  compares) with void pixels (label 255) set to 0 first, components of fewer than
  ``min_pred_size`` pixels removed (50 px obstacle track, 500 px anomaly track). Ids 1..n in
  raster order of each candidate's first pixel.
- *Features* of a candidate: :func:`metaseg_pgn.segments.segment_features` on the candidate map
  (candidates as segments of one class, everything else void): sizes ``S, S_in, S_bd, S_rel,
  S_rel_in``, the ten statistics of every pixel map (mean and variance over the candidate, its
  inner part and its boundary, and the relative ones), the mean class probabilities ``cprob_c``.
  A candidate pixel is a boundary pixel when an in-image 8-neighbour is not in the candidate.
- *Target* of a candidate: its PPV as the benchmark counts it, the fraction of its pixels covered
  by ground-truth OoD components (counted outside void; ground-truth components of fewer than
  ``min_gt_size`` pixels are void, 10 px obstacle, 100 px anomaly). A candidate with no pixel
  outside void is not counted by the benchmark (``counted`` False, ``ppv`` NaN) and is left out
  of fitting and scoring. ``fp = ppv < fp_below`` (default 0.5: a false positive at more than half
  of the benchmark's thresholds t = 0.25 … 0.75) is the positive class of the meta classifier.
- *Post-processing*: the candidates whose predicted probability of ``fp`` exceeds
  ``reject_above`` (default 0.5) are removed; the component metrics (sIoU, PPV, mean F1) are
  computed by the benchmark's code on the map of the kept candidates.

Protocol (:func:`evaluate_dataset`): run r splits the frames of a dataset with
``GroupShuffleSplit(test_size, random_state=seed + r)`` by frame (no frame on both sides) into
fitting and evaluation frames. The threshold (default: the pixel-level best-F1 threshold of the
score on the fitting frames, in the chosen mode), the meta classifier and the standardisation see
the fitting frames only. Every score is divided by its maximum over the dataset first (as
``ood_eval`` does; label-free, so nothing of the evaluation frames' labels leaks).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .meta import (SIZE_COLUMNS, FeatureSet, check_models, fit_quietly, get_feature_set, joined_notes, make_classifier,
                   map_pattern, nan_mean_std, split_indices)
from .metrics.ood import (
    MODES,
    SMIYC_MODES,
    TRACKS,
    ComponentOoDMetrics,
    aggregate_components,
    exact_curve,
    exact_metrics_from_curve,
    frame_components,
    smiyc2021_curve_from_frames,
    smiyc2021_metrics_from_curve,
    smiyc_curve,
    smiyc_frame_bins,
    smiyc_metrics_from_curve,
    to_float16,
)
from .segments import label_segments, segment_feature_arrays

__all__ = [
    "OOD_FEATURE_SETS",
    "ood_feature_set",
    "candidate_mask",
    "extract_candidates",
    "candidate_targets",
    "candidate_features",
    "frame_candidates",
    "kept_mask",
    "mask_components",
    "frame_splits",
    "best_f1_threshold",
    "OoDMetaSettings",
    "evaluate_dataset",
    "summarise",
]

_CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)
_VOID = 255
_SIZES = "(?:" + "|".join(SIZE_COLUMNS) + ")"
_PGN_MAPS = "pgn_(?:last|deep)_(?:oh|uni)_p[0-9]+(?:_[0-9]+)?"


def _ood_sets() -> dict[str, FeatureSet]:
    softmax_maps = map_pattern("E|D|V")
    softmax = FeatureSet("softmax", (softmax_maps, _SIZES, r"cprob_[0-9]+"),
                         require=(map_pattern("E"), map_pattern("D"), map_pattern("V"), _SIZES))
    pgn = FeatureSet("pgn", (map_pattern(_PGN_MAPS), _SIZES), require=(map_pattern(_PGN_MAPS), _SIZES))
    return {"softmax": softmax, "pgn": pgn, "softmax+pgn": FeatureSet.union("softmax+pgn", softmax, pgn)}


#: The feature sets of the post-processing: ``softmax`` (E, D, V statistics, sizes, class
#: probabilities: Meta-OoD's), ``pgn`` (every PGN map's statistics and the sizes) and their union
#: ``softmax+pgn``. The sizes are in all three, so the sets differ only in the pixel maps.
OOD_FEATURE_SETS: Mapping[str, FeatureSet] = _ood_sets()


def ood_feature_set(name: str | FeatureSet) -> FeatureSet:
    """A feature set by name: one of :data:`OOD_FEATURE_SETS`, else a built-in set of
    :mod:`metaseg_pgn.meta` (``entropy``, ``pgn_uni_p0_5``, ...); ValueError listing both."""
    if isinstance(name, FeatureSet):
        return name
    if name in OOD_FEATURE_SETS:
        return OOD_FEATURE_SETS[name]
    try:
        return get_feature_set(name)
    except ValueError as e:
        raise ValueError(f"unknown OoD feature set {name!r}; ood_meta's sets: {list(OOD_FEATURE_SETS)}; "
                         f"{e}") from None


# --------------------------------------------------------------------------------------------
# One frame: candidates, their targets and features
# --------------------------------------------------------------------------------------------


def candidate_mask(score: np.ndarray, label: np.ndarray, threshold: float, *, float16: bool = True,
                   frame_id: str | None = None) -> np.ndarray:
    """Pixels above the threshold outside void, as the benchmark's component evaluation takes them.

    Parameters
    ----------
    score : numpy.ndarray, shape (H, W), real, finite
        OoD score, higher = more anomalous.
    label : numpy.ndarray, shape (H, W), integer
        0 in-distribution, 1 OoD, 255 void.
    threshold : float
        ``score > threshold`` (strict) is a candidate pixel.
    float16 : bool, default True
        Compare the float16-rounded score with the float16 threshold (``smiyc`` mode).
    frame_id : str, optional
        Named in errors.

    Returns
    -------
    numpy.ndarray, shape (H, W), bool
    """
    from .metrics.ood import check_ood_frame

    score, label = check_ood_frame(score, label, frame_id)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if float16:
        with np.errstate(over="ignore"):
            mask = to_float16(score, frame_id) > np.float16(threshold)
    else:
        mask = score > threshold
    mask &= label != _VOID
    return mask


def extract_candidates(score: np.ndarray, label: np.ndarray, threshold: float, *, min_pred_size: int,
                       float16: bool = True, frame_id: str | None = None) -> tuple[np.ndarray, int]:
    """The OoD candidates of one frame (module docstring).

    Parameters
    ----------
    score, label, threshold, float16, frame_id
        As in :func:`candidate_mask`.
    min_pred_size : int
        Components with fewer pixels are dropped (the track's predicted-component filter).

    Returns
    -------
    candidates : numpy.ndarray, shape (H, W), int32
        0 outside candidates, else the candidate id 1..n, in raster order of first pixels.
    n : int
    """
    mask = candidate_mask(score, label, threshold, float16=float16, frame_id=frame_id)
    segs, n = label_segments(np.where(mask, 1, _VOID).astype(np.uint8), void=_VOID)  # 8-connected
    sizes = np.bincount(segs.ravel(), minlength=n + 1)
    keep = sizes >= int(min_pred_size)
    keep[0] = False
    new_id = np.zeros(n + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)  # monotone: raster order kept
    return new_id[segs], int(keep.sum())


def candidate_targets(candidates: np.ndarray, n: int, label: np.ndarray, *, min_gt_size: int,
                      fp_below: float = 0.5) -> pd.DataFrame:
    """Each candidate's overlap with the ground-truth OoD objects, as the benchmark's PPV counts it.

    Parameters
    ----------
    candidates : numpy.ndarray, shape (H, W), integer
        Candidate ids 1..n (0 = none), from :func:`extract_candidates`.
    n : int
        Number of candidates.
    label : numpy.ndarray, shape (H, W), integer
        0 / 1 / 255.
    min_gt_size : int
        Ground-truth components (8-connected) of fewer pixels are void, as in the benchmark
        (including its quirk that a tiny background component 0 voids the background).
    fp_below : float, default 0.5
        ``fp = ppv < fp_below``.

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``candidate_id`` (int32), ``size`` (int64, all pixels),
        ``size_counted`` (pixels outside void), ``covered`` (of those, pixels in ground-truth
        components), ``ppv`` (float64, ``covered / size_counted``, NaN when not counted),
        ``counted`` (bool, ``size_counted > 0``), ``fp`` (nullable boolean, NA when not counted).
    """
    return _table(_target_arrays(candidates, n, label, min_gt_size, fp_below))


def _target_arrays(candidates, n, label, min_gt_size, fp_below) -> dict[str, np.ndarray]:
    """:func:`candidate_targets` as arrays (``fp`` False where not counted)."""
    label = np.asarray(label)
    gt_lab, n_gt = ndimage.label(label == 1, structure=_CONNECTIVITY_8)
    small = np.bincount(gt_lab.ravel(), minlength=n_gt + 1) < int(min_gt_size)
    roi = (label != _VOID) & ~small[gt_lab]
    c = np.asarray(candidates).ravel()
    roi_flat = roi.ravel()
    size = np.bincount(c, minlength=n + 1)[1:]
    size_counted = np.bincount(c[roi_flat], minlength=n + 1)[1:]
    covered = np.bincount(c[roi_flat & (gt_lab.ravel() > 0)], minlength=n + 1)[1:]
    counted = size_counted > 0
    ppv = np.full(n, np.nan)
    ppv[counted] = covered[counted] / size_counted[counted]
    return {
        "candidate_id": np.arange(1, n + 1, dtype=np.int32),
        "size": size.astype(np.int64),
        "size_counted": size_counted.astype(np.int64),
        "covered": covered.astype(np.int64),
        "ppv": ppv,
        "counted": counted,
        "fp": counted & (np.nan_to_num(ppv, nan=1.0) < fp_below),
    }


def _table(cols: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame of candidate columns; ``fp`` becomes nullable boolean, NA where not counted."""
    out = dict(cols)
    if "fp" in out and "counted" in out:
        out["fp"] = pd.arrays.BooleanArray(np.asarray(out["fp"], bool), ~np.asarray(out["counted"], bool))
    return pd.DataFrame(out, copy=False)


def candidate_features(candidates: np.ndarray, n: int, probs: np.ndarray,
                       maps: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """MetaSeg-style features of every candidate (:func:`metaseg_pgn.segments.segment_features`).

    The candidates are the segments of one class with everything else void; the computation runs
    on the bounding box of all candidates with a one-pixel margin (the margin holds no candidate
    pixel, so boundaries are the same as on the full frame, and the frame border stays a border).

    Parameters
    ----------
    candidates : numpy.ndarray, shape (H, W), integer
        Candidate ids 1..n in raster order (from :func:`extract_candidates`).
    n : int
    probs : numpy.ndarray, shape (C, H, W), float
        Softmax probabilities (their means give ``cprob_c``).
    maps : mapping of str to numpy.ndarray, shape (H, W)
        Pixel maps (E, D, V, PGN maps, baselines).

    Returns
    -------
    pandas.DataFrame
        One row per candidate in id order: ``candidate_id`` (int32), ``S, S_in, S_bd`` (int64),
        ``S_rel, S_rel_in``, ``centroid_y, centroid_x`` (in frame coordinates), the ten statistics
        of every map (:func:`metaseg_pgn.segments.map_columns`), ``cprob_0..C-1`` (float64).
    """
    return _table(_feature_arrays(candidates, n, probs, maps))


def _feature_arrays(candidates, n, probs, maps) -> dict[str, np.ndarray]:
    """:func:`candidate_features` as arrays (building DataFrames of hundreds of columns per frame
    would cost more than the features themselves)."""
    cand = np.asarray(candidates)
    probs = np.asarray(probs)
    if n == 0:  # no rows, the same columns
        r0 = c0 = 0
        box = (slice(0, 1), slice(0, 1))
        pred = np.full((1, 1), _VOID, np.uint8)
    else:
        rows = np.flatnonzero((cand > 0).any(axis=1))
        cols = np.flatnonzero((cand > 0).any(axis=0))
        r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, cand.shape[0])
        c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, cand.shape[1])
        box = (slice(r0, r1), slice(c0, c1))
        pred = np.where(cand[box] > 0, 1, _VOID).astype(np.uint8)
    arrays = segment_feature_arrays(pred, probs[(slice(None),) + box],
                                    {k: np.asarray(v)[box] for k, v in maps.items()}, None, void=_VOID,
                                    with_targets=False)
    if arrays["segment_id"].size != n:
        raise ValueError(f"candidate map has {n} candidates but {arrays['segment_id'].size} 8-connected "
                         "components: pass the output of extract_candidates")
    out = {"candidate_id": np.arange(1, n + 1, dtype=np.int32)}
    out.update((k, v) for k, v in arrays.items() if k not in ("segment_id", "pred_class"))
    out["centroid_y"] = out["centroid_y"] + r0
    out["centroid_x"] = out["centroid_x"] + c0
    return out


def frame_candidates(score: np.ndarray, label: np.ndarray, threshold: float, probs: np.ndarray,
                     maps: Mapping[str, np.ndarray], *, track: str, float16: bool = True,
                     fp_below: float = 0.5, frame_id: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Candidates of one frame with their features and targets.

    Returns
    -------
    candidates : numpy.ndarray, shape (H, W), int32
        See :func:`extract_candidates` (sizes of the ``track``).
    table : pandas.DataFrame
        :func:`candidate_targets` joined with :func:`candidate_features` (one row per candidate).
    """
    cand, cols = _frame_arrays(score, label, threshold, probs, maps, track, float16, fp_below, frame_id)
    return cand, _table(cols)


def _frame_arrays(score, label, threshold, probs, maps, track, float16, fp_below, frame_id):
    sizes = _track(track)
    cand, n = extract_candidates(score, label, threshold, min_pred_size=sizes["min_pred_size"],
                                 float16=float16, frame_id=frame_id)
    cols = _target_arrays(cand, n, label, sizes["min_gt_size"], fp_below)
    cols.update((k, v) for k, v in _feature_arrays(cand, n, probs, maps).items() if k != "candidate_id")
    return cand, cols


def kept_mask(candidates: np.ndarray, removed_ids: Iterable[int]) -> np.ndarray:
    """The candidate pixels of the candidates not removed: (H, W) bool."""
    cand = np.asarray(candidates)
    drop = np.zeros(int(cand.max(initial=0)) + 1, dtype=bool)
    ids = np.asarray(list(removed_ids), dtype=np.int64)
    drop[ids[(ids > 0) & (ids < drop.size)]] = True
    return (cand > 0) & ~drop[cand]


def mask_components(mask: np.ndarray, label: np.ndarray, *, track: str, frame_id: str | None = None):
    """The benchmark's component results of one frame for a given binary OoD prediction.

    ``frame_components`` on the mask as a 0/1 score with threshold 0.5 and the track's size
    filters: a post-processed prediction evaluated exactly as a thresholded score map is.

    Returns
    -------
    metaseg_pgn.metrics.ood.FrameComponents
    """
    sizes = _track(track)
    return frame_components(np.asarray(mask, dtype=np.float32), label, 0.5, float16=False, frame_id=frame_id,
                            min_pred_size=sizes["min_pred_size"], min_gt_size=sizes["min_gt_size"])


def _track(track: str) -> dict[str, int]:
    if track not in TRACKS:
        raise ValueError(f"track must be one of {tuple(TRACKS)}, got {track!r}")
    return TRACKS[track]


# --------------------------------------------------------------------------------------------
# Splits and thresholds
# --------------------------------------------------------------------------------------------


def frame_splits(frame_ids: Sequence[str], n_runs: int, test_size: float, seed: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit, eval)`` frame positions per run: grouped by frame, run r with ``seed + r``.

    The same draw as :func:`metaseg_pgn.meta.split_indices` with the ``grouped`` protocol on a
    table with one row per frame (``GroupShuffleSplit``), so no frame is on both sides.
    """
    ids = [str(f) for f in frame_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("frame ids must be unique")
    table = pd.DataFrame({"frame_id": ids})
    return list(split_indices(table, "grouped", n_runs=n_runs, seed=seed, test_size=test_size))


def pixel_summary(score: np.ndarray, label: np.ndarray, mode: str, frame_id: str | None = None):
    """What :func:`best_f1_threshold` needs of one frame: the benchmark's bins of that version
    (``smiyc``, ``smiyc2021``) or the non-void scores with their labels (``exact``)."""
    if mode in SMIYC_MODES:
        return smiyc_frame_bins(score, label, version=mode, frame_id=frame_id)
    if mode == "exact":
        roi = np.asarray(label) != _VOID
        return np.asarray(score)[roi].astype(np.float64), np.asarray(label)[roi] == 1
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def best_f1_threshold(summaries: Sequence, mode: str) -> float:
    """The pixel-level best-F1 threshold over frames (their :func:`pixel_summary`).

    Equal to ``PixelOoDMetrics(mode)`` fed with the same frames: ``best_F1_threshold_{mode}``.
    """
    if mode == "smiyc":
        return float(smiyc_metrics_from_curve(smiyc_curve(list(summaries)))["best_F1_threshold"])
    if mode == "smiyc2021":
        curve = smiyc2021_curve_from_frames(list(summaries))
        return float(smiyc2021_metrics_from_curve(curve)["best_F1_threshold"])
    values = np.concatenate([s[0] for s in summaries])
    pos = np.concatenate([s[1] for s in summaries])
    return float(exact_metrics_from_curve(exact_curve(values, pos))["best_F1_threshold"])


# --------------------------------------------------------------------------------------------
# A dataset: runs, meta classifiers, metrics before and after
# --------------------------------------------------------------------------------------------

#: Loads one frame: ``frame_id -> (label (H, W) uint8, probs (C, H, W), maps {name: (H, W)})``.
FrameLoader = Callable[[str], tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray]]]
#: Loads one frame's label and (at least) its score maps: ``frame_id -> (label, maps)``.
ScoreLoader = Callable[[str], tuple[np.ndarray, Mapping[str, np.ndarray]]]

_ID_COLUMNS = ("score", "run", "frame_id", "part", "candidate_id")

#: Step (1) of :func:`evaluate_dataset` keeps the raw float64 scores of a dataset in one pass up to
#: this many bytes (the synthetic tracks: 95 MB); larger datasets are read twice instead.
RAW_SCORES_BYTES = 1 << 30


@dataclass(frozen=True)
class OoDMetaSettings:
    """Settings of :func:`evaluate_dataset` (the ``ood_meta`` configuration section).

    Attributes
    ----------
    scores : tuple of str
        Score maps (``V``, ``E``, ``pgn_last_uni_p0_5``, ...), higher = more anomalous.
    feature_sets : tuple of str or FeatureSet
        See :func:`ood_feature_set`.
    models : tuple of str
        Meta models of :mod:`metaseg_pgn.meta` (``linear``, ``gbt``, ``mlp``).
    threshold : "best_f1" or float
        ``best_f1``: per run, the pixel best-F1 threshold on the fitting frames; a number: fixed
        (on the score divided by its maximum over the dataset).
    mode : {"smiyc", "smiyc2021", "exact"}
        smiyc / smiyc2021: float16 scores and the benchmark's binned pixel curve of that version
        (:mod:`metaseg_pgn.metrics.ood`); exact: neither.
    n_runs, test_size, seed
        Splits: see :func:`frame_splits`; ``test_size`` is the fraction of evaluation frames.
    fp_below, reject_above : float
        Target ``ppv < fp_below``; remove when the predicted probability of ``fp`` > ``reject_above``.
    """

    scores: tuple = ("V", "E", "pgn_last_uni_p0_5")
    feature_sets: tuple = ("softmax", "pgn", "softmax+pgn")
    models: tuple = ("linear",)
    threshold: str | float = "best_f1"
    mode: str = "smiyc"
    n_runs: int = 5
    test_size: float = 0.5
    seed: int = 0
    fp_below: float = 0.5
    reject_above: float = 0.5

    def __post_init__(self) -> None:
        for key in ("scores", "feature_sets", "models"):
            value = getattr(self, key)
            object.__setattr__(self, key, tuple([value] if isinstance(value, (str, FeatureSet)) else value))
            if not getattr(self, key):
                raise ValueError(f"ood_meta.{key} is empty")
        object.__setattr__(self, "models", tuple(check_models(self.models, "ood_meta.models")))
        if self.mode not in MODES:
            raise ValueError(f"ood_meta.mode must be one of {MODES}, got {self.mode!r}")
        if self.threshold != "best_f1":
            try:
                ok = 0 < float(self.threshold) < 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"ood_meta.threshold must be 'best_f1' or a number in (0, 1), got {self.threshold!r}")
        for key in ("test_size", "fp_below", "reject_above"):
            if not 0 < float(getattr(self, key)) < 1:
                raise ValueError(f"ood_meta.{key} must lie in (0, 1), got {getattr(self, key)!r}")
        if int(self.n_runs) < 1:
            raise ValueError(f"ood_meta.n_runs must be at least 1, got {self.n_runs!r}")

    @property
    def float16(self) -> bool:
        """Scores rounded to float16 (the benchmark's modes ``smiyc`` and ``smiyc2021``)."""
        return self.mode in SMIYC_MODES

    @classmethod
    def from_config(cls, section: Mapping, seed: int) -> "OoDMetaSettings":
        """From the ``ood_meta`` configuration section and the run's ``seed``."""
        keys = ("scores", "feature_sets", "models", "threshold", "mode", "n_runs", "test_size", "fp_below",
                "reject_above")
        return cls(**{k: section[k] for k in keys if k in section}, seed=int(seed))


def evaluate_dataset(frame_ids: Sequence[str], load: FrameLoader, track: str, settings: OoDMetaSettings,
                     *, load_scores: ScoreLoader | None = None, progress: bool = False,
                     desc: str = "ood_meta") -> dict:
    """Post-processing of one OoD dataset: every score, run, feature set and meta model.

    Three steps: (1) a pass over the frames finds each score's maximum over the dataset and keeps
    the scores divided by it (float16 in the smiyc modes, float64 in ``exact`` mode: memory
    ``len(scores) × 2 (resp. 8) bytes`` per pixel of the dataset; a second pass when the raw
    scores exceed :data:`RAW_SCORES_BYTES`) and the labels, and the
    thresholds of every run are found on its fitting frames; (2) a
    second pass extracts the candidates of every score and run with their features and targets;
    (3) per score, run, feature set and model a classifier is fitted on the fitting frames'
    counted candidates and applied to the evaluation frames, and the component metrics of the
    evaluation frames are computed before (all candidates) and after (kept candidates), and as
    ``ood_eval`` would report them on those frames (``benchmark``: threshold = their own best-F1
    threshold).

    Parameters
    ----------
    frame_ids : sequence of str
        The dataset's frames (at least 2).
    load : callable
        ``load(frame_id) -> (label, probs, maps)``, see :data:`FrameLoader`; ``maps`` must hold
        every score and every map the feature sets use.
    track : {"obstacle", "anomaly"}
    settings : OoDMetaSettings
    load_scores : callable, optional
        ``load_scores(frame_id) -> (label, maps)`` with at least the score maps, for the passes of
        step (1) (cheaper than ``load`` when it computes fewer maps); default: ``load``.
    progress : bool
        Progress bars over the frames.
    desc : str
        Prefix of the progress bars.

    Returns
    -------
    dict
        ``results`` (DataFrame, one row per score × run × variant [× feature set × model]: see
        :func:`_result_row`), ``candidates`` (DataFrame, one row per candidate of every score and
        run: identity, size, PPV, target, part), ``predictions`` (DataFrame, evaluation
        candidates × feature set × model: ``p_fp``, ``removed``), ``info`` (dict: ``scale`` per
        score, ``thresholds`` per score as a list over runs, ``splits`` as lists of frame ids,
        ``feature_columns`` per feature set).

    Raises
    ------
    ValueError
        A score or a feature set the frames do not offer, a split without OoD pixels, bad shapes.
    """
    s = settings
    _track(track)  # a known track, before any frame is read
    frame_ids = [str(f) for f in frame_ids]
    sets = [ood_feature_set(f) for f in s.feature_sets]
    names = [f.name for f in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"ood_meta.feature_sets must be unique, got {names}")
    if len(frame_ids) < 2:
        raise ValueError(f"ood_meta needs at least 2 frames to split, the dataset has {len(frame_ids)}")

    # (1) maxima, then the scaled scores (float16 in the smiyc modes: what every computation of
    # theirs uses, a quarter of the memory) and the labels. One pass keeping the raw float64 scores
    # when they fit in RAW_SCORES_BYTES, else two passes (maxima first).
    load_scores = load_scores or (lambda fid: load(fid)[0::2])
    top = {m: 0.0 for m in s.scores}
    labels: list[np.ndarray] = []
    raw: dict[str, list[np.ndarray]] | None = {m: [] for m in s.scores}
    for fid in tqdm(frame_ids, desc=f"{desc} (scores)", unit="frame", disable=not progress):
        label, maps = load_scores(fid)
        missing = [m for m in s.scores if m not in maps]
        if missing:
            raise ValueError(f"frame {fid!r}: ood_meta.scores names {missing}, which the frame does not have "
                             f"(maps: {sorted(maps)})")
        for m in s.scores:
            top[m] = max(top[m], float(np.max(maps[m])))
        if raw is not None and np.size(label) * 8 * len(s.scores) * len(frame_ids) > RAW_SCORES_BYTES:
            raw = None  # too large to keep: a second pass below
        if raw is not None:
            labels.append(np.asarray(label, dtype=np.uint8))
            for m in s.scores:
                raw[m].append(np.asarray(maps[m], dtype=np.float64))
    scale = {m: (1.0 / top[m] if top[m] > 0 else 1.0) for m in s.scores}

    def scaled(m: str, x: np.ndarray, fid: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64) * scale[m]
        return to_float16(x, fid) if s.float16 else x

    if raw is not None:
        scores = {m: [scaled(m, x, fid) for x, fid in zip(raw[m], frame_ids)] for m in s.scores}
        del raw
    else:
        scores = {m: [] for m in s.scores}
        labels = []
        for fid in tqdm(frame_ids, desc=f"{desc} (scaled scores)", unit="frame", disable=not progress):
            label, maps = load_scores(fid)
            labels.append(np.asarray(label, dtype=np.uint8))
            for m in s.scores:
                scores[m].append(scaled(m, maps[m], fid))

    splits = frame_splits(frame_ids, s.n_runs, s.test_size, s.seed)
    thresholds: dict[str, list[float]] = {m: [] for m in s.scores}  # per run, from the fitting frames
    bench_thr: dict[str, list[float]] = {m: [] for m in s.scores}  # per run, from the evaluation frames
    for m in s.scores:
        summaries = [pixel_summary(scores[m][i], labels[i], s.mode, frame_ids[i]) for i in range(len(frame_ids))]
        for r, (fit, ev) in enumerate(splits):
            for part, idx, out in (("fitting", fit, thresholds[m]), ("evaluation", ev, bench_thr[m])):
                if part == "fitting" and s.threshold != "best_f1":
                    out.append(float(s.threshold))
                    continue
                try:
                    out.append(best_f1_threshold([summaries[i] for i in idx], s.mode))
                except ValueError as e:
                    raise ValueError(f"score {m!r}, run {r}: the {part} frames give no pixel best-F1 "
                                     f"threshold: {e}") from None

    # (2) candidates, features, targets
    part_of = np.empty((s.n_runs, len(frame_ids)), dtype=object)
    for r, (fit, ev) in enumerate(splits):
        part_of[r, fit], part_of[r, ev] = "fit", "eval"
    pieces: list[dict[str, np.ndarray]] = []
    for i, fid in enumerate(tqdm(frame_ids, desc=f"{desc} (candidates)", unit="frame", disable=not progress)):
        label, probs, maps = load(fid)
        cache: dict[tuple[str, float], dict] = {}
        for m in s.scores:
            for r in range(s.n_runs):
                thr = thresholds[m][r]
                if (m, thr) not in cache:
                    cache[m, thr] = _frame_arrays(scores[m][i], label, thr, probs, maps, track, s.float16,
                                                  s.fp_below, fid)[1]
                cols = cache[m, thr]
                k = cols["candidate_id"].size
                pieces.append({"score": np.full(k, m, dtype=object), "run": np.full(k, r, dtype=np.int64),
                               "frame_id": np.full(k, fid, dtype=object),
                               "part": np.full(k, part_of[r, i], dtype=object), **cols})
    table = _table({c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]})
    del pieces
    columns = {}
    for fs in sets:
        columns[fs.name] = fs.columns(table)  # ValueError naming the set and the maps the frames offer

    # (3) classifiers and metrics (one BLAS/OpenMP thread: the fits are small, threads only contend)
    with threadpool_limits(limits=1):
        rows, preds = _evaluate_runs(table, columns, sets, scores, labels, frame_ids, splits, thresholds,
                                     bench_thr, track, s)
    results = pd.DataFrame(rows)
    _add_gains(results, s.mode)
    info = {
        "track": track,
        "mode": s.mode,
        "scale": scale,
        "thresholds": thresholds,
        "benchmark_thresholds": bench_thr,
        "splits": [{"fit": [frame_ids[i] for i in fit], "eval": [frame_ids[i] for i in ev]} for fit, ev in splits],
        "feature_columns": columns,
    }
    candidates = table[[*_ID_COLUMNS, "size", "size_counted", "covered", "ppv", "counted", "fp", "S", "S_in",
                        "S_bd", "centroid_y", "centroid_x"]].copy()
    return {"results": results, "candidates": candidates,
            "predictions": pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(), "info": info}


def _evaluate_runs(table, columns, sets, scores, labels, frame_ids, splits, thresholds, bench_thr, track, s):
    """Step (3) of :func:`evaluate_dataset`: result rows and evaluation predictions per score and run."""
    sizes = _track(track)
    rows, preds = [], []
    for m in s.scores:
        for r, (fit, ev) in enumerate(splits):
            sel = (table["score"] == m).to_numpy() & (table["run"] == r).to_numpy()
            tab = table[sel]
            fit_rows = tab[(tab["part"] == "fit").to_numpy() & tab["counted"].to_numpy()]
            eval_rows = tab[(tab["part"] == "eval").to_numpy()]
            cands = {}
            for i in ev:
                cands[i], _ = extract_candidates(scores[m][i], labels[i], thresholds[m][r],
                                                 min_pred_size=sizes["min_pred_size"], float16=s.float16,
                                                 frame_id=frame_ids[i])
            base = {"score": m, "run": r, "threshold": thresholds[m][r], "n_fit_frames": len(fit),
                    "n_eval_frames": len(ev), "n_fit_candidates": len(fit_rows),
                    "fp_rate_fit": float(fit_rows["fp"].astype(bool).mean()) if len(fit_rows) else math.nan,
                    "n_candidates": len(eval_rows)}
            before = [mask_components(cands[i] > 0, labels[i], track=track, frame_id=frame_ids[i]) for i in ev]
            rows.append(_result_row(base, "before", "", "", before, s.mode, 0, math.nan, ""))
            bench = ComponentOoDMetrics(track, bench_thr[m][r], s.mode)
            for i in ev:
                bench.update(scores[m][i], labels[i], frame_ids[i])
            rows.append(_result_row({**base, "threshold": bench_thr[m][r], "n_candidates": -1}, "benchmark",
                                    "", "", bench.frames, s.mode, 0, math.nan, ""))
            for fs in sets:
                cols = columns[fs.name]
                for model in s.models:
                    p_fp, note = _classify(fit_rows, eval_rows, cols, model, s.seed + r)
                    removed = p_fp > s.reject_above  # NaN (no classifier) removes nothing
                    y = eval_rows["fp"].to_numpy(dtype=object)
                    counted = eval_rows["counted"].to_numpy(dtype=bool)
                    auroc = math.nan
                    yc = y[counted].astype(bool)
                    if np.isfinite(p_fp).all() and counted.any() and 0 < yc.sum() < yc.size:
                        auroc = float(roc_auc_score(yc, p_fp[counted]))
                    after = []
                    frame_col = eval_rows["frame_id"].to_numpy()
                    ids = eval_rows["candidate_id"].to_numpy()
                    for i in ev:
                        gone = ids[(frame_col == frame_ids[i]) & removed]
                        after.append(mask_components(kept_mask(cands[i], gone), labels[i], track=track,
                                                     frame_id=frame_ids[i]))
                    rows.append(_result_row(base, "after", fs.name, model, after, s.mode, int(removed.sum()),
                                            auroc, note, n_features=len(cols)))
                    p = eval_rows[["score", "run", "frame_id", "candidate_id", "size", "ppv", "counted", "fp"]].copy()
                    p.insert(2, "feature_set", fs.name)
                    p.insert(3, "model", model)
                    p["p_fp"] = p_fp
                    p["removed"] = removed
                    preds.append(p)
    return rows, preds


def _classify(fit_rows: pd.DataFrame, eval_rows: pd.DataFrame, cols: list[str], model: str,
              random_state: int) -> tuple[np.ndarray, str]:
    """P(fp) of the evaluation candidates from a classifier fitted on the fitting candidates.

    Returns all-NaN (nothing removed) with a note when the fitting part has one class only.
    """
    p = np.full(len(eval_rows), np.nan)
    y = fit_rows["fp"].to_numpy(dtype=bool) if len(fit_rows) else np.zeros(0, bool)
    if y.size == 0 or y.all() or not y.any():
        what = "no counted candidate" if y.size == 0 else f"only fp={bool(y[0])}"
        return p, f"classifier skipped: the fitting frames have {what}; nothing removed"
    clf = make_classifier(model, random_state=random_state)
    note = fit_quietly(clf, fit_rows[cols].to_numpy(dtype=np.float64), y)
    if len(eval_rows):
        proba = clf.predict_proba(eval_rows[cols].to_numpy(dtype=np.float64))
        p = proba[:, list(clf.classes_).index(True)]
    return p, note


_METRICS = ("sIoU_gt", "PPV", "F1_mean")


def _result_row(base: dict, variant: str, feature_set: str, model: str, frames, mode: str, n_removed: int,
                auroc: float, note: str, n_features: int = 0) -> dict:
    """One row of the results: ``score, run, variant ("before" | "after" | "benchmark"),
    feature_set, model, n_features, threshold, n_fit_frames, n_eval_frames, n_fit_candidates,
    fp_rate_fit, n_candidates (evaluation frames; -1 for benchmark), n_removed, auroc (meta
    classifier on the counted evaluation candidates), n_gt, n_pred, sIoU_gt_{mode}, PPV_{mode},
    F1_mean_{mode}, note``."""
    row = {"score": base["score"], "run": base["run"], "variant": variant, "feature_set": feature_set,
           "model": model, "n_features": n_features}
    row.update({k: base[k] for k in ("threshold", "n_fit_frames", "n_eval_frames", "n_fit_candidates",
                                     "fp_rate_fit", "n_candidates")})
    row["n_removed"] = n_removed
    row["auroc"] = auroc
    try:
        agg = aggregate_components(frames, suffix=mode)
    except ValueError as e:  # no ground-truth component in the evaluation frames
        agg = {"n_gt": 0, "n_pred": sum(int(f.PPV.size) for f in frames)}
        note = "; ".join(n for n in (note, str(e)) if n)
    row["n_gt"], row["n_pred"] = agg["n_gt"], agg["n_pred"]
    for k in _METRICS:
        row[f"{k}_{mode}"] = agg.get(f"{k}_{mode}", math.nan)
    row["note"] = note
    return row


def _add_gains(results: pd.DataFrame, mode: str) -> None:
    """``{metric}_gain``: after − before of the same score and run (NaN for other variants)."""
    key = ["score", "run"]
    before = results[results["variant"] == "before"].set_index(key)
    for k in _METRICS:
        col = f"{k}_{mode}"
        ref = before[col].reindex(pd.MultiIndex.from_frame(results[key])).to_numpy()
        gain = results[col].to_numpy(dtype=float) - ref
        results[f"{k}_gain"] = np.where(results["variant"] == "after", gain, np.nan)


def summarise(results: pd.DataFrame, ddof: int = 0) -> pd.DataFrame:
    """Mean ± standard deviation over runs per score, variant, feature set and model.

    Parameters
    ----------
    results : DataFrame
        ``results`` of :func:`evaluate_dataset` (with ``dataset`` and ``track`` columns added by the
        stage, which are kept as grouping keys when present).
    ddof : int, default 0
        Delta degrees of freedom of the standard deviation.

    Returns
    -------
    DataFrame
        One row per group (in the order of ``results``): the keys, ``n_runs``, and
        ``{c}_mean``, ``{c}_std`` for every metric column (component metrics, gains, ``auroc``,
        ``n_removed``, ``n_candidates``, ``threshold``; NaN runs left out), ``notes``.
    """
    keys = [k for k in ("dataset", "track", "score", "variant", "feature_set", "model") if k in results.columns]
    value_cols = [c for c in results.columns if re.fullmatch(
        r"(?:sIoU_gt|PPV|F1_mean)_\w+|auroc|n_removed|n_candidates|threshold|n_pred|n_gt", c)]
    out = []
    for key, g in results.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["n_runs"] = int(g["run"].nunique())
        for c in value_cols:
            row[f"{c}_mean"], row[f"{c}_std"] = nan_mean_std(g[c], ddof)
        row["notes"] = joined_notes(g)
        out.append(row)
    return pd.DataFrame(out)
