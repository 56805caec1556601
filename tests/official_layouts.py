"""Tiny datasets written in the OFFICIAL on-disk layouts (docs/design.md §6), for end-to-end tests.

The pixels come from the embedded synthetic world (street scenes with Cityscapes trainIds, OoD
frames with 0 / 1 / 255), so the model sees plausible images; the files, names, folders and label
encodings are those of the distributed datasets:

- Cityscapes: ``leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` and
  ``gtFine/{split}/{city}/..._gtFine_labelIds.png`` (labelIds, not trainIds); the test split has
  images only.
- RoadAnomaly21: ``images/{id}.jpg``, ``labels_masks/{id}_labels_semantic.png``; validation frames
  labelled, test frames (other ids) without labels.
- RoadObstacle21: ``images/{id}.webp``, same labels; scene = id before the first ``_``.
- LostAndFound: Cityscapes layout with ``gtCoarse/{split}/{city}/{id}_gtCoarse_labelIds.png``
  (1 free space, 2..200 obstacles, 0 unlabelled).
- Fishyscapes LAF: ``labels/val/{id}_fishy-labels.png`` (0 / 1 / 255) beside a LostAndFound
  folder holding the images (the benchmark's ``dataset_FishyLAF`` / ``dataset_LostAndFound``).
- An image folder: nested ``*.png`` / ``*.jpg`` without labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from metaseg_pgn.data.palette import LABEL_ID_TO_TRAIN_ID
from metaseg_pgn.data.synthetic import SyntheticOoD, SyntheticStreets

SIZE = (64, 128)
LAF_CITY = "04_Maurener_Weg_8"


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def train_ids_to_label_ids(train: np.ndarray) -> np.ndarray:
    """Cityscapes trainIds (255 void) → labelIds (void → 0 'unlabeled'), the inverse of the map."""
    lut = np.zeros(256, np.uint8)
    for label_id, train_id in sorted(LABEL_ID_TO_TRAIN_ID.items(), reverse=True):
        if 0 <= train_id < 255:
            lut[train_id] = label_id
    return lut[train]


def _streets(n: int, split: str = "val", seed: int = 0):
    return list(SyntheticStreets(split=split, n=n, size=SIZE, seed=seed))


def _ood(track: str, n: int, seed: int = 0):
    return list(SyntheticOoD(track=track, n=n, size=SIZE, seed=seed))


def make_cityscapes(root: Path, n_val: int = 3, n_test: int = 2) -> Path:
    """Cityscapes with a labelled val split (labelIds) and an unlabelled test split."""
    for split, n, labelled in (("val", n_val, True), ("test", n_test, False)):
        for i, frame in enumerate(_streets(n, "val" if labelled else "test")):
            city = ("frankfurt", "lindau")[i % 2]
            stem = f"{city}_{i:06d}_{19 + i:06d}"
            _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", frame.image)
            if labelled:
                _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                      train_ids_to_label_ids(frame.label))
    return root


def make_road_anomaly21(root: Path, n_val: int = 2, n_test: int = 2) -> Path:
    """dataset_AnomalyTrack: labelled ``validation*`` frames, unlabelled test frames."""
    frames = _ood("anomaly", n_val + n_test, seed=1)
    for i, frame in enumerate(frames):
        fid = f"validation{i:04d}" if i < n_val else f"airplane{i:04d}"
        _save(root / "images" / f"{fid}.jpg", frame.image, quality=95)
        if i < n_val:
            _save(root / "labels_masks" / f"{fid}_labels_semantic.png", frame.label)
    return root


def make_road_obstacle21(root: Path, n_val: int = 2, n_test: int = 2) -> Path:
    """dataset_ObstacleTrack: labelled ``validation_*`` frames, unlabelled test scenes (webp)."""
    frames = _ood("obstacle", n_val + n_test, seed=2)
    for i, frame in enumerate(frames):
        fid = f"validation_{i + 1}" if i < n_val else f"gravel_{i:04d}"
        _save(root / "images" / f"{fid}.webp", frame.image, lossless=True)
        if i < n_val:
            _save(root / "labels_masks" / f"{fid}_labels_semantic.png", frame.label)
    return root


def _laf_label_ids(ood_label: np.ndarray) -> np.ndarray:
    # 0 (free space) → 1, 1 (obstacle) → an obstacle id in 2..200, 255 (void) → 0
    return np.select([ood_label == 0, ood_label == 1], [1, 7], 0).astype(np.uint8)


def make_lost_and_found(root: Path, n_test: int = 2, n_train: int = 2) -> Path:
    """dataset_LostAndFound: test and train splits in the Cityscapes layout with gtCoarse labels."""
    frames = _ood("obstacle", n_test + n_train, seed=3)
    for i, frame in enumerate(frames):
        split = "test" if i < n_test else "train"
        stem = f"{LAF_CITY}_{i:06d}_{30 + i:06d}"
        _save(root / "leftImg8bit" / split / LAF_CITY / f"{stem}_leftImg8bit.png", frame.image)
        _save(root / "gtCoarse" / split / LAF_CITY / f"{stem}_gtCoarse_labelIds.png", _laf_label_ids(frame.label))
    return root


def make_fishyscapes_laf(root: Path, laf_root: Path) -> Path:
    """dataset_FishyLAF: labels for frames whose images lie in the LostAndFound folder ``laf_root``."""
    frames = _ood("anomaly", 2, seed=4)
    for i, frame in enumerate(frames):
        stem = f"{LAF_CITY}_{100 + i:06d}_{40 + i:06d}"
        _save(laf_root / "leftImg8bit" / "train" / LAF_CITY / f"{stem}_leftImg8bit.png", frame.image)
        _save(laf_root / "gtCoarse" / "train" / LAF_CITY / f"{stem}_gtCoarse_labelIds.png",
              _laf_label_ids(frame.label))
        _save(root / "labels" / "val" / f"{stem}_fishy-labels.png", frame.label)
    return root


def make_smiyc(root: Path) -> dict[str, Path]:
    """The four SMIYC datasets under ``root`` as the benchmark lays them out (``data/smiyc/``)."""
    laf = make_lost_and_found(root / "dataset_LostAndFound")
    return {
        "road_anomaly21": make_road_anomaly21(root / "dataset_AnomalyTrack"),
        "road_obstacle21": make_road_obstacle21(root / "dataset_ObstacleTrack"),
        "lost_and_found": laf,
        "fishyscapes_laf": make_fishyscapes_laf(root / "dataset_FishyLAF", laf),
    }


def make_image_folder(root: Path, n: int = 3) -> Path:
    """Own pictures: nested folders, mixed .png / .jpg, no labels."""
    for i, frame in enumerate(_streets(n, "test", seed=5)):
        name = ("trip1/a.png", "trip1/b.jpg", "c.png")[i % 3] if i < 3 else f"more/{i}.png"
        _save(root / name, frame.image)
    return root


def compact_model(num_classes: int = 19):
    """A user's model as the README's ``model._target_=mypackage.models.build`` names one."""
    from metaseg_pgn.models.deeplab import build_model

    return build_model("compact", num_classes)


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A state_dict file of :func:`compact_model` (random weights from ``seed``)."""
    import torch

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(compact_model(19).state_dict(), path)
    return path
