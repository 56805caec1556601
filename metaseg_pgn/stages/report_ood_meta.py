"""Report sections of the meta models and of the OoD post-processing (stage ``ood_meta``).

Used by :mod:`metaseg_pgn.stages.report` (its ``_Builder`` is passed in): the comparison of the
meta models (``meta.models``) per feature set, and the section "OoD post-processing (Meta-OoD)"
with the component metrics before and after, per dataset, score, feature set and model, and one
evaluation frame before and after. Every number comes from ``meta_summary.csv`` resp.
``ood_meta_summary.csv`` and is only formatted here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ..names import method_label

MODEL_LABELS = {"linear": "linear (logistic / linear regression)", "gbt": "gradient boosting",
                "mlp": "MLP (64, 32)"}
OOD_SETS_LABELS = {"softmax": "softmax (E, D, V, sizes, class probabilities: Meta-OoD)",
                   "pgn": "PGN (every PGN map, sizes)", "softmax+pgn": "softmax + PGN"}
#: Colours of the before/after figure (RGB).
TRUE_RGB, FALSE_RGB, UNCOUNTED_RGB, REMOVED_RGB = (40, 170, 70), (220, 40, 60), (240, 200, 0), (70, 70, 70)
IN_RGB, OOD_RGB, VOID_RGB = (225, 225, 225), (255, 205, 150), (0, 0, 0)


def primary_model(summary: pd.DataFrame, results: pd.DataFrame, predictions: pd.DataFrame | None):
    """The meta outputs restricted to one model, for the tables that show one row per feature set.

    ``linear`` when present, else the first model; outputs without a ``model`` column are
    returned unchanged. Returns ``(model or None, summary, results, predictions)``.
    """
    if "model" not in summary.columns:
        return None, summary, results, predictions
    models = list(dict.fromkeys(summary["model"].astype(str)))
    model = "linear" if "linear" in models else models[0]

    def pick(df):
        if df is None or "model" not in df.columns:
            return df
        return df[df["model"].astype(str) == model].reset_index(drop=True)

    return model, pick(summary), pick(results), pick(predictions)


def model_comparison(b, summary: pd.DataFrame) -> None:
    """A table of test AuROC and R² per feature set and meta model (only with several models)."""
    from .report import _best_index, _bold, feature_set_label, fmt_pm, order_feature_sets

    if "model" not in summary.columns:
        return
    models = list(dict.fromkeys(summary["model"].astype(str)))
    if len(models) < 2:
        return
    b.doc.h(3, "Meta models")
    b.doc.p("The same splits, fitted with each meta model of `meta.models`: "
            + "; ".join(f"`{m}` = {MODEL_LABELS.get(m, m)}" for m in models)
            + ". Test part, mean ± std over the runs (percent); the best value per feature set is bold.")
    rows = []
    for fs in order_feature_sets(dict.fromkeys(summary["feature_set"].astype(str))):
        part = summary[summary["feature_set"].astype(str) == fs]
        part = part.set_index(part["model"].astype(str))
        cells = [feature_set_label(fs), f"`{fs}`"]
        for metric in ("auroc", "r2"):
            vals = [part.loc[m, f"{metric}_test_mean"] if m in part.index else math.nan for m in models]
            best = _best_index(vals)
            for i, m in enumerate(models):
                text = fmt_pm(vals[i], part.loc[m, f"{metric}_test_std"] if m in part.index else math.nan)
                cells.append(_bold(text) if i in best else text)
        rows.append(cells)
    header = ["Feature set", "key", *(f"AuROC {m} (%)" for m in models), *(f"R² {m} (%)" for m in models)]
    b.doc.table(header, rows, align="ll" + "r" * (2 * len(models)))


# ---------------------------------------------------------------------------------------------
# OoD post-processing


def ood_meta_section(b) -> None:
    """The section of the ``ood_meta`` stage (or why it is absent)."""
    from .report import _missing

    why = _missing("ood_meta", b.m)
    if why:
        b.doc.p(why)
        return
    man = b.m["ood_meta"]
    outs = man["outputs"]
    summary = pd.read_csv(b.path(outs["summary_csv"]), keep_default_na=False, na_values=[""])
    doc_json = json.loads(b.path(outs["summary_json"]).read_text())
    cfg = (man.get("config") or {}).get("ood_meta", {})
    mode = cfg.get("mode", "smiyc")
    models = list(dict.fromkeys(summary.loc[summary["variant"] == "after", "model"].astype(str)))
    model = "linear" if "linear" in models else (models[0] if models else "")
    threshold = ("the pixel-level best-F1 threshold of the score on the fitting frames"
                 if cfg.get("threshold", "best_f1") == "best_f1" else f"{cfg.get('threshold')} (fixed)")
    b.doc.p(
        "Meta-OoD (Chan et al., ICCV 2021) with gradient features: each score (divided by its maximum over "
        f"the dataset) is thresholded at {threshold} (`{mode}` mode); the connected components (8-neighbourhood, "
        "void excluded, the track's minimum size) are the OoD candidates; a meta classifier on the candidates' "
        "segment features (sizes and the mean/variance of each map over the candidate, its inner part and its "
        f"boundary) learns which candidates are false positives (benchmark PPV < {cfg.get('fp_below', 0.5)}) on "
        f"the fitting frames and removes those with predicted probability > {cfg.get('reject_above', 0.5)} on "
        f"the evaluation frames. {cfg.get('n_runs', '?')} runs, each splitting the frames by frame "
        f"({100 * float(cfg.get('test_size', 0.5)):.0f} % evaluated, no frame on both sides). Component metrics "
        "(SegmentMeIfYouCan's code: sIoU, PPV, mean F1, percent) on the evaluation frames, mean ± std over the "
        "runs: *before* = every candidate, *after* = the kept ones, *benchmark* = the evaluation frames at their "
        "own best-F1 threshold (what `ood_eval` does on a whole split; an optimistic threshold). "
        f"Meta model in the main table: `{model}` ({MODEL_LABELS.get(model, model)}).")
    first = None
    for key in dict.fromkeys(summary["dataset"].astype(str)):
        part = summary[summary["dataset"].astype(str) == key]
        info = (doc_json.get("datasets") or {}).get(key, {})
        b.doc.h(3, f"{key}")
        b.doc.p(f"{info.get('track', part['track'].iloc[0] if 'track' in part.columns else '?')} track; "
                f"{len((info.get('splits') or [{}])[0].get('eval', []))} evaluation frames per run.")
        _ood_meta_table(b, part, mode, model)
        if len(models) > 1:
            _ood_meta_models_table(b, part, mode, models)
        first = first or key
    _ood_meta_sentence(b, summary, mode, model)
    if first is not None:
        _before_after_figure(b, first, doc_json, outs, cfg, model)


def _pm(mean, std) -> str:
    from .report import fmt_pm

    return fmt_pm(mean, std, 1)


def _ood_meta_table(b, part: pd.DataFrame, mode: str, model: str) -> None:
    from .report import DASH, _best_index, _bold, fmt_pct

    rows, f1s = [], []
    for score in dict.fromkeys(part["score"].astype(str)):
        sp = part[part["score"].astype(str) == score]
        variants = [("before", sp[sp["variant"] == "before"])]
        after = sp[(sp["variant"] == "after") & (sp["model"].astype(str) == model)]
        variants += [(f"after: {OOD_SETS_LABELS.get(fs, fs).split(' (')[0]}", after[after["feature_set"] == fs])
                     for fs in dict.fromkeys(after["feature_set"].astype(str))]
        variants.append(("benchmark threshold", sp[sp["variant"] == "benchmark"]))
        for name, r in variants:
            if r.empty:
                continue
            r = r.iloc[0]
            gain = r.get("F1_mean_gain_mean", math.nan) if name.startswith("after") else math.nan
            rows.append([method_label(score), name,
                         _pm(r[f"sIoU_gt_{mode}_mean"], r[f"sIoU_gt_{mode}_std"]),
                         _pm(r[f"PPV_{mode}_mean"], r[f"PPV_{mode}_std"]),
                         _pm(r[f"F1_mean_{mode}_mean"], r[f"F1_mean_{mode}_std"]),
                         DASH if _nan(gain) else f"{100 * gain:+.1f}",
                         _count(r, "n_removed") if name.startswith("after") else DASH,
                         _count(r, "n_candidates") if name != "benchmark threshold" else DASH,
                         fmt_pct(r.get("auroc_mean"), 1) if name.startswith("after") else DASH])
            f1s.append(r[f"F1_mean_{mode}_mean"])
    best = _best_index(f1s)
    for i in best:
        rows[i][4] = _bold(rows[i][4])
    b.doc.table(["Score", "variant", "sIoU (%)", "PPV (%)", "mean F1 (%)", "F1 gain (pp)", "removed",
                 "candidates", "meta AuROC (%)"], rows, align="llrrrrrrr")


def _ood_meta_models_table(b, part: pd.DataFrame, mode: str, models: list[str]) -> None:
    rows = []
    after = part[part["variant"] == "after"]
    for score in dict.fromkeys(after["score"].astype(str)):
        for fs in dict.fromkeys(after["feature_set"].astype(str)):
            cells = [method_label(score), OOD_SETS_LABELS.get(fs, fs).split(" (")[0]]
            for metric in ("auroc", f"F1_mean_{mode}"):
                for m in models:
                    r = after[(after["score"] == score) & (after["feature_set"] == fs) & (after["model"] == m)]
                    cells.append(_pm(r[f"{metric}_mean"].iloc[0], r[f"{metric}_std"].iloc[0]) if len(r) else "–")
            rows.append(cells)
    b.doc.p("Meta models compared (`ood_meta.models`): the meta classifier's AuROC on the evaluation candidates "
            "and the mean F1 after post-processing.")
    b.doc.table(["Score", "feature set", *(f"AuROC {m} (%)" for m in models),
                 *(f"mean F1 {m} (%)" for m in models)], rows, align="ll" + "r" * (2 * len(models)))


def _count(r, col: str) -> str:
    v = r.get(f"{col}_mean", math.nan)
    return "–" if _nan(v) else f"{v:.1f}"


def _nan(v) -> bool:
    try:
        return v is None or not math.isfinite(float(v))
    except (TypeError, ValueError):
        return True


def _ood_meta_sentence(b, summary: pd.DataFrame, mode: str, model: str) -> None:
    """Per dataset and score: the best feature set after post-processing against before."""
    parts = []
    col = f"F1_mean_{mode}_mean"
    for key in dict.fromkeys(summary["dataset"].astype(str)):
        d = summary[summary["dataset"].astype(str) == key]
        for score in dict.fromkeys(d["score"].astype(str)):
            s = d[d["score"].astype(str) == score]
            before = s.loc[s["variant"] == "before", col]
            after = s[(s["variant"] == "after") & (s["model"].astype(str) == model)]
            if before.empty or after.empty or after[col].isna().all():
                continue
            best = after.loc[after[col].idxmax()]
            parts.append(f"`{key}`, {method_label(score)}: {100 * before.iloc[0]:.1f} → {100 * best[col]:.1f} "
                         f"({OOD_SETS_LABELS.get(best['feature_set'], best['feature_set']).split(' (')[0]})")
    if parts:
        b.doc.p("Mean F1 before → after with the best feature set: " + "; ".join(parts) + ".")


def _before_after_figure(b, key: str, doc_json: dict, outs: dict, cfg: dict, model: str) -> None:
    """One evaluation frame of run 0: image, ground truth, score, candidates before and after."""
    from ..ood_meta import extract_candidates
    from ..metrics.ood import SMIYC_MODES, TRACKS
    from ..plots import frame_figure
    from .common import dataset_key
    from .report import _safe

    o = b.infer["outputs"].get(key)
    info = (doc_json.get("datasets") or {}).get(key)
    pred_path = b.path(outs["predictions_csv"])
    if o is None or info is None or not pred_path.exists():
        return
    preds = pd.read_csv(pred_path, keep_default_na=False, na_values=[""])
    preds = preds[(preds["dataset"].astype(str) == key) & (preds["run"] == 0) & (preds["model"].astype(str) == model)]
    if preds.empty:
        return
    scores = list(dict.fromkeys(preds["score"].astype(str)))
    score = "pgn_last_uni_p0_5" if "pgn_last_uni_p0_5" in scores else scores[0]
    sets = list(dict.fromkeys(preds["feature_set"].astype(str)))
    shown = [fs for fs in ("softmax", "softmax+pgn") if fs in sets] or sets[:2]
    main = shown[-1]
    p = preds[(preds["score"] == score)]
    per_frame = p[p["feature_set"] == main].groupby("frame_id", sort=False).agg(
        removed=("removed", "sum"), n=("candidate_id", "size"))
    if per_frame.empty:
        return
    per_frame = per_frame.sort_values(["removed", "n"], ascending=False, kind="stable")
    frame_id = str(per_frame.index[0])
    record = b._record(o, frame_id)
    maps = record.pixel_maps()
    s = maps[score] * float(info["scale"][score])
    track = info["track"]
    cand, _ = extract_candidates(s, record.label, float(info["thresholds"][score][0]),
                                 min_pred_size=TRACKS[track]["min_pred_size"], float16=info["mode"] in SMIYC_MODES)
    fp_of = dict(zip(p.loc[p["feature_set"] == main, "candidate_id"].astype(int),
                     p.loc[p["feature_set"] == main, "fp"]))
    panels = []
    ds_cfgs = {dataset_key(c): c for c in [b.icfg["dataset"], *b.icfg.get("ood_datasets", [])]}
    image = b._image(ds_cfgs.get(key), frame_id)
    if image is not None:
        panels.append({"title": "image", "kind": "rgb", "data": image})
    panels.append({"title": "OoD ground truth", "kind": "rgb", "data": _base(record.label)})
    panels.append({"title": f"score: {method_label(score)}", "kind": "heat", "data": s})
    panels.append({"title": f"candidates ({int(cand.max(initial=0))})", "kind": "rgb",
                   "data": _paint_candidates(record.label, cand, fp_of, set())})
    for fs in shown:
        sub = p[(p["feature_set"] == fs) & (p["frame_id"].astype(str) == frame_id)]
        gone = set(sub.loc[sub["removed"].astype(bool), "candidate_id"].astype(int))
        panels.append({"title": f"after, {OOD_SETS_LABELS.get(fs, fs).split(' (')[0]} features ({len(gone)} removed)",
                       "kind": "rgb", "data": _paint_candidates(record.label, cand, fp_of, gone)})
    legend = [("true OoD candidate (PPV ≥ threshold)", TRUE_RGB), ("false positive", FALSE_RGB),
              ("removed", REMOVED_RGB), ("ground-truth OoD", OOD_RGB), ("void", VOID_RGB)]
    name = f"ood_meta_{_safe(key)}_{_safe(frame_id)}.png"
    b.fig(name, lambda path: frame_figure(panels, path, ncols=3, legend=legend),
          f"Post-processing of `{key}` frame `{frame_id}` (an evaluation frame of run 0, the one with the most "
          f"removed candidates): {method_label(score)} thresholded at {float(info['thresholds'][score][0]):.4g}, "
          f"candidates coloured by their target, then the candidates kept by the `{model}` meta classifier on "
          f"{' and on '.join(OOD_SETS_LABELS.get(fs, fs).split(' (')[0] for fs in shown)} features.")


def _base(label: np.ndarray) -> np.ndarray:
    out = np.empty(label.shape + (3,), dtype=np.uint8)
    out[...] = IN_RGB
    out[label == 1] = OOD_RGB
    out[label == 255] = VOID_RGB
    return out


def _paint_candidates(label: np.ndarray, cand: np.ndarray, fp_of: dict, removed: set) -> np.ndarray:
    out = _base(label)
    n = int(cand.max(initial=0))
    lut = np.zeros((n + 1, 3), dtype=np.uint8)
    for k in range(1, n + 1):
        fp = fp_of.get(k)
        if k in removed:
            lut[k] = REMOVED_RGB
        elif fp is None or (isinstance(fp, float) and math.isnan(fp)):
            lut[k] = UNCOUNTED_RGB
        else:
            lut[k] = FALSE_RGB if str(fp).lower() == "true" else TRUE_RGB
    inside = cand > 0
    out[inside] = lut[cand[inside]]
    return out
