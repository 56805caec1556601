"""The report's data: the stored outputs of a run read into plain dicts, lists and numbers.

:func:`report_data` reads the manifests and the files they name (``meta_summary.csv``,
``meta_results.csv``, ``meta_predictions.csv``, the feature Parquet, ``pixel_eval.csv``,
``segmentation.csv``, ``ood_eval.csv`` / ``.json``, the ``ood_meta`` summaries) and returns what the
templates show: numbers unformatted (the templates format them), the best value of each table
column marked, and the figures, drawn from the same data and written by :class:`Figures`. Nothing
here recomputes a metric; a section whose stage did not run says so (``missing``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from .. import __version__
from ..io import atomic_write
from ..metrics.ood import SMIYC_MODES, VERSIONS
from ..names import MODEL_LABELS, feature_set_family, feature_set_label, method_family, method_label, order_feature_sets
from ..plots import FAMILY_COLORS, save_figure
from .fmt import best_index, fmt_num, fmt_pct, folder_size, isnan, plural
from .stats import feature_correlations

log = logging.getLogger("metaseg_pgn")

#: The stages whose outputs the report reads, in pipeline order.
UPSTREAM = ("infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta")
#: Correlation figure: how many ``{m}_mean`` features (strongest |Spearman| first).
TOP_CORRELATIONS = 15
#: Feature sets drawn in the ROC figure, when present.
ROC_SETS = ("metaseg", "metaseg+pgn", "pgn_oh", "pgn_uni", "entropy", "max_softmax", "mcd", "ensemble")
#: The columns of the OoD tables per mode: (CSV column, header, lower is better).
OOD_TABLE_COLUMNS = {
    "smiyc": [("AuPRC_smiyc", "AuPRC", False), ("FPR95_smiyc", "FPR95", True), ("sIoU_gt_smiyc", "sIoU", False),
              ("PPV_smiyc", "PPV", False), ("F1_mean_smiyc", "mean F1", False)],
    "smiyc2021": [("AuPRC_smiyc2021", "AuPRC", False), ("FPR95_smiyc2021", "FPR95", True),
                  ("sIoU_gt_smiyc2021", "sIoU", False), ("PPV_smiyc2021", "PPV", False),
                  ("F1_mean_smiyc2021", "mean F1", False)],
    "exact": [("AP_exact", "AP", False), ("FPR95_exact", "FPR95", True), ("AUROC_exact", "AUROC", False),
              ("sIoU_gt_exact", "sIoU", False), ("PPV_exact", "PPV", False), ("F1_mean_exact", "mean F1", False)],
}


def published() -> dict:
    """The published reference values with their citations (``published.yaml`` of this package)."""
    return yaml.safe_load(resources.files("metaseg_pgn.report").joinpath("published.yaml").read_text("utf-8"))


@dataclass
class Inputs:
    """What the report stage hands over: where the run is and what its upstream stages recorded.

    Parameters
    ----------
    run_dir : Path
        The run folder (every path in a manifest is relative to it).
    manifests : dict
        Stage name → its manifest, None for a stage that has not run (``infer`` is required).
    fingerprint : str
        The report stage's fingerprint.
    settings : dict
        The ``report`` configuration section.
    pipeline : str
        The pipeline's name.
    key : str
        The evaluated dataset's key (``synthetic-val``); None under ``dataset=none``.
    """

    run_dir: Path
    manifests: dict
    fingerprint: str
    settings: dict
    pipeline: str
    key: str | None

    def path(self, rel: str) -> Path:
        """A file named in a manifest (relative to the run folder)."""
        return self.run_dir / rel

    @property
    def infer(self) -> dict:
        return self.manifests["infer"]

    def missing(self, stage: str) -> str | None:
        """Why a section is absent (the stage did not run or skipped itself), or None."""
        man = self.manifests.get(stage)
        if man is None:
            return (f"The stage `{stage}` has not run in this run folder (no `{stage}/manifest.json`); "
                    f"`python -m metaseg_pgn.run stage={stage}` adds this section.")
        outputs = man.get("outputs")
        skipped = outputs.get("skipped") if isinstance(outputs, dict) else None
        return f"The stage `{stage}` skipped itself: {skipped}." if skipped else None


class Figures:
    """Writes the report's figures into its folder and remembers their names (in order)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: list[str] = []

    def add(self, name: str, draw: Callable[[], Any], caption: str) -> dict:
        """Draw a figure (``draw()`` returns a matplotlib Figure), save it; ``{src, caption}``."""
        save_figure(draw(), self.folder / name)
        self.written.append(name)
        return {"src": name, "caption": caption}

    def copy(self, src: Path, name: str, caption: str) -> dict:
        """Copy a figure another stage wrote; ``{src, caption}``."""
        with atomic_write(self.folder / name, "wb") as f:
            f.write(src.read_bytes())
        self.written.append(name)
        return {"src": name, "caption": caption}


# ---------------------------------------------------------------------------------------------
# The run


def run_section(inp: Inputs) -> dict:
    """The header table's data: datasets, model, settings, fingerprints, times and sizes."""
    cfg, out = inp.infer["config"], inp.infer["outputs"]
    ev = out.get(inp.key, {}) if inp.key else {}
    features = (inp.manifests.get("features") or {}).get("outputs") or {}
    pixel = (inp.manifests.get("pixel_eval") or {}).get("outputs") or {}
    quality_missing = None
    if pixel.get("mIoU") is None:
        quality_missing = (inp.missing("pixel_eval") or "the stage `pixel_eval` did not record it.").rstrip(".")
    ran = [(s, float(m["seconds"])) for s in UPSTREAM if (m := inp.manifests.get(s)) and "seconds" in m]
    return {
        "pipeline": inp.pipeline, "model": cfg["model"], "key": inp.key,
        "frames": len(ev.get("frames", [])), "labelled": bool(ev.get("label_kind")),
        "segments": features.get(inp.key, {}).get("rows") if inp.key else None,
        "ood": [(k, len(o["frames"])) for k, o in out.items() if o.get("label_kind") == "ood"],
        "unlabelled": [(k, len(o["frames"])) for k, o in out.items()
                       if k != inp.key and o.get("label_kind") != "ood"],
        "miou": pixel.get("mIoU"), "quality_missing": quality_missing,
        "pgn": cfg.get("pgn", {}), "baselines": cfg.get("baselines", {}),
        "fingerprint": inp.fingerprint,
        "stage_fingerprints": [(s, m.get("fingerprint")) for s in UPSTREAM if (m := inp.manifests.get(s))],
        "version": inp.infer.get("version", __version__), "torch": inp.infer.get("torch"),
        "seconds": ran, "total_seconds": sum(t for _, t in ran),
        "sizes": [(s, folder_size(inp.run_dir / s)) for s in UPSTREAM],
        "export": folder_size(inp.run_dir / "ood_eval" / "submission"),
    }


# ---------------------------------------------------------------------------------------------
# Meta classification and regression


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


_META_METRICS = ("auroc", "accuracy", "r2", "sigma")


def _meta_rows(rows: Sequence[pd.Series], part: str) -> list[dict]:
    """One table row per feature set: label, key, #features and per metric mean, std, best."""
    best = {c: best_index([r[f"{c}_{part}_mean"] for r in rows], c == "sigma") for c in _META_METRICS}
    return [{"label": feature_set_label(r["feature_set"]), "key": r["feature_set"], "n_features": int(r["n_features"]),
             **{c: {"mean": r[f"{c}_{part}_mean"], "std": r[f"{c}_{part}_std"], "best": i in best[c]}
                for c in _META_METRICS}} for i, r in enumerate(rows)]


def model_comparison(summary: pd.DataFrame) -> dict | None:
    """Test AuROC and R² per feature set and meta model (None with fewer than two models)."""
    if "model" not in summary.columns:
        return None
    models = list(dict.fromkeys(summary["model"].astype(str)))
    if len(models) < 2:
        return None
    rows = []
    for fs in order_feature_sets(dict.fromkeys(summary["feature_set"].astype(str))):
        part = summary[summary["feature_set"].astype(str) == fs]
        part = part.set_index(part["model"].astype(str))
        row = {"label": feature_set_label(fs), "key": fs}
        for metric in ("auroc", "r2"):
            vals = [part.loc[m, f"{metric}_test_mean"] if m in part.index else math.nan for m in models]
            best = best_index(vals)
            row[metric] = [{"mean": vals[i], "std": part.loc[m, f"{metric}_test_std"] if m in part.index else math.nan,
                            "best": i in best} for i, m in enumerate(models)]
        rows.append(row)
    return {"models": models, "labels": [MODEL_LABELS.get(m, m) for m in models], "rows": rows}


def _protocol(summary: pd.DataFrame, results: pd.DataFrame, mcfg: dict) -> dict:
    from ..meta import PROTOCOLS

    name = str(summary["protocol"].iloc[0]) if "protocol" in summary.columns and len(summary) else mcfg.get("protocol")
    proto = PROTOCOLS.get(name)
    data = {"name": name, "n_runs": int(summary["n_runs"].max()) if len(summary) else 0,
            "grouped": bool(proto and proto.grouped),
            "test_size": mcfg.get("test_size") or (proto.test_size if proto else None),
            "scaler_train": mcfg.get("standardize", "train") == "train", "min_inner": bool(mcfg.get("min_inner")),
            "run0": None}
    r0 = results[(results["run"] == 0)] if "run" in results.columns else results.iloc[0:0]
    if len(r0):
        first = r0["feature_set"].iloc[0]
        tr = r0[(r0["feature_set"] == first) & (r0["part"] == "train")]
        te = r0[(r0["feature_set"] == first) & (r0["part"] == "test")]
        if len(tr) and len(te):
            n_tr, n_te = int(tr["n_segments"].iloc[0]), int(te["n_segments"].iloc[0])
            data["run0"] = {"train_segments": n_tr, "train_frames": int(tr["n_frames"].iloc[0]),
                            "test_segments": n_te, "test_frames": int(te["n_frames"].iloc[0]),
                            "iou0_rate": (tr["iou0_rate"].iloc[0] * n_tr + te["iou0_rate"].iloc[0] * n_te)
                            / max(n_tr + n_te, 1)}
    return data


def paired_differences(results: pd.DataFrame, a: str, b: str, metric: str) -> np.ndarray:
    """Per-run test differences ``b − a`` of a metric (runs where both are defined), by run."""
    if not {"feature_set", "run", "part", metric} <= set(results.columns):
        return np.array([])
    test = results[results["part"] == "test"]
    va = test[test["feature_set"] == a].set_index("run")[metric]
    vb = test[test["feature_set"] == b].set_index("run")[metric]
    return (vb - va).dropna().sort_index().to_numpy(dtype=float)


def _meta_findings(by_name: dict[str, pd.Series], results: pd.DataFrame) -> dict:
    """The best test AuROC and R², and MetaSeg + PGN against MetaSeg run by run.

    Every run splits the segments once for all feature sets, so the difference of two sets is
    paired per run; how often it is positive says more than the two standard deviations.
    """
    best, diffs = [], []
    for metric, label in (("auroc", "AuROC"), ("r2", "R²")):
        vals = {n: r[f"{metric}_test_mean"] for n, r in by_name.items() if not isnan(r[f"{metric}_test_mean"])}
        if vals:
            top = max(vals, key=lambda n: (vals[n], -list(by_name).index(n)))
            best.append({"metric": label, "value": vals[top], "label": feature_set_label(top)})
    a, b = by_name.get("metaseg"), by_name.get("metaseg+pgn")
    if a is not None and b is not None:
        for metric, label in (("auroc", "AuROC"), ("r2", "R²")):
            ma, mb = a[f"{metric}_test_mean"], b[f"{metric}_test_mean"]
            if isnan(ma) or isnan(mb):
                continue
            d = paired_differences(results, "metaseg", "metaseg+pgn", metric)
            diffs.append({"metric": label, "diff": mb - ma, "runs": int(d.size), "higher": int((d > 0).sum()),
                          "std": float(d.std()) if d.size else math.nan})
    return {"best": best, "diffs": diffs}


def meta_section(inp: Inputs, figures: Figures) -> dict:
    """Protocol, test and training tables, findings, notes, model comparison and figures."""
    data: dict[str, Any] = {"missing": inp.missing("meta"), "predictions": None}
    if data["missing"]:
        return data
    man = inp.manifests["meta"]
    outs = man["outputs"]
    summary = pd.read_csv(inp.path(outs["summary_csv"]), keep_default_na=True)
    results = pd.read_csv(inp.path(outs["results_csv"]))
    pred_file = outs.get("predictions_csv")
    predictions = pd.read_csv(inp.path(pred_file)) if pred_file and inp.path(pred_file).exists() else None
    comparison = model_comparison(summary)
    model, summary, results, predictions = primary_model(summary, results, predictions)
    names = order_feature_sets(summary["feature_set"].astype(str))
    by_name = {str(r["feature_set"]): r for _, r in summary.iterrows()}
    ordered = [by_name[n] for n in names]
    data.update(
        protocol=_protocol(summary, results, (man.get("config") or {}).get("meta", {})), model=model,
        test=_meta_rows(ordered, "test"), train=_meta_rows(ordered, "train"),
        findings=_meta_findings(by_name, results), comparison=comparison, predictions=predictions,
        notes=[(n, r["notes"]) for n in names if isinstance((r := by_name[n])["notes"], str) and r["notes"]])
    data.update(_meta_figures(ordered, results, predictions, figures))
    return data


def _meta_figures(rows: Sequence[pd.Series], results: pd.DataFrame, pred: pd.DataFrame | None,
                  figures: Figures) -> dict:
    from sklearn.metrics import roc_auc_score, roc_curve

    from ..plots import iou_scatter_figure, meta_bar_figure, roc_figure

    bars = [{"label": feature_set_label(r["feature_set"]), "family": feature_set_family(r["feature_set"]),
             "auroc": r["auroc_test_mean"], "auroc_std": r["auroc_test_std"],
             "r2": r["r2_test_mean"], "r2_std": r["r2_test_std"]} for r in rows]
    names = [r["feature_set"] for r in rows]
    ref = names.index("metaseg") if "metaseg" in names else None
    out: dict[str, Any] = {"n_runs": int(rows[0]["n_runs"]) if len(rows) else 0, "roc": None, "scatter": None,
                           "has_predictions": pred is not None and not pred.empty}
    out["bars"] = figures.add("meta_bars.png", lambda: meta_bar_figure(bars, reference=ref),
                              f"Meta classification AuROC and meta regression R² per feature set, test part, mean ± "
                              f"std over {out['n_runs']} runs (bars: AuROC from chance level 50 %, R² from 0; dotted: "
                              "MetaSeg; the paper's Figure 3).")
    if not out["has_predictions"]:
        return out
    curves = {}
    for name in ROC_SETS:
        part = pred[pred["feature_set"] == name]
        y = part["iou0"].astype(bool).to_numpy()
        score = part["p_iou0"].to_numpy(dtype=float)
        if part.empty or np.isnan(score).any() or y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, score)
        curves[feature_set_label(name)] = {"fpr": fpr, "tpr": tpr, "auc": float(roc_auc_score(y, score)),
                                           "color": FAMILY_COLORS.get(feature_set_family(name))}
    if curves:
        n_test = int(pred["frame_id"].nunique()) if "frame_id" in pred.columns else 0
        n_seg = len(pred[pred["feature_set"] == pred["feature_set"].iloc[0]])
        out["roc"] = figures.add("meta_roc.png", lambda: roc_figure(curves, "meta classification of IoU = 0"),
                                 f"ROC curves of the meta classifiers (positive: a segment with IoU = 0) on the test "
                                 f"part of run 0 ({plural(n_test, 'frame')}, {plural(n_seg, 'segment')}).")
    panels = []
    for name in ("metaseg", "metaseg+pgn"):
        part = pred[pred["feature_set"] == name]
        if part.empty:
            continue
        row = results[(results["feature_set"] == name) & (results["run"] == 0) & (results["part"] == "test")]
        r2 = row["r2"].iloc[0] if len(row) else math.nan
        sigma = row["sigma"].iloc[0] if len(row) else math.nan
        panels.append({"title": f"{feature_set_label(name)}: R² {fmt_pct(r2)} %, σ {fmt_num(sigma, 3)}",
                       "iou": part["iou"].to_numpy(float), "pred": part["iou_pred"].to_numpy(float),
                       "color": FAMILY_COLORS[feature_set_family(name)]})
    if panels:
        out["scatter"] = figures.add(
            "meta_iou_scatter.png", lambda: iou_scatter_figure(panels),
            "Predicted against true IoU_adj per segment (meta regression, test part of run 0).")
    return out


def correlation_section(inp: Inputs, figures: Figures) -> dict:
    """Pearson and Spearman correlation of each map's segment mean with IoU_adj (or why not)."""
    import pyarrow.parquet as pq

    from ..plots import correlation_figure
    from ..table import read_features

    part = (((inp.manifests.get("features") or {}).get("outputs") or {}).get(inp.key)) if inp.key else None
    if not part:
        return {"missing": inp.missing("features") or f"The feature table has no part for `{inp.key}`."}
    path = inp.path(part["path"])
    names = pq.read_schema(path).names
    cols = [c for c in names if c.endswith("_mean") and not c.endswith(("_in_mean", "_bd_mean"))]
    if "iou" not in names or not cols:
        return {"missing": "The feature table has no `iou` column or no `*_mean` feature: no correlations."}
    df = read_features(path, columns=cols + ["iou"])
    df = df[df["iou"].notna()]
    if df.empty:
        return {"missing": f"No segment of `{inp.key}` has an IoU target (the dataset has no labels): "
                           "no correlations."}
    corr = feature_correlations(df, cols, df["iou"].to_numpy(dtype=float))
    if corr.empty:
        return {"missing": "Every `*_mean` feature is constant over the segments: no correlations."}
    top = corr.head(TOP_CORRELATIONS)
    figure = figures.add(
        "feature_correlation.png",
        lambda: correlation_figure(list(top["feature"]), list(top["pearson"]), list(top["spearman"]),
                                   f"{len(df)} segments of {inp.key}"),
        f"Correlation of the segment means of each pixel map with IoU_adj: the {len(top)} strongest of "
        f"{len(corr)} by |Spearman| (rank-based, so the heavy tails of the PGN maps with small p do not dominate "
        "it as they can Pearson's).")
    return {"missing": None, "figure": figure, "rows": top.head(10).to_dict("records")}


# ---------------------------------------------------------------------------------------------
# Pixel level

PIXEL_CAPTIONS = {
    "reliability.png": "Reliability diagrams of the baselines and the best PGN map of each label by AuSE: per "
                       "confidence bin, blue up to the lower of accuracy and mean confidence, then orange where the "
                       "confidence is higher (over-confident) or green hatched where the accuracy is higher "
                       "(under-confident); black tick: accuracy; dashed: perfect calibration.",
    "sparsification.png": "Sparsification curves of the same methods and the oracle (dashed)."}


def pixel_section(inp: Inputs, figures: Figures) -> dict:
    """Per-class IoU, ECE and AuSE per method, lowest values and the figures of ``pixel_eval``."""
    data: dict[str, Any] = {"missing": inp.missing("pixel_eval")}
    if data["missing"]:
        return data
    man = inp.manifests["pixel_eval"]
    outs = man["outputs"]
    classes = None
    rel = outs.get("segmentation")
    if rel and inp.path(rel).exists():
        seg = pd.read_csv(inp.path(rel))
        classes = seg[(seg["gt_pixels"] > 0) | (seg["pred_pixels"] > 0)].to_dict("records")
    table = pd.read_csv(inp.path(outs["table"]))
    best_e, best_a = best_index(table["ECE"], True), best_index(table["AuSE"], True)
    rows = [{"label": method_label(r.method), "key": r.method, "ECE": r.ECE, "AuSE": r.AuSE,
             "best_ECE": i in best_e, "best_AuSE": i in best_a} for i, r in enumerate(table.itertuples())]
    notes = table["note"].dropna().astype(str) if "note" in table.columns else pd.Series([], dtype=str)
    lowest = []
    for col in ("ECE", "AuSE"):
        vals = table[col].to_numpy(dtype=float)
        if np.isfinite(vals).any():
            i = int(np.nanargmin(vals))
            lowest.append({"metric": col, "value": vals[i], "label": method_label(table["method"].iloc[i])})
    by_method = {r["key"]: r for r in rows}
    shown = [figures.copy(inp.path(rel), "pixel_" + Path(rel).name,
                          PIXEL_CAPTIONS.get(Path(rel).name, Path(rel).name) + " (written by `pixel_eval`)")
             for rel in outs.get("figures", []) if inp.path(rel).exists()]
    n_bins = ((man.get("config") or {}).get("pixel_eval") or {}).get("n_bins")
    data.update(miou=outs.get("mIoU"), classes=classes, n_bins=n_bins, rows=rows,
                notes=[(n, list(table.loc[table["note"] == n, "method"])) for n in dict.fromkeys(notes) if n],
                lowest=lowest, paper_pair=(by_method.get("V"), by_method.get("pgn_last_oh_p2")), figures=shown)
    return data


# ---------------------------------------------------------------------------------------------
# OoD segmentation


def inverted_scores(part: pd.DataFrame) -> dict[str, float]:
    """Methods whose AUROC is below 0.5 (exact mode where present, else smiyc), method → AUROC."""
    col = next((c for c in ("AUROC_exact", "AUROC_smiyc") if c in part.columns), None)
    if col is None:
        return {}
    return {str(m): float(a) for m, a in zip(part["method"], part[col]) if not isnan(a) and float(a) < 0.5}


def _ood_table(part: pd.DataFrame, mode: str, inverted: dict) -> dict:
    version = part[f"version_{mode}"].iloc[0] if f"version_{mode}" in part.columns else VERSIONS[mode]
    cols = [c for c in OOD_TABLE_COLUMNS[mode] if c[0] in part.columns]
    best = {c: best_index(list(part[c]), lower) for c, _, lower in cols}
    rows = [{"label": method_label(r["method"]), "key": r["method"], "inverted": r["method"] in inverted,
             "cells": [{"value": r[c], "best": i in best[c]} for c, _, _ in cols]} for i, r in part.iterrows()]
    return {"mode": mode, "version": version, "headers": [h for _, h, _ in cols], "rows": rows}


_OOD_BASELINES = (("entropy", ["E"]), ("max softmax", ["V"]), ("MC dropout", ["mcd_E", "mcd_MI"]),
                  ("ensemble", ["ens_E", "ens_MI"]))


def _ood_findings(part: pd.DataFrame) -> dict:
    """Best method by AuPRC and the best PGN map against each baseline family."""
    metric = "AuPRC_smiyc" if "AuPRC_smiyc" in part.columns else "AP_exact"
    vals = {m: float(v) for m, v in zip(part["method"], part[metric]) if not isnan(v)}
    data: dict[str, Any] = {"metric": "AuPRC" if metric == "AuPRC_smiyc" else "AP (exact)", "best": None}
    if not vals:
        return data
    order = list(part["method"])
    top = max(vals, key=lambda m: (vals[m], -order.index(m)))
    data["best"] = {"label": method_label(top), "value": vals[top]}
    pgn = {m: v for m, v in vals.items() if m.startswith("pgn_")}
    data["pgn"] = None
    if not pgn:
        return data
    bp = max(pgn, key=lambda m: (pgn[m], -order.index(m)))
    comps, absent = [], []
    for name, members in _OOD_BASELINES:
        have = {m: vals[m] for m in members if m in vals}
        if not have:
            absent.append(name)
            continue
        m = max(have, key=lambda k: (have[k], -members.index(k)))
        comps.append({"label": method_label(m) if len(members) > 1 else name, "value": have[m],
                      "diff": pgn[bp] - have[m]})
    data["pgn"] = {"label": method_label(bp), "value": pgn[bp], "comparisons": comps, "absent": absent,
                   "paper_choice": (vals["pgn_last_uni_p0_5"] if "pgn_last_uni_p0_5" in vals
                                    and bp != "pgn_last_uni_p0_5" else None)}
    return data


def _component_errors(info: dict) -> list[tuple[str, str, str]]:
    errors = []
    for method, by_mode in (info.get("methods") or {}).items():
        for mode, res in by_mode.items():
            err = (res.get("component") or {}).get("error") if isinstance(res, dict) else None
            if err:
                errors.append((method, mode, err))
    return errors


def ood_section(inp: Inputs, figures: Figures, reference: dict) -> dict:
    """Per OoD dataset: its tables per mode, findings, inverted scores, errors; the AuPRC figure."""
    from ..plots import ood_bar_figure

    unlabelled = ((inp.manifests.get("ood_eval") or {}).get("outputs") or {}).get("unlabelled") or {}
    data: dict[str, Any] = {"missing": inp.missing("ood_eval"), "unlabelled": sorted(unlabelled.items()),
                            "versions": VERSIONS, "smiyc_modes": SMIYC_MODES}
    if data["missing"]:
        return data
    outs = inp.manifests["ood_eval"]["outputs"]
    table = pd.read_csv(inp.path(outs["table"]))
    details = json.loads(inp.path(outs["json"]).read_text()) if outs.get("json") and inp.path(outs["json"]).exists() \
        else {}
    datasets, bars = [], {}
    for key in dict.fromkeys(table["dataset"].astype(str)):
        part = table[table["dataset"] == key].reset_index(drop=True)
        info = details.get(key, {})
        inverted = inverted_scores(part)
        datasets.append({
            "key": key, "track": part["track"].iloc[0] if "track" in part.columns else info.get("track"),
            "frames": info.get("frames"), "findings": _ood_findings(part),
            "tables": {mode: _ood_table(part, mode, inverted) for mode, first in
                       (("smiyc", "AuPRC_smiyc"), ("smiyc2021", "AuPRC_smiyc2021"), ("exact", "AP_exact"))
                       if first in part.columns},
            "published": reference["datasets"].get(key.split("-")[0]),
            "inverted": [(method_label(m), a) for m, a in inverted.items()], "errors": _component_errors(info)})
        metric = "AuPRC_smiyc" if "AuPRC_smiyc" in part.columns else "AP_exact"
        bars[key] = [{"label": method_label(m), "family": method_family(m), "value": v}
                     for m, v in zip(part["method"], part[metric])]
    data["datasets"] = datasets
    if bars:
        metric = "AuPRC (smiyc, benchmark 1c7804e)" if "AuPRC_smiyc" in table.columns else "AP (exact)"
        data["figure"] = figures.add("ood_auprc.png", lambda: ood_bar_figure(bars, metric),
                                     f"{metric} per method and OoD dataset.")
    return data
