"""SMIYC OoD metrics: the benchmark's own outputs, hand-computed components, scikit-learn."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from metaseg_pgn.metrics.ood import (
    MODES,
    VERSIONS,
    ComponentOoDMetrics,
    FrameComponents,
    PixelOoDMetrics,
    aggregate_components,
    evaluate_ood,
    frame_components,
)
from metaseg_pgn.metrics.submission import (
    BENCHMARK_DATASETS,
    BENCHMARK_FOLDER_NAMES,
    BENCHMARK_FOLDERS,
    LAF_SPLIT_FOLDER,
    OUR_DATASETS,
    list_frames,
    read_scores,
    submission_folder,
    submission_path,
    write_scores,
)


from conftest import REFERENCE_DATA

REF = REFERENCE_DATA / "smiyc"


def _ref_frames():
    out = []
    for fid in ("ex1", "ex2"):
        d = np.load(REF / f"{fid}.npz")
        out.append((fid, d["score"], d["label"]))
    return out


# ---------------------------------------------------------------------------- independent
# re-computation of the benchmark's percentile bins and of the spread that the order of tied
# thresholds can cause (the benchmark leaves that order to numpy's unstable argsort)


def _frame_bins_plain(score, label):
    s = score.astype(np.float16).astype(np.float64)
    roi = label != 255
    pos, neg = s[roi & (label == 1)], s[roi & (label == 0)]
    edges = [0.0, 1.0]
    for v in (pos, neg):
        if v.size:
            edges += list(np.quantile(v, np.linspace(0, 1, min(384, v.size))))
    edges = np.unique(edges)
    rows = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        last = i == len(edges) - 2
        in_bin = (lambda v: (v >= lo) & (v <= hi)) if last else (lambda v: (v >= lo) & (v < hi))
        rows.append((lo, int(in_bin(pos).sum()), int(in_bin(neg).sum())))
    return rows, pos.size, neg.size


def _area(points):
    return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(points, points[1:]))


def _tie_envelope(entries, n_pos, n_neg):
    """Min and max of AuPRC and AUROC over every order of equal thresholds."""
    groups: dict[float, list] = {}
    for thr, tp, fp in entries:
        groups.setdefault(thr, []).append((tp, fp))
    lo = np.zeros(2)
    hi = np.zeros(2)
    t_cum = f_cum = 0
    for thr in sorted(groups, reverse=True):
        members = groups[thr]
        assert len(members) <= 3
        areas = []
        for perm in itertools.permutations(members):
            pts = [(t_cum, f_cum)]
            t, f = t_cum, f_cum
            for tp, fp in perm:
                t, f = t + tp, f + fp
                pts.append((t, f))
            pts = [(t, f) for t, f in pts if t + f > 0]  # the benchmark drops empty points
            pr = [(t / n_pos, t / (t + f)) for t, f in pts]
            roc = [(f / n_neg, t / n_pos) for t, f in pts]
            areas.append((_area(pr), _area(roc)))
        areas = np.array(areas)
        lo += areas.min(0)
        hi += areas.max(0)
        t_cum += sum(m[0] for m in members)
        f_cum += sum(m[1] for m in members)
    return lo, hi


# ---------------------------------------------------------------------------- reference


PIX_KEYS = {"AuPRC": "AuPRC", "FPR95": "FPR95", "AUROC": "AUROC", "best_f1": "best_F1",
            "best_f1_threshold": "best_F1_threshold", "tpr95_threshold": "tpr95_threshold"}
SEG_KEYS = {"thresh_p": "threshold", "sIoU_gt": "sIoU_gt", "PPV_prec_pred": "PPV",
            "sIoU_pred": "sIoU_pred", "f1_mean": "F1_mean", "f1_25": "F1_25",
            "f1_50": "F1_50", "f1_75": "F1_75", "tp_mean": "TP_mean",
            "fp_mean": "FP_mean", "fn_mean": "FN_mean"}


def _assert_components_equal_reference(comp, seg, suffix):
    for rk, k in SEG_KEYS.items():
        key = k if k == "threshold" else f"{k}_{suffix}"
        assert comp[key] == seg[rk], rk
    assert len(comp["per_frame"]) == len(seg["per_frame"])
    for got, want in zip(comp["per_frame"], seg["per_frame"]):
        assert got["frame_id"] == want["fid"]
        assert got["sIoU_gt"] == want["sIoU_gt"]
        assert got["PPV"] == want["prec_pred"]
        assert got["size_gt"] == want["size_gt"]
        assert got["size_pred"] == want["size_pred"]


@pytest.mark.parametrize("track", ["obstacle", "anomaly"])
def test_reproduces_benchmark_reference(track):
    """The shared reference JSONs are the benchmark's output before 2023-08-24 (b580f16): mode
    ``smiyc2021`` reproduces them (areas up to the order of tied thresholds)."""
    ref = json.loads((REF / f"ex1_ex2_{track}.json").read_text())
    frames = _ref_frames()
    out = evaluate_ood(frames, track=track, mode="smiyc2021")
    assert out["pixel"]["version"].startswith("SegmentMeIfYouCan road-anomaly-benchmark b580f16")

    # uniform bins (PixBinaryClass-uniThr): no ties between frames, all values exact
    for rk, k in PIX_KEYS.items():
        got = out["pixel_uniform"][f"{k}_smiyc2021_uniform"]
        assert got == ref["PixBinaryClass-uniThr"][rk], rk

    # percentile bins (PixBinaryClass): exact except the areas, which depend on the order of
    # equal thresholds of different frames (numpy's unstable argsort in the benchmark)
    pix, rp = out["pixel"], ref["PixBinaryClass"]
    for rk in ("FPR95", "best_f1", "best_f1_threshold", "tpr95_threshold"):
        assert pix[f"{PIX_KEYS[rk]}_smiyc2021"] == rp[rk], rk
    entries, n_pos, n_neg = [], 0, 0
    for _, score, label in frames:
        rows, p, n = _frame_bins_plain(score, label)
        entries += rows
        n_pos, n_neg = n_pos + p, n_neg + n
    assert (pix["n_pos"], pix["n_neg"]) == (n_pos, n_neg)
    lo, hi = _tie_envelope(entries, n_pos, n_neg)
    stable = PixelOoDMetrics("smiyc2021", tie_order="stable")
    for fid, score, label in frames:
        stable.update(score, label, fid)
    stable = stable.compute()
    for i, name in enumerate(("AuPRC", "AUROC")):
        ours = pix[f"{name}_smiyc2021"]
        assert lo[i] - 1e-12 <= rp[name] <= hi[i] + 1e-12, name
        assert lo[i] - 1e-12 <= ours <= hi[i] + 1e-12, name
        assert lo[i] - 1e-12 <= stable[f"{name}_smiyc2021"] <= hi[i] + 1e-12, name
        assert abs(ours - rp[name]) < 5e-5, name

    # components: everything exact, per frame too
    seg = ref["SegEval-ObstacleTrack" if track == "obstacle" else "SegEval-AnomalyTrack"]
    _assert_components_equal_reference(out["component"], seg, "smiyc2021")


def test_component_threshold_is_compared_in_float16():
    # The benchmark compares its float16 map with the threshold in float16; a float64
    # comparison would add the pixels in (thr, float16(thr)] and change the component sizes.
    ref = json.loads((REF / "ex1_ex2_obstacle.json").read_text())["SegEval-ObstacleTrack"]
    fid, score, label = _ref_frames()[0]
    s16 = score.astype(np.float16)
    thr = ref["thresh_p"]
    between = (s16.astype(np.float64) > thr) & (s16 <= np.float16(thr)) & (label != 255)
    assert between.any()
    wide = frame_components(s16.astype(np.float64), label, thr, track="obstacle", float16=False)
    assert wide.size_pred.tolist() != ref["per_frame"][0]["size_pred"]


# ---------------------------------------------------------------------------- the two versions
# "smiyc" = the benchmark's pixel metrics now (HEAD 1c7804e), "smiyc2021" = before 2023-08-24
# (b580f16). The expected values below are derived by hand (in the comments) or by
# _smiyc_now_independent, a direct transcription of docs/design.md §6a items 1-4 that bins each pixel
# with searchsorted and counts every curve point from scratch (no histogram, no cumsum, no
# shared code with metaseg_pgn.metrics.ood).


def _smiyc_now_independent(frames, binning="percentiles"):
    lower_pos, lower_neg, thresholds, n_pos, n_neg = [], [], set(), 0, 0
    for _, score, label in frames:
        s = np.asarray(score).astype(np.float16).astype(np.float64)
        roi = label != 255
        pos, neg = s[roi & (label == 1)], s[roi & (label == 0)]
        n_pos, n_neg = n_pos + pos.size, n_neg + neg.size
        if binning == "percentiles":
            if not roi.any():
                continue
            vmin, vmax = s[roi].min(), s[roi].max()
            eps = max(0.01 * (vmax - vmin), 0.01)  # docs/design.md §6a item 1
            edges = {vmin - eps, vmax + eps}
            for v in (pos, neg):
                if v.size:
                    edges |= set(np.quantile(v, np.linspace(0, 1, min(384, v.size))).tolist())
            edges = np.array(sorted(edges))
        else:
            edges = np.linspace(-0.01, 1.01, 4097)
        thresholds |= set(edges[:-1].tolist())
        for v, out in ((pos, lower_pos), (neg, lower_neg)):
            v = v[(v >= edges[0]) & (v <= edges[-1])]
            idx = np.minimum(np.searchsorted(edges, v, side="right") - 1, edges.size - 2)
            out.extend(edges[idx].tolist())
    lp, ln = np.array(lower_pos), np.array(lower_neg)
    thr = sorted(thresholds, reverse=True)
    # item 2: one point per distinct threshold, counting every pixel whose bin starts at or above
    pts = [(int(np.sum(lp >= t)), int(np.sum(ln >= t))) for t in thr]
    if pts[0] != (0, 0):  # item 3
        pts, thr = [(0, 0)] + pts, [max(thr) + 1] + thr
    if pts[-1] != (n_pos, n_neg):
        pts, thr = pts + [(n_pos, n_neg)], thr + [max(thr) - 1]
    tpr = [tp / n_pos for tp, _ in pts]
    fpr = [fp / n_neg for _, fp in pts]
    prec = [tp / (tp + fp) if tp + fp else 1.0 for tp, fp in pts]
    f1 = [2 * tp / (tp + fp + n_pos) for tp, fp in pts]
    i95 = next(k for k, r in enumerate(tpr) if r >= 0.95)
    best = f1.index(max(f1))
    return {
        "AuPRC": sum((tpr[k] - tpr[k - 1]) * prec[k] for k in range(1, len(pts))),  # item 4
        "AUROC": sum((fpr[k] - fpr[k - 1]) * (tpr[k] + tpr[k - 1]) / 2 for k in range(1, len(pts))),
        "FPR95": fpr[i95], "tpr95_threshold": thr[i95],
        "best_F1": f1[best], "best_F1_threshold": thr[best],
    }


def _pixel(mode, frames, **kw):
    m = PixelOoDMetrics(mode, **kw)
    for fid, s, l in frames:
        m.update(s, l, fid)
    return m.compute()


def _assert_matches_independent(out, want, suffix):
    for k, v in want.items():
        assert out[f"{k}_{suffix}"] == pytest.approx(v, rel=0, abs=1e-12), k


@pytest.mark.parametrize("track", ["obstacle", "anomaly"])
def test_current_version_on_reference_frames(track):
    """``smiyc`` on the reference frames: pixel metrics equal the independent transcription of
    §6a; the components, computed identically in both versions, equal the benchmark's JSON
    because the best-F1 threshold happens to be the same in both versions on these frames."""
    frames = _ref_frames()
    out = evaluate_ood(frames, track=track, mode="smiyc")
    assert out["pixel"]["version"] == VERSIONS["smiyc"]
    assert "1c7804e" in VERSIONS["smiyc"] and "b580f16" in VERSIONS["smiyc2021"]
    _assert_matches_independent(out["pixel"], _smiyc_now_independent(frames), "smiyc")
    _assert_matches_independent(out["pixel_uniform"], _smiyc_now_independent(frames, "uniform"),
                                "smiyc_uniform")
    ref = json.loads((REF / f"ex1_ex2_{track}.json").read_text())
    assert out["pixel"]["best_F1_threshold_smiyc"] == ref["PixBinaryClass"]["best_f1_threshold"]
    seg = ref["SegEval-ObstacleTrack" if track == "obstacle" else "SegEval-AnomalyTrack"]
    _assert_components_equal_reference(out["component"], seg, "smiyc")


def test_perfect_binary_score_separates_the_versions():
    """Score 1 on every anomaly pixel, 0 elsewhere.

    Now: edges {-0.01, 0, 1, 1.01}, points (0, 0) [prepended], (P, 0) at t = 1, (P, N) at t = 0:
    AuPRC = 1 · 1 = 1, FPR95 = 0 (TPR 1 already at t = 1), AUROC = 1, best F1 = 1 at t = 1.
    2021, one frame: edges {0, 1}, a single bin [0, 1] holding everything: one point (P, N),
    trapezoid over one point = 0, FPR95 = 1.0. Two frames: two tied points at t = 0, each
    frame's (P_f, N_f) with the same precision p = P/(P+N): AuPRC = (1 - 1/2) · p.
    """
    label = np.zeros((8, 10), np.uint8)
    label[2:5, 3:7] = 1          # P = 12 per frame
    label[0, :] = 255            # N = 8·10 - 10 - 12 = 58 per frame
    score = (label == 1).astype(np.float64)
    one = [("a", score, label)]
    two = one + [("b", score, label)]
    for frames in (one, two):
        now = _pixel("smiyc", frames)
        assert (now["AuPRC_smiyc"], now["FPR95_smiyc"], now["AUROC_smiyc"]) == (1.0, 0.0, 1.0)
        assert (now["best_F1_smiyc"], now["best_F1_threshold_smiyc"]) == (1.0, 1.0)
        uni = _pixel("smiyc", frames, binning="uniform")
        assert (uni["AuPRC_smiyc_uniform"], uni["FPR95_smiyc_uniform"]) == (1.0, 0.0)
    old = _pixel("smiyc2021", one)
    assert (old["AuPRC_smiyc2021"], old["FPR95_smiyc2021"]) == (0.0, 1.0)
    old2 = _pixel("smiyc2021", two)
    assert old2["AuPRC_smiyc2021"] == pytest.approx(0.5 * 12 / 70, abs=1e-15)
    assert old2["FPR95_smiyc2021"] == 1.0


def test_ties_across_frames_hand_computed():
    """Saturated scores in {0, 1}, two frames (row 0: positives, row 1: negatives).

    Frame a: positives 1, 1; negatives 1, 0.   Frame b: positive 1; negatives 1, 1, 0.
    P = 3, N = 5. Both frames have edges {-0.01, 0, 1, 1.01}: bins at t = 1 hold a: (2, 1),
    b: (1, 2); at t = 0: a: (0, 1), b: (0, 1); at t = -0.01 nothing.

    Now: collapsed points (0, 0), (3, 3) at t = 1, (3, 5) at t = 0 (and t = -0.01):
    AuPRC = 1 · 3/6 = 0.5; FPR95 = 3/5; AUROC = 0.6 · 1/2 + 0.4 · 1 = 0.7; best F1 = 6/9 at t = 1;
    the same for either frame order.
    2021: edges {0, 1}, one bin [0, 1] per frame at t = 0, the tie decides the curve:
    a first: (2, 2), (3, 5): AuPRC = (1 - 2/3) · (1/2 + 3/8)/2 = 7/48;
    b first: (1, 3), (3, 5): AuPRC = (1 - 1/3) · (1/4 + 3/8)/2 = 10/48.
    """
    a = ("a", np.array([[1.0, 1.0], [1.0, 0.0]]), np.array([[1, 1], [0, 0]], np.uint8))
    b = ("b", np.array([[1.0, 0.5, 0.5], [1.0, 1.0, 0.0]]),
         np.array([[1, 255, 255], [0, 0, 0]], np.uint8))
    for frames in ([a, b], [b, a]):
        now = _pixel("smiyc", frames)
        assert now["AuPRC_smiyc"] == 0.5
        assert now["FPR95_smiyc"] == 0.6
        assert now["AUROC_smiyc"] == pytest.approx(0.7, abs=1e-15)
        assert now["best_F1_smiyc"] == pytest.approx(2 / 3, abs=1e-15)
        assert now["best_F1_threshold_smiyc"] == 1.0
        _assert_matches_independent(now, _smiyc_now_independent(frames), "smiyc")
    first_a = _pixel("smiyc2021", [a, b], tie_order="stable")
    first_b = _pixel("smiyc2021", [b, a], tie_order="stable")
    assert first_a["AuPRC_smiyc2021"] == pytest.approx(7 / 48, abs=1e-15)
    assert first_b["AuPRC_smiyc2021"] == pytest.approx(10 / 48, abs=1e-15)
    assert first_a["FPR95_smiyc2021"] == first_b["FPR95_smiyc2021"] == 1.0


def _saturated_split(seed, n=6, shape=(12, 16)):
    """Frames whose scores pile up at float16 1.0 (and at 0) in both classes, the kind of map
    where the versions and the tie orders differ most."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        label = (rng.random(shape) < 0.25).astype(np.uint8)
        label[rng.random(shape) < 0.1] = 255
        raw = rng.normal(0.8 * (label == 1) + 0.3, 0.4)
        score = np.clip(raw, 0.0, 0.99997)  # > 0.99976 rounds to 1.0 in float16
        score[rng.random(shape) < 0.2] = 0.5  # a level shared by all frames
        frames.append((f"f{i}", score, label))
    return frames


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saturated_scores_current_version_against_independent(seed):
    frames = _saturated_split(seed)
    s16 = np.concatenate([s.astype(np.float16)[l != 255] for _, s, l in frames])
    assert np.mean(s16 == 1.0) > 0.05 and np.mean(s16 == 0.0) > 0.05  # saturated indeed
    for binning, suffix in (("percentiles", "smiyc"), ("uniform", "smiyc_uniform")):
        got = _pixel("smiyc", frames, binning=binning)
        _assert_matches_independent(got, _smiyc_now_independent(frames, binning), suffix)
    # the 2021 version is order dependent on the same frames, the current one is not
    olds = {_pixel("smiyc2021", frames[::k], tie_order="stable")["AuPRC_smiyc2021"] for k in (1, -1)}
    assert len(olds) == 2


@pytest.mark.parametrize("mode", ["smiyc", "exact"])
def test_current_version_is_invariant_to_frame_order(mode):
    frames = _saturated_split(7, n=8) + _random_split(8, n=3, shape=(12, 16))
    base = evaluate_ood(frames, track="obstacle", mode=mode)
    perm = np.random.default_rng(0).permutation(len(frames))
    shuffled = evaluate_ood([frames[i] for i in perm], track="obstacle", mode=mode)
    for key in ("pixel", "pixel_uniform"):
        assert shuffled.get(key) == base.get(key)
    comp = {k: v for k, v in base["component"].items() if k != "per_frame"}
    assert {k: v for k, v in shuffled["component"].items() if k != "per_frame"} == pytest.approx(comp)


# ---------------------------------------------------------------------------- components


def _pred_map(shape, boxes):
    s = np.zeros(shape)
    for r0, r1, c0, c1 in boxes:
        s[r0:r1 + 1, c0:c1 + 1] = 1.0
    return s


def test_components_touching_and_8_connectivity():
    label = np.zeros((10, 12), np.uint8)
    label[1:4, 1:4] = 1  # gt A, 9 px
    label[1:4, 5:8] = 1  # gt B, 9 px (column 4 in between)
    score = _pred_map(label.shape, [(2, 3, 2, 6), (7, 8, 9, 10)])
    score[1, 1] = 1.0    # diagonal neighbour of (2, 2): same component under 8-connectivity
    fc = frame_components(score, label, 0.5, min_pred_size=1, min_gt_size=1)
    # P1 = 11 px covering 5 px of A and 4 of B; P2 = 4 px elsewhere.
    # sIoU(A) = 5 / (9 + 11 - 5 - 4);  sIoU(B) = 4 / (9 + 11 - 4 - 5)
    np.testing.assert_allclose(fc.sIoU_gt, [5 / 11, 4 / 11], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fc.PPV, [9 / 11, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fc.sIoU_pred, [9 / 20, 0.0], rtol=0, atol=1e-15)
    assert fc.size_gt.tolist() == [9, 9] and fc.size_pred.tolist() == [11, 4]


def test_void_splits_predictions_and_is_not_counted():
    label = np.zeros((6, 10), np.uint8)
    label[1:5, 1:3] = 1     # gt C, 8 px
    label[:, 4] = 255       # void column through the prediction
    score = _pred_map(label.shape, [(1, 4, 1, 7)])
    fc = frame_components(score, label, 0.5, min_pred_size=1, min_gt_size=1)
    # two predicted components of 12 px; without the void it would be one of 28 px (8/28)
    np.testing.assert_allclose(fc.sIoU_gt, [8 / 12], atol=1e-15)
    np.testing.assert_allclose(fc.PPV, [8 / 12, 0.0], atol=1e-15)
    assert fc.size_pred.tolist() == [12, 12]


def test_size_filters_of_the_obstacle_track():
    label = np.zeros((30, 30), np.uint8)
    label[2:4, 2:7] = 1       # gt E: 10 px, kept (>= 10)
    label[20:23, 20:23] = 1   # gt D: 9 px, made void (< 10)
    score = _pred_map(label.shape, [
        (1, 5, 1, 10),        # 50 px, kept, covers E
        (10, 16, 12, 18),     # 49 px, removed (< 50)
        (18, 27, 22, 26),     # 50 px, kept; 3 of its pixels lie on D (void now)
    ])
    fc = frame_components(score, label, 0.5, track="obstacle")
    np.testing.assert_allclose(fc.sIoU_gt, [10 / 50], atol=1e-15)
    np.testing.assert_allclose(fc.PPV, [10 / 50, 0.0], atol=1e-15)
    assert fc.size_gt.tolist() == [10]
    assert fc.size_pred.tolist() == [50, 47]
    # the anomaly track (500 / 100 px) filters everything here
    fa = frame_components(score, label, 0.5, track="anomaly")
    assert fa.sIoU_gt.size == 0 and fa.PPV.size == 0


def test_strict_threshold_and_float16_rounding_of_threshold():
    label = np.zeros((12, 12), np.uint8)
    label[2:8, 2:8] = 1
    score = np.zeros((12, 12))
    score[2:8, 2:8] = 0.5
    assert frame_components(score, label, 0.5, min_pred_size=1, min_gt_size=1).PPV.size == 0
    assert frame_components(score, label, 0.49, min_pred_size=1, min_gt_size=1).PPV.size == 1
    thr = 0.5954749204471279          # float16(thr) = 0.595703125
    score[2:8, 2:8] = 0.595703125     # > thr, but not > float16(thr)
    kw = dict(min_pred_size=1, min_gt_size=1)
    assert frame_components(score, label, thr, float16=True, **kw).PPV.size == 0
    assert frame_components(score, label, thr, float16=False, **kw).PPV.size == 1


def _fc(fid, siou, ppv):
    siou, ppv = np.array(siou, float), np.array(ppv, float)
    return FrameComponents(fid, siou, ppv, np.zeros(ppv.size), np.ones(siou.size, int),
                           np.ones(ppv.size, int))


def test_f1_aggregation_hand_computed():
    frames = [_fc("a", [0.33, 0.8], [0.2, 1.0]), _fc("b", [0.62], [0.47, 0.9, 0.1])]
    out = aggregate_components(frames, suffix="exact")
    # F1(t) for t = .25 ... .75, worked out by hand from TP = #sIoU >= t, FP = #PPV < t
    f1 = [0.75, 0.75, 4 / 7, 4 / 7, 4 / 7, 0.5, 0.5, 0.5, 2 / 7, 2 / 7, 2 / 7]
    assert out["F1_mean_exact"] == pytest.approx(39 / 77, abs=1e-15)
    assert [out[f"F1_{k}_exact"] for k in range(25, 80, 5)] == pytest.approx(f1, abs=1e-15)
    assert out["TP_mean_exact"] == pytest.approx(21 / 11)
    assert out["FP_mean_exact"] == pytest.approx(28 / 11)
    assert out["FN_mean_exact"] == pytest.approx(12 / 11)
    assert out["sIoU_gt_exact"] == pytest.approx(1.75 / 3)   # pooled over components
    assert out["PPV_exact"] == pytest.approx(2.67 / 5)       # not mean of per-frame means
    assert (out["n_gt"], out["n_pred"]) == (3, 5)


def test_split_without_prediction_and_without_gt():
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 1
    m = ComponentOoDMetrics("obstacle", threshold=0.5, mode="exact")
    m.update(np.zeros((20, 20)), label, "f")          # nothing predicted
    m.update(np.zeros((20, 20)), np.zeros((20, 20), np.uint8), "no-anomaly")
    out = m.compute()
    assert out["PPV_exact"] == 0.0 and out["sIoU_pred_exact"] == 0.0
    assert out["sIoU_gt_exact"] == 0.0 and out["F1_mean_exact"] == 0.0 and out["n_pred"] == 0
    m2 = ComponentOoDMetrics("anomaly", threshold=0.5)
    m2.update(np.ones((20, 20)), np.zeros((20, 20), np.uint8), "x")
    with pytest.raises(ValueError, match="no ground-truth anomaly component"):
        m2.compute()


# ---------------------------------------------------------------------------- exact mode


def _random_split(seed, n=3, shape=(20, 30)):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        label = (rng.random(shape) < 0.2).astype(np.uint8)
        label[rng.random(shape) < 0.1] = 255
        label[2:8, 3:9] = 1  # one object of 36 px besides the scattered pixels
        score = np.round(0.5 * rng.random(shape) + 0.4 * (label == 1), 2)  # ties
        frames.append((f"f{i}", score, label))
    return frames


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_mode_against_sklearn(seed):
    frames = _random_split(seed)
    m = PixelOoDMetrics("exact")
    for fid, s, l in frames:
        m.update(s, l, fid)
    out = m.compute()
    y = np.concatenate([l[l != 255] for _, _, l in frames]).astype(int)
    s = np.concatenate([s[l != 255] for _, s, l in frames])
    assert out["AP_exact"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert out["AUROC_exact"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    i = int(np.argmax(tpr >= 0.95))
    assert out["FPR95_exact"] == pytest.approx(fpr[i], abs=1e-15)
    assert out["tpr95_threshold_exact"] == thr[i]
    # best F1 by brute force over every distinct threshold (score >= t)
    best = max((2 * np.sum((s >= t) & (y == 1)) / (np.sum(s >= t) + np.sum(y == 1)), -t)
               for t in np.unique(s))
    assert out["best_F1_exact"] == pytest.approx(best[0], abs=1e-15)
    assert out["best_F1_threshold_exact"] == -best[1]
    assert "AuPRC_smiyc" not in out and out["mode"] == "exact"


def test_modes_differ_only_by_binning_float16_and_area_formula():
    rng = np.random.default_rng(4)
    label = (rng.random((30, 40)) < 0.3).astype(np.uint8)
    label[:3] = 255
    score = np.round(0.02 + 0.9 * rng.random((30, 40)) * (0.6 + 0.4 * label), 3)  # in (0, 1)
    old = PixelOoDMetrics("smiyc2021", binning="unique", float16=False)
    now = PixelOoDMetrics("smiyc", binning="unique", float16=False)
    exact = PixelOoDMetrics("exact")
    for m in (old, now, exact):
        m.update(score, label, "f")
    cs, ce = old.curve(), exact.curve()
    # the 2021 curve has one extra point for the empty bin [0, min score): same counts
    keep = np.r_[True, (np.diff(cs.tp) != 0) | (np.diff(cs.fp) != 0)]
    np.testing.assert_array_equal(cs.thresholds[keep], ce.thresholds)
    np.testing.assert_array_equal(cs.tp[keep], ce.tp)
    np.testing.assert_array_equal(cs.fp[keep], ce.fp)
    # on the same points, the remaining difference is trapezoid (2021) vs step sum (AP)
    rec, prec = ce.tp / ce.n_pos, ce.tp / (ce.tp + ce.fp)
    trap = sum((rec[i] - rec[i - 1]) * (prec[i] + prec[i - 1]) / 2 for i in range(1, rec.size))
    step = rec[0] * prec[0] + sum((rec[i] - rec[i - 1]) * prec[i] for i in range(1, rec.size))
    out_s, out_e, out_n = old.compute(), exact.compute(), now.compute()
    assert out_s["AuPRC_smiyc2021_unique"] == pytest.approx(trap, abs=1e-12)
    assert out_e["AP_exact"] == pytest.approx(step, abs=1e-12)
    assert out_s["FPR95_smiyc2021_unique"] == out_e["FPR95_exact"]
    assert out_s["best_F1_smiyc2021_unique"] == out_e["best_F1_exact"]
    # the current version's step sum with its (0, 0) end point is average precision: without
    # binning it equals scikit-learn's AP and ROC AUC
    y, v = (label[label != 255] == 1).astype(int), score[label != 255]
    assert out_n["AuPRC_smiyc_unique"] == pytest.approx(average_precision_score(y, v), abs=1e-12)
    assert out_n["AUROC_smiyc_unique"] == pytest.approx(roc_auc_score(y, v), abs=1e-12)
    assert out_n["FPR95_smiyc_unique"] == out_e["FPR95_exact"]
    # float16: smiyc with rounding equals exact on the rounded map
    s16 = PixelOoDMetrics("smiyc2021", binning="unique", float16=True)
    e16 = PixelOoDMetrics("exact")
    s16.update(score, label, "f")
    e16.update(score.astype(np.float16), label, "f")
    assert s16.compute()["FPR95_smiyc2021_unique"] == e16.compute()["FPR95_exact"]
    c16 = s16.curve()
    keep = np.r_[True, (np.diff(c16.tp) != 0) | (np.diff(c16.fp) != 0)]
    np.testing.assert_array_equal(c16.tp[keep], e16.curve().tp)


def test_exact_components_skip_float16():
    frames = _random_split(2, n=2, shape=(40, 40))
    a = evaluate_ood(frames, track="obstacle", mode="exact")
    assert a["component"]["mode"] == "exact" and "F1_mean_exact" in a["component"]
    assert a["component"]["threshold"] == a["pixel"]["best_F1_threshold_exact"]
    assert "pixel_uniform" not in a


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_frame():
    s, l = np.zeros((4, 5)), np.zeros((4, 5), np.uint8)
    bad_label = l.copy()
    bad_label[0, 0] = 2
    for mode in MODES:
        m = PixelOoDMetrics(mode)
        with pytest.raises(ValueError, match=r"'fr-7'.*\[2\]"):
            m.update(s, bad_label, "fr-7")
        with pytest.raises(ValueError, match=r"'fr-8'.*shape"):
            m.update(np.zeros((4, 6)), l, "fr-8")
        nan = s.copy()
        nan[1, 1] = np.nan
        with pytest.raises(ValueError, match=r"'fr-9'.*NaN"):
            m.update(nan, l, "fr-9")
    with pytest.raises(ValueError, match=r"'big'.*float16"):
        PixelOoDMetrics("smiyc").update(np.full((4, 5), 1e6), l, "big")
    with pytest.raises(ValueError, match="'x'.*NaN"):
        ComponentOoDMetrics("obstacle", 0.5).update(np.full((4, 5), np.inf), l, "x")
    with pytest.raises(ValueError, match="mode"):
        PixelOoDMetrics("SMIYC")
    with pytest.raises(ValueError, match="track"):
        ComponentOoDMetrics("road", 0.5)


def test_split_without_positives_or_negatives_is_an_error():
    for mode in MODES:
        m = PixelOoDMetrics(mode)
        m.update(np.random.default_rng(0).random((4, 5)), np.zeros((4, 5), np.uint8), "a")
        with pytest.raises(ValueError, match="no anomaly"):
            m.compute()
        m = PixelOoDMetrics(mode)
        m.update(np.random.default_rng(0).random((4, 5)), np.ones((4, 5), np.uint8), "a")
        with pytest.raises(ValueError, match="no in-distribution"):
            m.compute()
    with pytest.raises(ValueError, match="no frame"):
        PixelOoDMetrics().compute()


def test_frame_without_anomaly_is_fine():
    frames = _random_split(3, n=2)
    empty = np.zeros((20, 30), np.uint8)
    frames.append(("empty", np.random.default_rng(1).random((20, 30)), empty))
    out = evaluate_ood(frames, track="obstacle")
    assert 0 < out["pixel"]["AuPRC_smiyc"] < 1
    assert out["component"]["per_frame"][-1]["sIoU_gt"] == []


# ---------------------------------------------------------------------------- submission


def test_submission_roundtrip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    score = rng.random((6, 9)).astype(np.float32)
    p = write_scores(tmp_path, "pgn", "RoadObstacle21", "city/frame_01", score)
    assert p == tmp_path / "anomaly_p" / "pgn" / "RoadObstacle21" / "city" / "frame_01.hdf5"
    assert p == submission_path(tmp_path, "pgn", "RoadObstacle21", "city/frame_01")
    got = read_scores(tmp_path, "pgn", "RoadObstacle21", "city/frame_01")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, score.astype(np.float16))
    assert list_frames(tmp_path, "pgn", "RoadObstacle21") == ["city/frame_01"]
    assert sorted(x.name for x in p.parent.iterdir()) == ["frame_01.hdf5"]  # no temp file left
    with h5py.File(p, "r") as f:  # the benchmark's dataset name and dtype
        assert f["value"].dtype == np.float16 and f["value"].shape == (6, 9)


def test_submission_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'f1'.*NaN"):
        write_scores(tmp_path, "m", "s", "f1", np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="'f2'.*float16"):
        write_scores(tmp_path, "m", "s", "f2", np.full((2, 2), 1e6))
    with pytest.raises(ValueError, match="frame_id"):
        write_scores(tmp_path, "m", "s", "../evil", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="method"):
        write_scores(tmp_path, "a/b", "s", "f", np.zeros((2, 2)))
    with pytest.raises(FileNotFoundError, match="missing"):
        read_scores(tmp_path, "m", "s", "missing")
    assert not (tmp_path / "anomaly_p" / "m" / "s").exists() or not list(
        (tmp_path / "anomaly_p" / "m" / "s").iterdir()
    )


def test_evaluate_ood_needs_two_passes():
    frames = _random_split(5, n=2)
    with pytest.raises(TypeError, match="twice"):
        evaluate_ood(iter(frames), track="obstacle")
    a = evaluate_ood(lambda: iter(frames), track="obstacle")
    b = evaluate_ood(frames, track="obstacle")
    assert a == b


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _benchmark_layouts(root: Path) -> dict:
    """Tiny copies of the four datasets in the benchmark's layouts, both tracks."""
    from PIL import features

    rgb, lab = np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8)
    ra, ro, laf, fishy = (root / n for n in ("dataset_AnomalyTrack", "dataset_ObstacleTrack",
                                             "dataset_LostAndFound", "dataset_FishyLAF"))
    for fid in ("validation0000", "cow0001"):
        _png(ra / "images" / f"{fid}.jpg", rgb)
        _png(ra / "labels_masks" / f"{fid}_labels_semantic.png", lab)
    ext = "webp" if features.check("webp") else None
    if ext:
        for fid in ("validation_1", "gravel_boot_1", "driveway_bag_1"):
            _png(ro / "images" / f"{fid}.webp", rgb)
            _png(ro / "labels_masks" / f"{fid}_labels_semantic.png", lab)
    laf_ids = {"test": ["04_Maurener_Weg_8_000000_000030", "02_Hanns_Klemm_Str_44_000001_000060"],
               "train": ["01_Hanns_Klemm_Str_45_000000_000080"]}
    for split, ids in laf_ids.items():
        for fid in ids:
            city = fid[:-14]
            _png(laf / "leftImg8bit" / split / city / f"{fid}_leftImg8bit.png", rgb)
            _png(laf / "gtCoarse" / split / city / f"{fid}_gtCoarse_labelIds.png", lab + 1)
    for fid in (laf_ids["test"][0], laf_ids["train"][0]):
        _png(fishy / "labels" / "val" / f"{fid}_fishy-labels.png", lab)
    from metaseg_pgn.data.smiyc import FishyscapesLAF, LostAndFound, RoadAnomaly21, RoadObstacle21

    sets = {
        "anomaly": [RoadAnomaly21(ra), RoadAnomaly21(ra, split="validation"),
                    RoadAnomaly21(ra, split="test"), FishyscapesLAF(fishy)],
        "obstacle": [LostAndFound(laf, split="test", no_known=False),
                     LostAndFound(laf, invalid_frames=()), LostAndFound(laf, split="train", no_known=False)],
    }
    if ext:
        sets["obstacle"] += [RoadObstacle21(ro, split=s) for s in ("all", "validation", "test", "night")]
    return sets


def test_export_uses_the_benchmarks_folders_for_both_tracks(tmp_path):
    """Every folder an export writes is one the benchmark reads (its datasets' persistence
    names), and every frame lands where the benchmark looks for it."""
    sets = _benchmark_layouts(tmp_path / "data")
    assert set(BENCHMARK_FOLDERS) == set(BENCHMARK_DATASETS)
    assert set(OUR_DATASETS.values()) <= set(BENCHMARK_DATASETS)
    expected = {  # benchmark dataset -> folder of each of its frames
        "AnomalyTrack-all": "AnomalyTrack-all", "AnomalyTrack-validation": "AnomalyTrack-all",
        "AnomalyTrack-test": "AnomalyTrack-all", "LostAndFound-test": "LostAndFound-test",
        "LostAndFound-testNoKnown": "LostAndFound-test", "LostAndFound-train": "LostAndFound-train",
        "ObstacleTrack-all": "ObstacleTrack-all", "ObstacleTrack-validation": "ObstacleTrack-all",
        "ObstacleTrack-test": "ObstacleTrack-all", "ObstacleTrack-night": "ObstacleTrack-all",
    }
    out = tmp_path / "export"
    for track, datasets in sets.items():
        for ds in datasets:
            assert ds.benchmark_name in BENCHMARK_DATASETS, ds.benchmark_name
            for fid in ds.frame_ids:
                folder = submission_folder(ds, fid)
                if ds.benchmark_name == "FishyLAFAnomaly-val":
                    # a LostAndFound frame: read from the folder of the LostAndFound split holding it
                    want = "LostAndFound-train" if fid.startswith("01_") else "LostAndFound-test"
                else:
                    want = expected[ds.benchmark_name]
                assert folder == want, (ds.benchmark_name, fid)
                write_scores(out, "pgn", folder, fid, np.zeros((4, 6)))
    written = {p.parent.name for p in (out / "anomaly_p" / "pgn").rglob("*.hdf5")}
    assert written and written <= BENCHMARK_FOLDER_NAMES
    assert {"AnomalyTrack-all", "LostAndFound-test", "LostAndFound-train"} <= written
    # not a benchmark dataset: no folder of the benchmark's
    assert submission_folder(type("D", (), {"name": "synthetic_obstacle", "split": "obstacle"})(), "x") is None


def test_design_document_states_the_folders_the_export_writes():
    """docs/design.md §6a's correction table (benchmark dataset → folder read) says what
    BENCHMARK_FOLDERS does, dataset for dataset, so the document and the export cannot drift."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    table = text.split("| benchmark dataset | folder read |", 1)[1].split("\n>\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("> | `")]
    documented = {}
    for row in rows:
        names_cell, folder_cell = row.split("|")[1:3]
        names = re.findall(r"`([^`]+)`", names_cell)
        track = names[0].split("-", 1)[0]  # `-validation` stands for `{track}-validation`
        folders = re.findall(r"`([^`]+)`", folder_cell)
        for name in names:
            documented[track + name if name.startswith("-") else name] = folders
    assert set(documented) == set(BENCHMARK_FOLDERS)
    for dataset, folder in BENCHMARK_FOLDERS.items():
        if folder == LAF_SPLIT_FOLDER:
            want = [folder.format(laf_split=s) for s in ("train", "test")]
        else:
            want = [folder]
        assert documented[dataset] == want, dataset
    assert set(sum(documented.values(), [])) == set(BENCHMARK_FOLDER_NAMES)
