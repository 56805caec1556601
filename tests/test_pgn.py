"""The factorised PGN maps against per-pixel autograd (float64, relative error <= 1e-6).

The reference takes one pixel's loss of the model output, differentiates it w.r.t. the conv's
kernel (and bias) with autograd, flattens the gradient and computes ``(Σ|g|^p)^(1/p)`` directly.
Both implementations face it: the float64 reference of ``metaseg_pgn.pgn`` (``backend="reference"``,
what runs on CUDA) and the fast CPU path of ``metaseg_pgn.pgn_cpu`` (``backend="cpu"``); the fast
path's float32 results are then compared with the reference's float64 ones.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaseg_pgn import pgn_cpu
from metaseg_pgn.pgn import (
    LABELS,
    PGN_PS,
    WEIGHTS,
    ConvGeometry,
    deeper_layer_pgn,
    format_p,
    label_vectors,
    last_layer_pgn,
    map_name,
    patch_power_sums,
    resize_maps,
)

RTOL = 1e-6
CLASSES = 4
CHANNELS = 5
B, H, W = 2, 6, 7  # feature resolution of the test activations
UP = 4  # the "input"-resolution models upsample by 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=["cpu", "reference"])
def backend(request):
    """The fast CPU path and the reference: every map against autograd with both."""
    return request.param


def pixel_loss(z: torch.Tensor, label: str, weights: str) -> torch.Tensor:
    """Loss of one pixel with logits z (C,) whose gradient w.r.t. z is the PGN's v."""
    log_s = torch.log_softmax(z, 0)
    top = int(z.argmax())
    if weights == "gradient":  # cross entropy with the auxiliary label
        return -log_s[top] if label == "oh" else -log_s.mean()
    # paper (eq. 5/6): a surrogate whose logit gradient is exactly w (w held constant)
    w = log_s.exp().detach().clone()
    if label == "oh":
        w[top] = 0.0
    else:
        w = w * (z.numel() - 1) / z.numel()
    return (w * z).sum()


def autograd_norms(out, params, pixels, label, weights, ps=PGN_PS):
    """(len(pixels), len(ps)) float64: p-norms of each pixel's flattened gradient w.r.t. params."""
    rows = []
    for b, i, j in pixels:
        grads = torch.autograd.grad(pixel_loss(out[b, :, i, j], label, weights), params, retain_graph=True)
        g = torch.cat([x.flatten() for x in grads]).abs()
        rows.append([(g ** p).sum() ** (1.0 / p) for p in ps])
    return torch.tensor(rows, dtype=torch.float64)


def all_pixels(b, h, w):
    return [(n, i, j) for n in range(b) for i in range(h) for j in range(w)]


def sample_pixels(b, h, w, count, seed):
    """``count`` random pixels plus the four corners of every image."""
    g = torch.Generator().manual_seed(seed)
    pixels = {(n, i, j) for n in range(b) for i in (0, h - 1) for j in (0, w - 1)}
    while len(pixels) < count + 4 * b:
        pixels.add((int(torch.randint(b, (1,), generator=g)), int(torch.randint(h, (1,), generator=g)),
                    int(torch.randint(w, (1,), generator=g))))
    return sorted(pixels)


def ours_at(maps, layer, label, pixels, ps=PGN_PS):
    return torch.stack([torch.stack([maps[map_name(layer, label, p)][b, i, j] for p in ps]) for b, i, j in pixels])


def random_bn(channels, seed):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g, dtype=torch.float64) * 0.5)
        bn.running_var.copy_(torch.rand(channels, generator=g, dtype=torch.float64) * 2 + 0.1)
        bn.weight.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(channels, generator=g, dtype=torch.float64) * 0.3)
    return bn.eval()


def make_conv(cin, cout, kernel, dilation, padding, bias, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, dilation=dilation, padding=padding, bias=bias).double()
    with torch.no_grad():
        conv.weight.normal_(0, 0.6)
        if bias:
            conv.bias.normal_(0, 0.5)
    return conv


def make_psi(seed, channels=CHANNELS, b=B, h=H, w=W):
    """Non-negative activations with exact zeros, like a ReLU output."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(b, channels, h, w, generator=g, dtype=torch.float64) + 0.3)


# name: (kernel, dilation, padding)
CONVS = {
    "1x1": (1, 1, 0),
    "3x3": (3, 1, 1),
    "3x3_dil2_same": (3, 2, "same"),
    "3x3_valid": (3, 1, 0),
}


@pytest.mark.parametrize("weights", ["paper", "gradient"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("conv_name", list(CONVS))
def test_last_layer_feature_resolution_matches_autograd(conv_name, bias, weights, backend):
    conv = make_conv(CHANNELS, CLASSES, *CONVS[conv_name], bias, seed=1)
    psi = make_psi(seed=2)
    out = conv(psi)
    maps = last_layer_pgn(psi, out.detach(), conv, weights=weights, backend=backend)
    params = [conv.weight] + ([conv.bias] if bias else [])
    pixels = all_pixels(*out.shape[:1], *out.shape[2:])
    for name in maps:
        assert maps[name].shape == (B, *out.shape[2:]) and maps[name].dtype == torch.float64
    for label in LABELS:
        expected = autograd_norms(out, params, pixels, label, weights)
        torch.testing.assert_close(ours_at(maps, "last", label, pixels), expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("align_corners", [False, True], ids=["ac0", "ac1"])
@pytest.mark.parametrize("weights", ["paper", "gradient"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("conv_name", list(CONVS))
def test_last_layer_input_resolution_matches_autograd(conv_name, bias, weights, align_corners, backend):
    conv = make_conv(CHANNELS, CLASSES, *CONVS[conv_name], bias, seed=3)
    psi = make_psi(seed=4)
    z = conv(psi)
    size = (UP * z.shape[2], UP * z.shape[3])
    out = F.interpolate(z, size=size, mode="bilinear", align_corners=align_corners)
    maps = last_layer_pgn(psi, z.detach(), conv, weights=weights, resolution="input", output_size=size,
                          align_corners=align_corners, chunk_rows=7, backend=backend)
    params = [conv.weight] + ([conv.bias] if bias else [])
    pixels = sample_pixels(B, *size, count=16, seed=5)
    for name in maps:
        assert maps[name].shape == (B, *size)
    for label in LABELS:
        expected = autograd_norms(out, params, pixels, label, weights)
        torch.testing.assert_close(ours_at(maps, "last", label, pixels), expected, rtol=RTOL, atol=0)


def test_bias_left_out_on_request(backend):
    conv = make_conv(CHANNELS, CLASSES, 3, 1, 1, True, seed=32)
    psi = make_psi(seed=33)
    out = conv(psi)
    for resolution, size in [("feature", None), ("input", (11, 13))]:
        maps = last_layer_pgn(psi, out.detach(), conv, include_bias=False, resolution=resolution,
                              output_size=size, backend=backend)
        y = out if size is None else F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        pixels = all_pixels(B, *y.shape[2:])[::5]
        expected = autograd_norms(y, [conv.weight], pixels, "oh", "paper")
        torch.testing.assert_close(ours_at(maps, "last", "oh", pixels), expected, rtol=RTOL, atol=0)


def test_input_resolution_all_pixels_of_a_small_map_and_a_downsample(backend):
    conv = make_conv(CHANNELS, CLASSES, 3, 1, 1, True, seed=6)
    psi = make_psi(seed=7, h=3, w=4)
    z = conv(psi)
    for size in [(5, 9), (2, 3)]:  # non-integer up-scaling, and a down-scaling
        out = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
        maps = last_layer_pgn(psi, z.detach(), conv, weights="gradient", resolution="input", output_size=size,
                              backend=backend)
        pixels = all_pixels(B, *size)
        for label in LABELS:
            expected = autograd_norms(out, [conv.weight, conv.bias], pixels, label, "gradient")
            torch.testing.assert_close(ours_at(maps, "last", label, pixels), expected, rtol=RTOL, atol=0)


def test_input_resolution_does_not_depend_on_the_chunking():
    conv = make_conv(CHANNELS, CLASSES, 3, 2, 2, True, seed=8)
    psi = make_psi(seed=9)
    z = conv(psi)
    runs = [last_layer_pgn(psi, z, conv, resolution="input", output_size=(23, 29), chunk_rows=c)
            for c in (1, 4, None)]
    for name in runs[0]:
        torch.testing.assert_close(runs[1][name], runs[0][name], rtol=1e-13, atol=0)
        torch.testing.assert_close(runs[2][name], runs[0][name], rtol=1e-13, atol=0)


@pytest.mark.parametrize("weights", ["paper", "gradient"])
@pytest.mark.parametrize("prev_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("prev_dilation", [1, 2])
def test_deeper_layer_matches_autograd(prev_dilation, prev_bias, weights, backend):
    conv_prev = make_conv(3, CHANNELS, 3, prev_dilation, prev_dilation, prev_bias, seed=10)
    bn = random_bn(CHANNELS, seed=11)
    conv_last = make_conv(CHANNELS, CLASSES, 1, 1, 0, True, seed=12)
    psi_prev = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    psi = torch.relu(bn(conv_prev(psi_prev)))
    out = conv_last(nn.Dropout(0.5).eval()(psi))
    assert (psi == 0).any() and (psi > 0).any()
    maps = deeper_layer_pgn(psi_prev, conv_prev, bn, psi.detach(), out.detach(), conv_last, weights=weights,
                            backend=backend)
    params = [conv_prev.weight] + ([conv_prev.bias] if prev_bias else [])
    pixels = all_pixels(B, H, W)
    for label in LABELS:
        expected = autograd_norms(out, params, pixels, label, weights)
        torch.testing.assert_close(ours_at(maps, "deep", label, pixels), expected, rtol=RTOL, atol=0)


def test_deeper_layer_without_batchnorm_matches_autograd(backend):
    conv_prev = make_conv(3, CHANNELS, 3, 1, 1, True, seed=14)
    conv_last = make_conv(CHANNELS, CLASSES, 1, 1, 0, False, seed=15)
    psi_prev = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    psi = torch.relu(conv_prev(psi_prev))
    out = conv_last(psi)
    maps = deeper_layer_pgn(psi_prev, conv_prev, None, psi.detach(), out.detach(), conv_last,
                            weights="gradient", labels=("uni",), backend=backend)
    pixels = all_pixels(B, H, W)
    expected = autograd_norms(out, [conv_prev.weight, conv_prev.bias], pixels, "uni", "gradient")
    torch.testing.assert_close(ours_at(maps, "deep", "uni", pixels), expected, rtol=RTOL, atol=0)


def test_p01_with_2304_entry_patches_and_large_activations_is_finite_and_exact(backend):
    g = torch.Generator().manual_seed(17)
    torch.manual_seed(18)
    conv = nn.Conv2d(256, 19, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(1e-3)  # logits of order 1: a spread-out softmax
    psi = (torch.rand(1, 256, 5, 5, generator=g, dtype=torch.float64) * 2 - 1) * 1e3
    out = conv(psi)
    maps = last_layer_pgn(psi, out.detach(), conv, ps=(0.1,), backend=backend)
    for m in maps.values():
        assert torch.isfinite(m).all()
    # the regime that motivates float64: these values overflow float32
    assert max(float(m.max()) for m in maps.values()) > torch.finfo(torch.float32).max
    pixels = [(0, 0, 0), (0, 2, 2), (0, 4, 3)]
    for label in LABELS:
        expected = autograd_norms(out, [conv.weight, conv.bias], pixels, label, "paper", ps=(0.1,))
        torch.testing.assert_close(ours_at(maps, "last", label, pixels, ps=(0.1,)), expected, rtol=RTOL, atol=0)
    up = last_layer_pgn(psi, out.detach(), conv, ps=(0.1,), resolution="input", output_size=(9, 9),
                        backend=backend)
    assert all(torch.isfinite(m).all() for m in up.values())


def test_feature_maps_with_output_size_are_the_resized_feature_maps():
    conv = make_conv(CHANNELS, CLASSES, 3, 1, 1, True, seed=19)
    psi = make_psi(seed=20)
    z = conv(psi).detach()
    feature = last_layer_pgn(psi, z, conv)
    resized = last_layer_pgn(psi, z, conv, output_size=(24, 28), align_corners=True)
    by_torch = {n: F.interpolate(m[:, None], size=(24, 28), mode="bilinear", align_corners=True)[:, 0]
                for n, m in feature.items()}
    assert resize_maps(feature, (24, 28), align_corners=True).keys() == by_torch.keys()
    for n in feature:
        torch.testing.assert_close(resized[n], by_torch[n], rtol=1e-14, atol=0)


def test_patch_power_sums_against_explicit_patches():
    conv = make_conv(CHANNELS, CLASSES, 3, 2, 2, True, seed=21)
    psi = make_psi(seed=22)
    sums = patch_power_sums(psi, conv, (0.5, 2.0), include_bias=True)
    patches = F.unfold(psi, 3, dilation=2, padding=2)  # (B, κ·9, h·w)
    for k, p in enumerate((0.5, 2.0)):
        expected = (patches.abs() ** p).sum(1).view(B, H, W) + 1
        torch.testing.assert_close(sums[k], expected, rtol=1e-12, atol=0)


def test_label_vectors_are_the_logit_gradients():
    z = torch.randn(3, CLASSES, 2, 2, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(z, 1)
    for label in LABELS:
        v = label_vectors(probs.detach(), label, "gradient")
        for b, i, j in all_pixels(3, 2, 2):
            (g,) = torch.autograd.grad(pixel_loss(z[b, :, i, j], label, "gradient"), z)
            torch.testing.assert_close(v[b, :, i, j], g[b, :, i, j], rtol=1e-12, atol=1e-15)
    s = probs.detach()
    paper_oh = label_vectors(s, "oh", "paper")
    assert (paper_oh.gather(1, s.argmax(1, keepdim=True)) == 0).all()
    torch.testing.assert_close(label_vectors(s, "uni", "paper"), s * (CLASSES - 1) / CLASSES)


def test_names():
    assert [format_p(p) for p in PGN_PS] == ["0_1", "0_3", "0_5", "1", "2"]
    assert map_name("last", "uni", 0.5) == "pgn_last_uni_p0_5"
    assert map_name("deep", "oh", 2) == "pgn_deep_oh_p2"
    conv = make_conv(CHANNELS, CLASSES, 1, 1, 0, True, seed=23)
    psi = make_psi(seed=24)
    maps = last_layer_pgn(psi, conv(psi).detach(), conv)
    assert list(maps) == [map_name("last", label, p) for label in LABELS for p in PGN_PS]
    with pytest.raises(ValueError, match="layer"):
        map_name("first", "oh", 1)
    with pytest.raises(ValueError, match="p must be"):
        format_p(0)


def test_conv_geometry_reads_padding_strings():
    geo = ConvGeometry.from_conv(nn.Conv2d(4, 2, 3, dilation=2, padding="same"))
    assert geo.padding == (2, 2) and geo.dilation == (2, 2) and geo.has_bias
    geo = ConvGeometry.from_conv(nn.Conv2d(4, 2, (3, 5), padding="valid", bias=False))
    assert geo.padding == (0, 0) and geo.kernel_size == (3, 5) and not geo.has_bias
    assert geo.patch_size == 60 and geo.output_size(10, 10) == (8, 6)


@pytest.mark.parametrize(
    "conv, message",
    [
        (nn.Conv2d(4, 2, 3, stride=2), "stride"),
        (nn.Conv2d(4, 2, 3, groups=2), "groups"),
        (nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.Conv2d(4, 2, 2, padding="same"), "asymmetric"),
    ],
    ids=["stride2", "groups2", "reflect", "same_even"],
)
def test_unsupported_convs_are_refused(conv, message):
    with pytest.raises(ValueError, match=message):
        ConvGeometry.from_conv(conv)
    with pytest.raises(ValueError, match=message):
        last_layer_pgn(torch.ones(1, 4, 8, 8), torch.ones(1, 2, 3, 3), conv)


def test_bad_input_is_refused(backend):
    conv = make_conv(CHANNELS, CLASSES, 3, 1, 1, False, seed=25)
    psi = make_psi(seed=26)
    z = conv(psi).detach()
    bad = psi.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        last_layer_pgn(bad, z, conv, backend=backend)
    with pytest.raises(ValueError, match="NaN/inf"):
        last_layer_pgn(psi, z * float("inf"), conv, backend=backend)
    with pytest.raises(ValueError, match="NaN/inf"):
        patch_power_sums(bad, conv, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        last_layer_pgn(psi, z, conv, backend="numpy")
    with pytest.raises(ValueError, match="channels"):
        last_layer_pgn(psi[:, :3], z, conv)
    with pytest.raises(ValueError, match="shape"):
        last_layer_pgn(psi, z[:, :, :4], conv)
    with pytest.raises(ValueError, match="no bias"):
        last_layer_pgn(psi, z, conv, include_bias=True)
    with pytest.raises(ValueError, match="output_size"):
        last_layer_pgn(psi, z, conv, resolution="input")
    with pytest.raises(ValueError, match="resolution"):
        last_layer_pgn(psi, z, conv, resolution="image")
    with pytest.raises(ValueError, match="weights"):
        last_layer_pgn(psi, z, conv, weights="true")
    with pytest.raises(ValueError, match="label"):
        last_layer_pgn(psi, z, conv, labels=("onehot",))
    for ps in [(0.0,), (-1.0,), (math.nan,), (0.5, 0.50)]:
        with pytest.raises(ValueError, match="p"):
            last_layer_pgn(psi, z, conv, ps=ps)
    with pytest.raises(TypeError, match="floating-point"):
        last_layer_pgn(psi.long(), z, conv)
    with pytest.raises(TypeError, match="Conv2d or a ConvGeometry"):
        last_layer_pgn(psi, z, "conv")


def test_deeper_layer_refuses_what_it_cannot_factorise():
    conv_prev = make_conv(3, CHANNELS, 3, 1, 1, False, seed=27)
    bn = random_bn(CHANNELS, seed=28)
    psi_prev = torch.randn(B, 3, H, W, dtype=torch.float64)
    psi = torch.relu(bn(conv_prev(psi_prev))).detach()
    last3 = make_conv(CHANNELS, CLASSES, 3, 1, 1, True, seed=29)
    with pytest.raises(ValueError, match="1 x 1"):
        deeper_layer_pgn(psi_prev, conv_prev, bn, psi, last3(psi).detach(), last3)
    last1 = make_conv(CHANNELS, CLASSES, 1, 1, 0, True, seed=30)
    z = last1(psi).detach()
    with pytest.raises(ValueError, match="eval mode"):
        deeper_layer_pgn(psi_prev, conv_prev, bn.train(), psi, z, last1)
    bn.eval()
    with pytest.raises(ValueError, match="size"):
        deeper_layer_pgn(psi_prev[:, :, :4], conv_prev, bn, psi, z, last1)
    with pytest.raises(ValueError, match="features"):
        deeper_layer_pgn(psi_prev, conv_prev, random_bn(CHANNELS + 1, seed=31), psi, z, last1)


# ------------------------------------------------------------------------------------------------
# the float32 path: float32 inputs against the float64 computation of the same values
#
# Bound: RTOL32 = 1e-5. Each float32 term |x|^p carries a few units u = 6e-8 of rounding (one
# log/exp, up to four products); float32 sums of non-negative terms add ~√K·u (BLAS/torch
# accumulation over K channels, ≤ (K-1)·u in the never-reached worst case), except for p < 1/4,
# whose terms are accumulated in float64; (·)^(1/p) multiplies relative errors by 1/p ≤ 4 there.
# That is ≤ ~2e-6 for K ≤ 256 (measured ≤ 2e-6 over the 32k pixels of the compact model at
# 512 x 1024); 1e-5 leaves a margin of 5. The deeper layer's δ = K'ᵀv has an exception, tested
# separately: entries that nearly cancel are accurate only relative to the cancelling terms.

RTOL32 = 1e-5


def both_precisions(fn, *tensors):
    """fn (taking ``backend=``) on the tensors as float32 with the fast CPU path, and on the same
    values as float64 with the reference."""
    t32 = [t.float() for t in tensors]
    return fn(*t32, backend="cpu"), fn(*[t.double() for t in t32], backend="reference")


def assert_close_maps(got, expected, rtol=RTOL32):
    assert list(got) == list(expected)
    for name in got:
        assert got[name].dtype == torch.float64 and torch.isfinite(got[name]).all(), name
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=0, msg=name)


def realistic(seed, channels=64, classes=19, b=2, h=12, w=20, scale=3.0):
    """ReLU activations (about 40 % zeros) and logits with spread-out and confident pixels."""
    g = torch.Generator().manual_seed(seed)
    psi = torch.relu(torch.randn(b, channels, h, w, generator=g, dtype=torch.float64) + 0.3)
    z = torch.randn(b, classes, h, w, generator=g, dtype=torch.float64) * scale
    return psi, z


@pytest.mark.parametrize("weights", ["paper", "gradient"])
@pytest.mark.parametrize("conv_name", list(CONVS))
def test_float32_last_layer_matches_float64(conv_name, weights):
    kernel, dilation, padding = CONVS[conv_name]
    geometry = ConvGeometry.from_conv(nn.Conv2d(64, 19, kernel, dilation=dilation, padding=padding))
    psi, _ = realistic(40)
    z = torch.randn(2, 19, *geometry.output_size(12, 20), generator=torch.Generator().manual_seed(41)) * 3
    got, expected = both_precisions(
        lambda a, b, **kw: last_layer_pgn(a, b, geometry, weights=weights, **kw), psi, z)
    assert_close_maps(got, expected)


@pytest.mark.parametrize("weights", ["paper", "gradient"])
def test_float32_input_resolution_matches_float64(weights):
    """Resolution "input" computes in float64 for any input (float32 resize weights would blur
    exact zeros, which p = 0.1 amplifies): float32 inputs give the float64 result."""
    geometry = ConvGeometry.from_conv(nn.Conv2d(CHANNELS, CLASSES, 3, padding=1))
    psi, z = realistic(42, channels=CHANNELS, classes=CLASSES, h=H, w=W)
    got, expected = both_precisions(
        lambda a, b, **kw: last_layer_pgn(a, b, geometry, weights=weights, resolution="input",
                                          output_size=(4 * H + 1, 4 * W - 3), chunk_rows=5, **kw), psi, z)
    assert_close_maps(got, expected)


def test_float32_confident_pixels_and_ties():
    """Logit gaps up to ~200 (the float32 softmax would be exactly 0 or 1 there) and tied maxima:
    the one-hot maps stay accurate (they are built from the second-largest logit)."""
    geometry = ConvGeometry.from_conv(nn.Conv2d(64, 19, 1))
    psi, z = realistic(43, scale=40.0)
    z[0, :, 0, 0] = 0.0  # all tied
    z[0, 3, 0, 1] = z[0, 7, 0, 1] = z[0, :, 0, 1].max() + 1  # two tied maxima
    z[1, 5, 2, 2] = 200.0  # s_2 ≈ e^-200: 0 in float32
    for weights in WEIGHTS:
        got, expected = both_precisions(
            lambda a, b, **kw: last_layer_pgn(a, b, geometry, weights=weights, **kw), psi, z)
        assert_close_maps(got, expected)
        assert got["pgn_last_oh_p1"][1, 2, 2] > 0
    # the ties against autograd (float64): ĉ is the first maximum, as argmax
    conv = make_conv(CHANNELS, CLASSES, 1, 1, 0, True, seed=44)
    with torch.no_grad():
        conv.weight[1] = conv.weight[2]
        conv.bias[1] = conv.bias[2]  # classes 1 and 2 always tie
    psi64 = make_psi(seed=45)
    out = conv(psi64)
    maps = last_layer_pgn(psi64, out.detach(), conv, weights="gradient")
    pixels = all_pixels(B, H, W)
    for label in LABELS:
        expected = autograd_norms(out, [conv.weight, conv.bias], pixels, label, "gradient")
        torch.testing.assert_close(ours_at(maps, "last", label, pixels), expected, rtol=RTOL, atol=0)


def test_float32_p01_with_2304_entry_patches_and_large_activations():
    """The regime that motivates the float64 combination: (Σ|x|^0.1)^10 of 2304-entry patches of
    activations up to 1e3 exceeds the float32 range; the float32 path is finite and accurate.
    Activations of both signs (not a ReLU output): |ψ| is taken."""
    g = torch.Generator().manual_seed(46)
    geometry = ConvGeometry.from_conv(nn.Conv2d(256, 19, 3, padding=1))
    psi = (torch.rand(1, 256, 5, 6, generator=g, dtype=torch.float64) * 2 - 1) * 1e3
    z = torch.randn(1, 19, 5, 6, generator=g, dtype=torch.float64)
    got, expected = both_precisions(lambda a, b, **kw: last_layer_pgn(a, b, geometry, **kw), psi, z)
    assert_close_maps(got, expected)
    assert float(got["pgn_last_uni_p0_1"].max()) > torch.finfo(torch.float32).max


@pytest.mark.parametrize("magnitude", [1e20, 1e-25], ids=["overflow", "underflow"])
def test_float32_guard_recomputes_in_float64(magnitude, monkeypatch):
    """|ψ|² of 1e20 overflows float32 (inf), of 1e-25 underflows to 0: those sums are detected and
    recomputed in float64, so the maps are finite and accurate."""
    redone = []
    trouble = pgn_cpu._float32_trouble
    monkeypatch.setattr(pgn_cpu, "_float32_trouble",
                        lambda sums, ps: redone.append(trouble(sums, ps)) or redone[-1])
    geometry = ConvGeometry.from_conv(nn.Conv2d(64, 19, 3, padding=1))
    psi, z = realistic(47)
    psi = psi * magnitude
    psi[0, :, 0, 0] = 0.0  # an all-zero pixel is not mistaken for an underflow
    got, expected = both_precisions(lambda a, b, **kw: last_layer_pgn(a, b, geometry, **kw), psi, z)
    assert_close_maps(got, expected)
    assert redone and redone[0] == [PGN_PS.index(2.0)]  # only p = 2 needed float64
    assert got["pgn_last_oh_p2"][0, 0, 0] > 0


def test_float32_all_zero_psi_needs_no_fallback(monkeypatch):
    redone = []
    trouble = pgn_cpu._float32_trouble
    monkeypatch.setattr(pgn_cpu, "_float32_trouble",
                        lambda sums, ps: redone.append(trouble(sums, ps)) or redone[-1])
    geometry = ConvGeometry.from_conv(nn.Conv2d(8, 4, 1, bias=False))
    maps = last_layer_pgn(torch.zeros(1, 8, 3, 3), torch.randn(1, 4, 3, 3), geometry)
    assert redone == [[]] and all((m == 0).all() for m in maps.values())


def test_float32_bad_activations_are_refused():
    geometry = ConvGeometry.from_conv(nn.Conv2d(64, 19, 1))
    psi, z = realistic(48)
    psi, z = psi.float(), z.float()
    for value in (float("nan"), float("inf"), -float("inf")):
        bad = psi.clone()
        bad[1, 3, 4, 5] = value
        with pytest.raises(ValueError, match="NaN/inf"):
            last_layer_pgn(bad, z, geometry)
        bad_z = z.clone()
        bad_z[0, 2, 1, 1] = value
        with pytest.raises(ValueError, match="NaN/inf"):
            last_layer_pgn(psi, bad_z, geometry)


def test_float32_patch_power_sums_match_float64():
    geometry = ConvGeometry.from_conv(nn.Conv2d(64, 19, 3, dilation=2, padding=2))
    psi, _ = realistic(49)
    psi = psi - 0.5  # both signs
    ps = (0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)  # products, einsum and own passes
    got, expected = both_precisions(lambda a, **kw: patch_power_sums(a, geometry, ps, **kw), psi)
    assert got.dtype == torch.float64
    for i, p in enumerate(ps):  # a sum's relative error becomes 1/p times larger in the map
        torch.testing.assert_close(got[i], expected[i], rtol=RTOL32 * p, atol=0, msg=f"p={p}")


def deep_setup(seed, nonneg_kernel=False):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv_prev = nn.Conv2d(32, 64, 3, padding=1).double()
    bn = random_bn(64, seed + 1)
    conv_last = nn.Conv2d(64, 19, 1).double()
    if nonneg_kernel:
        with torch.no_grad():
            conv_last.weight.abs_()
            bn.weight.abs_()
    psi_prev = torch.relu(torch.randn(2, 32, 10, 14, generator=g, dtype=torch.float64))
    with torch.no_grad():
        psi = torch.relu(bn(conv_prev(psi_prev)))
        z = conv_last(psi) * 3
    return psi_prev, conv_prev, bn, psi, z, conv_last


@pytest.mark.parametrize("weights", ["paper", "gradient"])
def test_float32_deeper_layer_matches_float64(weights):
    """p ≥ 1 at 1e-5. For p < 1, an entry of δ = K'ᵀv that nearly cancels (computed in float32 from
    a float32 v) is accurate only relative to the cancelling terms, and |δ|^p with small p weighs
    such entries: relative errors up to ~1e-3 at p = 0.1 occur on real activations."""
    psi_prev, conv_prev, bn, psi, z, conv_last = deep_setup(50)
    got, expected = both_precisions(
        lambda a, b, c, **kw: deeper_layer_pgn(a, conv_prev, bn, b, c, conv_last, weights=weights, **kw),
        psi_prev, psi, z)
    for name in got:
        p = float(name.split("_p")[1].replace("_", "."))
        torch.testing.assert_close(got[name], expected[name], rtol=RTOL32 if p >= 1 else 3e-3, atol=0, msg=name)


def test_float32_deeper_layer_without_cancellation_matches_float64():
    """With K' ≥ 0 and the paper's v ≥ 0, δ has no cancellation: every p within 1e-5."""
    psi_prev, conv_prev, bn, psi, z, conv_last = deep_setup(51, nonneg_kernel=True)
    got, expected = both_precisions(
        lambda a, b, c, **kw: deeper_layer_pgn(a, conv_prev, bn, b, c, conv_last, **kw), psi_prev, psi, z)
    assert_close_maps(got, expected)


def test_float32_results_do_not_depend_on_threads_or_chunks(monkeypatch):
    psi_prev, conv_prev, bn, psi, z, conv_last = deep_setup(52)
    psi_prev, psi, z = psi_prev.float(), psi.float(), z.float()

    def run():
        maps = last_layer_pgn(psi, z, conv_last)
        maps.update(deeper_layer_pgn(psi_prev, conv_prev, bn, psi, z, conv_last))
        return maps
    reference = run()
    monkeypatch.setattr(pgn_cpu, "_POWER_CHUNK_ELEMS", 64 * 14 * 2 * 3)  # 3 rows per chunk
    torch.set_num_threads(2)  # the one_thread fixture restores the count
    try:
        chunked = run()
    finally:
        torch.set_num_threads(1)
    for name in reference:
        torch.testing.assert_close(chunked[name], reference[name], rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("weights", ["paper", "gradient"])
def test_float64_fast_path_is_the_reference(weights):
    """In float64 the fast path (softmax-free label sums, one log per tensor, products) and the
    reference (float64 softmax, label_vectors, one pow per p) agree to rounding, including
    confident pixels, ties, a 3 x 3 dilated conv, p off the default set, and the deeper layer."""
    ps = (0.1, 0.25, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
    geometry = ConvGeometry.from_conv(nn.Conv2d(64, 19, 3, dilation=2, padding=2))
    psi, z = realistic(53, scale=20.0)
    z[0, :, 0, 0] = 0.0
    z[0, 3, 0, 1] = z[0, 7, 0, 1] = z[0, :, 0, 1].max() + 1
    runs = [last_layer_pgn(psi, z, geometry, ps=ps, weights=weights, backend=b) for b in ("cpu", "reference")]
    assert_close_maps(*runs, rtol=1e-12)
    psi_prev, conv_prev, bn, psi, z, conv_last = deep_setup(54)
    for clip in (None, 1.0):
        runs = [deeper_layer_pgn(psi_prev, conv_prev, bn, psi.clamp(0, clip), z, conv_last, ps=ps,
                                 weights=weights, clip=clip, backend=b) for b in ("cpu", "reference")]
        assert_close_maps(*runs, rtol=1e-10)


def test_fast_path_threads_end_with_the_call():
    """The fast path's pool is created and shut down inside each call: no thread of it is left."""
    import threading

    psi_prev, conv_prev, bn, psi, z, conv_last = deep_setup(55)
    torch.set_num_threads(2)  # the one_thread fixture restores the count
    try:
        deeper_layer_pgn(psi_prev.float(), conv_prev, bn, psi.float(), z.float(), conv_last)
        both = threading.Barrier(2)  # passed only by two tasks running at once
        names = []

        def task():
            both.wait(timeout=60)
            names.append(threading.current_thread().name)
        with pgn_cpu.worker_pool() as run:
            run([task, task])
    finally:
        torch.set_num_threads(1)
    assert sum(n.startswith("metaseg_pgn") for n in names) == 1  # one on the pool, one on the caller
    assert not [t for t in threading.enumerate() if t.name.startswith("metaseg_pgn")]
