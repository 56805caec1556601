"""The factorised PGN maps against per-pixel autograd (float64, relative error <= 1e-6).

The reference takes one pixel's loss of the model output, differentiates it w.r.t. the conv's
kernel (and bias) with autograd, flattens the gradient and computes ``(Σ|g|^p)^(1/p)`` directly.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaseg_pgn.pgn import (
    LABELS,
    PGN_PS,
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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: extra threads only contend on a shared machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
def test_last_layer_feature_resolution_matches_autograd(conv_name, bias, weights):
    conv = make_conv(CHANNELS, CLASSES, *CONVS[conv_name], bias, seed=1)
    psi = make_psi(seed=2)
    out = conv(psi)
    maps = last_layer_pgn(psi, out.detach(), conv, weights=weights)
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
def test_last_layer_input_resolution_matches_autograd(conv_name, bias, weights, align_corners):
    conv = make_conv(CHANNELS, CLASSES, *CONVS[conv_name], bias, seed=3)
    psi = make_psi(seed=4)
    z = conv(psi)
    size = (UP * z.shape[2], UP * z.shape[3])
    out = F.interpolate(z, size=size, mode="bilinear", align_corners=align_corners)
    maps = last_layer_pgn(psi, z.detach(), conv, weights=weights, resolution="input", output_size=size,
                          align_corners=align_corners, chunk_rows=7)
    params = [conv.weight] + ([conv.bias] if bias else [])
    pixels = sample_pixels(B, *size, count=16, seed=5)
    for name in maps:
        assert maps[name].shape == (B, *size)
    for label in LABELS:
        expected = autograd_norms(out, params, pixels, label, weights)
        torch.testing.assert_close(ours_at(maps, "last", label, pixels), expected, rtol=RTOL, atol=0)


def test_bias_left_out_on_request():
    conv = make_conv(CHANNELS, CLASSES, 3, 1, 1, True, seed=32)
    psi = make_psi(seed=33)
    out = conv(psi)
    for resolution, size in [("feature", None), ("input", (11, 13))]:
        maps = last_layer_pgn(psi, out.detach(), conv, include_bias=False, resolution=resolution,
                              output_size=size)
        y = out if size is None else F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        pixels = all_pixels(B, *y.shape[2:])[::5]
        expected = autograd_norms(y, [conv.weight], pixels, "oh", "paper")
        torch.testing.assert_close(ours_at(maps, "last", "oh", pixels), expected, rtol=RTOL, atol=0)


def test_input_resolution_all_pixels_of_a_small_map_and_a_downsample():
    conv = make_conv(CHANNELS, CLASSES, 3, 1, 1, True, seed=6)
    psi = make_psi(seed=7, h=3, w=4)
    z = conv(psi)
    for size in [(5, 9), (2, 3)]:  # non-integer up-scaling, and a down-scaling
        out = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
        maps = last_layer_pgn(psi, z.detach(), conv, weights="gradient", resolution="input", output_size=size)
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
def test_deeper_layer_matches_autograd(prev_dilation, prev_bias, weights):
    conv_prev = make_conv(3, CHANNELS, 3, prev_dilation, prev_dilation, prev_bias, seed=10)
    bn = random_bn(CHANNELS, seed=11)
    conv_last = make_conv(CHANNELS, CLASSES, 1, 1, 0, True, seed=12)
    psi_prev = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    psi = torch.relu(bn(conv_prev(psi_prev)))
    out = conv_last(nn.Dropout(0.5).eval()(psi))
    assert (psi == 0).any() and (psi > 0).any()
    maps = deeper_layer_pgn(psi_prev, conv_prev, bn, psi.detach(), out.detach(), conv_last, weights=weights)
    params = [conv_prev.weight] + ([conv_prev.bias] if prev_bias else [])
    pixels = all_pixels(B, H, W)
    for label in LABELS:
        expected = autograd_norms(out, params, pixels, label, weights)
        torch.testing.assert_close(ours_at(maps, "deep", label, pixels), expected, rtol=RTOL, atol=0)


def test_deeper_layer_without_batchnorm_matches_autograd():
    conv_prev = make_conv(3, CHANNELS, 3, 1, 1, True, seed=14)
    conv_last = make_conv(CHANNELS, CLASSES, 1, 1, 0, False, seed=15)
    psi_prev = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    psi = torch.relu(conv_prev(psi_prev))
    out = conv_last(psi)
    maps = deeper_layer_pgn(psi_prev, conv_prev, None, psi.detach(), out.detach(), conv_last,
                            weights="gradient", labels=("uni",))
    pixels = all_pixels(B, H, W)
    expected = autograd_norms(out, [conv_prev.weight, conv_prev.bias], pixels, "uni", "gradient")
    torch.testing.assert_close(ours_at(maps, "deep", "uni", pixels), expected, rtol=RTOL, atol=0)


def test_p01_with_2304_entry_patches_and_large_activations_is_finite_and_exact():
    g = torch.Generator().manual_seed(17)
    torch.manual_seed(18)
    conv = nn.Conv2d(256, 19, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(1e-3)  # logits of order 1: a spread-out softmax
    psi = (torch.rand(1, 256, 5, 5, generator=g, dtype=torch.float64) * 2 - 1) * 1e3
    out = conv(psi)
    maps = last_layer_pgn(psi, out.detach(), conv, ps=(0.1,))
    for m in maps.values():
        assert torch.isfinite(m).all()
    # the regime that motivates float64: these values overflow float32
    assert max(float(m.max()) for m in maps.values()) > torch.finfo(torch.float32).max
    pixels = [(0, 0, 0), (0, 2, 2), (0, 4, 3)]
    for label in LABELS:
        expected = autograd_norms(out, [conv.weight, conv.bias], pixels, label, "paper", ps=(0.1,))
        torch.testing.assert_close(ours_at(maps, "last", label, pixels, ps=(0.1,)), expected, rtol=RTOL, atol=0)
    up = last_layer_pgn(psi, out.detach(), conv, ps=(0.1,), resolution="input", output_size=(9, 9))
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


def test_bad_input_is_refused():
    conv = make_conv(CHANNELS, CLASSES, 3, 1, 1, False, seed=25)
    psi = make_psi(seed=26)
    z = conv(psi).detach()
    bad = psi.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        last_layer_pgn(bad, z, conv)
    with pytest.raises(ValueError, match="NaN/inf"):
        last_layer_pgn(psi, z * float("inf"), conv)
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
