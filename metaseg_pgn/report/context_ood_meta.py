"""The report's data of the OoD post-processing (stage ``ood_meta``, Meta-OoD with PGN features).

Component metrics before and after, per dataset, score, feature set and meta model, read from
``ood_meta_summary.csv`` / ``.json``, and one evaluation frame before and after
(``ood_meta_predictions.csv`` and the frame's ``infer`` record).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from ..names import MODEL_LABELS, method_label, ood_set_label
from ..plots import frame_figure
from .context import Figures, Inputs
from .fmt import best_index, safe_name
from .frames import load_image, read_record

#: Colours of the before/after figure (RGB).
TRUE_RGB, FALSE_RGB, UNCOUNTED_RGB, REMOVED_RGB = (40, 170, 70), (220, 40, 60), (240, 200, 0), (70, 70, 70)
IN_RGB, OOD_RGB, VOID_RGB = (225, 225, 225), (255, 205, 150), (0, 0, 0)


def ood_meta_section(inp: Inputs, figures: Figures) -> dict:
    """Settings, one table per dataset (and per meta model), findings and the before/after figure."""
    data: dict[str, Any] = {"missing": inp.missing("ood_meta")}
    if data["missing"]:
        return data
    man = inp.manifests["ood_meta"]
    outs = man["outputs"]
    summary = pd.read_csv(inp.path(outs["summary_csv"]), keep_default_na=False, na_values=[""])
    doc_json = json.loads(inp.path(outs["summary_json"]).read_text())
    cfg = (man.get("config") or {}).get("ood_meta", {})
    mode = cfg.get("mode", "smiyc")
    models = list(dict.fromkeys(summary.loc[summary["variant"] == "after", "model"].astype(str)))
    model = "linear" if "linear" in models else (models[0] if models else "")
    datasets = []
    for key in dict.fromkeys(summary["dataset"].astype(str)):
        part = summary[summary["dataset"].astype(str) == key]
        info = (doc_json.get("datasets") or {}).get(key, {})
        datasets.append({"key": key,
                         "track": info.get("track", part["track"].iloc[0] if "track" in part.columns else "?"),
                         "eval_frames": len((info.get("splits") or [{}])[0].get("eval", [])),
                         "rows": _rows(part, mode, model),
                         "models": _models_rows(part, mode, models) if len(models) > 1 else None})
    data.update(cfg=cfg, mode=mode, model=model, model_label=MODEL_LABELS.get(model, model), models=models,
                datasets=datasets, findings=_findings(summary, mode, model),
                figure=_before_after_figure(inp, figures, datasets[0]["key"], doc_json, outs, model)
                if datasets else None)
    return data


def _rows(part: pd.DataFrame, mode: str, model: str) -> list[dict]:
    """Per score: before, after per feature set (``model``), at the benchmark threshold."""
    rows = []
    for score in dict.fromkeys(part["score"].astype(str)):
        sp = part[part["score"].astype(str) == score]
        after = sp[(sp["variant"] == "after") & (sp["model"].astype(str) == model)]
        variants = [("before", sp[sp["variant"] == "before"])]
        variants += [(f"after: {ood_set_label(fs)}", after[after["feature_set"] == fs])
                     for fs in dict.fromkeys(after["feature_set"].astype(str))]
        variants.append(("benchmark threshold", sp[sp["variant"] == "benchmark"]))
        for name, r in variants:
            if r.empty:
                continue
            r = r.iloc[0]
            is_after = name.startswith("after")
            rows.append({"score": method_label(score), "variant": name, "after": is_after,
                         "benchmark": name == "benchmark threshold",
                         **{c: (r[f"{c}_{mode}_mean"], r[f"{c}_{mode}_std"]) for c in ("sIoU_gt", "PPV", "F1_mean")},
                         "gain": r.get("F1_mean_gain_mean", math.nan) if is_after else math.nan,
                         "removed": r.get("n_removed_mean", math.nan),
                         "candidates": r.get("n_candidates_mean", math.nan),
                         "auroc": r.get("auroc_mean", math.nan)})
    best = best_index([r["F1_mean"][0] for r in rows])
    for i, r in enumerate(rows):
        r["best"] = i in best
    return rows


def _models_rows(part: pd.DataFrame, mode: str, models: list[str]) -> list[dict]:
    """Per score and feature set: the meta AuROC and the mean F1 after, per meta model."""
    rows = []
    after = part[part["variant"] == "after"]
    for score in dict.fromkeys(after["score"].astype(str)):
        for fs in dict.fromkeys(after["feature_set"].astype(str)):
            row = {"score": method_label(score), "feature_set": ood_set_label(fs)}
            for name, metric in (("auroc", "auroc"), ("f1", f"F1_mean_{mode}")):
                cells = []
                for m in models:
                    r = after[(after["score"] == score) & (after["feature_set"] == fs) & (after["model"] == m)]
                    cells.append((r[f"{metric}_mean"].iloc[0], r[f"{metric}_std"].iloc[0]) if len(r) else None)
                row[name] = cells
            rows.append(row)
    return rows


def _findings(summary: pd.DataFrame, mode: str, model: str) -> list[dict]:
    """Per dataset and score: the best feature set after post-processing against before."""
    out = []
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
            out.append({"key": key, "score": method_label(score), "before": before.iloc[0], "after": best[col],
                        "feature_set": ood_set_label(best["feature_set"])})
    return out


def _before_after_figure(inp: Inputs, figures: Figures, key: str, doc_json: dict, outs: dict,
                         model: str) -> dict | None:
    """One evaluation frame of run 0: image, ground truth, score, candidates before and after."""
    from ..metrics.ood import SMIYC_MODES, TRACKS
    from ..ood_meta import extract_candidates

    o = inp.infer["outputs"].get(key)
    info = (doc_json.get("datasets") or {}).get(key)
    pred_path = inp.path(outs["predictions_csv"])
    if o is None or info is None or not pred_path.exists():
        return None
    preds = pd.read_csv(pred_path, keep_default_na=False, na_values=[""])
    preds = preds[(preds["dataset"].astype(str) == key) & (preds["run"] == 0) & (preds["model"].astype(str) == model)]
    if preds.empty:
        return None
    scores = list(dict.fromkeys(preds["score"].astype(str)))
    score = "pgn_last_uni_p0_5" if "pgn_last_uni_p0_5" in scores else scores[0]
    sets = list(dict.fromkeys(preds["feature_set"].astype(str)))
    shown = [fs for fs in ("softmax", "softmax+pgn") if fs in sets] or sets[:2]
    main = shown[-1]
    p = preds[(preds["score"] == score)]
    per_frame = p[p["feature_set"] == main].groupby("frame_id", sort=False).agg(
        removed=("removed", "sum"), n=("candidate_id", "size"))
    if per_frame.empty:
        return None
    per_frame = per_frame.sort_values(["removed", "n"], ascending=False, kind="stable")
    frame_id = str(per_frame.index[0])
    record = read_record(inp, o, frame_id)
    s = record.pixel_maps()[score] * float(info["scale"][score])
    threshold = float(info["thresholds"][score][0])
    cand, _ = extract_candidates(s, record.label, threshold, min_pred_size=TRACKS[info["track"]]["min_pred_size"],
                                 float16=info["mode"] in SMIYC_MODES)
    fp_of = dict(zip(p.loc[p["feature_set"] == main, "candidate_id"].astype(int),
                     p.loc[p["feature_set"] == main, "fp"]))
    panels = []
    image = load_image(inp, o, frame_id)
    if image is not None:
        panels.append({"title": "image", "kind": "rgb", "data": image})
    panels.append({"title": "OoD ground truth", "kind": "rgb", "data": _base(record.label)})
    panels.append({"title": f"score: {method_label(score)}", "kind": "heat", "data": s})
    panels.append({"title": f"candidates ({int(cand.max(initial=0))})", "kind": "rgb",
                   "data": _paint_candidates(record.label, cand, fp_of, set())})
    for fs in shown:
        sub = p[(p["feature_set"] == fs) & (p["frame_id"].astype(str) == frame_id)]
        gone = set(sub.loc[sub["removed"].astype(bool), "candidate_id"].astype(int))
        panels.append({"title": f"after, {ood_set_label(fs)} features ({len(gone)} removed)", "kind": "rgb",
                       "data": _paint_candidates(record.label, cand, fp_of, gone)})
    legend = [("true OoD candidate (PPV ≥ threshold)", TRUE_RGB), ("false positive", FALSE_RGB),
              ("removed", REMOVED_RGB), ("ground-truth OoD", OOD_RGB), ("void", VOID_RGB)]
    return figures.add(
        f"ood_meta_{safe_name(key)}_{safe_name(frame_id)}.png", lambda: frame_figure(panels, ncols=3, legend=legend),
        f"Post-processing of `{key}` frame `{frame_id}` (an evaluation frame of run 0, the one with the most removed "
        f"candidates): {method_label(score)} thresholded at {threshold:.4g}, candidates coloured by their target, "
        f"then the candidates kept by the `{model}` meta classifier on "
        f"{' and on '.join(ood_set_label(fs) for fs in shown)} features.")


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

