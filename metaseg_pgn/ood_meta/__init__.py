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

Modules: :mod:`~metaseg_pgn.ood_meta.candidates` (candidates of one frame, what is kept),
:mod:`~metaseg_pgn.ood_meta.features` (their targets and features, the feature sets),
:mod:`~metaseg_pgn.ood_meta.settings` (:class:`OoDMetaSettings`),
:mod:`~metaseg_pgn.ood_meta.protocol` (frame splits, best-F1 thresholds),
:mod:`~metaseg_pgn.ood_meta.evaluation` (:func:`evaluate_dataset`),
:mod:`~metaseg_pgn.ood_meta.results` (result rows, gains, :func:`summarise`). Everything is imported
from here.
"""

from __future__ import annotations

from .candidates import candidate_mask, extract_candidates, kept_mask, mask_components
from .evaluation import RAW_SCORES_BYTES, FrameLoader, ScoreLoader, evaluate_dataset
from .features import OOD_FEATURE_SETS, candidate_features, candidate_targets, frame_candidates, ood_feature_set
from .protocol import best_f1_threshold, frame_splits, pixel_summary
from .results import summarise
from .settings import OoDMetaSettings

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
    "pixel_summary",
    "best_f1_threshold",
    "OoDMetaSettings",
    "FrameLoader",
    "ScoreLoader",
    "RAW_SCORES_BYTES",
    "evaluate_dataset",
    "summarise",
]
