"""The embedded synthetic world: street scenes in Cityscapes trainIds, and two OoD tracks.

Every frame is generated on the fly from its own random generators, seeded by a hash of
``(seed, split, index)``, so any frame can be produced alone and the same arguments always give the
same bytes. No global random state is read or written.

A scene is a pinhole camera over a flat ground plane (horizon and vanishing point vary) with a
possibly curving road, lane markings, kerbs and sidewalks, facades with windows, walls, fences,
hedges, trees, terrain, a sky gradient with clouds and a distant skyline; cars, trucks, persons,
poles, street lamps, traffic signs and traffic lights stand on the ground at perspective-consistent
scales and occlude each other by depth. Shadows, haze, exposure, white balance, blur and sensor
noise vary per frame. Some places are deliberately ambiguous (terrain vs. vegetation colours,
sidewalk vs. road, overcast sky vs. grey facades, thin far poles, see-through mesh fences), so a
small network makes realistic mistakes. An ego-vehicle bonnet at the bottom and a few unlabelled
street objects (bins, bollards) are void (255), as in Cityscapes.

The OoD tracks follow SegmentMeIfYouCan's conventions (``docs/design.md`` section 6):

- ``obstacle``: unknown objects lying on the road; label road = 0, object = 1, everything else 255.
- ``anomaly``: unknown objects anywhere (often large); object = 1, rest 0, void 255 where the scene
  has void.

The unknown objects use saturated magenta / cyan / orange in checkerboards, stripes, dots and
rings on blobs, stars, rings, boxes and creatures: no in-distribution class is drawn with these
colours or shapes (the in-distribution generator has no code path that draws them).

Main entry points: :class:`SyntheticStreets`, :class:`SyntheticOoD`, :func:`generate_frame`,
:func:`export_pngs`.

Modules, from the bottom up:

- ``noise``: per-frame random streams, smooth and hashed noise; ``colors``: colour helpers and
  material tables; ``classes``: the trainIds painted; ``camera``: camera and road geometry;
  ``shapes``: 2-D outline helpers.
- ``canvas``: the canvas being painted and the draw list's items; ``scene``: the typed scene graph.
- Things in the scene, each a dataclass with ``draw(canvas)`` and an ``add_*`` function that draws
  its parameters: ``ground`` (sky, skyline, ground), ``buildings`` (facades, fences, hedges),
  ``vegetation``, ``furniture`` (poles, signs, traffic lights, clutter), ``vehicles`` (and the ego
  bonnet), ``people``; ``ood_objects``: the unknown objects and their placement.
- ``builder``: :func:`~metaseg_pgn.data.synthetic.builder.build_scene`, the order of all random
  draws of a scene; ``render``: painting and the camera's processing; ``frames``:
  :func:`generate_frame`; ``datasets``: the dataset classes and :func:`export_pngs`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .colors import OOD_COLORS
from .datasets import OOD_DEFAULT_N, SPLIT_SIZES, SyntheticOoD, SyntheticStreets, export_pngs
from .frames import DEFAULT_SIZE, SyntheticSample, generate_frame
from .render import BLUR_RADIUS

__all__ = [
    "BLUR_RADIUS",
    "DEFAULT_SIZE",
    "OOD_COLORS",
    "OOD_DEFAULT_N",
    "SPLIT_SIZES",
    "SyntheticOoD",
    "SyntheticSample",
    "SyntheticStreets",
    "export_pngs",
    "generate_frame",
    "source_digest",
]


def source_digest() -> str:
    """sha256 (hex) of the generator's source: every module of this package, in name order.

    A cache of generated frames tagged with it is regenerated when the generator changes.
    """
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
