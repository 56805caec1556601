"""Dataset adapters on small file trees built here: layouts, ids, label mappings, bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from metaseg_pgn.data.base import DataError, Frame, SegmentationDataset, check_label_size, relabel
from metaseg_pgn.data.cityscapes import Cityscapes
from metaseg_pgn.data.folder import ImageFolder, expand_pattern
from metaseg_pgn.data.io import read_image, read_label
from metaseg_pgn.data.registry import dataset_names, get_dataset
from metaseg_pgn.data.smiyc import (
    NO_KNOWN_EXCLUDE_PREFIXES,
    FishyscapesLAF,
    LostAndFound,
    RoadAnomaly21,
    RoadObstacle21,
)

HAS_WEBP = features.check("webp")
needs_webp = pytest.mark.skipif(not HAS_WEBP, reason="pillow built without WebP")

H, W = 6, 8


# --------------------------------------------------------------------------------------------------
# Writing fixture files


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def save_image(path: Path, array: np.ndarray) -> Path:
    """PNG and WebP losslessly, so the pixels read back exactly; JPEG at high quality."""
    if path.suffix == ".webp":
        return save(path, array, lossless=True)
    if path.suffix in (".jpg", ".jpeg"):
        return save(path, array, quality=95)
    return save(path, array)


def label_map(values, h: int = H, w: int = W) -> np.ndarray:
    """A label holding ``values`` in raster order, the rest filled with the first value."""
    out = np.full(h * w, values[0], dtype=np.uint8)
    out[: len(values)] = values
    return out.reshape(h, w)


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------------
# io: read_image / read_label


def test_read_image_png_roundtrip_and_conversions(tmp_path):
    img = rgb(0)
    assert np.array_equal(read_image(save(tmp_path / "a.png", img)), img)

    grey = img[..., 0]
    out = read_image(save(tmp_path / "g.png", grey))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[..., c], grey) for c in range(3))

    rgba = np.dstack([img, np.full((H, W), 7, np.uint8)])
    assert np.array_equal(read_image(save(tmp_path / "a_rgba.png", rgba)), img)


def test_read_image_jpg_and_webp(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = (200, 40, 90)
    out = read_image(save_image(tmp_path / "a.jpg", img))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # Lossy, but the same picture: away from the edge the colours come back closely.
    assert np.abs(out[:, :4].astype(int) - img[:, :4]).max() < 10
    assert np.abs(out[:, 12:].astype(int) - img[:, 12:]).max() < 10
    if HAS_WEBP:
        assert np.array_equal(read_image(save_image(tmp_path / "a.webp", img)), img)


def test_read_label_grey_palette_and_16bit(tmp_path):
    lab = label_map([0, 1, 2, 255, 18])
    assert np.array_equal(read_label(save(tmp_path / "l.png", lab)), lab)

    pal = Image.fromarray(lab, mode="L").convert("P")  # identity palette first ...
    pal.putpalette([(3 * i + 11) % 256 for i in range(768)])  # ... then colours unlike the indices
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_label(tmp_path / "p.png"), lab)

    out = read_label(save(tmp_path / "l16.png", lab.astype(np.uint16)))
    assert Image.open(tmp_path / "l16.png").mode.startswith("I")
    assert out.dtype == np.uint8 and np.array_equal(out, lab)


def test_read_label_rejects_16bit_values_above_255(tmp_path):
    arr = np.zeros((H, W), np.uint16)
    arr[0, :3] = (300, 1000, 12)
    path = save(tmp_path / "wide.png", arr)
    with pytest.raises(DataError) as err:
        read_label(path)
    assert str(path) in str(err.value) and "300" in str(err.value) and "1000" in str(err.value)


def test_read_label_rejects_more_than_one_channel(tmp_path):
    path = save(tmp_path / "colour.png", rgb(1))
    with pytest.raises(DataError, match="single channel") as err:
        read_label(path)
    assert str(path) in str(err.value)
    path = save(tmp_path / "la.png", np.zeros((H, W, 2), np.uint8))
    with pytest.raises(DataError, match="single channel"):
        read_label(path)


@pytest.mark.parametrize("reader", [read_image, read_label])
def test_missing_and_unreadable_files_name_the_file(tmp_path, reader):
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="does not exist") as err:
        reader(missing)
    assert str(missing) in str(err.value)

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError, match="cannot read") as err:
        reader(garbage)
    assert str(garbage) in str(err.value)

    with pytest.raises(DataError, match="not a file"):
        reader(tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_image_fails_even_if_pil_is_told_to_pad(tmp_path, monkeypatch, suffix, load_truncated):
    if suffix == ".webp" and not HAS_WEBP:
        pytest.skip("no WebP")
    # Another library may have switched PIL to padding truncated files; we must not follow it.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    path = truncate(save_image(tmp_path / f"t{suffix}", rgb(2, 64, 64)))
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # the switch is restored


def test_truncated_label_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    lab = np.random.default_rng(3).integers(0, 19, (64, 64), dtype=np.uint8)
    path = truncate(save(tmp_path / "l.png", lab))
    with pytest.raises(DataError, match=r"l\.png"):
        read_label(path)


def test_check_label_size_names_both_files_and_sizes():
    with pytest.raises(DataError) as err:
        check_label_size(np.zeros((6, 8, 3)), np.zeros((5, 8)), Path("img.png"), Path("lab.png"))
    msg = str(err.value)
    assert "img.png" in msg and "lab.png" in msg and "8x6" in msg and "8x5" in msg
    check_label_size(np.zeros((6, 8, 3)), np.zeros((6, 8)), Path("img.png"), Path("lab.png"))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_relabel_every_id_and_out_of_range_values(dtype):
    mapping = {0: 3, 7: 0, 200: 1, 255: 9}
    ids = np.arange(256) if dtype == np.uint8 else np.arange(-300, 600)
    got = relabel(ids.astype(dtype).reshape(-1, 4), mapping, default=250)
    expected = [mapping.get(int(v), 250) if 0 <= v <= 255 else 250 for v in ids]
    assert got.dtype == np.uint8 and got.shape == (ids.size // 4, 4)
    assert got.ravel().tolist() == expected


# --------------------------------------------------------------------------------------------------
# Cityscapes

# labelIds -> trainIds, written out from the Cityscapes label table (independent of palette.py).
CS_PAIRS = [(0, 255), (1, 255), (6, 255), (7, 0), (8, 1), (9, 255), (11, 2), (17, 5), (19, 6),
            (24, 11), (26, 13), (29, 255), (30, 255), (31, 16), (33, 18), (255, 255)]
CS_FRAMES = [("bochum", "000000_000019"), ("aachen", "000001_000019"), ("aachen", "000000_000019")]


def make_cityscapes(root: Path, split: str = "val", label_ids: bool = True, train_ids: bool = False,
                    frames=CS_FRAMES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a Cityscapes tree; return frame id -> (image, expected trainIds)."""
    expected = {}
    raw = label_map([p[0] for p in CS_PAIRS])
    train = label_map([p[1] for p in CS_PAIRS])
    for i, (city, stem) in enumerate(frames):
        fid = f"{city}_{stem}"
        img = rgb(10 + i)
        save(root / "leftImg8bit" / split / city / f"{fid}_leftImg8bit.png", img)
        gt = root / "gtFine" / split / city
        if label_ids:
            save(gt / f"{fid}_gtFine_labelIds.png", np.roll(raw, i))
        if train_ids:
            save(gt / f"{fid}_gtFine_labelTrainIds.png", np.roll(train, i))
        expected[fid] = (img, np.roll(train, i))
    return expected


def test_cityscapes_ids_order_and_label_mapping(tmp_path):
    expected = make_cityscapes(tmp_path)
    ds = Cityscapes(tmp_path, split="val")
    assert isinstance(ds, SegmentationDataset)
    assert ds.frame_ids == ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000019"]
    assert (ds.name, ds.split, ds.label_kind, ds.num_classes, len(ds)) == ("cityscapes", "val", "semantic", 19, 3)
    assert ds.label_source == "labelIds"
    for i, frame in enumerate(ds):
        assert isinstance(frame, Frame) and frame.frame_id == ds.frame_ids[i]
        img, train = expected[frame.frame_id]
        assert np.array_equal(frame.image, img)
        assert frame.label.dtype == np.uint8 and np.array_equal(frame.label, train)
    assert np.array_equal(ds[1].label, expected["aachen_000001_000019"][1])


def test_cityscapes_label_sources(tmp_path):
    expected = make_cityscapes(tmp_path, label_ids=True, train_ids=True)
    # Make the two sources distinguishable: trainIds files of one frame say "road" everywhere.
    fid = "bochum_000000_000019"
    save(tmp_path / "gtFine/val/bochum" / f"{fid}_gtFine_labelTrainIds.png", np.zeros((H, W), np.uint8))
    auto = Cityscapes(tmp_path, label_source="auto")
    assert auto.label_source == "labelTrainIds"
    assert not auto.load(fid).label.any()
    ids = Cityscapes(tmp_path, label_source="labelIds")
    assert np.array_equal(ids.load(fid).label, expected[fid][1])
    with pytest.raises(ValueError, match="label_source"):
        Cityscapes(tmp_path, label_source="colors")


def test_cityscapes_test_split_has_no_labels(tmp_path):
    make_cityscapes(tmp_path, split="test", label_ids=False)
    ds = Cityscapes(tmp_path, split="test")
    assert ds.label_kind is None and len(ds) == 3
    assert all(frame.label is None for frame in ds)


def test_cityscapes_missing_label(tmp_path):
    make_cityscapes(tmp_path)
    missing = tmp_path / "gtFine/val/aachen/aachen_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DataError, match="label file missing") as err:
        Cityscapes(tmp_path)
    assert str(missing) in str(err.value)
    assert "aachen_000001_000019_leftImg8bit.png" in str(err.value)


def test_cityscapes_trainids_missing_for_one_frame(tmp_path):
    make_cityscapes(tmp_path, train_ids=True)
    (tmp_path / "gtFine/val/bochum/bochum_000000_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DataError, match="bochum_000000_000019_gtFine_labelTrainIds.png"):
        Cityscapes(tmp_path)


def test_cityscapes_label_values_outside_the_set(tmp_path):
    make_cityscapes(tmp_path, label_ids=True, train_ids=True)
    bad_ids = save(tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png",
                   label_map([7, 50, 34, 200]))
    with pytest.raises(DataError) as err:
        Cityscapes(tmp_path, label_source="labelIds").load("aachen_000000_000019")
    msg = str(err.value)
    assert str(bad_ids) in msg and "[34, 50, 200]" in msg

    bad_train = save(tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png",
                     label_map([0, 19, 18, 254]))
    with pytest.raises(DataError) as err:
        Cityscapes(tmp_path, label_source="labelTrainIds").load("aachen_000000_000019")
    assert str(bad_train) in str(err.value) and "[19, 254]" in str(err.value)


def test_cityscapes_size_mismatch(tmp_path):
    make_cityscapes(tmp_path)
    label = save(tmp_path / "gtFine/val/bochum/bochum_000000_000019_gtFine_labelIds.png",
                 np.full((H + 1, W), 7, np.uint8))
    ds = Cityscapes(tmp_path)
    ds.load("aachen_000000_000019")  # the others still load
    with pytest.raises(DataError) as err:
        ds.load("bochum_000000_000019")
    msg = str(err.value)
    assert str(label) in msg and "bochum_000000_000019_leftImg8bit.png" in msg
    assert f"{W}x{H + 1}" in msg and f"{W}x{H}" in msg


def test_cityscapes_unreadable_and_truncated_image(tmp_path):
    make_cityscapes(tmp_path)
    bad = tmp_path / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    ds = Cityscapes(tmp_path)
    with pytest.raises(DataError, match="cannot read image") as err:
        ds[0]
    assert str(bad) in str(err.value)
    save(bad, rgb(5, 64, 64))
    truncate(bad)
    with pytest.raises(DataError, match=str(bad)):
        ds[0]


def test_cityscapes_missing_and_empty_folder(tmp_path):
    with pytest.raises(DataError) as err:
        Cityscapes(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "leftImg8bit" / "val") in msg and "does not exist" in msg
    assert "*/*_leftImg8bit.png" in msg
    (tmp_path / "leftImg8bit/val/aachen").mkdir(parents=True)
    (tmp_path / "leftImg8bit/val/aachen/readme.txt").write_text("x")
    with pytest.raises(DataError, match="no Cityscapes images found") as err:
        Cityscapes(tmp_path)
    assert "*/*_leftImg8bit.png" in str(err.value)


# --------------------------------------------------------------------------------------------------
# RoadAnomaly21 / RoadObstacle21


def make_road_track(root: Path, ext: str, ids, labelled) -> dict[str, np.ndarray]:
    """images/{id}.{ext}; labels_masks/{id}_labels_semantic.png for ids in ``labelled``."""
    labels = {}
    for i, fid in enumerate(ids):
        save_image(root / "images" / f"{fid}.{ext}", rgb(20 + i))
        if fid in labelled:
            labels[fid] = np.roll(label_map([0, 1, 255, 1, 0]), i)
            save(root / "labels_masks" / f"{fid}_labels_semantic.png", labels[fid])
    return labels


RA_IDS = ["zebra0000", "cones0001", "validation0001", "validation0000", "airplane0000"]


def test_road_anomaly21_ids_splits_and_labels(tmp_path):
    labels = make_road_track(tmp_path, "jpg", RA_IDS, {"validation0000", "validation0001", "zebra0000"})
    ds = RoadAnomaly21(tmp_path)
    assert ds.frame_ids == sorted(RA_IDS)
    assert (ds.name, ds.split, ds.label_kind, ds.track, ds.benchmark_name) == (
        "road_anomaly21", "all", "ood", "anomaly", "AnomalyTrack-all")
    for frame in ds:
        assert frame.image.shape == (H, W, 3)
        if frame.frame_id in labels:
            assert np.array_equal(frame.label, labels[frame.frame_id])  # passthrough
        else:
            assert frame.label is None  # withheld test label
    val = RoadAnomaly21(tmp_path, split="validation")
    assert val.frame_ids == ["validation0000", "validation0001"]
    test = RoadAnomaly21(tmp_path, split="test")
    assert test.frame_ids == ["airplane0000", "cones0001", "zebra0000"]
    with pytest.raises(DataError, match="airplane0000_labels_semantic.png"):
        RoadAnomaly21(tmp_path, split="test", require_labels=True)
    with pytest.raises(ValueError, match="unknown split"):
        RoadAnomaly21(tmp_path, split="val")


def test_road_anomaly21_without_any_label(tmp_path):
    make_road_track(tmp_path, "jpg", ["cow0000", "cow0001"], set())
    ds = RoadAnomaly21(tmp_path, split="test")
    assert ds.label_kind is None and ds[0].label is None


def test_road_anomaly21_missing_validation_label(tmp_path):
    make_road_track(tmp_path, "jpg", RA_IDS, {"validation0000"})
    with pytest.raises(DataError, match="label file missing") as err:
        RoadAnomaly21(tmp_path)
    assert str(tmp_path / "labels_masks" / "validation0001_labels_semantic.png") in str(err.value)


def test_road_anomaly21_bad_label_values_and_size(tmp_path):
    make_road_track(tmp_path, "jpg", ["validation0000", "validation0001"], {"validation0000", "validation0001"})
    bad = save(tmp_path / "labels_masks/validation0000_labels_semantic.png", label_map([0, 1, 2, 254]))
    ds = RoadAnomaly21(tmp_path)
    with pytest.raises(DataError) as err:
        ds.load("validation0000")
    assert str(bad) in str(err.value) and "[2, 254]" in str(err.value)
    small = save(tmp_path / "labels_masks/validation0001_labels_semantic.png", np.zeros((H, W - 1), np.uint8))
    with pytest.raises(DataError) as err:
        ds.load("validation0001")
    assert str(small) in str(err.value) and str(tmp_path / "images/validation0001.jpg") in str(err.value)


def test_road_anomaly21_empty_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        RoadAnomaly21(tmp_path)
    assert str(tmp_path / "images") in str(err.value) and "'*.jpg'" in str(err.value)
    save_image(tmp_path / "images" / "x.png", rgb(0))  # wrong format: not counted
    with pytest.raises(DataError, match="no RoadAnomaly21 images found") as err:
        RoadAnomaly21(tmp_path)
    assert "'*.jpg'" in str(err.value)


RO_IDS = ["gravel_boot_1", "curvy-street_carton_6", "driveway_bag_1", "snowstorm1_00_01_02.500",
          "validation_1", "validation_20", "validation_21", "validation_19"]


@needs_webp
def test_road_obstacle21_scenes_and_labels(tmp_path):
    val_ids = {i for i in RO_IDS if i.startswith("validation")}
    labels = make_road_track(tmp_path, "webp", RO_IDS, val_ids | {"gravel_boot_1"})
    ds = RoadObstacle21(tmp_path)
    assert ds.frame_ids == sorted(RO_IDS) and ds.track == "obstacle" and ds.label_kind == "ood"
    frame = ds.load("gravel_boot_1")
    assert np.array_equal(frame.image, rgb(20 + RO_IDS.index("gravel_boot_1")))  # lossless webp
    assert np.array_equal(frame.label, labels["gravel_boot_1"])
    assert ds.load("driveway_bag_1").label is None
    assert RoadObstacle21(tmp_path, split="test").frame_ids == ["curvy-street_carton_6", "gravel_boot_1"]
    assert RoadObstacle21(tmp_path, split="validation").frame_ids == ["validation_1", "validation_20"]
    assert RoadObstacle21(tmp_path, split="night").frame_ids == ["driveway_bag_1"]
    assert RoadObstacle21(tmp_path, split="snowstorm").frame_ids == ["snowstorm1_00_01_02.500"]
    assert RoadObstacle21(tmp_path, split="validation").benchmark_name == "ObstacleTrack-validation"


@needs_webp
def test_road_obstacle21_truncated_webp(tmp_path):
    make_road_track(tmp_path, "webp", ["gravel_boot_1"], set())
    path = tmp_path / "images/gravel_boot_1.webp"
    save_image(path, rgb(1, 64, 64))
    truncate(path)
    with pytest.raises(DataError, match=str(path)):
        RoadObstacle21(tmp_path)[0]


# --------------------------------------------------------------------------------------------------
# LostAndFound and Fishyscapes LAF

LAF_RAW = [0, 1, 2, 3, 100, 200, 201, 254, 255]
LAF_OOD = [255, 0, 1, 1, 1, 1, 255, 255, 255]  # 1 -> 0, 2..200 -> 1, else 255
LAF_TEST = ["04_Maurener_Weg_8_000000_000030", "04_Maurener_Weg_8_000000_000090",
            "15_Rechbergstr_Deckenpfronn_000000_000120", "02_Hanns_Klemm_Str_44_000001_000060"]
LAF_TRAIN = ["01_Hanns_Klemm_Str_45_000006_000150", "01_Hanns_Klemm_Str_45_000000_000080",
             "13_Elly_Beinhorn_Str_000000_000050"]


def make_laf(root: Path, split: str, ids, ext: str = "png", labels: bool = True) -> None:
    for i, fid in enumerate(ids):
        city = fid[:-14]
        save_image(root / "leftImg8bit" / split / city / f"{fid}_leftImg8bit.{ext}", rgb(40 + i))
        if labels:
            save(root / "gtCoarse" / split / city / f"{fid}_gtCoarse_labelIds.png", np.roll(label_map(LAF_RAW), i))


def test_lost_and_found_mapping_and_ids(tmp_path):
    make_laf(tmp_path, "test", LAF_TEST)
    ds = LostAndFound(tmp_path, split="test", no_known=False)
    assert ds.frame_ids == sorted(LAF_TEST)
    assert (ds.name, ds.split, ds.label_kind, ds.track, ds.benchmark_name) == (
        "lost_and_found", "test", "ood", "obstacle", "LostAndFound-test")
    for frame in ds:
        i = LAF_TEST.index(frame.frame_id)
        assert np.array_equal(frame.image, rgb(40 + i))
        assert np.array_equal(frame.label, np.roll(label_map(LAF_OOD), i))


def test_lost_and_found_no_known(tmp_path):
    make_laf(tmp_path, "test", LAF_TEST)
    # The fixture is not the complete split, so the benchmark's invalid-frame positions cannot apply.
    with pytest.raises(DataError, match="1203"):
        LostAndFound(tmp_path)
    ds = LostAndFound(tmp_path, invalid_frames=["04_Maurener_Weg_8_000000_000090"])
    assert ds.frame_ids == ["02_Hanns_Klemm_Str_44_000001_000060", "04_Maurener_Weg_8_000000_000030"]
    assert ds.split == "test_no_known" and ds.benchmark_name == "LostAndFound-testNoKnown"
    by_position = LostAndFound(tmp_path, invalid_frames=[2])  # positions in the sorted split
    assert by_position.frame_ids == ds.frame_ids
    assert "15_Rechbergstr_Deckenpfronn" in NO_KNOWN_EXCLUDE_PREFIXES
    custom = LostAndFound(tmp_path, invalid_frames=(), exclude_prefixes=["04_"])
    assert custom.frame_ids == ["02_Hanns_Klemm_Str_44_000001_000060", "15_Rechbergstr_Deckenpfronn_000000_000120"]
    with pytest.raises(DataError, match="not among the frames"):
        LostAndFound(tmp_path, invalid_frames=["04_Maurener_Weg_8_999999_000000"])
    with pytest.raises(DataError, match="outside"):
        LostAndFound(tmp_path, invalid_frames=[4])


def test_lost_and_found_train_bicycles_and_webp(tmp_path):
    if not HAS_WEBP:
        pytest.skip("no WebP")
    make_laf(tmp_path, "train", LAF_TRAIN, ext="webp")
    ds = LostAndFound(tmp_path, split="train", invalid_frames=())
    assert ds.frame_ids == ["01_Hanns_Klemm_Str_45_000000_000080", "13_Elly_Beinhorn_Str_000000_000050"]
    assert ds[0].image.shape == (H, W, 3)


def test_lost_and_found_missing_label_and_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        LostAndFound(tmp_path)
    assert str(tmp_path / "leftImg8bit" / "test") in str(err.value) and "_leftImg8bit.png" in str(err.value)
    make_laf(tmp_path, "test", LAF_TEST)
    missing = tmp_path / "gtCoarse/test/04_Maurener_Weg_8/04_Maurener_Weg_8_000000_000030_gtCoarse_labelIds.png"
    missing.unlink()
    with pytest.raises(DataError, match="label file missing") as err:
        LostAndFound(tmp_path, no_known=False)
    assert str(missing) in str(err.value)


def test_lost_and_found_label_size_mismatch(tmp_path):
    make_laf(tmp_path, "test", LAF_TEST[:1])
    label = save(tmp_path / "gtCoarse/test/04_Maurener_Weg_8/04_Maurener_Weg_8_000000_000030_gtCoarse_labelIds.png",
                 np.ones((H, W + 2), np.uint8))
    with pytest.raises(DataError, match=str(label)):
        LostAndFound(tmp_path, no_known=False)[0]


def make_fishy(root: Path, ids) -> dict[str, np.ndarray]:
    labels = {}
    for i, fid in enumerate(ids):
        labels[fid] = np.roll(label_map([0, 1, 255, 0, 1]), i)
        save(root / "labels" / "val" / f"{fid}_fishy-labels.png", labels[fid])
    return labels


def test_fishyscapes_laf_passthrough_and_image_lookup(tmp_path):
    laf = tmp_path / "dataset_LostAndFound"
    make_laf(laf, "test", LAF_TEST[:2], labels=False)
    make_laf(laf, "train", LAF_TRAIN[1:], labels=False)
    fishy_ids = [LAF_TRAIN[2], LAF_TEST[0]]
    labels = make_fishy(tmp_path / "dataset_FishyLAF", fishy_ids)
    ds = FishyscapesLAF(tmp_path / "dataset_FishyLAF")  # finds the sibling LostAndFound folder
    assert ds.frame_ids == sorted(fishy_ids)
    assert (ds.name, ds.split, ds.label_kind, ds.track) == ("fishyscapes_laf", "val", "ood", "anomaly")
    for frame in ds:
        assert np.array_equal(frame.label, labels[frame.frame_id])
    assert np.array_equal(ds.load(LAF_TEST[0]).image, rgb(40))  # from the test split
    assert np.array_equal(ds.load(LAF_TRAIN[2]).image, rgb(41))  # from the train split
    same = FishyscapesLAF(tmp_path / "dataset_FishyLAF", laf_root=laf)
    assert same.frame_ids == ds.frame_ids


def test_fishyscapes_laf_bad_input(tmp_path):
    fishy, laf = tmp_path / "dataset_FishyLAF", tmp_path / "dataset_LostAndFound"
    with pytest.raises(DataError, match="no LostAndFound images"):
        FishyscapesLAF(fishy)
    make_laf(laf, "test", LAF_TEST[:1], labels=False)
    with pytest.raises(DataError, match="does not exist") as err:
        FishyscapesLAF(fishy)
    assert str(fishy / "labels" / "val") in str(err.value) and "_fishy-labels.png" in str(err.value)

    make_fishy(fishy, [LAF_TEST[0], LAF_TEST[1]])  # the second has no image
    with pytest.raises(DataError, match="no LostAndFound image") as err:
        FishyscapesLAF(fishy)
    assert f"{LAF_TEST[1]}_fishy-labels.png" in str(err.value)

    (fishy / "labels/val" / f"{LAF_TEST[1]}_fishy-labels.png").unlink()
    bad = save(fishy / "labels/val" / f"{LAF_TEST[0]}_fishy-labels.png", label_map([0, 1, 2]))
    with pytest.raises(DataError) as err:
        FishyscapesLAF(fishy)[0]
    assert str(bad) in str(err.value) and "[2]" in str(err.value)


# --------------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder_recursive_ids_and_formats(tmp_path):
    save_image(tmp_path / "b.png", rgb(1))
    save_image(tmp_path / "city" / "a.jpg", rgb(2))
    save_image(tmp_path / "city" / "deep" / "c.JPEG", rgb(3))
    if HAS_WEBP:
        save_image(tmp_path / "w.webp", rgb(4))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path)
    expected = ["b", "city__a", "city__deep__c"] + (["w"] if HAS_WEBP else [])
    assert ds.frame_ids == expected
    assert (ds.name, ds.label_kind) == ("folder", None)
    assert np.array_equal(ds.load("b").image, rgb(1))
    assert all(frame.label is None and frame.image.shape == (H, W, 3) for frame in ds)
    assert ImageFolder(tmp_path, pattern="*.png").frame_ids == ["b"]
    assert ImageFolder(tmp_path, pattern="city/*.jpg|jpeg").frame_ids == ["city__a"]


def test_expand_pattern():
    assert expand_pattern("*.png") == ["*.png"]
    assert expand_pattern("**/*.png|jpg") == ["**/*.[pP][nN][gG]", "**/*.[jJ][pP][gG]"]


def test_image_folder_empty_missing_and_clashing(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        ImageFolder(tmp_path / "none")
    assert str(tmp_path / "none") in str(err.value) and "png|jpg|jpeg|webp" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images") as err:
        ImageFolder(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "**/*.png|jpg|jpeg|webp" in str(err.value)
    save_image(tmp_path / "x" / "a.png", rgb(0))
    save_image(tmp_path / "x" / "a.jpg", rgb(0))
    with pytest.raises(DataError, match="same frame id 'a'"):
        ImageFolder(tmp_path / "x")


def test_image_folder_unreadable_file(tmp_path):
    save_image(tmp_path / "good.png", rgb(0))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = ImageFolder(tmp_path)
    assert ds.load("good").image.shape == (H, W, 3)
    with pytest.raises(DataError, match="broken.jpg"):
        ds.load("broken")
    with pytest.raises(KeyError, match="missing"):
        ds.load("missing")


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_builds_every_file_adapter(tmp_path):
    make_cityscapes(tmp_path / "cs")
    make_road_track(tmp_path / "ra", "jpg", ["cow0000"], set())
    make_laf(tmp_path / "laf", "test", LAF_TEST)
    make_fishy(tmp_path / "fishy", LAF_TEST[:1])
    save_image(tmp_path / "imgs" / "a.png", rgb(0))
    built = {
        "cityscapes": get_dataset("cityscapes", root=tmp_path / "cs", split="val"),
        "road_anomaly21": get_dataset("road_anomaly21", root=tmp_path / "ra"),
        "lost_and_found": get_dataset("lost_and_found", root=tmp_path / "laf", split="test",
                                      no_known=True, invalid_frames=()),
        "fishyscapes_laf": get_dataset("fishyscapes_laf", root=tmp_path / "fishy", laf_root=tmp_path / "laf"),
        "folder": get_dataset("folder", root=tmp_path / "imgs"),
    }
    if HAS_WEBP:
        make_road_track(tmp_path / "ro", "webp", ["gravel_boot_1"], set())
        built["road_obstacle21"] = get_dataset("road_obstacle21", root=tmp_path / "ro")
    for name, ds in built.items():
        assert ds.name == name and len(ds) > 0
    assert len(built["lost_and_found"]) == 3  # the children scene is dropped


def test_registry_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        get_dataset("kitti")
    for name in ("synthetic", "synthetic_obstacle", "synthetic_anomaly", "cityscapes", "road_anomaly21",
                 "road_obstacle21", "lost_and_found", "fishyscapes_laf", "folder"):
        assert name in str(err.value) and name in dataset_names()


@pytest.mark.skipif(importlib.util.find_spec("metaseg_pgn.data.synthetic") is None,
                    reason="metaseg_pgn.data.synthetic not written yet")
def test_registry_synthetic_names():
    streets = get_dataset("synthetic", split="val", n=2, size=[32, 64], seed=0)
    assert len(streets) == 2 and streets.label_kind == "semantic"
    for name, track in (("synthetic_obstacle", "obstacle"), ("synthetic_anomaly", "anomaly")):
        ds = get_dataset(name, n=2, size=[32, 64], seed=0)
        assert len(ds) == 2 and ds.label_kind == "ood"
        assert ds[0].label.shape == (32, 64)
    with pytest.raises(ValueError, match="track"):
        get_dataset("synthetic_obstacle", track="anomaly", n=1, size=[32, 64], seed=0)
