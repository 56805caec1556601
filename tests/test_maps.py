"""Softmax dispersion maps against plain formulas and scipy.stats.entropy; both layouts; MetaSeg's
entropy convention against MetaSeg's own output and hand-derived values."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy as scipy_entropy

from metaseg_pgn.maps import softmax_maps
from metaseg_pgn.segments import segment_features


def _random_probs(rng, shape, dtype=np.float64):
    """Dirichlet probabilities with exact zeros and one-hot pixels mixed in; channel axis -3."""
    *lead, c, h, w = shape
    p = rng.dirichlet(np.full(c, 0.3), size=(*lead, h, w))  # (..., H, W, C)
    p[..., 0, 0, :] = 0.0
    p[..., 0, 0, 1] = 1.0  # one-hot pixel
    p[..., 1, 1, : min(2, c - 1)] = 0.0
    p[..., 1, 1, :] /= p[..., 1, 1, :].sum(-1, keepdims=True)  # exact zeros
    p[..., 2, 2, :] = 1.0 / c  # uniform pixel: E = 1, D = 1
    return np.moveaxis(p, -1, -3).astype(dtype)


def _plain_maps(p):
    """E, D, V by the textbook formulas, channel axis 0 of a (C, H, W) float64 array."""
    c = p.shape[0]
    e = scipy_entropy(p, axis=0) / math.log(c)  # scipy: 0·log 0 = 0
    top = np.sort(p, axis=0)[::-1]
    return {"E": e, "D": 1 - top[0] + top[1], "V": 1 - top[0]}


@pytest.mark.parametrize("c", [2, 7, 19])
def test_single_frame_matches_plain_formulas(c):
    rng = np.random.default_rng(c)
    p = _random_probs(rng, (c, 6, 9))
    got = softmax_maps(p)
    want = _plain_maps(p)
    assert set(got) == {"E", "D", "V"}
    for k in want:
        assert got[k].shape == (6, 9) and got[k].dtype == np.float64
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14)
    assert got["E"][0, 0] == 0.0 and got["V"][0, 0] == 0.0 and got["D"][0, 0] == 0.0
    np.testing.assert_allclose([got["E"][2, 2], got["D"][2, 2]], [1.0, 1.0], rtol=1e-12)


def test_batch_matches_frames_and_dtypes():
    rng = np.random.default_rng(1)
    p = _random_probs(rng, (3, 5, 4, 7))
    got = softmax_maps(p)
    for b in range(3):
        want = _plain_maps(p[b])
        for k in want:
            assert got[k].shape == (3, 4, 7)
            np.testing.assert_allclose(got[k][b], want[k], rtol=1e-12, atol=1e-14)

    got32 = softmax_maps(p.astype(np.float32))
    got16 = softmax_maps(p.astype(np.float16))
    for k in got:
        assert got32[k].dtype == np.float32 and got16[k].dtype == np.float32
        np.testing.assert_allclose(got32[k], got[k], atol=2e-6)
        np.testing.assert_allclose(got16[k], got[k], atol=5e-3)
        assert np.isfinite(got32[k]).all() and np.isfinite(got16[k]).all()


def test_torch_input_gives_tensors_equal_to_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    p = _random_probs(rng, (2, 5, 4, 6))
    got = softmax_maps(torch.from_numpy(p))
    got32 = softmax_maps(torch.from_numpy(p.astype(np.float32)))
    want = softmax_maps(p)
    for k in want:
        assert isinstance(got[k], torch.Tensor) and got[k].dtype == torch.float64
        assert got32[k].dtype == torch.float32 and tuple(got32[k].shape) == (2, 4, 6)
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got32[k].numpy(), want[k], atol=2e-6)


@pytest.mark.parametrize(
    "probs",
    [
        np.full((1, 3, 3), 1.0),  # one class
        np.full((2, 3), 0.5),  # no spatial dims
        np.ones((2, 3, 3), dtype=np.int64),  # integer
        np.where(np.eye(3, dtype=bool)[None].repeat(2, 0), np.nan, 0.5),  # NaN
    ],
)
def test_bad_input_raises(probs):
    with pytest.raises(ValueError):
        softmax_maps(probs)


# ---------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("entropy", ["exact", "metaseg"])
def test_channels_last_and_transposed_views_give_the_same_maps(entropy):
    """(C, H, W), MetaSeg's (H, W, C), and transposed views of each: identical maps, numpy and
    torch, frames and batches (the blocked path for channels-last memory is exercised with more
    pixels than one block)."""
    rng = np.random.default_rng(5)
    chw = _random_probs(rng, (7, 300, 260), np.float32)  # 78 000 pixels > one block of 65 536
    hwc = np.ascontiguousarray(np.moveaxis(chw, 0, -1))
    want = softmax_maps(chw, entropy=entropy)
    cases = [(hwc, -1), (np.moveaxis(hwc, -1, 0), -3), (np.moveaxis(chw, 0, -1), -1),
             (np.asfortranarray(chw), -3)]
    for probs, axis in cases:
        got = softmax_maps(probs, channel_axis=axis, entropy=entropy)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{k}, strides {probs.strides}")
    batch = np.stack([hwc[:40], hwc[40:80]])  # (B, H, W, C)
    got = softmax_maps(batch, channel_axis=-1, entropy=entropy)
    for k in want:
        np.testing.assert_array_equal(got[k], np.stack([want[k][:40], want[k][40:80]]))
    torch = pytest.importorskip("torch")
    got = softmax_maps(torch.from_numpy(hwc), channel_axis=-1, entropy=entropy)
    for k in want:
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=0, atol=2e-6)


def test_channel_axis_must_fit_the_shape():
    with pytest.raises(ValueError, match="channel_axis"):
        softmax_maps(np.full((3, 3, 2), 0.5), channel_axis=0)
    with pytest.raises(ValueError, match="C = 1"):
        softmax_maps(np.ones((3, 3, 1)), channel_axis=-1)
    with pytest.raises(ValueError, match="entropy"):
        softmax_maps(np.full((2, 3, 3), 0.5), entropy="shannon")


# ---------------------------------------------------------------------------- MetaSeg's entropy


def test_metaseg_entropy_formula_by_hand():
    """MetaSeg: E = Σ_c p_c log(p_c + ε) / log(1/C), ε = float32 eps = 2**-23 (docs/design.md §6a).

    Pixel (1, 0, 0, 0): log(1 + ε) / log(1/4) = -log1p(2**-23) / log 4 ≈ -8.6e-8 (the true entropy
    is 0); pixel (1/4, 3/4, 0, 0): (1/4 log(1/4 + ε) + 3/4 log(3/4 + ε)) / log(1/4); uniform
    pixel: log(1/4 + ε) / log(1/4) (just below 1)."""
    eps = 2.0**-23
    p = np.zeros((4, 1, 3))
    p[0, 0, 0] = 1.0
    p[:2, 0, 1] = [0.25, 0.75]
    p[:, 0, 2] = 0.25
    want = [-math.log1p(eps) / math.log(4),
            (0.25 * math.log(0.25 + eps) + 0.75 * math.log(0.75 + eps)) / math.log(0.25),
            math.log(0.25 + eps) / math.log(0.25)]
    got = softmax_maps(p, entropy="metaseg")["E"][0]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got32 = softmax_maps(p.astype(np.float32), entropy="metaseg")["E"][0]
    np.testing.assert_allclose(got32, want, rtol=1e-6)
    assert softmax_maps(p)["E"][0, 0] == 0.0 and got[0] < 0


def _metaseg_reference():
    from conftest import REFERENCE_DATA

    return REFERENCE_DATA / "metaseg"


E_PAIRS = {"E_mean": "E", "E_in_mean": "E_in", "E_bd_mean": "E_bd", "E_rel": "E_rel", "E_rel_in": "E_rel_in"}


def test_metaseg_entropy_reproduces_metaseg_columns():
    """With ``entropy="metaseg"`` the E columns equal MetaSeg's own output to float32 precision
    (rtol 2e-6); the true entropy misses them by up to 1.6e-5 on the confident segments. The
    probabilities are read in MetaSeg's (H, W, C) layout."""
    folder = _metaseg_reference()
    data = np.load(folder / "syn1.npz")
    ref = pd.read_csv(folder / "syn1_metaseg.csv")
    probs, gt = data["probs"], data["gt"]
    pred = probs.argmax(-1)
    worst = {}
    for entropy in ("metaseg", "exact"):
        maps = softmax_maps(probs, channel_axis=-1, entropy=entropy)
        df = segment_features(pred, probs, {"E": maps["E"], "D": maps["D"]}, gt, channel_axis=-1)
        assert len(df) == len(ref)
        rel = [np.max(np.abs(df[a] - ref[b]) / np.abs(ref[b]).clip(1e-30)) for a, b in E_PAIRS.items()]
        worst[entropy] = max(rel)
    assert worst["metaseg"] < 2e-6 < worst["exact"]


def test_metaseg_entropy_on_saturated_segments():
    """A saturated scene: class 0 with p = 1 exactly everywhere except a 1-pixel segment of class 1
    with p = (1/4, 3/4, 0, 0) and a 2-pixel segment of class 2 with p = (0, 0, 1, 0).

    MetaSeg values from the formula: every saturated pixel has E = -log1p(ε)/log 4 (so the means
    of the class-0 and class-2 segments are that value), the 1-pixel segment
    (1/4 log(1/4 + ε) + 3/4 log(3/4 + ε)) / log(1/4). The true entropy gives 0 on the saturated
    segments, an infinite relative difference."""
    eps = 2.0**-23
    probs = np.zeros((5, 6, 4), np.float32)  # (H, W, C), MetaSeg's layout
    probs[..., 0] = 1.0
    probs[2, 2] = [0.25, 0.75, 0.0, 0.0]
    probs[4, 4:6] = [0.0, 0.0, 1.0, 0.0]
    pred = probs.argmax(-1)
    maps = softmax_maps(probs, channel_axis=-1, entropy="metaseg")
    df = segment_features(pred, probs, {"E": maps["E"]}, channel_axis=-1).set_index("pred_class")
    saturated = -math.log1p(eps) / math.log(4)
    mixed = (0.25 * math.log(0.25 + eps) + 0.75 * math.log(0.75 + eps)) / math.log(0.25)
    np.testing.assert_allclose(df.loc[[0, 1, 2], "E_mean"], [saturated, mixed, saturated], rtol=1e-6)
    assert df.loc[1, "S"] == 1 and df.loc[2, "S"] == 2
    true = softmax_maps(probs, channel_axis=-1)
    df_true = segment_features(pred, probs, {"E": true["E"]}, channel_axis=-1).set_index("pred_class")
    assert df_true.loc[0, "E_mean"] == 0.0 and df_true.loc[2, "E_mean"] == 0.0


def test_segment_features_read_both_layouts_alike():
    rng = np.random.default_rng(9)
    chw = _random_probs(rng, (5, 40, 50), np.float32)
    pred = chw.argmax(0)
    gt = np.where(rng.random(pred.shape) < 0.1, 255, pred).astype(np.uint8)
    maps = softmax_maps(chw)
    want = segment_features(pred, chw, maps, gt)
    hwc = np.ascontiguousarray(np.moveaxis(chw, 0, -1))
    for probs, axis in ((hwc, -1), (np.moveaxis(hwc, -1, 0), 0)):
        got = segment_features(pred, probs, maps, gt, channel_axis=axis)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"\(40, 50, C\)"):
        segment_features(pred, chw, maps, gt, channel_axis=-1)
