"""ECE, sparsification / AuSE, Brier error: each against a brute-force formula written plainly."""

from __future__ import annotations

import numpy as np
import pytest

from metaseg_pgn.metrics.calibration import (
    AuSE,
    ECE,
    ause,
    brier_error,
    confidence_from_score,
    expected_calibration_error,
    oracle_curve,
    reliability_diagram_data,
    sparsification_curve,
)

FRACTIONS = np.arange(0, 1, 0.01)


# ---------------------------------------------------------------------------- brute force


def ece_brute(conf, correct, n_bins=10):
    conf = np.asarray(conf, dtype=float).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        if b == n_bins - 1:
            sel = [lo <= c <= hi for c in conf]
        else:
            sel = [lo <= c < hi for c in conf]
        sel = np.array(sel, dtype=bool)
        if sel.sum() == 0:
            continue
        acc = sum(correct[sel]) / sel.sum()
        mc = sum(conf[sel]) / sel.sum()
        total += sel.sum() / conf.size * abs(acc - mc)
    return total


def kept_mean_brute(values_to_sort_by, error, f):
    """Remove round-half-up(f*N) pixels with the largest sort value (earlier first on ties)."""
    n = len(error)
    k = min(int(np.floor(f * n + 0.5)), n - 1)
    order = sorted(range(n), key=lambda i: (-values_to_sort_by[i], i))
    kept = order[k:]
    return sum(error[i] for i in kept) / len(kept)


def ause_brute(u, e, fractions=FRACTIONS):
    u, e = list(np.ravel(u)), list(np.ravel(e))
    norm = sum(e) / len(e)
    diff = [(kept_mean_brute(u, e, f) - kept_mean_brute(e, e, f)) / norm for f in fractions]
    area = 0.0
    for i in range(1, len(fractions)):
        area += (fractions[i] - fractions[i - 1]) * (diff[i] + diff[i - 1]) / 2
    return area


# ---------------------------------------------------------------------------- ECE


def test_ece_hand_computed():
    # bin 9: acc 1, conf 0.9 -> 0.1; bin 6: acc 0, conf 0.6 -> 0.6; weights 1/2 each.
    assert expected_calibration_error([0.9, 0.6], [True, False]) == pytest.approx(0.35)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_brute_force_incl_edges(seed):
    rng = np.random.default_rng(seed)
    conf = rng.random(300)
    # values exactly on bin edges (as numpy.linspace computes them), 0 and 1
    conf[:12] = np.linspace(0, 1, 11).tolist() + [1.0]
    conf[12:20] = np.round(conf[12:20], 1)
    correct = rng.random(300) < conf
    assert expected_calibration_error(conf, correct) == pytest.approx(
        ece_brute(conf, correct), abs=1e-12
    )
    assert expected_calibration_error(conf, correct, n_bins=7) == pytest.approx(
        ece_brute(conf, correct, 7), abs=1e-12
    )


def test_edge_values_go_to_the_bin_above():
    edges = np.linspace(0, 1, 11)
    d = reliability_diagram_data(edges, np.ones(11, bool))
    # edge b/10 lands in bin b (b = 0..9), 1.0 in the last bin
    assert d["counts"].tolist() == [1] * 9 + [2]


def test_ece_all_correct_and_all_wrong():
    assert expected_calibration_error(np.ones(50), np.ones(50, bool)) == 0.0
    assert expected_calibration_error(np.ones(50), np.zeros(50, bool)) == 1.0
    # all wrong at confidence 0.25: every pixel in bin 2, |0 - 0.25|
    assert expected_calibration_error(np.full(10, 0.25), np.zeros(10, bool)) == pytest.approx(0.25)


def test_streaming_ece_equals_pooled_and_respects_void():
    rng = np.random.default_rng(3)
    frames = [
        (rng.random((6, 7)), rng.random((6, 7)) < 0.6, rng.random((6, 7)) < 0.8) for _ in range(3)
    ]
    m = ECE()
    for conf, corr, valid in frames:
        m.update(conf, corr, valid)
    conf = np.concatenate([c[v] for c, _, v in frames])
    corr = np.concatenate([k[v] for _, k, v in frames])
    assert m.compute() == pytest.approx(ece_brute(conf, corr), abs=1e-12)
    assert m.diagram()["counts"].sum() == conf.size


def test_reliability_diagram_empty_bins_are_zero_with_zero_count():
    d = reliability_diagram_data([0.95, 0.95], [True, False])
    assert d["counts"].tolist() == [0] * 9 + [2]
    assert d["accuracy"][9] == 0.5 and d["confidence"][9] == pytest.approx(0.95)
    assert np.all(d["accuracy"][:9] == 0) and np.all(np.isfinite(d["confidence"]))


def test_ece_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error([0.5, np.nan], [True, False])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0.5, 1.2], [True, False])
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(np.ones(3), np.ones(4, bool))
    with pytest.raises(ValueError, match="no pixel"):
        expected_calibration_error(np.ones(3), np.ones(3, bool), valid=np.zeros(3, bool))
    with pytest.raises(ValueError, match="boolean"):
        ECE().update(np.ones(3), np.ones(3, bool), valid=np.ones(3))


# ---------------------------------------------------------------------------- sparsification


@pytest.mark.parametrize("seed", [0, 1])
def test_sparsification_and_oracle_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 137
    u = np.round(rng.random(n), 1)  # many ties
    e = np.round(rng.random(n), 2)
    fr = np.array([0.0, 0.1, 0.29, 0.5, 0.73, 0.99])
    got = sparsification_curve(u, e, fr)
    want = [kept_mean_brute(list(u), list(e), f) for f in fr]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        oracle_curve(e, fr), [kept_mean_brute(list(e), list(e), f) for f in fr], atol=1e-12
    )


def test_ause_matches_brute_force():
    rng = np.random.default_rng(5)
    u = np.round(rng.random(200), 1)
    e = rng.random(200)
    assert ause(u, e) == pytest.approx(ause_brute(u, e), abs=1e-12)


def test_ause_depends_on_pairing():
    rng = np.random.default_rng(7)
    e = rng.random(500)
    u = e + 0.1 * rng.random(500)       # informative uncertainty
    u_shuffled = rng.permutation(u)     # same values, broken pairing
    good, bad = ause(u, e), ause(u_shuffled, e)
    assert good < 0.1 < bad
    assert bad == pytest.approx(ause_brute(u_shuffled, e), abs=1e-12)

    # The authors' variant (mean of the remaining *uncertainties*) cannot see the pairing:
    def authors_curve(unc):
        return [kept_mean_brute(list(unc), list(unc), f) for f in FRACTIONS[::10]]

    assert authors_curve(u) == authors_curve(u_shuffled)


def test_ause_perfect_all_correct_all_wrong():
    rng = np.random.default_rng(8)
    e = rng.random(100)
    assert ause(e, e) == pytest.approx(0.0, abs=1e-15)
    # a constant error (all correct, or all equally wrong) has nothing to sort: undefined, not 0
    assert np.isnan(ause(rng.random(100), np.zeros(100)))
    value, curves = ause(rng.random(100), np.full(100, 2.0), return_curves=True)
    assert np.isnan(value) and not curves["curve"].any() and not curves["oracle"].any()
    value, curves = ause(-e, e, return_curves=True)            # worst ordering: positive area
    assert value > 0 and curves["oracle"][0] == pytest.approx(1.0)


def test_streaming_ause_equals_pooled_and_subsample_is_reproducible():
    rng = np.random.default_rng(9)
    frames = [(rng.random((8, 9)), rng.random((8, 9)), rng.random((8, 9)) < 0.7) for _ in range(3)]
    m = AuSE(dtype=np.float64)
    for u, e, v in frames:
        m.update(u, e, v)
    u = np.concatenate([a[v] for a, _, v in frames])
    e = np.concatenate([b[v] for _, b, v in frames])
    assert m.compute() == pytest.approx(ause_brute(u, e), abs=1e-12)

    def sub(seed):
        s = AuSE(max_pixels_per_frame=20, seed=seed)
        for u_, e_, v_ in frames:
            s.update(u_, e_, v_)
        return s

    a, b = sub(1), sub(1)
    assert a.compute() == b.compute()
    assert sum(x.size for x in a._u) == 60


def test_streaming_ause_keeps_uncertainties_beyond_the_float32_range():
    # PGN p = 0.1 at the deeper layer reaches ~1e38.5 (float32 max 3.4e38) and spans many decades:
    # stored as float32 such a map became inf (and tiny values 0), AuSE failed or lost the order.
    rng = np.random.default_rng(3)
    frames = []
    for k in range(3):
        u = 10.0 ** rng.uniform(-60, 40, size=(6, 7))   # from 1e-60 to 1e40, float64
        e = rng.random((6, 7)) * 2
        frames.append((u, e, rng.random((6, 7)) < 0.8))
    m = AuSE()  # the default float32 storage switches to float64 for the uncertainty
    for u, e, v in frames:
        with np.errstate(over="raise", under="raise"):
            m.update(u, e, v)
    u = np.concatenate([a[v] for a, _, v in frames])
    e = np.concatenate([b[v] for _, b, v in frames])
    assert all(a.dtype == np.float64 for a in m._u)
    assert m.compute() == pytest.approx(ause_brute(u, e.astype(np.float32)), abs=1e-7)
    # a map that fits float32 keeps the compact storage
    small = AuSE()
    small.update(rng.random((4, 4)), rng.random((4, 4)))
    assert small._u[0].dtype == np.float32


def test_sparsification_bad_inputs():
    with pytest.raises(ValueError, match="fractions"):
        sparsification_curve(np.ones(3), np.ones(3), [0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        ause(np.array([0.1, np.inf]), np.ones(2))
    with pytest.raises(ValueError, match="shape"):
        ause(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="no pixel"):
        AuSE().update(np.ones(3), np.ones(3), np.zeros(3, bool))
    with pytest.raises(ValueError, match="no frame"):
        AuSE().compute()


# ---------------------------------------------------------------------------- Brier, confidence


def test_brier_error_matches_loops_and_excludes_void():
    rng = np.random.default_rng(11)
    c, h, w = 4, 3, 5
    logits = rng.normal(size=(c, h, w))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    gt = rng.integers(0, c, size=(h, w))
    gt[0, 0] = 255
    err = brier_error(probs, gt)
    for y in range(h):
        for x in range(w):
            if gt[y, x] == 255:
                assert err[y, x] == 0.0
                continue
            want = sum(((1.0 if k == gt[y, x] else 0.0) - probs[k, y, x]) ** 2 for k in range(c))
            assert err[y, x] == pytest.approx(want, abs=1e-12)
    onehot_wrong = np.zeros((2, 1, 1))
    onehot_wrong[1] = 1
    assert brier_error(onehot_wrong, np.zeros((1, 1), int))[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="outside"):
        brier_error(probs, np.full((h, w), 7))
    with pytest.raises(ValueError, match="shape"):
        brier_error(probs, gt[:, :2])


def test_confidence_from_score():
    np.testing.assert_allclose(confidence_from_score([0.0, 1.0, 4.0], 4.0), [1.0, 0.75, 0.0])
    with pytest.raises(ValueError, match="max_over_test"):
        confidence_from_score([1.0], 0.0)
    with pytest.raises(ValueError, match="max_over_test"):
        confidence_from_score([5.0], 4.0)
    with pytest.raises(ValueError, match="NaN"):
        confidence_from_score([np.nan], 4.0)
