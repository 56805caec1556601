"""Models as the zoos ship them (issue 13): every case is exact against per-pixel autograd or
refused with its reason. Pure torch here; HuggingFace transformers models in test_zoo_hf.py."""

import functools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from metaseg_pgn.outputs import select_logits
from metaseg_pgn.pgn import LABELS, deeper_layer_pgn, last_layer_pgn
from metaseg_pgn.verify import activation_mismatch, conv_mismatch, resize_mismatch
from metaseg_pgn.wrapper import PGNModel

from test_pgn import RTOL, all_pixels, autograd_norms, ours_at, random_bn

C = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------
# convolutions as they exist in the wild


class CosineConv2d(nn.Conv2d):
    """A cosine classifier: 10 · <ψ/|ψ|, k/|k|>."""

    def forward(self, x):
        return 10.0 * F.conv2d(F.normalize(x, dim=1), F.normalize(self.weight, dim=1), self.bias)


class StdConv2d(nn.Conv2d):
    """Weight standardisation as in timm's StdConv2d."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class DoubledConv2d(nn.Conv2d):
    def forward(self, x):
        return 2.0 * super().forward(x)


class Standardize(nn.Module):
    """The same standardisation as a parametrisation: then ``conv.weight`` is the kernel used."""

    def forward(self, w):
        flat = w.flatten(1)
        return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).view_as(w)


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, z):
        return z / self.factor


class Net(nn.Module):
    """conv(stride 2)-BN-ReLU, conv_prev-BN-act, 1 x 1 classifier, optional op after it, x2 resize."""

    def __init__(self, classifier=nn.Conv2d, prev=nn.Conv2d, act=None, post=None, seed=0,
                 dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn1 = random_bn(6, seed + 1)
        self.conv2 = prev(6, 5, 3, padding=1, bias=False)
        self.bn2 = random_bn(5, seed + 2)
        self.act = act if act is not None else nn.ReLU()
        self.classifier = classifier(5, C, 1)
        self.post = post if post is not None else nn.Identity()
        self.to(dtype).eval()

    def feature_logits(self, x):
        f = torch.relu(self.bn1(self.conv1(x)))
        return self.post(self.classifier(self.act(self.bn2(self.conv2(f)))))

    def forward(self, x):
        return F.interpolate(self.feature_logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def image(seed=0, b=2, h=12, w=14, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)


def assert_exact(net, out, x, pixels=None, deeper=True, kernels=None):
    """The wrapper's maps against per-pixel autograd through ``net.feature_logits`` (float64)."""
    pixels = pixels or all_pixels(*out.feature_logits.shape[:1], *out.feature_logits.shape[2:])
    with parametrize.cached():
        last_w, prev_w = kernels() if kernels else (net.classifier.weight, net.conv2.weight)
        z = net.feature_logits(x.clone())
        for label in LABELS:
            last = autograd_norms(z, [last_w, net.classifier.bias], pixels, label, "paper")
            torch.testing.assert_close(ours_at(out.maps, "last", label, pixels), last, rtol=RTOL, atol=0)
            if deeper:
                deep = autograd_norms(z, [prev_w], pixels, label, "paper")
                torch.testing.assert_close(ours_at(out.maps, "deep", label, pixels), deep, rtol=RTOL, atol=0)


# ------------------------------------------------------------------------------------------------
# the silently-wrong cases of issue 13: now refused ...


@pytest.mark.parametrize("cls", [CosineConv2d, StdConv2d, DoubledConv2d])
def test_conv_subclass_as_last_conv_is_refused(cls):
    with pytest.raises(ValueError, match=rf"last conv 'classifier' \({cls.__name__}\) does not compute F.conv2d"):
        PGNModel(Net(classifier=cls))(image())
    with pytest.raises(ValueError, match="does not compute F.conv2d"):  # named, and in float32
        PGNModel(Net(classifier=cls, dtype=torch.float32), "classifier")(image(dtype=torch.float32))


def test_weight_standardised_previous_conv_is_refused_for_the_deeper_layer_only():
    net = Net(prev=StdConv2d)
    x = image(1)
    with pytest.raises(ValueError, match=r"deeper-layer conv 'conv2' \(StdConv2d\) does not compute F.conv2d"):
        PGNModel(net, deeper=True)(x)
    assert_exact(net, PGNModel(net)(x), x, deeper=False)  # the last layer does not involve conv2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("post", [Scale(1.00002), nn.BatchNorm2d(C)], ids=["div1.00002", "fresh_bn"])
def test_near_identity_after_the_last_conv_is_refused(post, dtype):
    """Also in float32: the output check compares with the rounding of a bilinear resize (4 terms)."""
    net = Net(post=post, dtype=dtype)
    with pytest.raises(ValueError, match="an operation after the conv .* changes the logits"):
        PGNModel(net)(image(dtype=dtype))


# ... or exact


def test_relu6_clipping_on_a_later_batch_gives_exact_deeper_maps():
    """The wrapper reused on a batch that clips above 6 in rows the first batch did not: checked on
    every pixel, the clip is found and the mask leaves the clipped entries out."""
    net = Net(act=nn.ReLU6())
    wrapped = PGNModel(net, deeper=True)
    small = image(3, scale=0.05)
    out = wrapped(small)
    assert wrapped.activation_clip is None  # nothing clipped: a ReLU as far as this batch goes
    assert_exact(net, out, small)
    big = image(4, scale=1.0)
    with torch.no_grad():
        net.bn2.bias.copy_(torch.tensor([6.5, 5.0, -1.0, 7.0, 0.5], dtype=torch.float64))
    psi = net.act(net.bn2(net.conv2(torch.relu(net.bn1(net.conv1(big))))))
    assert (psi == 6).any() and ((psi > 0) & (psi < 6)).any()
    out = wrapped(big)
    assert wrapped.activation_clip == 6.0
    assert_exact(net, out, big)


def test_parametrised_weights_are_the_effective_kernels():
    net = Net()
    parametrize.register_parametrization(net.classifier, "weight", Standardize())
    parametrize.register_parametrization(net.conv2, "weight", Standardize())
    x = image(5)
    out = PGNModel(net, deeper=True)(x)
    assert_exact(net, out, x, kernels=lambda: (net.classifier.weight, net.conv2.weight))


def test_checks_run_on_every_call_not_only_the_first():
    net = Net()
    wrapped = PGNModel(net, deeper=True)
    wrapped(image(6))
    net.post = Scale(1.00002)  # the model changes after the first call
    with pytest.raises(ValueError, match="does not match it"):
        wrapped(image(6))


# ------------------------------------------------------------------------------------------------
# models that cannot be factorised


class LRASPPLike(nn.Module):
    """torchvision's LRASPPHead: the logits are the sum of two classifier convs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.low = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.high = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.cbr = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), random_bn(6, 1).float(), nn.ReLU(inplace=True))
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 6, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(4, C, 1)
        self.high_classifier = nn.Conv2d(6, C, 1)
        self.double().eval()

    def forward(self, x):
        low = self.low(x)
        high = self.high(low)
        y = self.cbr(high) * self.scale(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.low_classifier(low) + self.high_classifier(y)
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def test_lraspp_sum_of_two_convs_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="sum of the outputs of two convs.*lraspp"):
        PGNModel(LRASPPLike())(image())


def test_mask_classification_output_is_refused_with_the_reason():
    out = {"class_queries_logits": torch.zeros(1, 6, 5), "masks_queries_logits": torch.zeros(1, 6, 8, 8)}
    with pytest.raises(ValueError, match="mask-classification model .*Mask2Former"):
        select_logits(out)


# ------------------------------------------------------------------------------------------------
# what the model returns


class Returns(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.net = Net()
        self.kind = kind

    def forward(self, x):
        y = self.net(x)
        return {"tensor": y, "dict_out": {"out": y, "aux": y[:, :1]}, "dict_logits": {"logits": y},
                "attr": SimpleNamespace(logits=y, hidden=x), "tuple": (x.sum(), y)}[self.kind]


@pytest.mark.parametrize("kind,output", [("tensor", None), ("dict_out", None), ("dict_logits", None),
                                         ("attr", None), ("attr", "logits"), ("tuple", 1), ("tuple", -1),
                                         ("tuple", lambda out: out[1]), ("dict_out", "out")])
def test_every_kind_of_output_gives_the_same_maps(kind, output):
    x = image(7)
    reference = PGNModel(Net(), deeper=True)(x).maps
    got = PGNModel(Returns(kind), output=output, deeper=True)(x).maps
    assert list(got) == list(reference)
    for name in got:
        assert torch.equal(got[name], reference[name]), name


def test_unselected_or_wrong_outputs_are_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"tuple of 2 elements .*pass output=INDEX"):
        PGNModel(Returns("tuple"))(image())
    with pytest.raises(ValueError, match="output='scores'.*without that key"):
        PGNModel(Returns("dict_out"), output="scores")(image())
    with pytest.raises(ValueError, match="output=5.*tuple of 2"):
        PGNModel(Returns("tuple"), output=5)(image())
    with pytest.raises(ValueError, match=r"output=0 must be floating-point logits \(B, C, H, W\)"):
        PGNModel(Returns("tuple"), output=0)(image())


def test_plain_callables_are_wrapped_and_named_from_their_modules():
    net = Net()
    x = image(8)
    reference = PGNModel(net, deeper=True)(x).maps
    cases = [(lambda images: {"seg": net(images)}, "seg"), (functools.partial(net.forward), None),
             (net.forward, None)]
    for fn, output in cases:
        wrapped = PGNModel(fn, output=output, deeper=True)
        got = wrapped(x).maps
        assert wrapped.last_conv == "classifier" and wrapped.deeper_layers == ("conv2", "bn2")
        for name in got:
            assert torch.equal(got[name], reference[name]), name
    # a callable whose modules cannot be seen: named by type, the last conv given as the module
    hidden = {"net": net}
    wrapped = PGNModel(lambda images: hidden["net"](images), last_conv=net.classifier)
    assert wrapped.last_conv.startswith("Conv2d#")
    torch.testing.assert_close(wrapped(x).maps["pgn_last_oh_p2"], reference["pgn_last_oh_p2"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# mixed precision


def capture(net, x):
    """ψ_prev, ψ, z as the model computes them (hooks), under the caller's autocast state."""
    got = {}
    hooks = [net.classifier.register_forward_hook(lambda m, i, o: got.update(psi=i[0], z=o)),
             net.conv2.register_forward_hook(lambda m, i, o: got.update(prev=i[0], u=o))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return got


def test_cpu_bfloat16_autocast_maps_are_those_of_the_captured_tensors():
    """Under autocast the maps (float32, outside autocast) equal the float64 reference computed from
    the tensors the convs read (ψ rounded to bfloat16) and wrote, to the float32 path's accuracy."""
    net = Net(dtype=torch.float32)
    x = image(9, b=2, h=24, w=28, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = PGNModel(net, deeper=True)(x)
        t = capture(net, x)
    assert t["z"].dtype == torch.bfloat16 and out.feature_logits.dtype == torch.bfloat16
    f64 = torch.float64
    psi, z, prev = t["psi"].to(torch.bfloat16).to(f64), t["z"].to(f64), t["prev"].to(t["u"].dtype).to(f64)
    expected = last_layer_pgn(psi, z, net.classifier, backend="reference")
    expected.update(deeper_layer_pgn(prev, net.conv2, net.bn2, t["psi"].to(f64), z, net.classifier,
                                     backend="reference"))
    for name, m in out.maps.items():
        assert m.dtype == f64 and torch.isfinite(m).all()
        rtol = 1e-5 if "last" in name or not name.endswith(("p0_1", "p0_3", "p0_5")) else 3e-3
        torch.testing.assert_close(m, expected[name], rtol=rtol, atol=0, msg=name)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_pgn_functions_called_under_autocast_compute_outside_it(backend):
    net = Net(dtype=torch.float32)
    t = capture(net, image(10, dtype=torch.float32))
    kw = {"backend": backend}
    expected = deeper_layer_pgn(t["prev"], net.conv2, net.bn2, t["psi"], t["z"], net.classifier, **kw)
    expected.update(last_layer_pgn(t["psi"], t["z"], net.classifier, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = deeper_layer_pgn(t["prev"], net.conv2, net.bn2, t["psi"], t["z"], net.classifier, **kw)
        got.update(last_layer_pgn(t["psi"], t["z"], net.classifier, **kw))
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


# ------------------------------------------------------------------------------------------------
# the checks themselves, against hand-made deviations


def test_checks_pass_the_model_and_fail_a_deviation_of_one_element():
    """Every element counts: one logit changed by 1e-9 of its value fails the float64 checks."""
    net = Net()
    x = image(11)
    t = capture(net, x)
    y = net(x)
    assert conv_mismatch(t["psi"], t["z"], net.classifier).ok
    assert conv_mismatch(t["prev"], t["u"], net.conv2, projections=2).ok
    assert resize_mismatch(t["z"], y, False).ok and not resize_mismatch(t["z"], y, True).ok
    assert resize_mismatch(t["z"], y, False, projections=2).ok
    m, clip = activation_mismatch(t["u"], net.bn2, t["psi"])
    assert m.ok and clip is None
    for tensor, check in [(t["z"], lambda z: conv_mismatch(t["psi"], z, net.classifier)),
                          (t["u"], lambda u: conv_mismatch(t["prev"], u, net.conv2, projections=2)),
                          (y, lambda yy: resize_mismatch(t["z"], yy, False)),
                          (y, lambda yy: resize_mismatch(t["z"], yy, False, projections=2)),
                          (t["psi"], lambda p: activation_mismatch(t["u"], net.bn2, p)[0])]:
        bad = tensor.clone()
        idx = (1, 2, bad.shape[2] - 1, 3)
        bad[idx] = bad[idx] * (1 + 1e-9) + (1e-9 if bad[idx] == 0 else 0.0)
        assert not check(bad).ok
