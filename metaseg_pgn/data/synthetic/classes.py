"""The Cityscapes trainIds the synthetic world paints, looked up by name in the palette."""

from __future__ import annotations

from metaseg_pgn.data.palette import CLASS_NAMES, VOID

__all__ = ["ROAD", "SIDEWALK", "BUILDING", "WALL", "FENCE", "POLE", "LIGHT", "SIGN", "VEG", "TERRAIN",
           "SKY", "PERSON", "RIDER", "CAR", "TRUCK", "BUS", "TRAIN", "MOTORCYCLE", "BICYCLE", "VOID"]

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = (
    CLASS_NAMES.index(name) for name in (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky"))
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = (
    CLASS_NAMES.index(name) for name in (
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"))
