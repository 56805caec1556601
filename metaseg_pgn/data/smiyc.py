"""The SegmentMeIfYouCan datasets in the layouts the benchmark's own loaders read.

Labels are OoD labels: 0 in-distribution, 1 anomaly / obstacle, 255 void (docs/design.md section 6).
Each dataset also carries

- ``track``: ``"anomaly"`` (RoadAnomaly21, Fishyscapes LAF) or ``"obstacle"`` (RoadObstacle21,
  LostAndFound), which fixes the component-level size thresholds of the evaluation;
- ``benchmark_name``: the benchmark's name of the split (e.g. ``"LostAndFound-testNoKnown"``),
  from :data:`metaseg_pgn.metrics.submission.OUR_DATASETS` (the one table of those names).

The benchmark withholds the labels of the RoadAnomaly21 and RoadObstacle21 test frames; those
frames load with label None (see ``require_labels``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from metaseg_pgn.data.base import DataError, FileDataset, FrameFiles, list_files, relabel
from metaseg_pgn.metrics.submission import benchmark_dataset

SEMANTIC_LABEL_SUFFIX = "_labels_semantic.png"


class _RoadTrack(FileDataset):
    """RoadAnomaly21 / RoadObstacle21: ``images/{id}.{ext}``, ``labels_masks/{id}_labels_semantic.png``.

    Subclasses set ``name``, ``track``, ``image_ext`` and ``SPLITS`` (split
    name -> predicate on the frame id), and ``_is_validation``.
    """

    name: str
    track: str
    image_ext: str
    SPLITS: dict[str, Callable[[str], bool]]

    def __init__(self, root: str | Path, split: str = "all", require_labels: bool | None = None):
        if split not in self.SPLITS:
            raise ValueError(f"{type(self).__name__}: unknown split {split!r}; known: {sorted(self.SPLITS)}")
        self.root = Path(root).expanduser()
        self.benchmark_name = benchmark_dataset(self.name, split)
        image_dir = self.root / "images"
        label_dir = self.root / "labels_masks"
        images = list_files(image_dir, f"*.{self.image_ext}", f"{type(self).__name__} images")
        in_split = self.SPLITS[split]
        selected = [p for p in images if in_split(p.stem)]
        if not selected:
            raise DataError(
                f"{image_dir}: none of the {len(images)} images belongs to split {split!r} "
                f"({self.benchmark_name})"
            )
        files = {}
        for image in selected:
            frame_id = image.stem
            label = label_dir / f"{frame_id}{SEMANTIC_LABEL_SUFFIX}"
            required = self._is_validation(frame_id) if require_labels is None else require_labels
            if not label.is_file():
                if required:
                    raise DataError(f"{label}: label file missing for image {image}")
                label = None
            files[frame_id] = FrameFiles(image, label)
        any_label = any(f.label is not None for f in files.values())
        super().__init__(files, name=self.name, split=split, label_kind="ood" if any_label else None)

    @staticmethod
    def _is_validation(frame_id: str) -> bool:
        raise NotImplementedError


class RoadAnomaly21(_RoadTrack):
    """SMIYC RoadAnomaly21 (the benchmark's "AnomalyTrack").

    Layout: ``{root}/images/{id}.jpg``, ``{root}/labels_masks/{id}_labels_semantic.png`` with
    values 0 / 1 / 255.

    Parameters
    ----------
    root : str or Path
        The ``dataset_AnomalyTrack`` folder.
    split : {"all", "test", "validation"}
        ``validation``: the frames whose id starts with ``validation`` (public labels); ``test``:
        the others (labels withheld by the benchmark); ``all``: both.
    require_labels : bool, optional
        True: every frame needs its label file; False: a missing label gives label None. Default:
        required for the validation frames only.

    Raises
    ------
    DataError
        Missing or empty image folder, no frame in the split, a required label missing.
    """

    name = "road_anomaly21"
    track = "anomaly"
    image_ext = "jpg"
    SPLITS = {
        "all": lambda fid: True,
        "validation": lambda fid: fid.startswith("validation"),
        "test": lambda fid: not fid.startswith("validation"),
    }

    @staticmethod
    def _is_validation(frame_id: str) -> bool:
        return frame_id.startswith("validation")


# RoadObstacle21 scenes: the frame id's text before the first "_" (as in the benchmark).
OBSTACLE_TEST_SCENES = frozenset({
    "curvy-street", "one-way-street", "gravel", "greyasphalt", "motorway", "paving", "darkasphalt",
    "darkasphalt2",
})
# The benchmark's ObstacleTrack-validation leaves out the frames starting with these.
OBSTACLE_VALIDATION_EXCLUDED = ("validation_19",) + tuple(f"validation_{i}" for i in range(21, 30))


def _obstacle_scene(frame_id: str) -> str:
    return frame_id.split("_")[0]


class RoadObstacle21(_RoadTrack):
    """SMIYC RoadObstacle21 (the benchmark's "ObstacleTrack").

    Layout: ``{root}/images/{id}.webp``, ``{root}/labels_masks/{id}_labels_semantic.png`` with
    values 0 / 1 / 255. The scene of a frame is its id up to the first ``_``.

    Parameters
    ----------
    root : str or Path
        The ``dataset_ObstacleTrack`` folder.
    split : {"all", "test", "validation", "night", "snowstorm"}
        As the benchmark defines them: ``test`` = scenes curvy-street, one-way-street, gravel,
        greyasphalt, motorway, paving, darkasphalt, darkasphalt2; ``validation`` = scene
        validation without the frames starting with validation_19 and validation_21 ..
        validation_29; ``night`` = driveway; ``snowstorm`` = snowstorm1, snowstorm2; ``all`` =
        every image found.
    require_labels : bool, optional
        True: every frame needs its label file; False: a missing label gives label None. Default:
        required for the validation scene only (the test labels are withheld).

    Raises
    ------
    DataError
        Missing or empty image folder, no frame in the split, a required label missing.
    """

    name = "road_obstacle21"
    track = "obstacle"
    image_ext = "webp"
    SPLITS = {
        "all": lambda fid: True,
        "test": lambda fid: _obstacle_scene(fid) in OBSTACLE_TEST_SCENES,
        "validation": lambda fid: _obstacle_scene(fid) == "validation"
        and not fid.startswith(OBSTACLE_VALIDATION_EXCLUDED),
        "night": lambda fid: _obstacle_scene(fid) == "driveway",
        "snowstorm": lambda fid: _obstacle_scene(fid) in ("snowstorm1", "snowstorm2"),
    }

    @staticmethod
    def _is_validation(frame_id: str) -> bool:
        return _obstacle_scene(frame_id) == "validation"


# ----------------------------------------------------------------------------------------------
# LostAndFound

LAF_IMAGE_SUFFIX = "_leftImg8bit"
LAF_IMAGE_EXTS = ("png", "webp", "jpg")  # the benchmark accepts these, in this order
LAF_LABEL_SUFFIX = "_gtCoarse_labelIds.png"
LAF_FRAME_ID = re.compile(r"(\d{2}_.+)_(\d{6})_(\d{6})")

#: Frame-id prefixes the benchmark's LostAndFound-testNoKnown leaves out: the scene with
#: children and three sequences with bicycles (the benchmark's own list; the three bicycle
#: prefixes name train-split scenes, so on the test split only the children scene is dropped).
NO_KNOWN_EXCLUDE_PREFIXES: tuple[str, ...] = (
    "15_Rechbergstr_Deckenpfronn",  # children
    "01_Hanns_Klemm_Str_45_000006",  # bicycle
    "01_Hanns_Klemm_Str_45_000007",  # bicycle
    "10_Schlossberg_9_000004",  # bicycle
)
#: Frames without any labelled pixel, as positions in the sorted list of the complete split
#: (the benchmark's ``exclude_frame_indices``).
INVALID_FRAME_INDICES: dict[str, tuple[int, ...]] = {
    "test": (17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792, 793),
    "train": (44, 67, 88, 109, 131, 614),
}
#: Frames in the complete splits, which the indices above refer to.
LAF_SPLIT_SIZES = {"test": 1203, "train": 1036}


#: LostAndFound gtCoarse labelIds -> OoD labels (every other id is void).
LAF_TO_OOD: dict[int, int] = {1: 0, **dict.fromkeys(range(2, 201), 1)}


def laf_label_to_ood(raw: np.ndarray) -> np.ndarray:
    """LostAndFound gtCoarse labelIds → OoD labels: 1 (free space) → 0, 2..200 → 1, else 255.

    Parameters
    ----------
    raw : ndarray, shape (H, W), uint8

    Returns
    -------
    ndarray, shape (H, W), uint8
    """
    return relabel(raw, LAF_TO_OOD)


def _laf_images(image_dir: Path) -> dict[str, Path]:
    """Frame id -> image file under ``{image_dir}/{city}/``; DataError on duplicates."""
    patterns = [f"*/*{LAF_IMAGE_SUFFIX}.{ext}" for ext in LAF_IMAGE_EXTS]
    images: dict[str, Path] = {}
    for path in list_files(image_dir, patterns, "LostAndFound images"):
        frame_id = path.name[: -len(LAF_IMAGE_SUFFIX + path.suffix)]
        if frame_id in images:
            raise DataError(f"{path}: frame {frame_id!r} also stored as {images[frame_id]}")
        images[frame_id] = path
    return images


class LostAndFound(FileDataset):
    """LostAndFound in the Cityscapes layout, labels as in SMIYC's obstacle track.

    Layout::

        {root}/leftImg8bit/{split}/{city}/{id}_leftImg8bit.png     (or .webp, .jpg)
        {root}/gtCoarse/{split}/{city}/{id}_gtCoarse_labelIds.png

    Labels: 1 → 0, 2..200 → 1, everything else → 255 (:func:`laf_label_to_ood`).

    Parameters
    ----------
    root : str or Path
        The ``dataset_LostAndFound`` folder.
    split : {"test", "train"}
    no_known : bool
        Select the benchmark's NoKnown subset (``LostAndFound-testNoKnown``, 1043 frames): drop
        the frames listed in ``invalid_frames`` and those starting with ``exclude_prefixes``.
        False keeps every frame unless those arguments are given.
    exclude_prefixes : iterable of str, optional
        Frame-id prefixes to drop. Default with ``no_known``: :data:`NO_KNOWN_EXCLUDE_PREFIXES`.
    invalid_frames : iterable of str or int, optional
        Frames to drop, as frame ids or as positions in the sorted list of all frames of the
        split. Default with ``no_known``: :data:`INVALID_FRAME_INDICES` of the split; those
        positions refer to the complete split, so the split must then hold exactly
        :data:`LAF_SPLIT_SIZES` frames (pass ``invalid_frames=()`` or ids for a partial copy).

    Raises
    ------
    DataError
        Missing or empty image folder, a missing label, a duplicate frame, invalid frames that do
        not exist, the default invalid-frame positions on an incomplete split.
    """

    name = "lost_and_found"
    track = "obstacle"

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        no_known: bool = True,
        exclude_prefixes: Iterable[str] | None = None,
        invalid_frames: Iterable[str | int] | None = None,
    ):
        self.root = Path(root).expanduser()
        self.no_known = bool(no_known)
        image_dir = self.root / "leftImg8bit" / split
        label_dir = self.root / "gtCoarse" / split
        images = _laf_images(image_dir)
        all_ids = sorted(images)

        if invalid_frames is None:
            invalid_frames = INVALID_FRAME_INDICES.get(split, ()) if self.no_known else ()
            expected = LAF_SPLIT_SIZES.get(split)
            if invalid_frames and len(all_ids) != expected:
                raise DataError(
                    f"{image_dir}: {len(all_ids)} frames, but the benchmark's invalid-frame "
                    f"positions refer to the complete {split} split of {expected} frames; pass "
                    f"invalid_frames=() or a list of frame ids"
                )
        if exclude_prefixes is None:
            exclude_prefixes = NO_KNOWN_EXCLUDE_PREFIXES if self.no_known else ()
        self.exclude_prefixes = tuple(exclude_prefixes)
        self.invalid_frames = tuple(self._resolve(invalid_frames, all_ids, image_dir))

        dropped = set(self.invalid_frames)
        files = {}
        for frame_id in all_ids:
            if frame_id in dropped or frame_id.startswith(self.exclude_prefixes):
                continue
            image = images[frame_id]
            label = label_dir / image.parent.name / f"{frame_id}{LAF_LABEL_SUFFIX}"
            if not label.is_file():
                raise DataError(f"{label}: label file missing for image {image}")
            files[frame_id] = FrameFiles(image, label)
        if not files:
            raise DataError(f"{image_dir}: no frame left after dropping the excluded ones")
        super().__init__(files, name=self.name,
                         split=f"{split}_no_known" if self.no_known else split, label_kind="ood")
        self.benchmark_name = benchmark_dataset(self.name, self.split)

    @staticmethod
    def _resolve(invalid: Iterable[str | int], all_ids: list[str], image_dir: Path) -> list[str]:
        """Invalid frames as frame ids; positions refer to ``all_ids``."""
        known = set(all_ids)
        out = []
        for item in invalid:
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= item < len(all_ids):
                    raise DataError(
                        f"{image_dir}: invalid frame position {item} is outside 0..{len(all_ids) - 1}"
                    )
                out.append(all_ids[item])
            elif isinstance(item, str):
                if item not in known:
                    raise DataError(f"{image_dir}: invalid frame {item!r} is not among the frames")
                out.append(item)
            else:
                raise TypeError(f"invalid_frames holds {item!r}; expected frame ids or positions")
        return out

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return laf_label_to_ood(raw)


# ----------------------------------------------------------------------------------------------
# Fishyscapes Lost & Found

FISHY_LABEL_SUFFIX = "_fishy-labels.png"


class FishyscapesLAF(FileDataset):
    """Fishyscapes Lost & Found (the benchmark's ``FishyLAFAnomaly-val``), labels 0 / 1 / 255.

    Layout::

        {root}/labels/val/{id}_fishy-labels.png
        {laf_root}/leftImg8bit/{train|test}/{city}/{id}_leftImg8bit.png   (or .webp, .jpg)

    The frames are those with a label file; each image is looked up in LostAndFound's train and
    test splits (the city is the frame id without its ``_{seq}_{frame}`` ending).

    Parameters
    ----------
    root : str or Path
        The ``dataset_FishyLAF`` folder.
    laf_root : str or Path, optional
        The LostAndFound folder with the images. Default: ``root`` if it holds ``leftImg8bit``,
        else the sibling folder ``dataset_LostAndFound`` (the benchmark's layout).

    Raises
    ------
    DataError
        Missing or empty label folder, no LostAndFound folder, a frame id not of the form
        ``{city}_{seq}_{frame}``, an image missing.
    """

    name = "fishyscapes_laf"
    track = "anomaly"

    def __init__(self, root: str | Path, laf_root: str | Path | None = None):
        self.root = Path(root).expanduser()
        self.laf_root = self._find_laf_root(self.root, laf_root)
        labels = list_files(self.root / "labels" / "val", f"*{FISHY_LABEL_SUFFIX}", "Fishyscapes labels")
        files = {}
        for label in labels:
            frame_id = label.name[: -len(FISHY_LABEL_SUFFIX)]
            match = LAF_FRAME_ID.fullmatch(frame_id)
            if match is None:
                raise DataError(
                    f"{label}: frame id {frame_id!r} is not of the form {{city}}_{{seq}}_{{frame}}"
                )
            city = match.group(1)
            candidates = [
                self.laf_root / "leftImg8bit" / split / city / f"{frame_id}{LAF_IMAGE_SUFFIX}.{ext}"
                for split in ("train", "test")
                for ext in LAF_IMAGE_EXTS
            ]
            image = next((c for c in candidates if c.is_file()), None)
            if image is None:
                raise DataError(
                    f"{label}: no LostAndFound image for frame {frame_id!r}; looked for "
                    + ", ".join(str(c) for c in candidates[:: len(LAF_IMAGE_EXTS)])
                    + f" (also .{'/.'.join(LAF_IMAGE_EXTS[1:])})"
                )
            files[frame_id] = FrameFiles(image, label)
        super().__init__(files, name=self.name, split="val", label_kind="ood")
        self.benchmark_name = benchmark_dataset(self.name, self.split)

    def laf_split(self, frame_id: str) -> str:
        """The LostAndFound split (``"train"`` or ``"test"``) whose images hold this frame.

        The benchmark reads a Fishyscapes LAF frame's scores from that split's folder.
        """
        return self.files(frame_id).image.parent.parent.name

    @staticmethod
    def _find_laf_root(root: Path, laf_root: str | Path | None) -> Path:
        if laf_root is not None:
            path = Path(laf_root).expanduser()
            if not (path / "leftImg8bit").is_dir():
                raise DataError(f"{path}: LostAndFound folder has no leftImg8bit/ (laf_root)")
            return path
        for path in (root, root.parent / "dataset_LostAndFound"):
            if (path / "leftImg8bit").is_dir():
                return path
        raise DataError(
            f"{root}: no LostAndFound images found: neither {root / 'leftImg8bit'} nor "
            f"{root.parent / 'dataset_LostAndFound' / 'leftImg8bit'} exists; pass laf_root="
        )
