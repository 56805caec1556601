import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from metaseg_pgn.baselines import PredictiveAccumulator, ensemble_maps, mc_dropout, mc_dropout_maps


def _entropy(p):
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1)


def test_accumulator_matches_stacked_formula():
    rng = np.random.default_rng(0)
    samples = rng.dirichlet(np.ones(5), size=(7, 2, 3, 4)).transpose(0, 1, 4, 2, 3)  # T, B, C, H, W
    acc = PredictiveAccumulator()
    for s in samples:
        acc.update(torch.from_numpy(s))
    mean, e, mi = acc.compute()
    ref_mean = samples.mean(axis=0)
    ref_e = _entropy(ref_mean) / math.log(5)
    ref_mi = (_entropy(ref_mean) - np.mean([_entropy(s) for s in samples], axis=0)) / math.log(5)
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-6)
    np.testing.assert_allclose(e.numpy(), ref_e, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mi.numpy(), ref_mi, rtol=1e-5, atol=1e-6)
    assert (mi.numpy() >= 0).all()


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout2d(0.5)
        self.cls = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.cls(self.drop(torch.relu(self.bn(self.conv(x)))))


def test_mc_dropout_is_seeded_keeps_batchnorm_in_eval_and_restores_modes():
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(1, 3, 8, 8)
    running = net.bn.running_mean.clone()
    a = mc_dropout_maps(net, x, samples=5, generator_seed=3)
    b = mc_dropout_maps(net, x, samples=5, generator_seed=3)
    c = mc_dropout_maps(net, x, samples=5, generator_seed=4)
    torch.testing.assert_close(a["mcd_E"], b["mcd_E"], rtol=0, atol=0)
    assert not torch.equal(a["mcd_MI"], c["mcd_MI"])
    assert torch.equal(net.bn.running_mean, running)
    assert not net.training and not net.drop.training
    # the same as an explicit loop over stochastic passes with the same seed
    with torch.random.fork_rng():
        torch.manual_seed(3)
        net.drop.train()
        probs = [torch.softmax(net(x), 1).double() for _ in range(5)]
        net.drop.eval()
    mean = torch.stack(probs).mean(0)
    ref_e = -(mean * mean.log()).sum(1) / math.log(4)
    torch.testing.assert_close(a["mcd_E"].double(), ref_e, rtol=1e-5, atol=1e-6)


def test_mc_dropout_without_dropout_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="no dropout layer"):
        with mc_dropout(nn.Conv2d(3, 4, 1)):
            pass


def test_ensemble_of_identical_members_has_zero_mutual_information():
    torch.manual_seed(1)
    net = _Net().eval()
    x = torch.randn(2, 3, 6, 6)
    maps = ensemble_maps([net, net, net], x)
    assert maps["ens_MI"].abs().max() < 1e-6
    p = torch.softmax(net(x), 1).double()
    torch.testing.assert_close(maps["ens_E"].double(), -(p * p.log()).sum(1) / math.log(4), rtol=1e-5, atol=1e-6)


def test_head_only_sampling_equals_full_forward_passes():
    from metaseg_pgn.models.deeplab import compact

    torch.manual_seed(0)
    model = compact(num_classes=5, dropout=0.3).eval()
    x = torch.randn(1, 3, 48, 64)
    trunk, head = model.mc_dropout_split()
    torch.testing.assert_close(head(trunk(x)), model(x), rtol=0, atol=0)
    fast = mc_dropout_maps(model, x, samples=4, generator_seed=7)

    class NoSplit(nn.Module):  # the same network without the split: T full forward passes
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    slow = mc_dropout_maps(NoSplit(model), x, samples=4, generator_seed=7)
    for key in ("mcd_E", "mcd_MI"):
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-5, atol=1e-6)
    assert fast["mcd_MI"].max() > 0  # dropout was really active


def test_entropy_from_logits_is_stable_for_confident_logits():
    z = torch.tensor([[[[60.0]], [[0.0]], [[-40.0]]]])
    acc = PredictiveAccumulator()
    acc.update_logits(z)
    _, e, _ = acc.compute()
    p = torch.softmax(z.double(), 1)
    ref = -(p * torch.log(p)).sum(1) / math.log(3)
    torch.testing.assert_close(e.double(), ref, rtol=1e-4, atol=1e-12)
    assert torch.isfinite(e).all()
