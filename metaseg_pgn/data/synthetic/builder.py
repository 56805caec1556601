"""Building a scene: every random parameter of a frame, drawn from the frame's scene stream.

The world is defined by the order of these draws: camera and road, sky and haze, ground style,
cloudiness and noise seed, the two sides of the street, then sky and ground, buildings, fences and
hedges, vegetation, street furniture, vehicles, people, clutter, the ego bonnet, and last the
camera's processing. Reordering any of them changes every frame (``tests/test_synthetic_pins.py``).
"""

from __future__ import annotations

import numpy as np

from .buildings import add_buildings, add_long_structures
from .camera import Camera, Road
from .colors import hsv, rgb
from .furniture import add_clutter, add_street_furniture
from .ground import add_sky_and_ground
from .people import add_people
from .scene import GroundStyle, PostFX, Scene, Side
from .vegetation import add_vegetation
from .vehicles import add_ego, add_vehicles

__all__ = ["build_scene"]


def build_scene(rng: np.random.Generator, H: int, W: int, *, obstacle_mode: bool = False) -> Scene:
    """Draw all random parameters of a scene (no pixels are painted here).

    Parameters
    ----------
    rng : numpy.random.Generator
        The frame's ``"scene"`` stream (:func:`metaseg_pgn.data.synthetic.noise.frame_rng`).
    H, W : int
        Image size in pixels.
    obstacle_mode : bool
        A scene of the obstacle track: less traffic, none close ahead, fewer parked cars.

    Returns
    -------
    Scene
        With its draw list and post-processing.
    """
    cam, road = _camera_and_road(rng, H, W)
    overcast, sky_top, sky_horizon, visibility = _sky(rng)
    ground = _ground_style(rng, overcast)
    scene = Scene(cam=cam, road=road, sky_top=sky_top, sky_horizon=sky_horizon, overcast=overcast,
                  cloudiness=0.0 if overcast else rng.uniform(0, 0.8), visibility=visibility,
                  sides=[], ground=ground, noise_seed=int(rng.integers(1 << 62)),
                  obstacle_mode=obstacle_mode)
    scene.sides.extend(_sides(rng, ground.sun_side))
    add_sky_and_ground(rng, scene)
    add_buildings(rng, scene)
    add_long_structures(rng, scene)
    add_vegetation(rng, scene)
    add_street_furniture(rng, scene)
    add_vehicles(rng, scene)
    add_people(rng, scene)
    add_clutter(rng, scene)
    add_ego(rng, scene)
    scene.post = PostFX(
        exposure=rng.uniform(0.8, 1.15), gamma=rng.uniform(0.85, 1.15),
        wb=1.0 + rng.uniform(-0.05, 0.05, 3), vignette=rng.uniform(0.0, 0.3),
        blur=rng.uniform(0.3, 0.9), noise=rng.uniform(1.0, 4.0) / 255.0,
        saturation=rng.uniform(0.85, 1.05),
    )
    return scene


def _camera_and_road(rng: np.random.Generator, H: int, W: int) -> tuple[Camera, Road]:
    """Focal length, horizon, vanishing point, camera height; road width, curvature, offset."""
    f = W * rng.uniform(0.95, 1.25)
    cam = Camera(H=H, W=W, f=f, yh=H * rng.uniform(0.34, 0.5), xv=W * rng.uniform(0.4, 0.6),
                 hc=rng.uniform(1.3, 1.75))
    rw = rng.choice([3.3, 4.5, 5.5, 6.8, 8.0]) + rng.uniform(-0.3, 0.5)
    k = 0.0 if rng.random() < 0.5 else rng.uniform(-0.0012, 0.0012)
    c0 = rng.uniform(-0.55, 0.35) * rw
    return cam, Road(c0=c0, k=k, rw=rw)


def _sky(rng: np.random.Generator) -> tuple[bool, np.ndarray, np.ndarray, float]:
    """Overcast or not, sky colours at the top and the horizon, visibility (metres)."""
    overcast = rng.random() < 0.25
    if overcast:
        g = rng.uniform(150, 215)
        sky_top = rgb(g - 8, g - 3, g + 6)
        sky_horizon = rgb(g + 10, g + 12, g + 15)
    else:
        # hue 205-225 degrees: clear of the cyan of unknown objects
        sky_top = hsv(rng.uniform(205, 225), rng.uniform(0.3, 0.62), rng.uniform(0.72, 0.92))
        sky_horizon = hsv(rng.uniform(200, 225), rng.uniform(0.05, 0.2), rng.uniform(0.85, 0.95))
    sky_horizon = np.clip(sky_horizon, 0, 1)
    visibility = rng.uniform(90, 500) if rng.random() < 0.3 else rng.uniform(400, 1500)
    return overcast, sky_top, sky_horizon, visibility


def _ground_style(rng: np.random.Generator, overcast: bool) -> GroundStyle:
    """Road, sidewalk, terrain and vegetation colours, markings, the sun's side and shadows, textures."""
    road_gray = rng.uniform(70, 125)
    road_col = rgb(road_gray, road_gray + rng.uniform(-2, 4), road_gray + rng.uniform(0, 8))
    sw_delta = rng.uniform(8, 70) if rng.random() < 0.85 else rng.uniform(-15, 8)
    sw_tint = rng.uniform(-8, 12, 3)
    sidewalk_col = np.clip(road_col + (sw_delta + sw_tint) / 255.0, 0, 1)
    terrain_kind = rng.choice(["grass", "dry", "mixed"], p=[0.65, 0.2, 0.15])
    if terrain_kind == "grass":
        terrain_col = rgb(rng.uniform(95, 135), rng.uniform(125, 160), rng.uniform(55, 85))
    elif terrain_kind == "dry":
        terrain_col = rgb(rng.uniform(135, 170), rng.uniform(125, 150), rng.uniform(80, 105))
    else:  # overlaps with dark vegetation: an ambiguous place on purpose
        terrain_col = rgb(rng.uniform(90, 130), rng.uniform(110, 140), rng.uniform(55, 85))
    veg_col = rgb(rng.uniform(40, 95), rng.uniform(70, 125), rng.uniform(25, 60))
    sun_side = 0 if overcast else int(rng.choice([-1, 1]))
    return GroundStyle(
        road=road_col, sidewalk=sidewalk_col, terrain=terrain_col, veg=veg_col,
        marking=rgb(*(rng.uniform(200, 235, 1).repeat(3))),
        lane_width=rng.uniform(0.10, 0.16),
        dash_len=rng.uniform(2.5, 4.5), dash_gap=rng.uniform(4.0, 8.0), dash_phase=rng.uniform(0, 10),
        edge_lines=bool(rng.random() < 0.5),
        center_solid=bool(rng.random() < 0.3),
        zebra=(rng.uniform(8, 30) if rng.random() < 0.3 else None),
        tiles=rng.uniform(0.3, 0.6), tile_contrast=rng.uniform(0.0, 0.12),
        sun_side=sun_side, shadow_factor=rng.uniform(0.45, 0.7), shadow_len=rng.uniform(0.3, 1.2),
        texture_amp=rng.uniform(0.04, 0.12),
        crack_amp=rng.uniform(0.0, 0.12),
    )


_SCENE_KINDS = {"urban": 0.45, "suburban": 0.3, "open": 0.25}


def _sides(rng: np.random.Generator, sun_side: int) -> list[Side]:
    """Left (-1) and right (+1) side: built-up or open by the kind of street, sidewalk, verge, side street."""
    scene_kind = rng.choice(list(_SCENE_KINDS), p=list(_SCENE_KINDS.values()))
    sides = []
    for side in (-1, 1):
        if scene_kind == "urban":
            kind = "buildings" if rng.random() < 0.9 else "open"
        elif scene_kind == "suburban":
            kind = "buildings" if rng.random() < 0.5 else "open"
        else:
            kind = "open" if rng.random() < 0.85 else "buildings"
        sw = rng.uniform(1.5, 4.5) if rng.random() < 0.9 else 0.0
        # a grass verge between kerb and pavement (suburban streets); ``sw`` is the outer edge
        verge = rng.uniform(1.0, 2.5) if sw > 0 and rng.random() < 0.35 else 0.0
        beyond = "sidewalk" if kind == "buildings" else "terrain"
        side_street = (rng.uniform(12, 60), rng.uniform(7, 14)) if rng.random() < 0.3 else None
        sides.append(Side(side=side, kind=kind, sw=sw + verge, verge=verge, beyond=beyond,
                          side_street=side_street, buildings=[], sun=(side == sun_side)))
    return sides
