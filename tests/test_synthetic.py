"""The synthetic world: determinism, label conventions, and that unknown objects stay out of training.

Every check compares the generator's output with an independent computation (HSV thresholds via
matplotlib, morphology via scipy), never with hard-coded numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from PIL import Image
from scipy import ndimage

from metaseg_pgn.data.base import DataError, SegmentationDataset
from metaseg_pgn.data.palette import CLASS_NAMES, VOID
from metaseg_pgn.data.synthetic import (
    BLUR_RADIUS,
    SyntheticOoD,
    SyntheticStreets,
    export_pngs,
    generate_frame,
)

SMALL = (96, 192)  # fast frames for the structural tests
ROAD = CLASS_NAMES.index("road")
REQUIRED = ("road", "sidewalk", "building", "vegetation", "terrain", "sky", "car", "person", "pole",
            "traffic sign")


# ------------------------------------------------------------------------------------------------
# determinism and interface
# ------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_any_order():
    ds = SyntheticStreets("val", n=6, size=SMALL, seed=0)
    forward = [ds[i] for i in range(6)]
    backward = [ds[i] for i in reversed(range(6))][::-1]
    again = SyntheticStreets("val", n=6, size=SMALL, seed=0)[4]
    for a, b in zip(forward, backward):
        assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    assert again.image.tobytes() == forward[4].image.tobytes()
    # a frame does not depend on the size of the split it belongs to
    assert SyntheticStreets("val", n=100, size=SMALL, seed=0)[4].image.tobytes() == forward[4].image.tobytes()


def test_different_seed_split_index_differ():
    a = generate_frame(0, "val", 1, SMALL).image
    for other in (generate_frame(1, "val", 1, SMALL).image, generate_frame(0, "train", 1, SMALL).image,
                  generate_frame(0, "val", 2, SMALL).image):
        assert a.shape == other.shape
        assert np.mean(a != other) > 0.2


@pytest.mark.parametrize("size", [SMALL, (256, 512), (64, 100)])
def test_shapes_dtypes_and_label_values(size):
    ds = SyntheticStreets("train", n=3, size=size, seed=5)
    assert isinstance(ds, SegmentationDataset)
    assert ds.label_kind == "semantic" and ds.num_classes == 19 and ds.name == "synthetic"
    assert ds.frame_ids == ["train_000000", "train_000001", "train_000002"]
    for frame in ds:
        assert frame.image.shape == (*size, 3) and frame.image.dtype == np.uint8
        assert frame.label.shape == size and frame.label.dtype == np.uint8
        values = set(np.unique(frame.label).tolist())
        assert values <= set(range(19)) | {VOID}
        assert frame.image.std() > 10  # a textured picture, not a constant


def test_default_split_sizes_and_ids():
    val = SyntheticStreets("val")
    assert 50 <= len(val) <= 100
    assert val.frame_ids[17] == "val_000017"
    assert val.frame_ids == sorted(val.frame_ids) and len(set(val.frame_ids)) == len(val)
    ood = SyntheticOoD("obstacle", n=4)
    assert ood.frame_ids[3] == "obstacle_000003" and ood.name == "synthetic_obstacle"
    assert ood.label_kind == "ood"


def test_bad_arguments_raise_data_error():
    with pytest.raises(DataError, match="split"):
        SyntheticStreets("training")
    with pytest.raises(DataError, match="track"):
        SyntheticOoD("obstacles")
    ds = SyntheticStreets("val", n=3, size=SMALL)
    with pytest.raises(DataError, match="val_000003"):
        ds.load("val_000003")
    with pytest.raises(DataError, match="train_000001"):
        ds.load("train_000001")
    with pytest.raises(DataError, match="size"):
        SyntheticStreets("val", size=(4, 4))


def test_required_classes_occur_and_void_is_rare():
    counts = np.zeros(256, np.int64)
    for frame in SyntheticStreets("train", n=24, size=(128, 256), seed=0):
        counts += np.bincount(frame.label.ravel(), minlength=256)
    present = {CLASS_NAMES[c] for c in range(19) if counts[c] > 0}
    assert set(REQUIRED) <= present, set(REQUIRED) - present
    assert counts[VOID] / counts.sum() < 0.15  # ego bonnet and a few unlabelled objects only


# ------------------------------------------------------------------------------------------------
# unknown objects never appear in distribution
# ------------------------------------------------------------------------------------------------


def ood_colour_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of saturated magenta, cyan or orange: an independent HSV detector."""
    hsv = rgb_to_hsv(image.astype(np.float64) / 255.0)
    h, s, v = hsv[..., 0] * 360, hsv[..., 1], hsv[..., 2]
    hue = ((h >= 285) & (h <= 335)) | ((h >= 172) & (h <= 196)) | ((h >= 18) & (h <= 40))
    return hue & (s > 0.65) & (v > 0.4)


def largest_component(mask: np.ndarray) -> int:
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    return int(np.bincount(lab.ravel())[1:].max()) if n else 0


@pytest.fixture(scope="module")
def ood_samples():
    out = []
    for track in ("obstacle", "anomaly"):
        ds = SyntheticOoD(track, n=5, size=(192, 384), seed=0)
        out += [(track, ds.load_sample(fid, with_clean=True)) for fid in ds.frame_ids]
    return out


def test_ood_object_changes_only_its_own_pixels(ood_samples):
    """An OoD frame and the same scene rendered without the object differ only on the object."""
    for track, s in ood_samples:
        mask = s.object_mask
        assert mask.any(), track
        # semantic labels: identical outside the object, void on it
        assert np.array_equal(s.semantic[~mask], s.clean_semantic[~mask])
        assert (s.semantic[mask] == VOID).all()
        # images: differences confined to the object grown by the blur radius
        diff = np.any(s.image != s.clean_image, axis=-1)
        # the blur kernel is separable: it reaches BLUR_RADIUS pixels in x and y (a square)
        grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=BLUR_RADIUS)
        assert diff.any()
        assert not (diff & ~grown).any(), f"{track}: {int((diff & ~grown).sum())} changed pixels off the object"


def test_detector_finds_ood_objects_but_nothing_in_distribution(ood_samples):
    for track, s in ood_samples:
        found = ood_colour_mask(s.image)
        assert largest_component(found & s.object_mask) >= 5, track
        # the same scene without the object has none
        assert largest_component(ood_colour_mask(s.clean_image)) < 5, track
    for split, n in (("train", 30), ("val", 10)):
        for frame in SyntheticStreets(split, n=n, size=(192, 384), seed=0):
            assert largest_component(ood_colour_mask(frame.image)) < 5, (split, frame.frame_id)


# ------------------------------------------------------------------------------------------------
# SMIYC label conventions
# ------------------------------------------------------------------------------------------------


def test_obstacle_labels(ood_samples):
    for track, s in ood_samples:
        if track != "obstacle":
            continue
        assert set(np.unique(s.ood).tolist()) <= {0, 1, VOID}
        assert np.array_equal(s.ood == 1, s.object_mask)
        # the object lies on the road: every object pixel was road in the scene without it
        assert (s.clean_semantic[s.object_mask] == ROAD).all()
        # road is 0, everything else (sidewalk, cars, sky, ego bonnet, ...) is void
        assert np.array_equal(s.ood == 0, s.semantic == ROAD)
        assert np.array_equal(s.ood == VOID, ~s.object_mask & (s.semantic != ROAD))


def test_anomaly_labels(ood_samples):
    for track, s in ood_samples:
        if track != "anomaly":
            continue
        assert set(np.unique(s.ood).tolist()) <= {0, 1, VOID}
        assert np.array_equal(s.ood == 1, s.object_mask)
        assert np.array_equal(s.ood == VOID, ~s.object_mask & (s.semantic == VOID))
        assert (s.ood == 0).mean() > 0.5
        # visible enough for SMIYC's component metrics (ground truth < 100 px is made void there)
        assert s.object_mask.sum() >= 100


def test_ood_frame_is_the_frame_of_load(ood_samples):
    ds = SyntheticOoD("anomaly", n=5, size=(192, 384), seed=0)
    frame = ds[2]
    sample = [s for t, s in ood_samples if t == "anomaly"][2]
    assert frame.image.tobytes() == sample.image.tobytes()
    assert frame.label.tobytes() == sample.ood.tobytes()


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------


def test_export_pngs_round_trip(tmp_path):
    sem = SyntheticStreets("val", n=2, size=SMALL, seed=3)
    ood = SyntheticOoD("obstacle", n=2, size=SMALL, seed=3)
    export_pngs(sem, tmp_path / "sem", progress=False)
    export_pngs(ood, tmp_path / "ood", progress=False)
    for frame in sem:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "sem" / "images" / f"{frame.frame_id}.png")), frame.image)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "sem" / "labels" / f"{frame.frame_id}.png")), frame.label)
    for frame in ood:
        path = tmp_path / "ood" / "labels_masks" / f"{frame.frame_id}_labels_semantic.png"
        assert np.array_equal(np.asarray(Image.open(path)), frame.label)
