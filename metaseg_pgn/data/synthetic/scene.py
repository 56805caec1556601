"""The typed scene graph of one frame: camera, road, sides of the street, ground style, draw list.

:func:`metaseg_pgn.data.synthetic.builder.build_scene` fills a :class:`Scene` from a frame's random
stream; nothing here draws random numbers or paints pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .camera import Camera, Road
from .canvas import Drawable, DrawItem, Layer

if TYPE_CHECKING:
    from .buildings import Building

__all__ = ["GroundStyle", "PostFX", "Scene", "Side"]


@dataclass
class Side:
    """One side of the street.

    Attributes
    ----------
    side : int
        -1 (left) or +1 (right).
    kind : str
        ``"buildings"`` or ``"open"``.
    sw : float
        Outer edge of the sidewalk (including any verge), metres beyond the kerb; 0 without one.
    verge : float
        Width of a grass verge between kerb and pavement (0: none).
    beyond : str
        What lies beyond the sidewalk: ``"sidewalk"`` (paved, before buildings) or ``"terrain"``.
    side_street : (float, float) or None
        Depth where a side street opens and its width.
    buildings : list of Building
        Filled by :func:`metaseg_pgn.data.synthetic.buildings.add_buildings`.
    sun : bool
        Whether the sun shines from this side (its buildings cast shadows on the street).
    """

    side: int
    kind: str
    sw: float
    verge: float
    beyond: str
    side_street: tuple[float, float] | None
    buildings: list[Building]
    sun: bool

    def in_side_street(self, Z) -> np.ndarray:
        """bool array of ``Z``'s shape: depths inside the opening of the side street."""
        ss = self.side_street
        if ss is None:
            return np.zeros(np.shape(Z), bool)
        return (np.asarray(Z) >= ss[0]) & (np.asarray(Z) <= ss[0] + ss[1])


@dataclass
class GroundStyle:
    """Colours (RGB in [0, 1]) and markings of the ground, and the sun's shadows."""

    road: np.ndarray
    sidewalk: np.ndarray
    terrain: np.ndarray
    veg: np.ndarray
    marking: np.ndarray
    lane_width: float
    dash_len: float
    dash_gap: float
    dash_phase: float
    edge_lines: bool
    center_solid: bool
    zebra: float | None  # depth of a zebra crossing
    tiles: float  # sidewalk tile size, metres
    tile_contrast: float
    sun_side: int  # -1, +1, or 0 (overcast)
    shadow_factor: float
    shadow_len: float  # shadow reach per metre of building height
    texture_amp: float
    crack_amp: float


@dataclass
class PostFX:
    """The camera's processing of a frame (see :func:`metaseg_pgn.data.synthetic.render.postprocess`)."""

    exposure: float
    gamma: float
    wb: np.ndarray  # (3,) white balance gains
    vignette: float
    blur: float  # Gaussian sigma, pixels
    noise: float  # sensor noise sigma, in [0, 1] units
    saturation: float


@dataclass
class Scene:
    """Everything about one frame but its pixels.

    Attributes
    ----------
    cam : Camera
    road : Road
    sky_top, sky_horizon : ndarray, shape (3,)
        Sky colours at the top of the image and at the horizon (also the haze colour).
    overcast : bool
    cloudiness : float
    visibility : float
        Haze: depth in metres at which a colour keeps ``1/e`` of itself.
    sides : list of Side
        Left, then right.
    ground : GroundStyle
    items : list of DrawItem
        The draw list.
    noise_seed : int
        Seed of the frame's :class:`~metaseg_pgn.data.synthetic.noise.NoiseFields` and ground textures.
    post : PostFX or None
        Set last, when the whole scene is drawn.
    obstacle_mode : bool
        A scene of the obstacle track (fewer vehicles, the road ahead kept free).
    """

    cam: Camera
    road: Road
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    overcast: bool
    cloudiness: float
    visibility: float
    sides: list[Side]
    ground: GroundStyle
    items: list[DrawItem] = field(default_factory=list)
    noise_seed: int = 0
    post: PostFX | None = None
    obstacle_mode: bool = False

    def add(self, layer: Layer, depth: float, thing: Drawable) -> None:
        """Append ``thing`` to the draw list (its ``seq`` is its position)."""
        self.items.append(DrawItem(layer, depth, thing, seq=len(self.items)))
