"""The post-processing of one OoD dataset: every score, run, feature set and meta model.

:func:`evaluate_dataset` reads in three steps: (1) the scores divided by their maxima over the
dataset and the thresholds of every run (:func:`_scaled_scores`, :func:`_thresholds`); (2) the
candidates of every score and run with their targets and features (:func:`_candidate_table`);
(3) per score and run the component metrics before post-processing, as the benchmark reports
them, and after each feature set × meta model removed the candidates it rejects
(:func:`_run_results`, :func:`_post_processed`). Every score is divided by its maximum over the
dataset first (as ``ood_eval`` does; label-free, so nothing of the evaluation frames' labels
leaks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ..meta import FeatureSet, fit_quietly, make_classifier
from ..metrics.ood import ComponentOoDMetrics, to_float16
from .candidates import extract_candidates, kept_mask, mask_components, track_sizes
from .features import candidate_table, frame_arrays, ood_feature_set
from .protocol import best_f1_threshold, frame_splits, pixel_summary
from .results import add_gains, result_row
from .settings import OoDMetaSettings

__all__ = ["FrameLoader", "ScoreLoader", "RAW_SCORES_BYTES", "evaluate_dataset"]

#: Loads one frame: ``frame_id -> (label (H, W) uint8, probs (C, H, W), maps {name: (H, W)})``.
FrameLoader = Callable[[str], tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray]]]
#: Loads one frame's label and (at least) its score maps: ``frame_id -> (label, maps)``.
ScoreLoader = Callable[[str], tuple[np.ndarray, Mapping[str, np.ndarray]]]

_ID_COLUMNS = ("score", "run", "frame_id", "part", "candidate_id")

#: Step (1) of :func:`evaluate_dataset` keeps the raw float64 scores of a dataset in one pass up to
#: this many bytes (the synthetic tracks: 95 MB); larger datasets are read twice instead.
RAW_SCORES_BYTES = 1 << 30


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
        :func:`metaseg_pgn.ood_meta.results.result_row`), ``candidates`` (DataFrame, one row per candidate of every score and
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
    track_sizes(track)  # a known track, before any frame is read
    frame_ids = [str(f) for f in frame_ids]
    sets = [ood_feature_set(f) for f in s.feature_sets]
    names = [f.name for f in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"ood_meta.feature_sets must be unique, got {names}")
    if len(frame_ids) < 2:
        raise ValueError(f"ood_meta needs at least 2 frames to split, the dataset has {len(frame_ids)}")

    scores, labels, scale = _scaled_scores(frame_ids, load_scores or (lambda fid: load(fid)[0::2]), s, progress,
                                           desc)
    splits = frame_splits(frame_ids, s.n_runs, s.test_size, s.seed)
    thresholds, bench_thr = _thresholds(scores, labels, frame_ids, splits, s)
    data = _Dataset(frame_ids, track, s, scores, labels, splits, thresholds, bench_thr)
    table = _candidate_table(data, load, progress, desc)
    # ValueError naming the set and the maps the frames offer
    columns = {fs.name: fs.columns(table) for fs in sets}

    rows: list[dict] = []
    preds: list[pd.DataFrame] = []
    with threadpool_limits(limits=1):  # one BLAS/OpenMP thread: the fits are small, threads only contend
        for m, r in product(s.scores, range(s.n_runs)):
            run_rows, run_preds = _run_results(data, table, sets, columns, m, r)
            rows += run_rows
            preds += run_preds
    results = pd.DataFrame(rows)
    add_gains(results, s.mode)
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


@dataclass(frozen=True)
class _Dataset:
    """A dataset after steps (1) and (2) of :func:`evaluate_dataset`: what step (3) reads."""

    frame_ids: list[str]
    track: str
    settings: OoDMetaSettings
    scores: dict[str, list[np.ndarray]]  # per score, the frames' scaled scores, (H, W) each
    labels: list[np.ndarray]  # the frames' labels, (H, W) uint8 each
    splits: list[tuple[np.ndarray, np.ndarray]]  # (fit, eval) frame positions per run
    thresholds: dict[str, list[float]]  # per score and run, from the fitting frames
    bench_thresholds: dict[str, list[float]]  # per score and run, best-F1 of the evaluation frames


# --------------------------------------------------------------------------------------------
# (1) scores and thresholds


def _scaled_scores(frame_ids: list[str], load_scores: ScoreLoader, s: OoDMetaSettings, progress: bool, desc: str
                   ) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray], dict[str, float]]:
    """Every score divided by its maximum over the dataset, and the labels.

    float16 in the smiyc modes (what every computation of theirs uses, a quarter of the memory),
    float64 in ``exact`` mode. One pass keeps the raw float64 scores when they fit in
    :data:`RAW_SCORES_BYTES`, else a second pass reads them again.

    Returns
    -------
    scores : dict of str to list of ndarray, shape (H, W)
        Per score, the scaled score of every frame.
    labels : list of ndarray, shape (H, W), uint8
    scale : dict of str to float
        Per score, 1 / its maximum (1 where the maximum is not positive).
    """
    top, labels, raw = _maxima(frame_ids, load_scores, s.scores, progress, desc)
    scale = {m: (1.0 / top[m] if top[m] > 0 else 1.0) for m in s.scores}
    if raw is not None:
        scores = {m: [_scaled(x, scale[m], fid, s.float16) for x, fid in zip(raw[m], frame_ids)] for m in s.scores}
        return scores, labels, scale
    scores = {m: [] for m in s.scores}
    labels = []
    for fid in tqdm(frame_ids, desc=f"{desc} (scaled scores)", unit="frame", disable=not progress):
        label, maps = load_scores(fid)
        labels.append(np.asarray(label, dtype=np.uint8))
        for m in s.scores:
            scores[m].append(_scaled(maps[m], scale[m], fid, s.float16))
    return scores, labels, scale


def _maxima(frame_ids: list[str], load_scores: ScoreLoader, names: Sequence[str], progress: bool, desc: str
            ) -> tuple[dict[str, float], list[np.ndarray], dict[str, list[np.ndarray]] | None]:
    """First pass: each score's maximum over the frames (``{name: max}``), and the labels and raw
    float64 scores while they fit in :data:`RAW_SCORES_BYTES` (``None`` for the scores when not)."""
    top = {m: 0.0 for m in names}
    labels: list[np.ndarray] = []
    raw: dict[str, list[np.ndarray]] | None = {m: [] for m in names}
    for fid in tqdm(frame_ids, desc=f"{desc} (scores)", unit="frame", disable=not progress):
        label, maps = load_scores(fid)
        missing = [m for m in names if m not in maps]
        if missing:
            raise ValueError(f"frame {fid!r}: ood_meta.scores names {missing}, which the frame does not have "
                             f"(maps: {sorted(maps)})")
        for m in names:
            top[m] = max(top[m], float(np.max(maps[m])))
        if raw is not None and np.size(label) * 8 * len(names) * len(frame_ids) > RAW_SCORES_BYTES:
            raw = None  # too large to keep: a second pass
        if raw is not None:
            labels.append(np.asarray(label, dtype=np.uint8))
            for m in names:
                raw[m].append(np.asarray(maps[m], dtype=np.float64))
    return top, labels, raw


def _scaled(x: np.ndarray, factor: float, frame_id: str, float16: bool) -> np.ndarray:
    """``x * factor`` in float64, rounded to float16 when ``float16`` (named ``frame_id`` in errors)."""
    x = np.asarray(x, dtype=np.float64) * factor
    return to_float16(x, frame_id) if float16 else x


def _thresholds(scores: dict[str, list[np.ndarray]], labels: list[np.ndarray], frame_ids: list[str],
                splits: list, s: OoDMetaSettings) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per score and run, the threshold (fixed, or the pixel best-F1 threshold of the fitting frames)
    and the benchmark's (the best-F1 threshold of the evaluation frames)."""
    thresholds: dict[str, list[float]] = {m: [] for m in s.scores}
    bench: dict[str, list[float]] = {m: [] for m in s.scores}
    for m in s.scores:
        summaries = [pixel_summary(scores[m][i], labels[i], s.mode, frame_ids[i]) for i in range(len(frame_ids))]
        for r, (fit, ev) in enumerate(splits):
            fixed = s.threshold != "best_f1"
            thresholds[m].append(float(s.threshold) if fixed else _best_f1(summaries, fit, m, r, "fitting", s.mode))
            bench[m].append(_best_f1(summaries, ev, m, r, "evaluation", s.mode))
    return thresholds, bench


def _best_f1(summaries: list, idx: np.ndarray, score: str, run: int, part: str, mode: str) -> float:
    """:func:`best_f1_threshold` of the frames ``idx``; the ValueError names the score, run and part."""
    try:
        return best_f1_threshold([summaries[i] for i in idx], mode)
    except ValueError as e:
        raise ValueError(f"score {score!r}, run {run}: the {part} frames give no pixel best-F1 "
                         f"threshold: {e}") from None


# --------------------------------------------------------------------------------------------
# (2) candidates


def _candidate_table(data: _Dataset, load: FrameLoader, progress: bool, desc: str) -> pd.DataFrame:
    """The candidates of every score and run with their targets and features, one row each:
    ``score, run, frame_id, part ("fit" | "eval"), candidate_id`` and the columns of
    :func:`metaseg_pgn.ood_meta.frame_candidates`."""
    s = data.settings
    part_of = np.empty((s.n_runs, len(data.frame_ids)), dtype=object)
    for r, (fit, ev) in enumerate(data.splits):
        part_of[r, fit], part_of[r, ev] = "fit", "eval"
    pieces: list[dict[str, np.ndarray]] = []
    for i, fid in enumerate(tqdm(data.frame_ids, desc=f"{desc} (candidates)", unit="frame", disable=not progress)):
        label, probs, maps = load(fid)
        pieces += _frame_pieces(data, i, label, probs, maps, part_of[:, i])
    return candidate_table({c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]})


def _frame_pieces(data: _Dataset, i: int, label: np.ndarray, probs: np.ndarray, maps: Mapping[str, np.ndarray],
                  parts: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The candidate columns of frame ``i`` per score and run (``parts``: its part per run); each
    distinct threshold of a score is computed once."""
    s, fid = data.settings, data.frame_ids[i]
    cache: dict[tuple[str, float], dict] = {}
    pieces = []
    for m, r in product(s.scores, range(s.n_runs)):
        thr = data.thresholds[m][r]
        if (m, thr) not in cache:
            cache[m, thr] = frame_arrays(data.scores[m][i], label, thr, probs, maps, data.track, s.float16,
                                         s.fp_below, fid)[1]
        cols = cache[m, thr]
        k = cols["candidate_id"].size
        pieces.append({"score": np.full(k, m, dtype=object), "run": np.full(k, r, dtype=np.int64),
                       "frame_id": np.full(k, fid, dtype=object), "part": np.full(k, parts[r], dtype=object), **cols})
    return pieces


# --------------------------------------------------------------------------------------------
# (3) classifiers and metrics


def _run_results(data: _Dataset, table: pd.DataFrame, sets: list[FeatureSet], columns: dict[str, list[str]],
                 score: str, run: int) -> tuple[list[dict], list[pd.DataFrame]]:
    """One score and run: the result rows before post-processing, as the benchmark, and after each
    feature set × model, and the predictions of each on the evaluation candidates."""
    s = data.settings
    fit, ev = data.splits[run]
    tab = table[(table["score"] == score).to_numpy() & (table["run"] == run).to_numpy()]
    fit_rows = tab[(tab["part"] == "fit").to_numpy() & tab["counted"].to_numpy()]
    eval_rows = tab[(tab["part"] == "eval").to_numpy()]
    min_size = track_sizes(data.track)["min_pred_size"]
    cands = {i: extract_candidates(data.scores[score][i], data.labels[i], data.thresholds[score][run],
                                   min_pred_size=min_size, float16=s.float16, frame_id=data.frame_ids[i])[0]
             for i in ev}
    base = {"score": score, "run": run, "threshold": data.thresholds[score][run], "n_fit_frames": len(fit),
            "n_eval_frames": len(ev), "n_fit_candidates": len(fit_rows),
            "fp_rate_fit": float(fit_rows["fp"].astype(bool).mean()) if len(fit_rows) else math.nan,
            "n_candidates": len(eval_rows)}
    before = [mask_components(cands[i] > 0, data.labels[i], track=data.track, frame_id=data.frame_ids[i]) for i in ev]
    rows = [result_row(base, "before", "", "", before, s.mode, 0, math.nan, ""), _benchmark_row(data, base)]
    preds = []
    for fs, model in product(sets, s.models):
        row, pred = _post_processed(data, base, fit_rows, eval_rows, cands, fs.name, columns[fs.name], model)
        rows.append(row)
        preds.append(pred)
    return rows, preds


def _benchmark_row(data: _Dataset, base: dict) -> dict:
    """The component metrics of the evaluation frames as ``ood_eval`` reports them (their own best-F1
    threshold)."""
    score, run = base["score"], base["run"]
    threshold = data.bench_thresholds[score][run]
    bench = ComponentOoDMetrics(data.track, threshold, data.settings.mode)
    for i in data.splits[run][1]:
        bench.update(data.scores[score][i], data.labels[i], data.frame_ids[i])
    return result_row({**base, "threshold": threshold, "n_candidates": -1}, "benchmark", "", "", bench.frames,
                      data.settings.mode, 0, math.nan, "")


def _post_processed(data: _Dataset, base: dict, fit_rows: pd.DataFrame, eval_rows: pd.DataFrame,
                    cands: dict[int, np.ndarray], feature_set: str, cols: list[str], model: str
                    ) -> tuple[dict, pd.DataFrame]:
    """The result row after removing the evaluation candidates one classifier rejects, and its
    predictions (``cands``: the candidate map of every evaluation frame by position)."""
    s, run = data.settings, base["run"]
    p_fp, note = _classify(fit_rows, eval_rows, cols, model, s.seed + run)
    removed = p_fp > s.reject_above  # NaN (no classifier) removes nothing
    frame_col = eval_rows["frame_id"].to_numpy()
    ids = eval_rows["candidate_id"].to_numpy()
    after = [mask_components(kept_mask(cands[i], ids[(frame_col == data.frame_ids[i]) & removed]), data.labels[i],
                             track=data.track, frame_id=data.frame_ids[i]) for i in data.splits[run][1]]
    row = result_row(base, "after", feature_set, model, after, s.mode, int(removed.sum()), _auroc(eval_rows, p_fp),
                     note, n_features=len(cols))
    pred = eval_rows[["score", "run", "frame_id", "candidate_id", "size", "ppv", "counted", "fp"]].copy()
    pred.insert(2, "feature_set", feature_set)
    pred.insert(3, "model", model)
    pred["p_fp"] = p_fp
    pred["removed"] = removed
    return row, pred


def _auroc(eval_rows: pd.DataFrame, p_fp: np.ndarray) -> float:
    """AuROC of ``p_fp`` on the counted evaluation candidates; NaN without a classifier (NaN
    ``p_fp``) or when they hold one class only."""
    counted = eval_rows["counted"].to_numpy(dtype=bool)
    y = eval_rows["fp"].to_numpy(dtype=object)[counted].astype(bool)
    if np.isfinite(p_fp).all() and counted.any() and 0 < y.sum() < y.size:
        return float(roc_auc_score(y, p_fp[counted]))
    return math.nan


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

