"""The pipeline's model loader: input normalisation presets and the output selector, down to an
infer run with a model that returns a tuple."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_overrides
from metaseg_pgn import config as config_mod
from metaseg_pgn.models.deeplab import compact
from metaseg_pgn.models.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    input_normalization,
    load_model,
    output_selector,
)
from metaseg_pgn.run import run_pipeline
from metaseg_pgn.data.select import dataset_configs, make_dataset
from metaseg_pgn.store import read_record


class TupleOut(nn.Module):
    """The compact model returning ``(aux, logits)``, like research code with ``return_dict=False``."""

    def __init__(self, num_classes):
        super().__init__()
        torch.manual_seed(0)
        self.net = compact(num_classes)

    def forward(self, x):
        y = self.net(x)
        return y[:, :1], y


def tuple_compact(num_classes: int = 19):
    return TupleOut(num_classes)


class QuarterLogits(TupleOut):
    """Logits at 1/4 of the image size in a dict under 'logits', like HuggingFace's SegFormer."""

    def forward(self, x):
        return {"logits": self.net.forward_stride4(x)}


def quarter_compact(num_classes: int = 19):
    return QuarterLogits(num_classes)


def test_normalization_presets_and_custom_values():
    assert input_normalization({}) == (IMAGENET_MEAN, IMAGENET_STD)
    assert input_normalization({"normalize": "imagenet", "mean": None}) == (IMAGENET_MEAN, IMAGENET_STD)
    assert input_normalization({"normalize": "none"}) == ((0.0,) * 3, (1.0,) * 3)
    assert input_normalization({"normalize": "custom", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1]}) == (
        (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))


@pytest.mark.parametrize("cfg,message", [
    ({"normalize": "custom", "mean": [0.5, 0.5, 0.5]}, "needs model.mean and model.std"),
    ({"normalize": "imagenet", "mean": [0.5, 0.5, 0.5]}, "model.mean given but model.normalize=imagenet"),
    ({"normalize": "custom", "mean": [0.5, 0.5], "std": [1, 1, 1]}, r"model.mean=\[0.5, 0.5\]: give three"),
    ({"normalize": "custom", "mean": [0, 0, 0], "std": [1, 0, 1]}, r"model.std=.*three finite numbers > 0"),
    ({"normalize": "inet"}, "model.normalize='inet': choose imagenet, none or custom"),
])
def test_bad_normalization_is_one_clear_error(cfg, message):
    with pytest.raises(ValueError, match=message):
        input_normalization(cfg)


def test_output_selector_is_checked():
    assert output_selector({}) is None and output_selector({"output": "logits"}) == "logits"
    assert output_selector({"output": 1}) == 1 and output_selector({"output": "-1"}) == -1  # from the CLI
    with pytest.raises(ValueError, match="model.output=1.5"):
        output_selector({"output": 1.5})
    with pytest.raises(ValueError, match="model.output=True"):
        output_selector({"output": True})


def test_preprocess_applies_the_configured_normalization():
    cfg = {"name": "custom", "_target_": "metaseg_pgn.models.compact", "init": "random", "num_classes": 5,
           "normalize": "custom", "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]}
    loaded = load_model(cfg, torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    x = loaded.preprocess([image], torch.device("cpu"))
    expected = (image.astype(np.float64) / 255 - np.array(cfg["mean"])) / np.array(cfg["std"])
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_infer_runs_a_model_that_returns_a_tuple(tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(run, n=2) + ["ood_datasets=[]", "stage=infer", f"model._target_={__name__}.tuple_compact",
                                     "model.output=1", "model.normalize=none"]
    cfg = config_mod.compose(ov)
    run_pipeline(cfg)
    records = sorted((run / "infer").rglob("*.npz"))
    assert len(records) == 2
    # the prediction is that of the logits (element 1) for the image in [0, 1]
    ds = make_dataset(dataset_configs(cfg)[0])
    frame = ds.load(ds.frame_ids[0])
    model = tuple_compact(19).eval()
    with torch.no_grad():
        x = torch.from_numpy(frame.image).permute(2, 0, 1)[None].float() / 255
        pred = model(x)[1].argmax(1)[0].numpy()
    record = read_record(next(p for p in records if p.stem == frame.frame_id))
    assert np.array_equal(record.pred, pred.astype(np.uint8))
    assert record.baselines is not None and np.isfinite(record.baselines.astype(np.float64)).all()


def test_a_model_with_logits_smaller_than_the_image_predicts_at_the_image_size(tmp_path):
    """SegFormer-like output (1/4 size, key 'logits'): prediction, baselines and features at the image
    size; the prediction is the argmax of the logits resized bilinearly."""
    run = tmp_path / "run"
    ov = tiny_overrides(run, n=2) + ["ood_datasets=[]", "stage=[infer,features]",
                                     f"model._target_={__name__}.quarter_compact"]
    cfg = config_mod.compose(ov)
    run_pipeline(cfg)
    ds = make_dataset(dataset_configs(cfg)[0])
    frame = ds.load(ds.frame_ids[1])
    loaded = load_model(cfg["model"], torch.device("cpu"))
    model = quarter_compact(19).eval()
    with torch.no_grad():
        z = model(loaded.preprocess([frame.image], torch.device("cpu")))["logits"]
        pred = F.interpolate(z, size=frame.image.shape[:2], mode="bilinear", align_corners=False).argmax(1)[0]
    record = read_record(next((run / "infer").rglob(f"{frame.frame_id}.npz")))
    assert z.shape[-2:] == (16, 32) and record.pred.shape == frame.image.shape[:2]
    assert np.array_equal(record.pred, pred.numpy().astype(np.uint8))
    assert record.baselines.shape[-2:] == frame.image.shape[:2]
    assert list((run / "features").rglob("*.parquet"))


@pytest.mark.parametrize("extra,message", [
    (["model.normalize=custom"], "model.normalize=custom needs model.mean and model.std"),
    (["model.mean=[0.5,0.5,0.5]"], "model.mean given but model.normalize=imagenet"),
    (["model.normalize=bgr"], "model.normalize"),
])
def test_bad_normalization_is_refused_when_the_configuration_is_composed(tmp_path, extra, message):
    with pytest.raises(config_mod.ConfigError, match=message):
        config_mod.compose(tiny_overrides(tmp_path / "run") + extra)
