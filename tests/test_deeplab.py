"""DeepLabV3+: shapes, the last conv and its chain, MC dropout, determinism, factory sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaseg_pgn.models import DeepLabV3Plus, build_model, compact, mc_dropout, resnet50_sized, set_mc_dropout

TINY = dict(
    layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem_channels=8, aspp_channels=8,
    low_level_channels=4, decoder_channels=8,
)


def tiny(**kw) -> DeepLabV3Plus:
    torch.manual_seed(0)
    return DeepLabV3Plus(5, **{**TINY, **kw})


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _conv_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: calls.append((name, out.detach().clone())))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(64, 96), (37, 53), (65, 97), (1, 1)])
def test_output_shape(output_stride, size):
    model = tiny(output_stride=output_stride).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("output_stride", [8, 16])
def test_encoder_stride(output_stride):
    model = tiny(output_stride=output_stride).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        low, high = model.features(x)
    assert low.shape[-2:] == (16, 24)
    assert high.shape[-2:] == (64 // output_stride, 96 // output_stride)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(64, 96), (37, 53)])
def test_classifier_is_last_conv_and_output_is_its_resize(align_corners, size):
    model = tiny(align_corners=align_corners).eval()
    _randomise_bn(model)
    x = torch.randn(1, 3, *size)
    calls = _conv_calls(model, x)
    assert calls[-1][0] == model.last_conv_name == "head.classifier"
    z = calls[-1][1]
    assert z.shape == (1, 5, -(-(-(-size[0] // 2)) // 2), -(-(-(-size[1] // 2)) // 2))
    with torch.no_grad():
        out = model(x)
    expected = F.interpolate(z, size=size, mode="bilinear", align_corners=align_corners)
    assert torch.equal(out, expected)
    assert model.align_corners is align_corners


def test_head_chain_order_is_conv2_bn2_relu2_dropout_classifier():
    model = tiny().eval()
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
        for name, m in model.named_modules()
        if name.startswith("head.")
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert order[-5:] == ["head.conv2", "head.bn2", "head.relu2", "head.dropout", "head.classifier"]
    head = model.head
    assert isinstance(head.relu2, nn.ReLU) and isinstance(head.dropout, nn.Dropout2d)
    assert head.classifier.kernel_size == (1, 1) and head.classifier.bias is not None
    assert head.conv2.kernel_size == (3, 3)


def test_mc_dropout_is_stochastic_and_leaves_bn_statistics():
    model = tiny(dropout=0.5)
    _randomise_bn(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(1, 3, 32, 48)
    set_mc_dropout(model, True)
    assert model.head.dropout.training
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a, b)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    set_mc_dropout(model, False)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_mc_dropout_context_restores_modes():
    model = tiny(dropout=0.5).train()
    model.head.bn1.eval()
    before = [m.training for m in model.modules()]
    with mc_dropout(model) as m:
        assert m is model
        assert model.head.dropout.training and not model.head.bn2.training
    assert [m.training for m in model.modules()] == before


def test_eval_is_deterministic_and_seed_fixes_weights():
    a, b = tiny(), tiny()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    a.eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(a(x), a(x))
    torch.manual_seed(1)
    c = DeepLabV3Plus(5, **TINY)
    assert not torch.equal(c.head.conv1.weight, a.head.conv1.weight)


def test_factories_and_registry():
    torch.manual_seed(0)
    m = compact()
    n = sum(p.numel() for p in m.parameters())
    assert 0.3e6 <= n <= 1.5e6
    assert m.head.classifier.out_channels == 19 and m.last_conv_name == "head.classifier"
    torch.manual_seed(0)
    assert torch.equal(build_model("compact", 19).head.conv1.weight, m.head.conv1.weight)
    assert build_model("compact", 7, output_stride=8).output_stride == 8
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", 19)
    with pytest.raises(ValueError):
        DeepLabV3Plus(5, **{**TINY, "output_stride": 32})


def test_resnet50_sized_parameter_count():
    m = resnet50_sized()
    n = sum(p.numel() for p in m.parameters())
    assert 38e6 <= n <= 43e6
    assert m.output_stride == 8 and m.config["block"] == "bottleneck"
    assert m.head.classifier.in_channels == 256 and m.head.classifier.out_channels == 19
