"""Softmax dispersion maps against plain formulas and scipy.stats.entropy."""

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from metaseg_pgn.maps import softmax_maps


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
