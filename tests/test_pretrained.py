"""The shipped weights: they load, they reach their recorded val mIoU, and bad files fail clearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from metaseg_pgn.data.synthetic import SyntheticStreets
from metaseg_pgn.metrics.segmentation import ConfusionMatrix
from metaseg_pgn.models.deeplab import build_model
from metaseg_pgn.models.pretrained import (
    WEIGHTS_DIR,
    available_seeds,
    ensemble,
    load_pretrained,
    pretrained_record,
    weights_path,
)

NAME = "synthetic_compact"
SEEDS = available_seeds(NAME)


def reference_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int = 19) -> np.ndarray:
    """IoU per class by direct set counting (independent of the confusion-matrix code)."""
    valid = gt != 255
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        p, g = (pred == c) & valid, (gt == c) & valid
        union = np.logical_or(p, g).sum()
        if union:
            out[c] = np.logical_and(p, g).sum() / union
    return out


def test_confusion_matrix_and_miou_match_direct_counting():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, (3, 40, 50)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 6, gt.shape)).astype(np.uint8)
    pred[gt == 255] = rng.integers(0, 6, int((gt == 255).sum()))
    cm = ConfusionMatrix(19)  # what train's val mIoU is measured with, fed a batch (N, H, W)
    cm.update(pred, gt)
    assert cm.matrix.sum() == (gt != 255).sum()
    for g in range(6):
        for p in range(6):
            assert cm.matrix[g, p] == np.sum((gt == g) & (pred == p))
    ref = reference_iou(pred, gt)
    np.testing.assert_allclose(cm.iou(), ref, equal_nan=True)
    assert cm.miou() == pytest.approx(np.nanmean(ref))


def test_weights_are_shipped_small_and_recorded():
    assert 0 in SEEDS, f"no shipped weights {weights_path(NAME, 0)}"
    total = 0
    for seed in SEEDS:
        path = weights_path(NAME, seed)
        size = path.stat().st_size
        total += size
        assert size <= 3.2e6, path
        rec = pretrained_record(NAME, seed)
        assert rec["seed"] == seed and rec["name"] == NAME
        for key in ("model", "normalization", "training", "torch", "date", "timing", "val_iou", "val"):
            assert key in rec, key
        assert 0.0 < rec["val_miou"] <= 1.0
        assert rec["timing"]["train_seconds"] > 0 and rec["val"]["n"] > 0
    assert total <= 10e6


# The first N_VAL of the recorded validation frames (a frame does not depend on the split's size):
# on them each shipped member's mIoU is within MIOU_TOL of its recorded 80-frame val mIoU (measured:
# 0.726, 0.702, 0.696 against 0.741, 0.719, 0.717); the same network randomly initialised, or with
# its shipped weights shuffled, scores below 0.05 (test_the_miou_check_fails_for_wrong_weights).
N_VAL = 8
MIOU_TOL = 0.05


@pytest.fixture(scope="module")
def val_frames():
    v = pretrained_record(NAME, 0)["val"]
    ds = SyntheticStreets(v["split"], n=min(N_VAL, v["n"]), size=tuple(v["size"]), seed=v["seed"])
    frames = list(ds)
    return np.stack([f.image for f in frames]), np.stack([f.label for f in frames])


def frames_miou(model: torch.nn.Module, val_frames, rec: dict) -> float:
    """mIoU (direct set counting) of ``model``'s predictions on the frames, normalised as recorded."""
    images, labels = val_frames
    assert images.shape[1:3] == tuple(rec["val"]["size"])
    mean = torch.tensor(rec["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(rec["normalization"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        pred = model((x - mean) / std).argmax(1).numpy()
    return float(np.nanmean(reference_iou(pred, labels)))


@pytest.mark.parametrize("seed", SEEDS)
def test_shipped_weights_reach_recorded_val_miou(seed, val_frames):
    rec = pretrained_record(NAME, seed)
    model = load_pretrained(NAME, seed)
    assert not model.training
    assert frames_miou(model, val_frames, rec) == pytest.approx(rec["val_miou"], abs=MIOU_TOL)


def test_the_miou_check_fails_for_wrong_weights(val_frames):
    """The check above on N_VAL frames still tells trained weights from wrong ones: the architecture
    of the record randomly initialised, and the shipped weights of seed 0 with every tensor's
    entries shuffled, fall far outside the tolerance."""
    rec = pretrained_record(NAME, 0)
    torch.manual_seed(0)
    random_init = build_model(rec["model"]["factory"], rec["model"]["num_classes"], **rec["model"]["kwargs"]).eval()
    shuffled = load_pretrained(NAME, 0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in shuffled.state_dict().values():
            if tensor.is_floating_point():
                flat = tensor.view(-1)
                flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    for model in (random_init, shuffled):
        miou = frames_miou(model, val_frames, rec)
        assert miou < 0.05 and abs(miou - rec["val_miou"]) > 10 * MIOU_TOL


@pytest.mark.skipif(len(SEEDS) < 2, reason="only one member shipped")
def test_ensemble_members_differ():
    members = ensemble(NAME, SEEDS)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        outs = [m(x) for m in members]
    assert all(not torch.equal(outs[0], o) for o in outs[1:])


def test_missing_weights_name_the_file():
    with pytest.raises(FileNotFoundError, match=r"synthetic_compact_seed987\.json"):
        load_pretrained(NAME, seed=987)
    with pytest.raises(FileNotFoundError, match="no_such_model_seed0"):
        pretrained_record("no_such_model", 0)


def test_corrupt_or_mismatched_weights_are_rejected(tmp_path):
    src = weights_path(NAME, 0)
    rec = pretrained_record(NAME, 0)
    # a record whose architecture does not fit the weights
    bad = dict(rec, model=dict(rec["model"], kwargs={"decoder_channels": 32}))
    shutil.copy(src, tmp_path / "wrong_seed0.pt")
    (tmp_path / "wrong_seed0.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"wrong_seed0\.pt.*do not fit"):
        load_pretrained("wrong", 0, directory=tmp_path)
    # a file whose bytes differ from the recorded checksum
    blob = bytearray(src.read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / "flipped_seed0.pt").write_bytes(bytes(blob))
    (tmp_path / "flipped_seed0.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"flipped_seed0\.pt.*checksum"):
        load_pretrained("flipped", 0, directory=tmp_path)
    assert WEIGHTS_DIR.exists()
