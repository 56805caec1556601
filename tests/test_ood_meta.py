"""Tests of metaseg_pgn.ood_meta: candidates, targets, features and the post-processed metrics,
each recomputed here by loops over pixels written from the definitions (docs/design.md §3, §6, §11)."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from metaseg_pgn import ood_meta
from metaseg_pgn.meta import GBT_PARAMS, MLP_PARAMS
from metaseg_pgn.metrics.ood import SIOU_THRESHOLDS, PixelOoDMetrics, frame_components
from metaseg_pgn.segments import segment_features

H, W = 64, 128
N_CLASSES = 3
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
STATS = ["mean", "in_mean", "bd_mean", "rel", "rel_in", "var", "in_var", "bd_var", "var_rel", "var_rel_in"]


# ------------------------------------------------------------------------------------------------
# A small world: OoD blobs (true candidates), false-positive blobs, void, small ground truth


def make_frame(rng: np.random.Generator, h: int = H, w: int = W):
    """label (0/1/255), score, probs (C, H, W), maps. True OoD blobs score high and have a high
    ``pgn_last_uni_p0_5``; false-positive blobs score high as well but that PGN map is low there."""
    label = np.zeros((h, w), np.uint8)
    score = rng.uniform(0, 0.4, (h, w))
    pgn = rng.uniform(0, 1, (h, w))
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(2, 6))):  # OoD objects, some small (< 10 px: void in obstacle)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(1, 9), rng.integers(1, 13)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        label[blob] = 1
        grow = ((yy - cy) / (ry + rng.integers(0, 3))) ** 2 + ((xx - cx) / (rx + rng.integers(0, 3))) ** 2 <= 1
        score[grow] = rng.uniform(0.5, 1.0, int(grow.sum()))
        pgn[grow] += 3
    for _ in range(int(rng.integers(2, 7))):  # false positives
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(2, 9), rng.integers(2, 13)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        score[blob & (label == 0)] = rng.uniform(0.5, 1.0, int((blob & (label == 0)).sum()))
    if rng.uniform() < 0.7:  # a void band
        r0 = int(rng.integers(0, h - 4))
        label[r0:r0 + int(rng.integers(1, 4)), :] = 255
    probs = rng.dirichlet(np.ones(N_CLASSES), (h, w)).transpose(2, 0, 1).astype(np.float32)
    maps = {"E": rng.uniform(0, 1, (h, w)), "D": rng.uniform(0, 1, (h, w)), "V": score.copy(),
            "pgn_last_uni_p0_5": pgn, "pgn_last_oh_p2": rng.gamma(2.0, 1e3, (h, w))}
    return label, score, probs, maps


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(7)
    return {f"f{i:02d}": make_frame(rng) for i in range(12)}


# ------------------------------------------------------------------------------------------------
# Brute force


def components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a bool mask by breadth-first search, in raster order of the
    first pixel; each a list of (y, x)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    out = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or seen[y, x]:
                continue
            comp, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                comp.append((cy, cx))
                for dy, dx in NEIGHBOURS:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            out.append(comp)
    return out


def brute_candidates(score, label, thr, min_size, float16):
    s = score.astype(np.float16) if float16 else score
    t = np.float16(thr) if float16 else thr
    mask = np.zeros(score.shape, bool)
    for y in range(score.shape[0]):
        for x in range(score.shape[1]):
            mask[y, x] = bool(s[y, x] > t) and label[y, x] != 255
    return [c for c in components(mask) if len(c) >= min_size]


def brute_roi(label, min_gt):
    """Pixels the benchmark counts: not void, not in a ground-truth component below min_gt (and,
    as the benchmark, not anywhere if the background 'component' is below min_gt)."""
    gts = components(label == 1)
    roi = label != 255
    for comp in gts:
        if len(comp) < min_gt:
            for p in comp:
                roi[p] = False
    if int((label != 1).sum()) < min_gt:  # background component 0 (never in these frames)
        roi[label != 1] = False
    kept_gts = [c for c in gts if len(c) >= min_gt and any(roi[p] for p in c)]
    return roi, kept_gts


def brute_metrics(frames, min_pred, min_gt):
    """sIoU per gt component, PPV per predicted component, F1 over t, summed over frames, from
    pixel sets. ``frames``: list of (prediction mask, label)."""
    sious, ppvs = [], []
    for pred, label in frames:
        roi, gts = brute_roi(label, min_gt)
        preds = [set(p for p in c if roi[p]) for c in components(pred) if len(c) >= min_pred]
        preds = [p for p in preds if p]
        gts = [set(p for p in c if roi[p]) for c in gts]
        for k, g in enumerate(gts):
            khat = set().union(*[p for p in preds if p & g]) if preds else set()
            others = set().union(*[o for j, o in enumerate(gts) if j != k]) if len(gts) > 1 else set()
            sious.append(len(g & khat) / len((g | khat) - others))
        for p in preds:
            touching = set().union(*[g for g in gts if g & p]) if gts else set()
            ppvs.append(len(p & touching) / len(p))
    f1 = []
    for t in SIOU_THRESHOLDS:
        tp = sum(v >= t for v in sious)
        fn = len(sious) - tp
        fp = sum(v < t for v in ppvs)
        f1.append(2 * tp / (2 * tp + fn + fp))
    return {"sIoU": float(np.mean(sious)), "PPV": float(np.mean(ppvs)) if ppvs else 0.0,
            "F1": float(np.mean(f1)), "n_gt": len(sious), "n_pred": len(ppvs)}


# ------------------------------------------------------------------------------------------------
# One frame


@pytest.mark.parametrize("float16", [True, False])
@pytest.mark.parametrize("track", ["obstacle", "anomaly"])
def test_candidates_and_targets_match_brute_force(world, float16, track):
    min_pred, min_gt = (50, 10) if track == "obstacle" else (500, 100)
    if track == "anomaly":
        min_pred, min_gt = 60, 30  # the anomaly track's filters (500 / 100 px) scaled to these small frames
    seen_uncounted = 0
    for i, (fid, (label, score, _, _)) in enumerate(world.items()):
        thr = 0.45 + 0.01 * i + 1e-4  # not a float16 value: rounding matters
        cand, n = ood_meta.extract_candidates(score, label, thr, min_pred_size=min_pred, float16=float16)
        comps = brute_candidates(score, label, thr, min_pred, float16)
        assert n == len(comps)
        assert cand.dtype == np.int32
        ref = np.zeros_like(cand)
        for k, c in enumerate(comps, start=1):
            for p in c:
                ref[p] = k
        np.testing.assert_array_equal(cand, ref)
        t = ood_meta.candidate_targets(cand, n, label, min_gt_size=min_gt, fp_below=0.5)
        roi, gts = brute_roi(label, min_gt)
        gt_pixels = set().union(*[set(g) for g in gts]) if gts else set()
        for k, c in enumerate(comps):
            counted = [p for p in c if roi[p]]
            row = t.iloc[k]
            assert row["candidate_id"] == k + 1 and row["size"] == len(c)
            assert row["size_counted"] == len(counted)
            assert row["covered"] == sum(p in gt_pixels for p in counted)
            if counted:
                ppv = sum(p in gt_pixels for p in counted) / len(counted)
                assert row["ppv"] == pytest.approx(ppv, rel=1e-15) and bool(row["fp"]) == (ppv < 0.5)
            else:
                seen_uncounted += 1
                assert math.isnan(row["ppv"]) and not row["counted"] and pd.isna(row["fp"])
        # the benchmark's own PPV of the same components, in the same order
        fc = frame_components(score, label, thr, min_pred_size=min_pred, min_gt_size=min_gt, float16=float16)
        np.testing.assert_allclose(fc.PPV, t.loc[t["counted"], "ppv"].to_numpy(), rtol=1e-15)


def test_candidate_features_match_loops_over_pixels(world):
    label, score, probs, maps = world["f03"]
    cand, n = ood_meta.extract_candidates(score, label, 0.45, min_pred_size=12)
    assert n >= 2
    feats = ood_meta.candidate_features(cand, n, probs, maps)
    assert list(feats["candidate_id"]) == list(range(1, n + 1))
    h, w = cand.shape
    for k in range(1, n + 1):
        row = feats.iloc[k - 1]
        pix = list(zip(*np.nonzero(cand == k)))
        bd = [p for p in pix if any(0 <= p[0] + dy < h and 0 <= p[1] + dx < w and cand[p[0] + dy, p[1] + dx] != k
                                    for dy, dx in NEIGHBOURS)]
        inner = [p for p in pix if p not in set(bd)]
        assert (row["S"], row["S_in"], row["S_bd"]) == (len(pix), len(inner), len(bd))
        assert row["S_rel"] == pytest.approx(len(pix) / max(len(bd), 1))
        assert row["centroid_y"] == pytest.approx(np.mean([p[0] for p in pix]))
        assert row["centroid_x"] == pytest.approx(np.mean([p[1] for p in pix]))
        for name, m in maps.items():
            for suffix, region in (("mean", pix), ("in_mean", inner), ("bd_mean", bd)):
                vals = [m[p] for p in region]
                assert row[f"{name}_{suffix}"] == pytest.approx(np.mean(vals) if vals else 0.0, rel=1e-9)
                var = row[f"{name}_{suffix.replace('mean', 'var')}" if suffix != "mean" else f"{name}_var"]
                assert var == pytest.approx(np.var(vals) if vals else 0.0, rel=1e-9, abs=1e-12)
        for c in range(N_CLASSES):
            assert row[f"cprob_{c}"] == pytest.approx(np.mean([probs[c][p] for p in pix]), rel=1e-6)
    # the bounding-box crop changes nothing against the full frame
    full = segment_features(np.where(cand > 0, 1, 255).astype(np.uint8), probs, maps, None, void=255)
    cols = [c for c in feats.columns if c != "candidate_id"]
    pd.testing.assert_frame_equal(feats[cols].reset_index(drop=True), full[cols].reset_index(drop=True),
                                  rtol=1e-12, check_dtype=False)


def test_no_candidate_gives_empty_tables(world):
    label, score, probs, maps = world["f00"]
    cand, table = ood_meta.frame_candidates(score, label, 0.999, probs, maps, track="obstacle")
    assert not cand.any() and len(table) == 0
    assert {"ppv", "fp", "S", "E_mean", "pgn_last_uni_p0_5_var", "cprob_2"} <= set(table.columns)


@pytest.mark.parametrize("float16", [True, False])
def test_candidate_map_evaluates_like_the_thresholded_score(world, float16):
    for label, score, _, _ in world.values():
        cand, _ = ood_meta.extract_candidates(score, label, 0.5, min_pred_size=50, float16=float16)
        a = ood_meta.mask_components(cand > 0, label, track="obstacle")
        b = frame_components(score, label, 0.5, track="obstacle", float16=float16)
        for attr in ("sIoU_gt", "PPV", "sIoU_pred", "size_gt", "size_pred"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))


# ------------------------------------------------------------------------------------------------
# A dataset


def loader(world):
    def load(fid):
        label, _, probs, maps = world[fid]
        return label, probs, maps
    return load


@pytest.fixture(scope="module")
def evaluated(world):
    settings = ood_meta.OoDMetaSettings(scores=("V", "pgn_last_uni_p0_5"), feature_sets=("softmax", "pgn"),
                                        n_runs=3, test_size=0.5, seed=4)
    return settings, ood_meta.evaluate_dataset(list(world), loader(world), "obstacle", settings)


def test_no_frame_on_both_sides_and_thresholds_from_fitting_frames(world, evaluated):
    settings, res = evaluated
    info = res["info"]
    assert len(info["splits"]) == 3
    for r, split in enumerate(info["splits"]):
        fit, ev = set(split["fit"]), set(split["eval"])
        assert not fit & ev and fit | ev == set(world) and len(ev) == 6
        cands = res["candidates"]
        for m in settings.scores:
            sub = cands[(cands["score"] == m) & (cands["run"] == r)]
            assert set(sub.loc[sub["part"] == "fit", "frame_id"]) <= fit
            assert set(sub.loc[sub["part"] == "eval", "frame_id"]) <= ev
            preds = res["predictions"]
            assert set(preds.loc[(preds["score"] == m) & (preds["run"] == r), "frame_id"]) <= ev
            # the threshold is PixelOoDMetrics' best-F1 threshold of the fitting frames
            top = max(world[f][3][m].max() for f in world)
            pm = PixelOoDMetrics("smiyc")
            for f in split["fit"]:
                pm.update(world[f][3][m] * (1.0 / top), world[f][0], f)
            assert info["thresholds"][m][r] == pm.compute()["best_F1_threshold_smiyc"]
            pm = PixelOoDMetrics("smiyc")
            for f in split["eval"]:
                pm.update(world[f][3][m] * (1.0 / top), world[f][0], f)
            assert info["benchmark_thresholds"][m][r] == pm.compute()["best_F1_threshold_smiyc"]
    # the splits are those of GroupShuffleSplit by frame with seed + r
    from sklearn.model_selection import GroupShuffleSplit

    ids = np.array(list(world))
    for r, split in enumerate(info["splits"]):
        fit, ev = next(GroupShuffleSplit(n_splits=1, test_size=0.5, random_state=4 + r).split(ids, groups=ids))
        assert split["fit"] == ids[fit].tolist() and split["eval"] == ids[ev].tolist()


def test_post_processed_metrics_recomputed_from_the_kept_components(world, evaluated):
    settings, res = evaluated
    results, preds, info = res["results"], res["predictions"], res["info"]
    after = results[results["variant"] == "after"]
    assert len(after) == 2 * 3 * 2  # scores × runs × feature sets
    checked_removal = 0
    for m in settings.scores:
        top = max(world[f][3][m].max() for f in world)
        for r, split in enumerate(info["splits"]):
            thr = info["thresholds"][m][r]
            comps = {f: brute_candidates(world[f][3][m] * (1.0 / top), world[f][0], thr, 50, True) for f in split["eval"]}
            before = brute_metrics([(_mask(comps[f]), world[f][0]) for f in split["eval"]], 50, 10)
            row = results[(results["score"] == m) & (results["run"] == r) & (results["variant"] == "before")].iloc[0]
            assert row["n_candidates"] == sum(len(c) for c in comps.values())
            _same(row, before)
            for fs in settings.feature_sets:
                for model in settings.models:
                    p = preds[(preds["score"] == m) & (preds["run"] == r) & (preds["feature_set"] == fs)
                              & (preds["model"] == model)]
                    kept = []
                    for f in split["eval"]:
                        gone = set(p.loc[(p["frame_id"] == f) & p["removed"], "candidate_id"])
                        kept.append((_mask([c for k, c in enumerate(comps[f], 1) if k not in gone]), world[f][0]))
                    ref = brute_metrics(kept, 50, 10)
                    row = after[(after["score"] == m) & (after["run"] == r) & (after["feature_set"] == fs)
                                & (after["model"] == model)].iloc[0]
                    _same(row, ref)
                    assert row["n_removed"] == int(p["removed"].sum())
                    assert (p["removed"] == (p["p_fp"] > 0.5)).all()
                    assert row["F1_mean_gain"] == pytest.approx(ref["F1"] - before["F1"], abs=1e-12)
                    checked_removal += int(p["removed"].sum())
    assert checked_removal > 0  # the classifiers did remove candidates


def _mask(comps):
    mask = np.zeros((H, W), bool)
    for c in comps:
        for p in c:
            mask[p] = True
    return mask


def _same(row, ref):
    assert row["sIoU_gt_smiyc"] == pytest.approx(ref["sIoU"], rel=1e-12)
    assert row["PPV_smiyc"] == pytest.approx(ref["PPV"], rel=1e-12, abs=1e-15)
    assert row["F1_mean_smiyc"] == pytest.approx(ref["F1"], rel=1e-12, abs=1e-15)
    assert (row["n_gt"], row["n_pred"]) == (ref["n_gt"], ref["n_pred"])


def test_the_pgn_features_find_the_false_positives_of_this_world(evaluated):
    # PGN is high on the true objects only; the softmax maps carry no signal here
    after = evaluated[1]["results"].query("variant == 'after' and score == 'V'")
    assert after["auroc"].notna().all() and after["auroc"].between(0, 1).all()
    by = after.groupby("feature_set")["auroc"].mean()
    assert by["pgn"] > 0.9 and by["softmax"] < 0.7
    gain = after.groupby("feature_set")["F1_mean_gain"].mean()
    assert gain["pgn"] > 0.1


@pytest.mark.parametrize("model", ["linear", "gbt", "mlp"])
def test_models_are_selectable_and_equal_to_plain_sklearn(world, model):
    settings = ood_meta.OoDMetaSettings(scores=("V",), feature_sets=("pgn",), models=(model,), n_runs=1, seed=2)
    res = ood_meta.evaluate_dataset(list(world), loader(world), "obstacle", settings)
    preds, info = res["predictions"], res["info"]
    # refit here from features recomputed frame by frame with the run's threshold
    top = max(world[f][3]["V"].max() for f in world)
    tables = {}
    for f in world:
        label, _, probs, maps = world[f]
        _, tables[f] = ood_meta.frame_candidates(maps["V"] * (1.0 / top), label, info["thresholds"]["V"][0], probs,
                                                 maps, track="obstacle")
    fit = pd.concat([tables[f] for f in info["splits"][0]["fit"]])
    fit = fit[fit["counted"]]
    ev = pd.concat([tables[f] for f in info["splits"][0]["eval"]])
    cols = info["feature_columns"]["pgn"]
    assert cols == [c for c in fit.columns if c.startswith("pgn_") or c in ("S", "S_in", "S_bd", "S_rel", "S_rel_in")]
    X, y, Xe = fit[cols].to_numpy(float), fit["fp"].to_numpy(bool), ev[cols].to_numpy(float)
    assert 0 < y.sum() < y.size
    scaler = StandardScaler().fit(X)
    with threadpool_limits(limits=1):  # as the library fits (many OpenMP threads on tiny data are slow)
        ref = _reference_proba(model, X, y, Xe, scaler)
    assert len(preds) == len(ev) and (preds["model"] == model).all()
    assert preds["p_fp"].between(0, 1).all()
    np.testing.assert_allclose(preds["p_fp"].to_numpy(), ref[:, 1], rtol=1e-9, atol=1e-12)
    row = res["results"].query("variant == 'after'").iloc[0]
    assert row["model"] == model and 0 <= row["auroc"] <= 1 and 0 <= row["F1_mean_smiyc"] <= 1


def _reference_proba(model, X, y, Xe, scaler):
    if model == "linear":
        ref = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(X), y).predict_proba(scaler.transform(Xe))
    elif model == "gbt":
        ref = HistGradientBoostingClassifier(**GBT_PARAMS, random_state=2).fit(X, y).predict_proba(Xe)
    else:
        mlp = MLPClassifier(**MLP_PARAMS, random_state=2).fit(scaler.transform(X), y)
        ref = mlp.predict_proba(scaler.transform(Xe))
    return ref


@pytest.mark.parametrize("mode,threshold", [("exact", "best_f1"), ("exact", 0.55), ("smiyc2021", "best_f1")])
def test_other_modes_and_fixed_thresholds(world, mode, threshold):
    settings = ood_meta.OoDMetaSettings(scores=("pgn_last_uni_p0_5",), feature_sets=("pgn",), n_runs=1, seed=1,
                                        mode=mode, threshold=threshold)
    res = ood_meta.evaluate_dataset(list(world), loader(world), "obstacle", settings)
    info, results = res["info"], res["results"]
    split = info["splits"][0]
    top = max(world[f][3]["pgn_last_uni_p0_5"].max() for f in world)
    score = {f: world[f][3]["pgn_last_uni_p0_5"] * (1.0 / top) for f in world}
    pm = PixelOoDMetrics(mode)
    for f in split["fit"]:
        pm.update(score[f], world[f][0], f)
    expected = pm.compute()[f"best_F1_threshold_{mode}"] if threshold == "best_f1" else threshold
    assert info["thresholds"]["pgn_last_uni_p0_5"][0] == expected
    # before = the benchmark's components of the thresholded score (unrounded in exact mode)
    frames = [frame_components(score[f], world[f][0], expected, track="obstacle", float16=mode != "exact")
              for f in split["eval"]]
    from metaseg_pgn.metrics.ood import aggregate_components

    ref = aggregate_components(frames, suffix=mode)
    row = results[results["variant"] == "before"].iloc[0]
    for k in ("sIoU_gt", "PPV", "F1_mean"):
        assert row[f"{k}_{mode}"] == ref[f"{k}_{mode}"]


def test_summary_is_mean_and_std_over_runs(evaluated):
    _, res = evaluated
    results = res["results"]
    summary = ood_meta.summarise(results)
    for _, row in summary.iterrows():
        sel = (results["score"] == row["score"]) & (results["variant"] == row["variant"]) \
            & (results["feature_set"] == row["feature_set"]) & (results["model"] == row["model"])
        v = results.loc[sel, "F1_mean_smiyc"].to_numpy()
        assert row["n_runs"] == len(v) == 3 and row["variant"] in ("before", "after", "benchmark")
        assert row["F1_mean_smiyc_mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert row["F1_mean_smiyc_std"] == pytest.approx(v.std(), rel=1e-9, abs=1e-15)


def test_bad_settings_and_inputs(world):
    with pytest.raises(ValueError, match="ood_meta.models: unknown meta model"):
        ood_meta.OoDMetaSettings(models=("forest",))
    with pytest.raises(ValueError, match="threshold"):
        ood_meta.OoDMetaSettings(threshold=1.5)
    s = ood_meta.OoDMetaSettings(scores=("pgn_last_uni_p2",), n_runs=1)
    with pytest.raises(ValueError, match=r"frame 'f00': ood_meta.scores names \['pgn_last_uni_p2'\]"):
        ood_meta.evaluate_dataset(list(world), loader(world), "obstacle", s)
    s = ood_meta.OoDMetaSettings(scores=("V",), feature_sets=("nonsense",), n_runs=1)
    with pytest.raises(ValueError, match="unknown OoD feature set 'nonsense'"):
        ood_meta.evaluate_dataset(list(world), loader(world), "obstacle", s)


# ------------------------------------------------------------------------------------------------
# The stage on a tiny pipeline run


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory):
    from conftest import tiny_overrides
    from metaseg_pgn import config as config_mod
    from metaseg_pgn.run import run_pipeline

    cfg = config_mod.compose(tiny_overrides(tmp_path_factory.mktemp("ood_meta") / "run", n=2, n_ood=4)
                             + ["stage=[infer,ood_meta,report]"])
    run_pipeline(cfg)
    return cfg


def test_stage_outputs_agree_with_the_library(tiny_stage):
    import json
    from pathlib import Path

    from metaseg_pgn.store import read_record

    run_dir = Path(tiny_stage["run_dir"])
    folder = run_dir / "ood_meta"
    manifest = json.loads((folder / "manifest.json").read_text())
    results = pd.read_csv(folder / "ood_meta_results.csv")
    doc = json.loads((folder / "ood_meta_summary.json").read_text())
    assert sorted(doc["datasets"]) == ["synthetic_anomaly-all", "synthetic_obstacle-all"]
    assert manifest["outputs"]["datasets"] == sorted(doc["datasets"])
    assert set(results["score"]) == {"V", "E", "pgn_last_uni_p0_5"} and set(results["run"]) == {0, 1}
    cands = pd.read_csv(folder / "ood_meta_candidates.csv")
    preds = pd.read_csv(folder / "ood_meta_predictions.csv")
    infer = json.loads((run_dir / "infer" / "manifest.json").read_text())["outputs"]
    for key, info in doc["datasets"].items():
        for r, split in enumerate(info["splits"]):
            assert not set(split["fit"]) & set(split["eval"])
            assert sorted(split["fit"] + split["eval"]) == sorted(infer[key]["frames"])
            c = cands[(cands["dataset"] == key) & (cands["run"] == r)]
            assert set(c.loc[c["part"] == "fit", "frame_id"]) <= set(split["fit"])
            assert set(c.loc[c["part"] == "eval", "frame_id"]) <= set(split["eval"])
            p = preds[(preds["dataset"] == key) & (preds["run"] == r)]
            assert set(p["frame_id"]) <= set(split["eval"])
    # the stage's numbers are the library's on the same records
    key, out = "synthetic_obstacle-all", infer["synthetic_obstacle-all"]

    def load(fid):
        rec = read_record(run_dir / out["records"] / f"{fid}.npz", out["fingerprints"])
        probs = rec.probs()
        return rec.label, probs, rec.pixel_maps(probs)

    settings = ood_meta.OoDMetaSettings.from_config(tiny_stage["ood_meta"], tiny_stage["seed"])
    ref = ood_meta.evaluate_dataset(out["frames"], load, "obstacle", settings)["results"]
    mine = results[results["dataset"] == key].drop(columns=["dataset", "track"]).reset_index(drop=True)
    mine = mine.fillna({"feature_set": "", "model": ""})  # empty strings come back from CSV as missing
    pd.testing.assert_frame_equal(mine.drop(columns="note"), ref.drop(columns="note"), check_dtype=False,
                                  rtol=1e-12)


def test_stage_reruns_only_when_its_configuration_changes(tiny_stage, tmp_path):
    import copy
    import json
    import shutil
    from pathlib import Path

    from metaseg_pgn.run import run_pipeline

    cfg = copy.deepcopy(tiny_stage)  # on a copy of the run: the other tests read the original
    cfg["run_dir"] = str(tmp_path / "run")
    shutil.copytree(tiny_stage["run_dir"], cfg["run_dir"])
    manifest = Path(cfg["run_dir"]) / "ood_meta" / "manifest.json"
    before = manifest.read_text()
    run_pipeline(cfg)
    assert manifest.read_text() == before  # up to date: skipped
    cfg["ood_meta"]["n_runs"] = 1
    cfg["stage"] = "ood_meta"
    run_pipeline(cfg)
    assert json.loads(manifest.read_text())["config"]["ood_meta"]["n_runs"] == 1
    results = pd.read_csv(Path(cfg["run_dir"]) / "ood_meta" / "ood_meta_results.csv")
    assert set(results["run"]) == {0}


def test_stage_errors_name_the_setting(tiny_stage):
    import copy

    from metaseg_pgn import config as config_mod
    from metaseg_pgn.run import run_pipeline
    from metaseg_pgn.stages.common import StageError

    cfg = copy.deepcopy(tiny_stage)
    cfg["stage"] = "ood_meta"
    cfg["ood_meta"]["scores"] = ["pgn_last_uni_p7"]
    with pytest.raises(StageError, match=r"ood_meta: synthetic_\w+-all: none of ood_meta.scores \['pgn_last_uni_p7'\] "
                                         r"is a map of this run \(maps: \['D', 'E', 'V', .*'pgn_last_uni_p0_5'"):
        run_pipeline(cfg)
    with pytest.raises(config_mod.ConfigError, match="ood_meta.models"):
        config_mod.compose(["ood_meta.models=[forest]"])
    with pytest.raises(config_mod.ConfigError, match="ood_meta.threshold"):
        config_mod.compose(["ood_meta.threshold=2"])
    with pytest.raises(config_mod.ConfigError, match="meta.models"):
        config_mod.compose(["meta.models=linear"])


def test_scores_the_run_lacks_are_left_out_with_a_warning(tiny_stage, tmp_path, caplog):
    """A run without p = 0.5 (pgn.ps=[0.1,1]) still runs the default scores it has."""
    import copy
    import json
    import shutil
    from pathlib import Path

    from metaseg_pgn.run import run_pipeline

    cfg = copy.deepcopy(tiny_stage)
    cfg["run_dir"] = str(tmp_path / "run")
    cfg["stage"] = "ood_meta"
    cfg["ood_meta"]["n_runs"] = 1
    cfg["ood_meta"]["scores"] = ["V", "pgn_last_uni_p7"]
    shutil.copytree(tiny_stage["run_dir"], cfg["run_dir"])
    run_pipeline(cfg)
    assert "scores ['pgn_last_uni_p7'] are not among this run's maps" in caplog.text
    doc = json.loads((Path(cfg["run_dir"]) / "ood_meta" / "ood_meta_summary.json").read_text())
    assert {r["score"] for r in doc["summary"]} == {"V"}
    assert all(d["scores_left_out"] == ["pgn_last_uni_p7"] for d in doc["datasets"].values())


def test_report_shows_the_summary_and_a_frame_before_and_after(tiny_stage):
    from pathlib import Path

    run_dir = Path(tiny_stage["run_dir"])
    md = (run_dir / "report" / "report.md").read_text()
    section = md[md.index("## OoD post-processing (Meta-OoD)"):]
    summary = pd.read_csv(run_dir / "ood_meta" / "ood_meta_summary.csv", keep_default_na=False, na_values=[""])
    for key in ("synthetic_obstacle-all", "synthetic_anomaly-all"):
        part = section[section.index(f"### {key}"):]
        rows = [[c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
                for line in part.splitlines() if line.startswith("| ") and "---" not in line][1:16]
        before = summary[(summary["dataset"] == key) & (summary["variant"] == "before")]
        shown = [r for r in rows if r[1] == "before"]
        assert [r[0] for r in shown] == ["max softmax", "entropy", "PGN uniform, p = 0.5"]
        for r, (_, ref) in zip(shown, before.iterrows()):
            for cell, col in zip(r[2:5], ("sIoU_gt", "PPV", "F1_mean")):
                mean, std = (float(x) for x in cell.split(" ± "))
                assert mean == pytest.approx(100 * ref[f"{col}_smiyc_mean"], abs=0.051)
                assert std == pytest.approx(100 * ref[f"{col}_smiyc_std"], abs=0.051)
    figures = [line for line in section.splitlines() if line.startswith("![") and "ood_meta_" in line]
    assert len(figures) == 1
    png = run_dir / "report" / figures[0][figures[0].index("(") + 1:-1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_compares_meta_models_per_feature_set():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_meta import synthetic_table

    from metaseg_pgn import meta
    from metaseg_pgn.report.context import model_comparison, primary_model

    results = meta.evaluate(synthetic_table(n_frames=12), ["entropy", "pgn_oh"], n_runs=2, models=["linear", "gbt"])
    summary = meta.summarise(results)
    model, s1, r1, _ = primary_model(summary, results, None)
    assert model == "linear" and (s1["model"] == "linear").all() and len(r1) == len(results) // 2
    table = model_comparison(summary)
    assert table["models"] == ["linear", "gbt"]
    assert [r["key"] for r in table["rows"]] == ["pgn_oh", "entropy"]  # the paper's order
    for row in table["rows"]:
        for metric in ("auroc", "r2"):
            best = max(range(2), key=lambda k: row[metric][k]["mean"])
            for k, m in enumerate(["linear", "gbt"]):
                ref = summary[(summary["feature_set"] == row["key"]) & (summary["model"] == m)].iloc[0]
                assert row[metric][k]["mean"] == ref[f"{metric}_test_mean"]
                assert row[metric][k]["std"] == ref[f"{metric}_test_std"]
                assert row[metric][k]["best"] == (k == best and row[metric][0]["mean"] != row[metric][1]["mean"])
    # the rendered table: one column per model and metric, the numbers of the summary, the best bold
    from metaseg_pgn.report.render import render_markdown

    md = render_markdown({"comparison": table}, "meta_models.md.j2")
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[0] == "| Feature set | key | AuROC linear (%) | AuROC gbt (%) | R² linear (%) | R² gbt (%) |"
    assert lines[1] == "| --- | --- | ---: | ---: | ---: | ---: |"
    for line, row in zip(lines[2:], table["rows"], strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells[1] == f"`{row['key']}`"
        for cell, v in zip(cells[2:], row["auroc"] + row["r2"], strict=True):
            mean, std = cell.strip("*").split(" ± ")
            assert float(mean) == pytest.approx(100 * v["mean"], abs=0.0051)
            assert float(std) == pytest.approx(100 * v["std"], abs=0.0051)
            assert cell.startswith("**") == v["best"]
    # one model: no comparison table
    assert model_comparison(s1) is None


def test_a_feature_set_without_its_maps_is_named(world):
    def no_pgn(fid):
        label, _, probs, maps = world[fid]
        return label, probs, {k: v for k, v in maps.items() if not k.startswith("pgn_")}

    s = ood_meta.OoDMetaSettings(scores=("V",), feature_sets=("softmax", "pgn"), n_runs=1)
    with pytest.raises(ValueError, match=r"feature set 'pgn' needs columns matching .*pgn_.*map prefixes in the "
                                         r"table: \['E', 'D', 'V'\]"):
        ood_meta.evaluate_dataset(list(world), no_pgn, "obstacle", s)


def _rerecord(run_dir, stage, path):
    """Record ``path``'s new size and hash in the stage's manifest (and its checksum)."""
    import json

    from metaseg_pgn.integrity import files_entry
    from metaseg_pgn.stages.common import _checksum

    manifest_file = run_dir / stage / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["files"].update(files_entry(run_dir, [path]))
    manifest["checksum"] = _checksum(manifest)
    manifest_file.write_text(json.dumps(manifest))


def test_stage_leaves_out_frames_without_label(tiny_stage, tmp_path):
    import copy
    import json
    import shutil
    from pathlib import Path

    from metaseg_pgn.run import run_pipeline
    from metaseg_pgn.store import read_record, write_record

    cfg = copy.deepcopy(tiny_stage)
    cfg["run_dir"] = str(tmp_path / "run")
    cfg["stage"] = "ood_meta"
    cfg["ood_meta"]["n_runs"] = 1
    shutil.copytree(tiny_stage["run_dir"], cfg["run_dir"])
    infer = json.loads((Path(cfg["run_dir"]) / "infer" / "manifest.json").read_text())["outputs"]
    out = infer["synthetic_anomaly-all"]
    first = Path(cfg["run_dir"]) / out["records"] / f"{out['frames'][0]}.npz"
    record = read_record(first)
    record.label = None  # as a benchmark's test frame: scored, never evaluated
    write_record(first, record)
    _rerecord(Path(cfg["run_dir"]), "infer", first)  # as if infer had written it so
    run_pipeline(cfg)
    manifest = json.loads((Path(cfg["run_dir"]) / "ood_meta" / "manifest.json").read_text())
    assert manifest["outputs"]["unlabelled"] == {"synthetic_anomaly-all": 1}
    doc = json.loads((Path(cfg["run_dir"]) / "ood_meta" / "ood_meta_summary.json").read_text())
    split = doc["datasets"]["synthetic_anomaly-all"]["splits"][0]
    assert sorted(split["fit"] + split["eval"]) == sorted(out["frames"][1:])


def test_two_pass_scores_of_large_datasets_give_the_same_results(world, monkeypatch):
    settings = ood_meta.OoDMetaSettings(scores=("V", "pgn_last_uni_p0_5"), feature_sets=("pgn",), n_runs=1, seed=3)
    reads = []

    def counted(fid):
        reads.append(fid)
        return loader(world)(fid)

    one = ood_meta.evaluate_dataset(list(world), counted, "obstacle", settings)
    assert len(reads) == 2 * len(world)  # scores, then candidates
    monkeypatch.setattr(ood_meta.evaluation, "RAW_SCORES_BYTES", 1)  # every dataset is "too large": read twice
    reads.clear()
    two = ood_meta.evaluate_dataset(list(world), counted, "obstacle", settings)
    assert len(reads) == 3 * len(world)  # maxima, scaled scores, candidates
    pd.testing.assert_frame_equal(one["results"], two["results"])
    pd.testing.assert_frame_equal(one["predictions"], two["predictions"])
    assert one["info"] == two["info"]
