"""One frame of the synthetic world: scene, rendering, unknown objects, labels, camera processing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .builder import build_scene
from .classes import ROAD, VOID
from .noise import frame_rng, noise_fields
from .ood_objects import place_anomalies, place_obstacles, render_with
from .render import postprocess, render

__all__ = ["DEFAULT_SIZE", "OOD_TRACKS", "SyntheticSample", "generate_frame", "smiyc_label"]

DEFAULT_SIZE: tuple[int, int] = (256, 512)
"""Default frame size (H, W)."""

OOD_TRACKS = ("obstacle", "anomaly")
"""The split names that give OoD frames."""


@dataclass
class SyntheticSample:
    """Everything the generator knows about one frame.

    Attributes
    ----------
    image : ndarray (H, W, 3) uint8
        The rendered frame (with the unknown objects, for OoD tracks).
    semantic : ndarray (H, W) uint8
        Cityscapes trainIds; for OoD frames the unknown objects' pixels are 255.
    ood : ndarray (H, W) uint8 or None
        The SMIYC label of an OoD frame (0 / 1 / 255), None for in-distribution splits.
    object_mask : ndarray (H, W) bool or None
        Visible pixels of the unknown objects (OoD frames only).
    clean_image, clean_semantic : ndarray or None
        The same scene rendered without the unknown objects (OoD frames only, when requested).
    """

    image: np.ndarray
    semantic: np.ndarray
    ood: np.ndarray | None = None
    object_mask: np.ndarray | None = None
    clean_image: np.ndarray | None = None
    clean_semantic: np.ndarray | None = None


def generate_frame(seed: int, split: str, index: int, size: tuple[int, int] = DEFAULT_SIZE,
                   *, with_clean: bool = False) -> SyntheticSample:
    """Generate one frame from its own random streams.

    Parameters
    ----------
    seed : int
        World seed.
    split : str
        ``"train"``, ``"val"``, ``"test"`` (in-distribution) or ``"obstacle"``, ``"anomaly"``
        (OoD tracks). Any other string gives in-distribution frames of an independent split.
    index : int
        Frame index within the split.
    size : (int, int)
        (H, W) in pixels.
    with_clean : bool
        For OoD tracks, also return the same scene without the unknown objects.

    Returns
    -------
    SyntheticSample
    """
    H, W = int(size[0]), int(size[1])
    if H < 8 or W < 8:
        raise ValueError(f"size {size!r} too small: need at least 8 x 8 pixels")
    track = split if split in OOD_TRACKS else None
    scene = build_scene(frame_rng(seed, split, index, "scene"), H, W, obstacle_mode=track == "obstacle")
    noise = noise_fields(scene.noise_seed, (H, W))
    img, lab, _ = render(scene, noise=noise)
    if track is None:
        image = postprocess(img, scene.post, frame_rng(seed, split, index, "post"))
        return SyntheticSample(image=image, semantic=lab)

    orng = frame_rng(seed, split, index, "ood")
    if track == "obstacle":
        objects = place_obstacles(orng, scene, lab)
    else:
        objects = place_anomalies(orng, scene, noise)
    ood_img, ood_lab, mask = render_with(scene, objects, noise)
    obj = mask.astype(bool)
    ood = smiyc_label(track, ood_lab, obj)
    image = postprocess(ood_img, scene.post, frame_rng(seed, split, index, "post"))
    sample = SyntheticSample(image=image, semantic=ood_lab, ood=ood, object_mask=obj)
    if with_clean:
        sample.clean_image = postprocess(img, scene.post, frame_rng(seed, split, index, "post"))
        sample.clean_semantic = lab
    return sample


def smiyc_label(track: str, semantic: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """SegmentMeIfYouCan's label of an OoD frame (docs/design.md section 6).

    Parameters
    ----------
    track : {"obstacle", "anomaly"}
    semantic : ndarray, shape (H, W), uint8
        trainIds of the frame with the objects (255 on them).
    objects : ndarray, shape (H, W), bool
        Visible pixels of the unknown objects.

    Returns
    -------
    ndarray, shape (H, W), uint8
        obstacle: road 0, objects 1, everything else 255; anomaly: objects 1, the scene's void 255,
        the rest 0.
    """
    if track == "obstacle":
        ood = np.full(semantic.shape, VOID, np.uint8)
        ood[semantic == ROAD] = 0
    else:
        ood = np.zeros(semantic.shape, np.uint8)
        ood[(semantic == VOID) & ~objects] = VOID
    ood[objects] = 1
    return ood
