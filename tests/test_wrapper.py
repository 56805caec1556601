"""PGNModel: finds the last conv (and the deeper layer) by hooks; maps equal the direct functions
and per-pixel autograd through the real model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaseg_pgn.models.deeplab import compact
from metaseg_pgn.pgn import LABELS, PGN_PS, deeper_layer_pgn, last_layer_pgn, map_name, resize_maps
from metaseg_pgn.wrapper import PGNModel, PGNOutput, argmax_channels

from test_pgn import RTOL, all_pixels, autograd_norms, ours_at, random_bn, sample_pixels

C = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(nn.Module):
    """conv(stride 2)-BN-ReLU, conv-BN-ReLU-Dropout, classifier, ×2 bilinear resize; an auxiliary
    head with C channels runs after the classifier (a decoy the search must not take)."""

    def __init__(self, last_kernel=1, align_corners=False, dict_out=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.align_corners = align_corners
        self.dict_out = dict_out
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn1 = random_bn(6, seed + 1)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.bn2 = random_bn(5, seed + 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(0.3)
        self.classifier = nn.Conv2d(5, C, last_kernel, padding=last_kernel // 2)
        self.aux = nn.Conv2d(6, C, 1)
        self.double().eval()

    def features(self, x):
        return torch.relu(self.bn1(self.conv1(x)))

    def feature_logits(self, x):
        return self.classifier(self.drop(self.relu2(self.bn2(self.conv2(self.features(x))))))

    def forward(self, x):
        z = self.feature_logits(x)
        aux = self.aux(self.features(x))
        out = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return {"out": out, "aux": aux} if self.dict_out else out


def image(seed=0, b=2, h=12, w=14):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same_maps(a, b):
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("align_corners", [False, True], ids=["ac0", "ac1"])
def test_wrapper_equals_the_direct_functions_and_autograd(align_corners):
    net = Net(align_corners=align_corners)
    x = image()
    out = PGNModel(net, deeper=True)(x)
    assert isinstance(out, PGNOutput)
    f = net.features(x)
    psi = net.relu2(net.bn2(net.conv2(f)))
    z = net.classifier(psi)
    assert torch.equal(out.feature_logits, z) and torch.equal(out.logits, net(x))
    torch.testing.assert_close(out.probs, torch.softmax(out.logits, 1))
    assert out.pred.dtype == torch.int64 and torch.equal(out.pred, out.logits.argmax(1))
    expected = last_layer_pgn(psi, z, net.classifier)
    expected.update(deeper_layer_pgn(f, net.conv2, net.bn2, psi, z, net.classifier))
    assert_same_maps(out.maps, expected)
    assert all(m.shape == (2, 6, 7) and m.dtype == torch.float64 for m in out.maps.values())

    # and against autograd through the model itself (weights "paper", the default)
    x_grad = x.clone()
    z_graph = net.feature_logits(x_grad)
    pixels = all_pixels(2, 6, 7)
    for label in LABELS:
        last = autograd_norms(z_graph, [net.classifier.weight, net.classifier.bias], pixels, label, "paper")
        deep = autograd_norms(z_graph, [net.conv2.weight], pixels, label, "paper")
        torch.testing.assert_close(ours_at(out.maps, "last", label, pixels), last, rtol=RTOL, atol=0)
        torch.testing.assert_close(ours_at(out.maps, "deep", label, pixels), deep, rtol=RTOL, atol=0)

    torch.testing.assert_close(out.maps_at()[map_name("last", "oh", 2)],
                               resize_maps(out.maps, (12, 14), align_corners)[map_name("last", "oh", 2)])
    assert out.maps_at()[map_name("deep", "uni", 0.1)].shape == (2, 12, 14)


def test_input_resolution_through_the_wrapper_matches_autograd():
    net = Net(last_kernel=3, align_corners=True)
    x = image(1)
    wrapped = PGNModel(net, resolution="input", weights="gradient", deeper=False)
    out = wrapped(x)
    assert all(m.shape == (2, 12, 14) for m in out.maps.values())
    y = net(x)
    pixels = sample_pixels(2, 12, 14, count=12, seed=2)
    for label in LABELS:
        expected = autograd_norms(y, [net.classifier.weight, net.classifier.bias], pixels, label, "gradient")
        torch.testing.assert_close(ours_at(out.maps, "last", label, pixels), expected, rtol=RTOL, atol=0)


def test_found_and_named_conv_give_identical_maps_and_dict_output_works():
    net = Net(dict_out=True)
    x = image(3)
    found = PGNModel(net, deeper=True)
    named = PGNModel(net, "classifier", deeper=True)
    a, b = found(x), named(x)
    assert found.last_conv == "classifier" and found.deeper_layers == ("conv2", "bn2")
    assert_same_maps(a.maps, b.maps)
    assert torch.equal(a.logits, net(x)["out"])
    assert_same_maps(found(x).maps, a.maps)  # the second call hooks only the remembered modules
    assert len(a.maps) == 2 * len(LABELS) * len(PGN_PS)


def test_options_reach_the_maps():
    net = Net()
    x = image(4)
    out = PGNModel(net, ps=(0.5,), labels=("uni",), weights="gradient", include_bias=False)(x)
    assert list(out.maps) == ["pgn_last_uni_p0_5"]
    f = net.features(x)
    psi = net.relu2(net.bn2(net.conv2(f)))
    expected = last_layer_pgn(psi, net.classifier(psi), net.classifier, ps=(0.5,), labels=("uni",),
                              weights="gradient", include_bias=False)
    assert_same_maps(out.maps, expected)
    assert PGNModel(net, labels=())(x).maps == {}


def test_deeplab_found_named_and_deeper():
    torch.manual_seed(0)
    model = compact(num_classes=5).double().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that the ReLU mask is mixed
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    x = image(5, b=2, h=24, w=32)
    found = PGNModel(model, deeper=True)
    named = PGNModel(model, "head.classifier", deeper=True)
    a, b = found(x), named(x)
    assert found.last_conv == "head.classifier" and found.deeper_layers == ("head.conv2", "head.bn2")
    assert_same_maps(a.maps, b.maps)
    assert a.feature_logits.shape == (2, 5, 6, 8) and a.logits.shape == (2, 5, 24, 32)
    assert all(torch.isfinite(m).all() and m.shape == (2, 6, 8) for m in a.maps.values())

    head = model.head
    x_grad = x.clone()
    z = model.forward_stride4(x_grad)
    pixels = sample_pixels(2, 6, 8, count=6, seed=6)
    for label in LABELS:
        deep = autograd_norms(z, [head.conv2.weight], pixels, label, "paper")
        last = autograd_norms(z, [head.classifier.weight, head.classifier.bias], pixels, label, "paper")
        torch.testing.assert_close(ours_at(a.maps, "deep", label, pixels), deep, rtol=RTOL, atol=0)
        torch.testing.assert_close(ours_at(a.maps, "last", label, pixels), last, rtol=RTOL, atol=0)


def test_probs_and_pred_are_computed_when_read():
    net = Net()
    x = image(8)
    out = PGNModel(net)(x)
    assert out._probs is None and out._pred is None  # not part of the maps' cost
    torch.testing.assert_close(out.probs, torch.softmax(out.logits, 1))
    assert out.probs is out.probs and out.pred is out.pred
    assert torch.equal(out.pred, out.logits.argmax(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_argmax_channels_is_argmax(dtype):
    g = torch.Generator().manual_seed(9)
    y = torch.randn(2, 7, 9, 11, generator=g).to(dtype)
    assert torch.equal(argmax_channels(y, chunk_elems=7 * 11 * 3), y.argmax(1))
    ties = torch.randint(0, 3, (2, 7, 9, 11), generator=g).to(dtype)  # many tied maxima
    assert torch.equal(argmax_channels(ties, chunk_elems=7 * 11 * 3), ties.argmax(1))
    y[1, 2, 4, 5] = float("nan")
    assert torch.equal(argmax_channels(y, chunk_elems=7 * 11 * 3), y.argmax(1))


def test_model_hint_names_the_last_conv_without_discovery():
    torch.manual_seed(0)
    model = compact(num_classes=5).eval()
    wrapped = PGNModel(model)
    assert wrapped.last_conv == "head.classifier"  # from model.last_conv_name, before any call
    x = image(10, b=1, h=24, w=32).float()
    first, second = wrapped(x), wrapped(x)  # the second call hooks only the remembered conv
    assert_same_maps(first.maps, second.maps)
    model.last_conv_name = "head.conv2"  # a wrong hint is reported as such
    with pytest.raises(ValueError, match="model.last_conv_name"):
        PGNModel(model)(x)


def test_float32_model_matches_the_float64_computation():
    """The production path: a float32 model; its maps against the float64 computation from the
    same (float32) activations, within the float32 path's bound (see test_pgn.RTOL32)."""
    torch.manual_seed(1)
    model = compact(num_classes=19).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = image(11, b=2, h=64, w=96).float()
    out = PGNModel(model, deeper=True)(x)
    captured = {}
    hooks = [model.head.classifier.register_forward_hook(lambda m, i, o: captured.update(psi=i[0], z=o)),
             model.head.conv2.register_forward_hook(lambda m, i, o: captured.update(prev=i[0]))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    psi, z, prev = (captured[k].double() for k in ("psi", "z", "prev"))
    head = model.head
    expected = last_layer_pgn(psi, z, head.classifier)
    expected.update(deeper_layer_pgn(prev, head.conv2, head.bn2, psi, z, head.classifier))
    for name, m in out.maps.items():
        rtol = 1e-5 if "last" in name or not name.endswith(("p0_1", "p0_3", "p0_5")) else 3e-3
        torch.testing.assert_close(m, expected[name], rtol=rtol, atol=0, msg=name)


def test_inference_mode_works():
    net = Net()
    x = image(7)
    expected = PGNModel(net, deeper=True)(x).maps
    with torch.inference_mode():
        got = PGNModel(net, deeper=True)(x).maps
    assert_same_maps(got, expected)


# ------------------------------------------------------------------------------------------------
# errors


class Scaled(nn.Module):
    """Output = 2 · conv(x): not a conv output."""

    def __init__(self, in_place=False):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 1).double()
        self.in_place = in_place

    def forward(self, x):
        z = self.conv(x)
        return z.mul_(2) if self.in_place else z * 2


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1).double()

    def forward(self, x):
        return self.conv(self.conv(x[:, :1].expand(-1, C, -1, -1)))


class ReluThenBn(nn.Module):
    """conv -> ReLU -> BN -> classifier, or with ``residual`` conv -> BN -> ReLU -> + x -> classifier."""

    def __init__(self, residual=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1).double()
        self.bn = random_bn(5, 8)
        self.classifier = nn.Conv2d(5, C, 1).double()
        self.residual = residual

    def forward(self, x):
        if self.residual:
            return self.classifier(torch.relu(self.bn(self.conv(x))) + x[:, :1])
        return self.classifier(self.bn(torch.relu(self.conv(x))))


def test_output_not_from_a_conv_is_refused():
    with pytest.raises(ValueError, match="does not come from a Conv2d"):
        PGNModel(Scaled())(image())
    with pytest.raises(ValueError, match="in place"):
        PGNModel(Scaled(in_place=True))(image())
    with pytest.raises(ValueError, match="does not come from a Conv2d"):
        PGNModel(Scaled(), "conv")(image())


def test_wrong_align_corners_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="align_corners=True"):
        PGNModel(Net(align_corners=True), align_corners=False)(image())


def test_bad_named_conv_is_refused():
    net = Net()
    with pytest.raises(ValueError, match="not an nn.Conv2d"):
        PGNModel(net, "bn2")
    with pytest.raises(ValueError, match="not a module"):
        PGNModel(net, "head.nothing")
    with pytest.raises(ValueError, match="out-channels"):
        PGNModel(net, "conv2")(image())
    with pytest.raises(ValueError, match="stride"):
        PGNModel(net, "conv1")


def test_shared_conv_is_refused():
    with pytest.raises(ValueError, match="called 2 times"):
        PGNModel(Shared())(image())


def test_deeper_layer_structures_that_do_not_factorise_are_refused():
    with pytest.raises(ValueError, match="1 x 1"):
        PGNModel(Net(last_kernel=3), deeper=True)(image())
    with pytest.raises(ValueError, match="deeper-layer factorisation does not apply"):
        PGNModel(ReluThenBn(), deeper=True)(image())
    with pytest.raises(ValueError, match="deeper-layer factorisation does not apply"):
        PGNModel(ReluThenBn(residual=True), deeper=True)(image())
    net = Net()
    net.bn2.train()
    with pytest.raises(ValueError, match="training mode"):
        PGNModel(net, deeper=True)(image())


def test_bad_options_are_refused():
    net = Net()
    with pytest.raises(ValueError, match="resolution"):
        PGNModel(net, resolution="full")
    with pytest.raises(ValueError, match="weights"):
        PGNModel(net, weights="exact")
    with pytest.raises(ValueError, match="p must be"):
        PGNModel(net, ps=(0,))
    with pytest.raises(TypeError, match="nn.Module or a callable"):
        PGNModel(42)
    with pytest.raises(TypeError, match="output must be"):
        PGNModel(net, output=1.5)
    with pytest.raises(ValueError, match="without key 'out' or 'logits'.*output=KEY"):
        PGNModel(_DictWithoutOut())(image())


class _DictWithoutOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 1).double()

    def forward(self, x):
        return {"scores": self.conv(x)}
