"""The synthetic world pinned: sha256 of the bytes of a set of generated frames.

The world is defined by the order of the generator's random draws, so any change to that order (or
to the drawing code) changes the frames, the shipped model's training data and every reference
output of the default pipeline. These hashes were recorded from the generator as it stood before
it was split into a subpackage; a refactoring must keep them identical.

The frames cover both in-distribution splits and both OoD tracks at 64 x 128 (the size of the
tests' tiny pipeline, whose frames these are), including an anomaly frame that takes the generator's
fallback path (every candidate object hidden) and an obstacle frame with two objects, plus one
obstacle frame at the default size 256 x 512 with its clean scene (an in-distribution rendering).

The hashes depend on numerical libraries (Pillow's bicubic resize, scipy's filters, numpy's
transcendental functions): ``tests/data/synthetic_frames.json`` records the versions they were taken
with, and a failure names them, so that a library upgrade is told apart from a changed world.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import PIL
import pytest
import scipy
import skimage

from metaseg_pgn.data.synthetic import SyntheticOoD, SyntheticStreets

PINS = json.loads((Path(__file__).parent / "data" / "synthetic_frames.json").read_text())


def sha256(array: np.ndarray) -> str:
    """sha256 of an array's C-order bytes (its shape and dtype are checked separately)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def frame_arrays(spec: dict) -> dict[str, np.ndarray]:
    """The arrays of one pinned frame, generated through the public dataset classes.

    ``spec`` has ``kind`` (a split of :class:`SyntheticStreets` or a track of :class:`SyntheticOoD`),
    ``index``, ``size`` [H, W] and ``seed``. In-distribution frames give ``image`` and ``label``;
    OoD frames also give the semantic label, the object mask and the clean scene.
    """
    kind, index, size, seed = spec["kind"], spec["index"], tuple(spec["size"]), spec["seed"]
    frame_id = f"{kind}_{index:06d}"
    if kind in ("obstacle", "anomaly"):
        s = SyntheticOoD(kind, n=index + 1, size=size, seed=seed).load_sample(frame_id, with_clean=True)
        return {"image": s.image, "label": s.ood, "semantic": s.semantic, "object_mask": s.object_mask,
                "clean_image": s.clean_image, "clean_semantic": s.clean_semantic}
    frame = SyntheticStreets(kind, n=index + 1, size=size, seed=seed).load(frame_id)
    return {"image": frame.image, "label": frame.label}


def versions() -> dict[str, str]:
    return {"numpy": np.__version__, "scipy": scipy.__version__, "Pillow": PIL.__version__,
            "scikit-image": skimage.__version__}


def test_pins_cover_both_splits_both_tracks_and_the_default_size():
    kinds = {p["kind"] for p in PINS["frames"]}
    assert {"train", "val", "obstacle", "anomaly"} <= kinds
    assert any(tuple(p["size"]) == (256, 512) for p in PINS["frames"])


def pin_id(spec: dict) -> str:
    return f"{spec['kind']}{spec['index']}-{spec['size'][0]}x{spec['size'][1]}-seed{spec['seed']}"


@pytest.mark.parametrize("spec", PINS["frames"], ids=pin_id)
def test_generated_frame_bytes_are_pinned(spec):
    arrays = frame_arrays(spec)
    H, W = spec["size"]
    assert arrays["image"].shape == (H, W, 3) and arrays["image"].dtype == np.uint8
    for name, array in arrays.items():
        if name != "image" and name != "clean_image":
            assert array.shape == (H, W) and array.dtype == (bool if name == "object_mask" else np.uint8), name
    assert set(arrays) == set(spec["sha256"])
    changed = sorted(name for name, array in arrays.items() if sha256(array) != spec["sha256"][name])
    assert not changed, (
        f"frame {pin_id(spec)} changed in {changed}. The pins were recorded with {PINS['recorded_with']}, "
        f"this run has {versions()}: if these differ, re-record after checking the frames by eye; "
        f"otherwise the generator's output (or the order of its random draws) changed.")
