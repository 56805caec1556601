"""SMIYC OoD metrics: the benchmark's own outputs, hand-computed components, scikit-learn."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from metaseg_pgn.metrics.ood import (
    ComponentOoDMetrics,
    FrameComponents,
    PixelOoDMetrics,
    aggregate_components,
    evaluate_ood,
    frame_components,
)
from metaseg_pgn.metrics.submission import list_frames, read_scores, submission_path, write_scores


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
SEG_KEYS = {"thresh_p": "threshold", "sIoU_gt": "sIoU_gt_smiyc", "PPV_prec_pred": "PPV_smiyc",
            "sIoU_pred": "sIoU_pred_smiyc", "f1_mean": "F1_mean_smiyc", "f1_25": "F1_25_smiyc",
            "f1_50": "F1_50_smiyc", "f1_75": "F1_75_smiyc", "tp_mean": "TP_mean_smiyc",
            "fp_mean": "FP_mean_smiyc", "fn_mean": "FN_mean_smiyc"}


@pytest.mark.parametrize("track", ["obstacle", "anomaly"])
def test_reproduces_benchmark_reference(track):
    ref = json.loads((REF / f"ex1_ex2_{track}.json").read_text())
    frames = _ref_frames()
    out = evaluate_ood(frames, track=track, mode="smiyc")

    # uniform bins (PixBinaryClass-uniThr): no ties between frames, all values exact
    for rk, k in PIX_KEYS.items():
        assert out["pixel_uniform"][f"{k}_smiyc_uniform"] == ref["PixBinaryClass-uniThr"][rk], rk

    # percentile bins (PixBinaryClass): exact except the areas, which depend on the order of
    # equal thresholds of different frames (numpy's unstable argsort in the benchmark)
    pix, rp = out["pixel"], ref["PixBinaryClass"]
    for rk in ("FPR95", "best_f1", "best_f1_threshold", "tpr95_threshold"):
        assert pix[f"{PIX_KEYS[rk]}_smiyc"] == rp[rk], rk
    entries, n_pos, n_neg = [], 0, 0
    for _, score, label in frames:
        rows, p, n = _frame_bins_plain(score, label)
        entries += rows
        n_pos, n_neg = n_pos + p, n_neg + n
    assert (pix["n_pos"], pix["n_neg"]) == (n_pos, n_neg)
    lo, hi = _tie_envelope(entries, n_pos, n_neg)
    stable = PixelOoDMetrics("smiyc", tie_order="stable")
    for fid, score, label in frames:
        stable.update(score, label, fid)
    stable = stable.compute()
    for i, name in enumerate(("AuPRC", "AUROC")):
        ours = pix[f"{name}_smiyc"]
        assert lo[i] - 1e-12 <= rp[name] <= hi[i] + 1e-12, name
        assert lo[i] - 1e-12 <= ours <= hi[i] + 1e-12, name
        assert lo[i] - 1e-12 <= stable[f"{name}_smiyc"] <= hi[i] + 1e-12, name
        assert abs(ours - rp[name]) < 5e-5, name

    # components: everything exact, per frame too
    seg = ref["SegEval-ObstacleTrack" if track == "obstacle" else "SegEval-AnomalyTrack"]
    comp = out["component"]
    for rk, k in SEG_KEYS.items():
        assert comp[k] == seg[rk], rk
    assert len(comp["per_frame"]) == len(seg["per_frame"])
    for got, want in zip(comp["per_frame"], seg["per_frame"]):
        assert got["frame_id"] == want["fid"]
        assert got["sIoU_gt"] == want["sIoU_gt"]
        assert got["PPV"] == want["prec_pred"]
        assert got["size_gt"] == want["size_gt"]
        assert got["size_pred"] == want["size_pred"]


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
    smiyc = PixelOoDMetrics("smiyc", binning="unique", float16=False)
    exact = PixelOoDMetrics("exact")
    smiyc.update(score, label, "f")
    exact.update(score, label, "f")
    cs, ce = smiyc.curve(), exact.curve()
    # the smiyc curve has one extra point for the empty bin [0, min score): same counts
    keep = np.r_[True, (np.diff(cs.tp) != 0) | (np.diff(cs.fp) != 0)]
    np.testing.assert_array_equal(cs.thresholds[keep], ce.thresholds)
    np.testing.assert_array_equal(cs.tp[keep], ce.tp)
    np.testing.assert_array_equal(cs.fp[keep], ce.fp)
    # on the same points, the remaining difference is trapezoid (smiyc) vs step sum (AP)
    rec, prec = ce.tp / ce.n_pos, ce.tp / (ce.tp + ce.fp)
    trap = sum((rec[i] - rec[i - 1]) * (prec[i] + prec[i - 1]) / 2 for i in range(1, rec.size))
    step = rec[0] * prec[0] + sum((rec[i] - rec[i - 1]) * prec[i] for i in range(1, rec.size))
    out_s, out_e = smiyc.compute(), exact.compute()
    assert out_s["AuPRC_smiyc_unique"] == pytest.approx(trap, abs=1e-12)
    assert out_e["AP_exact"] == pytest.approx(step, abs=1e-12)
    assert out_s["FPR95_smiyc_unique"] == out_e["FPR95_exact"]
    assert out_s["best_F1_smiyc_unique"] == out_e["best_F1_exact"]
    # float16: smiyc with rounding equals exact on the rounded map
    s16 = PixelOoDMetrics("smiyc", binning="unique", float16=True)
    e16 = PixelOoDMetrics("exact")
    s16.update(score, label, "f")
    e16.update(score.astype(np.float16), label, "f")
    assert s16.compute()["FPR95_smiyc_unique"] == e16.compute()["FPR95_exact"]
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
    for mode in ("smiyc", "exact"):
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
    for mode in ("smiyc", "exact"):
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
