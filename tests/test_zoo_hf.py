"""HuggingFace transformers models (random init from small configs, no download) through
PGNModel: both layers exact against per-pixel autograd, refusals with their reason, a model saved
with ``save_pretrained`` and loaded with ``from_pretrained`` (what the pipeline instantiates)."""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from metaseg_pgn.pgn import LABELS  # noqa: E402
from metaseg_pgn.wrapper import PGNModel  # noqa: E402

from test_pgn import RTOL, autograd_norms, ours_at, sample_pixels  # noqa: E402

C = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_statistics(model, seed=0):
    """BatchNorm statistics and affine parameters as after training (a fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
    return model


def segformer(seed=0, num_labels=C):
    cfg = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16,
        num_labels=num_labels)
    torch.manual_seed(seed)
    return trained_statistics(transformers.SegformerForSemanticSegmentation(cfg), seed).double().eval()


def upernet(seed=0):
    backbone = transformers.ConvNextConfig(num_channels=3, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = transformers.UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_channels=8,
                                     num_labels=C, use_auxiliary_head=True, pool_scales=[1, 2, 3, 6])
    torch.manual_seed(seed)
    return trained_statistics(transformers.UperNetForSemanticSegmentation(cfg), seed).double().eval()


def image(seed, b=2, h=64, w=96):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# last conv, deeper conv, the feature size of a 64 x 96 image
MODELS = {
    "segformer": (segformer, "decode_head.classifier", ("decode_head.linear_fuse", "decode_head.batch_norm"),
                  (16, 24)),
    "upernet": (upernet, "decode_head.classifier", ("decode_head.fpn_bottleneck.conv",
                                                    "decode_head.fpn_bottleneck.batch_norm"), (16, 24)),
}


def autograd_at(model, last_name, prev_name, x, pixels):
    """Per-pixel autograd norms at the last conv's output (feature resolution), both layers."""
    modules = dict(model.named_modules())
    last, prev = modules[last_name], modules[prev_name]
    got = {}
    handle = last.register_forward_hook(lambda m, i, o: got.update(z=o))
    try:
        model(x.clone())
    finally:
        handle.remove()
    return {label: (autograd_norms(got["z"], [last.weight, last.bias], pixels, label, "paper"),
                    autograd_norms(got["z"], [prev.weight], pixels, label, "paper")) for label in LABELS}


@pytest.mark.parametrize("name", list(MODELS))
def test_hf_model_both_layers_exact_against_autograd(name):
    build, last_name, deeper, (h, w) = MODELS[name]
    model = build()
    x = image(1)
    wrapped = PGNModel(model, deeper=True)
    out = wrapped(x)
    assert wrapped.last_conv == last_name and wrapped.deeper_layers == deeper
    assert out.feature_logits.shape == (2, C, h, w)
    assert out.logits.shape == ((2, C, h, w) if name == "segformer" else (2, C, 64, 96))
    pixels = sample_pixels(2, h, w, count=8, seed=2)
    for label, (last, deep) in autograd_at(model, last_name, deeper[0], x, pixels).items():
        torch.testing.assert_close(ours_at(out.maps, "last", label, pixels), last, rtol=RTOL, atol=0)
        torch.testing.assert_close(ours_at(out.maps, "deep", label, pixels), deep, rtol=RTOL, atol=0)


def test_hf_model_through_a_plain_function_and_an_explicit_output():
    model = segformer(3)
    x = image(4)
    reference = PGNModel(model)(x).maps
    for wrapped in (PGNModel(lambda images: model(pixel_values=images).logits),
                    PGNModel(model, output="logits"),
                    PGNModel(lambda images: model(images, return_dict=False), output=0)):
        got = wrapped(x).maps
        assert wrapped.last_conv == "decode_head.classifier"
        for key in reference:
            assert torch.equal(got[key], reference[key]), key


def test_hf_model_under_cpu_bfloat16_autocast():
    model = upernet(5).float()
    x = image(6).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = PGNModel(model, deeper=True)(x)
    assert out.feature_logits.dtype == torch.bfloat16
    assert len(out.maps) == 20 and all(m.dtype == torch.float64 and torch.isfinite(m).all()
                                       for m in out.maps.values())


def test_saved_and_reloaded_hf_model_gives_the_same_maps(tmp_path):
    model = segformer(7)
    model.save_pretrained(tmp_path / "segformer")
    loaded = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "segformer")
    loaded = loaded.double().eval()
    x = image(8)
    a, b = PGNModel(model, deeper=True)(x).maps, PGNModel(loaded, deeper=True)(x).maps
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_mask2former_is_refused_with_the_reason():
    backbone = transformers.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = transformers.Mask2FormerConfig(
        backbone_config=backbone, num_labels=C, hidden_dim=32, feature_size=32, mask_feature_size=32,
        encoder_feedforward_dim=32, dim_feedforward=32, num_queries=6, encoder_layers=1, decoder_layers=2,
        num_attention_heads=2, use_pretrained_backbone=False)
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(cfg).eval()
    with pytest.raises(ValueError, match="mask-classification model"):
        PGNModel(model)(torch.randn(1, 3, 64, 64))


def test_pipeline_runs_a_segformer_loaded_from_a_local_folder(tmp_path):
    """model=custom with the HuggingFace loader as _target_ (model.init=target): infer and features
    run, both layers' maps, predictions at the image size (SegFormer's logits are 1/4 of it)."""
    from conftest import tiny_overrides
    from metaseg_pgn import config as config_mod
    from metaseg_pgn.run import run_pipeline
    from metaseg_pgn.store import read_record

    folder = tmp_path / "segformer"
    segformer(9, num_labels=19).float().save_pretrained(folder)  # infer refuses other class counts
    run = tmp_path / "run"
    cfg = config_mod.compose(tiny_overrides(run, n=2) + [
        "ood_datasets=[]", "stage=[infer,features]", "model.init=target",
        "model._target_=transformers.SegformerForSemanticSegmentation.from_pretrained",
        f"+model.pretrained_model_name_or_path={folder}", "pgn.layers=[last,deep]", "baselines.mc_dropout.samples=2"])
    run_pipeline(cfg)
    records = sorted((run / "infer").rglob("*.npz"))
    assert len(records) == 2
    record = read_record(records[0])
    assert record.pred.shape == (64, 128) and int(record.pred.max()) < 19
    assert len(record.pgn_names) == 20 and any(n.startswith("pgn_deep") for n in record.pgn_names)
    assert list((run / "features").rglob("*.parquet"))
