"""The embedded synthetic world: street scenes in Cityscapes trainIds, and two OoD tracks.

Every frame is generated on the fly from its own random generator, seeded by a hash of
``(seed, split, index)``, so any frame can be produced alone and the same arguments always give the
same bytes. No global random state is read or written.

A scene is a pinhole camera over a flat ground plane (horizon and vanishing point vary) with a
possibly curving road, lane markings, kerbs and sidewalks, facades with windows, walls, fences,
hedges, trees, terrain, a sky gradient with clouds and a distant skyline; cars, trucks, persons,
poles, street lamps, traffic signs and traffic lights stand on the ground at perspective-consistent scales and occlude each other by depth. Shadows, haze,
exposure, white balance, blur and sensor noise vary per frame. Some places are deliberately
ambiguous (terrain vs. vegetation colours, sidewalk vs. road, overcast sky vs. grey facades, thin
far poles, see-through mesh fences), so a small network makes realistic mistakes. An ego-vehicle bonnet at the
bottom and a few unlabelled street objects (bins, bollards) are void (255), as in Cityscapes.

The OoD tracks follow SegmentMeIfYouCan's conventions (``DESIGN.md`` section 6):

- ``obstacle``: unknown objects lying on the road; label road = 0, object = 1, everything else 255.
- ``anomaly``: unknown objects anywhere (often large); object = 1, rest 0, void 255 where the scene
  has void.

The unknown objects use saturated magenta / cyan / orange in checkerboards, stripes, dots and
rings on blobs, stars, rings, boxes and creatures: no in-distribution class is drawn with these
colours or shapes (the in-distribution generator has no code path that draws them).

Main entry points: :class:`SyntheticStreets`, :class:`SyntheticOoD`, :func:`generate_frame`,
:func:`export_pngs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw

from metaseg_pgn.data.base import DataError, Frame, SegmentationDataset
from metaseg_pgn.data.palette import VOID

from .buildings import add_buildings, add_long_structures
from .camera import Camera, Road
from .canvas import Canvas, DrawItem, Layer
from .classes import CAR, LIGHT, PERSON, POLE, ROAD, SIDEWALK, SIGN, TRUCK, VEG
from .colors import CAR_COLORS, CLOTHES, OOD_COLORS, SKIN, hsv, jitter, rgb, tex
from .ground import add_sky_and_ground
from .noise import frame_rng, noise_fields
from .scene import GroundStyle, PostFX, Scene, Side

__all__ = [
    "DEFAULT_SIZE",
    "SPLIT_SIZES",
    "OOD_COLORS",
    "SyntheticSample",
    "SyntheticStreets",
    "SyntheticOoD",
    "generate_frame",
    "export_pngs",
]

DEFAULT_SIZE: tuple[int, int] = (256, 512)
"""Default frame size (H, W)."""

SPLIT_SIZES: dict[str, int] = {"train": 1000, "val": 80, "test": 200}
"""Default number of frames per in-distribution split."""

OOD_DEFAULT_N = 30
"""Default number of frames per OoD track."""

# --------------------------------------------------------------------------------------------
# random streams
# --------------------------------------------------------------------------------------------


@dataclass
class _Closure:
    """A drawing function as a drawable (until every scene object is a dataclass)."""

    fn: Callable[[Canvas], None]

    def draw(self, cv: Canvas) -> None:
        self.fn(cv)


# --------------------------------------------------------------------------------------------
# scene description
# --------------------------------------------------------------------------------------------


def _build_scene(rng: np.random.Generator, H: int, W: int, *, obstacle_mode: bool = False) -> Scene:
    """Draw all random parameters of a scene (nothing is drawn on pixels here)."""
    f = W * rng.uniform(0.95, 1.25)
    cam = Camera(H=H, W=W, f=f, yh=H * rng.uniform(0.34, 0.5), xv=W * rng.uniform(0.4, 0.6),
                  hc=rng.uniform(1.3, 1.75))
    rw = rng.choice([3.3, 4.5, 5.5, 6.8, 8.0]) + rng.uniform(-0.3, 0.5)
    k = 0.0 if rng.random() < 0.5 else rng.uniform(-0.0012, 0.0012)
    c0 = rng.uniform(-0.55, 0.35) * rw
    road = Road(c0=c0, k=k, rw=rw)

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
    ground = GroundStyle(
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

    scene = Scene(cam=cam, road=road, sky_top=sky_top, sky_horizon=sky_horizon, overcast=overcast,
                   cloudiness=0.0 if overcast else rng.uniform(0, 0.8), visibility=visibility,
                   sides=[], ground=ground, noise_seed=int(rng.integers(1 << 62)),
                   obstacle_mode=obstacle_mode)

    # sides: -1 (left) and +1 (right)
    kind_probs = {"urban": 0.45, "suburban": 0.3, "open": 0.25}
    scene_kind = rng.choice(list(kind_probs), p=list(kind_probs.values()))
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
        scene.sides.append(Side(side=side, kind=str(kind), sw=sw + verge, verge=verge, beyond=beyond,
                                side_street=side_street, buildings=[], sun=(side == sun_side)))
    add_sky_and_ground(rng, scene)
    add_buildings(rng, scene)
    add_long_structures(rng, scene)
    _add_vegetation(rng, scene)
    _add_street_furniture(rng, scene)
    _add_vehicles(rng, scene)
    _add_people(rng, scene)
    _add_clutter(rng, scene)
    _add_ego(rng, scene)
    scene.post = PostFX(
        exposure=rng.uniform(0.8, 1.15), gamma=rng.uniform(0.85, 1.15),
        wb=1.0 + rng.uniform(-0.05, 0.05, 3), vignette=rng.uniform(0.0, 0.3),
        blur=rng.uniform(0.3, 0.9), noise=rng.uniform(1.0, 4.0) / 255.0,
        saturation=rng.uniform(0.85, 1.05),
    )
    return scene


# --------------------------------------------------------------------------------------------
# vegetation
# --------------------------------------------------------------------------------------------


def _add_vegetation(rng: np.random.Generator, scene: Scene) -> None:
    for s in scene.sides:
        p_trees = 0.8 if s.kind == "open" else 0.45
        if rng.random() > p_trees:
            continue
        spacing = rng.uniform(6, 16)
        z = rng.uniform(3, 12)
        zend = rng.uniform(50, 160)
        in_terrain = s.kind == "open"
        while z < zend:
            if not s.in_side_street(z):
                if in_terrain and rng.random() < 0.6:
                    a = s.sw + rng.uniform(1.0, 12.0)
                else:
                    a = max(s.sw - rng.uniform(0.5, 0.9), 0.3) if s.sw > 0 else rng.uniform(0.5, 2)
                _add_tree(rng, scene, s.side, a, z)
            z += spacing * rng.uniform(0.6, 1.4)
        # bushes in the terrain
        if in_terrain:
            for _ in range(int(rng.integers(0, 6))):
                z = rng.uniform(5, 60)
                a = s.sw + rng.uniform(0.5, 8)
                _add_bush(rng, scene, s.side, a, z)


def _blob_radius(theta: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    r = np.ones_like(theta)
    for k, (amp, ph) in enumerate(coeffs, start=2):
        r = r + amp * np.cos(k * theta + ph)
    return r


def _add_tree(rng: np.random.Generator, scene: Scene, side: int, a: float, z: float) -> None:
    trunk_h = rng.uniform(1.8, 3.2)
    R = rng.uniform(1.2, 3.2)
    crown_h = R * rng.uniform(1.3, 2.2)
    trunk_w = rng.uniform(0.2, 0.45)
    coeffs = np.stack([rng.uniform(0, 0.12, 5), rng.uniform(0, 2 * np.pi, 5)], 1)
    color = np.clip(scene.ground.veg * rng.uniform(0.75, 1.25) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    trunk_col = jitter(rng, rgb(85, 70, 55), 15)
    X = float(scene.road.side_x(side, a, z))

    def draw_tree(cv: Canvas) -> None:
        cam = cv.cam
        x0, y0 = cam.project(X, 0.0, z)
        s = cam.f / z
        hw = max(trunk_w / 2, 0.5 / s)
        loc = cv.local(x0, y0, s, -hw, hw, 0, trunk_h + 0.3)
        if loc is not None:
            rr, cc, u, v = loc
            cv.fill(rr, cc, tex(trunk_col, (cv.noise.grain[rr, cc], 0.1)), VEG, z)
        cy = trunk_h + crown_h / 2
        loc = cv.local(x0, y0, s, -R * 1.4, R * 1.4, trunk_h - 0.2, trunk_h + crown_h * 1.2)
        if loc is not None:
            rr, cc, u, v = loc
            th = np.arctan2((v - cy) / (crown_h / 2), u / R)
            rho = np.hypot(u / R, (v - cy) / (crown_h / 2))
            leafy = cv.noise.n4[rr, cc] * 0.12
            m = rho < _blob_radius(th, coeffs) + leafy
            shade = 1.0 - 0.35 * np.clip((cy - v[m]) / crown_h + 0.3, 0, 1)
            col = tex(color, (cv.noise.n4[rr[m], cc[m]], 0.3), (cv.noise.grain[rr[m], cc[m]], 0.18),
                       (shade - 1.0, 1.0))
            cv.fill(rr[m], cc[m], col, VEG, z)

    scene.add(Layer.OBJECT, z, _Closure(draw_tree))


def _add_bush(rng: np.random.Generator, scene: Scene, side: int, a: float, z: float) -> None:
    R = rng.uniform(0.5, 1.5)
    h = R * rng.uniform(0.8, 1.4)
    coeffs = np.stack([rng.uniform(0, 0.15, 4), rng.uniform(0, 2 * np.pi, 4)], 1)
    color = np.clip(scene.ground.veg * rng.uniform(0.8, 1.2), 0, 1)
    X = float(scene.road.side_x(side, a, z))

    def draw_bush(cv: Canvas) -> None:
        cam = cv.cam
        x0, y0 = cam.project(X, 0.0, z)
        s = cam.f / z
        loc = cv.local(x0, y0, s, -R * 1.3, R * 1.3, 0, h * 1.3)
        if loc is None:
            return
        rr, cc, u, v = loc
        th = np.arctan2((v - h / 2) / (h / 2), u / R)
        rho = np.hypot(u / R, (v - h / 2) / (h / 2))
        m = (rho < _blob_radius(th, coeffs) + cv.noise.n4[rr, cc] * 0.15) & (v >= 0)
        cv.fill(rr[m], cc[m], tex(color, (cv.noise.n4[rr[m], cc[m]], 0.3), (cv.noise.grain[rr[m], cc[m]], 0.15)), VEG, z)

    scene.add(Layer.OBJECT, z, _Closure(draw_bush))


# --------------------------------------------------------------------------------------------
# poles, signs, traffic lights, clutter
# --------------------------------------------------------------------------------------------


def _add_street_furniture(rng: np.random.Generator, scene: Scene) -> None:
    for s in scene.sides:
        side = s.side
        if rng.random() < 0.85:
            spacing = rng.uniform(12, 35)
            z = rng.uniform(2, spacing)
            lamp = rng.random() < 0.6
            a_pole = rng.uniform(0.3, 0.8) if s.sw > 1.0 else rng.uniform(0.2, 1.0)
            zend = rng.uniform(50, 110)
            while z < zend:
                if not s.in_side_street(z):
                    _add_pole(rng, scene, side, a_pole, z, lamp=lamp)
                z += spacing * rng.uniform(0.8, 1.2)
        # separate sign posts
        for _ in range(int(rng.poisson(1.5))):
            z = rng.uniform(4, 60)
            if not s.in_side_street(z):
                _add_pole(rng, scene, side, rng.uniform(0.2, 1.0), z, lamp=False, sign_only=True)
        # traffic lights near the side street or the zebra
        ref = None
        if s.side_street is not None:
            ref = s.side_street[0] - rng.uniform(0.5, 3)
        elif scene.ground.zebra is not None and rng.random() < 0.7:
            ref = scene.ground.zebra - rng.uniform(0.5, 2)
        if ref is not None and ref > 4:
            _add_pole(rng, scene, side, rng.uniform(0.3, 0.8), ref, lamp=False, traffic_light=True)
        for _ in range(int(rng.poisson(0.4))):
            z = rng.uniform(6, 50)
            if not s.in_side_street(z):
                _add_pole(rng, scene, side, rng.uniform(0.3, 0.8), z, lamp=False, traffic_light=True)


def _add_pole(rng: np.random.Generator, scene: Scene, side: int, a: float, z: float, *, lamp: bool,
              sign_only: bool = False, traffic_light: bool = False) -> None:
    height = rng.uniform(2.6, 3.4) if sign_only else (rng.uniform(3.8, 5.0) if traffic_light else rng.uniform(5, 9))
    width = rng.uniform(0.14, 0.28) if not sign_only else rng.uniform(0.08, 0.12)
    color = jitter(rng, rgb(*[(150, 150, 150), (110, 110, 110), (60, 70, 65), (40, 40, 40), (170, 170, 165)][rng.integers(5)]), 10)
    has_sign = sign_only or (not traffic_light and rng.random() < 0.35)
    sign = None
    if has_sign:
        kind = rng.choice(["circle_red", "circle_blue", "triangle", "diamond", "rect_blue", "rect_white", "octagon"])
        sign = dict(kind=kind, size=rng.uniform(0.6, 1.0), h=rng.uniform(2.0, height - 0.2),
                    offset=rng.uniform(-0.1, 0.1))
        if sign["h"] + sign["size"] / 2 > height:
            sign["h"] = height - sign["size"] / 2
    tl = None
    if traffic_light:
        tl = dict(h=height - rng.uniform(0.1, 0.6), lit=int(rng.integers(3)), w=rng.uniform(0.3, 0.42),
                  arm=rng.random() < 0.4, arm_len=rng.uniform(2.5, 5.0))
    lamp_arm = rng.uniform(0.8, 2.0) if lamp else 0.0
    X = float(scene.road.side_x(side, a, z))

    def draw_pole(cv: Canvas) -> None:
        cam = cv.cam
        x0, y0 = cam.project(X, 0.0, z)
        s = cam.f / z
        hw = max(width / 2, 1.0 / s)  # at least about 2 pixels wide
        loc = cv.local(x0, y0, s, -hw, hw, 0, height)
        if loc is not None:
            rr, cc, u, v = loc
            shade = 1.0 + 0.25 * (u / hw)
            cv.fill(rr, cc, tex(color, (shade - 1, 1.0)), POLE, z)
        if lamp_arm > 0:
            # arm towards the road and a lamp head
            d = -side
            lo, hi = sorted((0.0, d * lamp_arm))
            loc = cv.local(x0, y0, s, lo, hi, height - max(0.1, 1.2 / s), height)
            if loc is not None:
                rr, cc, u, v = loc
                cv.fill(rr, cc, color, POLE, z)
            lo, hi = sorted((d * (lamp_arm - 0.5), d * (lamp_arm + 0.1)))
            loc = cv.local(x0, y0, s, lo, hi, height - 0.25, height)
            if loc is not None:
                rr, cc, u, v = loc
                cv.fill(rr, cc, color * 0.7, POLE, z)
        if sign is not None:
            _draw_sign(cv, x0, y0, s, sign, z)
        if tl is not None:
            if tl["arm"]:
                d = -side
                lo, hi = sorted((0.0, d * tl["arm_len"]))
                loc = cv.local(x0, y0, s, lo, hi, tl["h"] + 0.35, tl["h"] + 0.35 + max(0.12, 1.2 / s))
                if loc is not None:
                    rr, cc, u, v = loc
                    cv.fill(rr, cc, color, POLE, z)
                _draw_traffic_light(cv, x0 + s * d * tl["arm_len"], y0, s, tl, z)
            _draw_traffic_light(cv, x0, y0, s, tl, z)

    scene.add(Layer.OBJECT, z, _Closure(draw_pole))


def _draw_sign(cv: Canvas, x0, y0, s, sign: dict, z: float) -> None:
    r = sign["size"] / 2
    cy = sign["h"]
    loc = cv.local(x0, y0, s, sign["offset"] - r, sign["offset"] + r, cy - r, cy + r)
    if loc is None:
        return
    rr, cc, u, v = loc
    du, dv = (u - sign["offset"]) / r, (v - cy) / r
    kind = sign["kind"]
    red, white, blue, yellow, black = rgb(200, 30, 35), rgb(235, 235, 235), rgb(25, 70, 170), rgb(230, 215, 40), rgb(25, 25, 25)
    rho = np.hypot(du, dv)
    if kind in ("circle_red", "circle_blue"):
        m = rho <= 1.0
        inner = rho < 0.72
        col = np.where(inner[:, None], white if kind == "circle_red" else blue, red if kind == "circle_red" else white)
        if kind == "circle_blue":
            col = np.where((rho < 0.9)[:, None], blue, white)
    elif kind == "triangle":
        m = (dv >= -0.8) & (dv <= 1.0) & (np.abs(du) <= (1.0 - dv) * 0.6)
        inner = (dv >= -0.62) & (np.abs(du) <= (0.75 - dv) * 0.6 - 0.0)
        col = np.where(inner[:, None], white, red)
    elif kind == "diamond":
        m = np.abs(du) + np.abs(dv) <= 1.0
        col = np.where((np.abs(du) + np.abs(dv) <= 0.82)[:, None], yellow, white)
        col = np.where(((np.abs(du) + np.abs(dv) > 0.9) & m)[:, None], black, col)
    elif kind == "octagon":
        m = (np.abs(du) <= 1) & (np.abs(dv) <= 1) & (np.abs(du) + np.abs(dv) <= 1.42)
        col = np.where((np.abs(du) + np.abs(dv) <= 1.25)[:, None] & (np.abs(du) < 0.85)[:, None] & (np.abs(dv) < 0.85)[:, None], red, white)
    else:
        m = (np.abs(du) <= 1) & (np.abs(dv) <= 0.7)
        base = blue if kind == "rect_blue" else white
        glyph = (np.abs(dv) < 0.35) & (np.abs(du) < 0.7) & (np.mod((du + 1) * 4, 1.0) < 0.55)
        col = np.where(glyph[:, None], white if kind == "rect_blue" else black, base)
        col = np.where(((np.abs(du) > 0.9) | (np.abs(dv) > 0.6))[:, None], white if kind == "rect_blue" else black, col)
    col = np.broadcast_to(col, (len(rr), 3))
    cv.fill(rr[m], cc[m], tex(col[m], (cv.noise.grain[rr[m], cc[m]], 0.03)), SIGN, z - 0.05)


def _draw_traffic_light(cv: Canvas, x0, y0, s, tl: dict, z: float) -> None:
    w, h = tl["w"], tl["w"] * 2.8
    top = tl["h"] + 0.3
    loc = cv.local(x0, y0, s, -w / 2, w / 2, top - h, top)
    if loc is None:
        return
    rr, cc, u, v = loc
    col = np.tile(rgb(30, 32, 30), (len(rr), 1))
    lamps = [rgb(235, 40, 30), rgb(235, 205, 40), rgb(40, 200, 90)]
    for i in range(3):
        cy = top - h * (i + 0.5) / 3
        m = np.hypot(u, v - cy) < w * 0.33
        on = i == tl["lit"]
        col[m] = lamps[i] if on else lamps[i] * 0.25 + 0.05
    cv.fill(rr, cc, col, LIGHT, z - 0.05)


def _add_clutter(rng: np.random.Generator, scene: Scene) -> None:
    """Unlabelled street objects (bins, bollards, boxes): void, as Cityscapes' 'static' class."""
    for s in scene.sides:
        if s.sw <= 0.8:
            continue
        for _ in range(int(rng.poisson(0.8))):
            z = rng.uniform(4, 40)
            if s.in_side_street(z):
                continue
            a = rng.uniform(0.4, s.sw - 0.3)
            kind = rng.choice(["bin", "bollard", "box"])
            w = {"bin": 0.6, "bollard": 0.15, "box": 0.9}[kind] * rng.uniform(0.8, 1.2)
            h = {"bin": 1.0, "bollard": 0.9, "box": 1.3}[kind] * rng.uniform(0.8, 1.2)
            col = jitter(rng, rgb(*[(60, 70, 60), (90, 90, 95), (110, 95, 70), (50, 50, 55)][rng.integers(4)]), 12)
            X = float(scene.road.side_x(s.side, a, z))
            scene.add(Layer.OBJECT, z, _Closure(_box_drawer(X, z, w, h, col, VOID)))


def _box_drawer(X, z, w, h, col, label):
    def draw_box(cv: Canvas) -> None:
        cam = cv.cam
        x0, y0 = cam.project(X, 0.0, z)
        s = cam.f / z
        loc = cv.local(x0, y0, s, -w / 2, w / 2, 0, h)
        if loc is not None:
            rr, cc, u, v = loc
            top = (v > h - 0.08).astype(np.float32)
            cv.fill(rr, cc, tex(col, (cv.noise.grain[rr, cc], 0.05), (top, 0.2)), label, z)

    return draw_box


# --------------------------------------------------------------------------------------------
# vehicles
# --------------------------------------------------------------------------------------------


def _add_vehicles(rng: np.random.Generator, scene: Scene) -> None:
    road = scene.road
    n_lanes = max(1, int(round(2 * road.rw / 3.2)))
    lane_w = 2 * road.rw / n_lanes
    busy = rng.uniform(0.15, 0.75) * (0.35 if scene.obstacle_mode else 1.0)
    occupied: list[tuple[float, float, float]] = []  # (d, z0, z1)
    for lane in range(n_lanes):
        d = -road.rw + (lane + 0.5) * lane_w
        oncoming = (lane < n_lanes // 2) and n_lanes >= 2
        # obstacle scenes keep the road ahead free (as in RoadObstacle21)
        z = rng.uniform(15, 30) if scene.obstacle_mode else rng.uniform(5, 20)
        while z < 100:
            if rng.random() < busy:
                truck = rng.random() < 0.12
                v = _make_vehicle(rng, truck=truck)
                dd = d + rng.uniform(-0.4, 0.4)
                _add_vehicle(scene, v, dd, z, front=oncoming)
                occupied.append((dd, z, z + v["length"]))
                z += v["length"] + rng.uniform(3, 25)
            else:
                z += rng.uniform(8, 30)
    # parked cars along the kerbs
    for s in scene.sides:
        if rng.random() < (0.2 if scene.obstacle_mode else 0.45):
            d = s.side * (road.rw - rng.uniform(1.0, 1.3))
            z = rng.uniform(3, 20)
            zend = rng.uniform(30, 90)
            while z < zend:
                if not s.in_side_street(z) and rng.random() < 0.8:
                    v = _make_vehicle(rng, truck=rng.random() < 0.05)
                    _add_vehicle(scene, v, d, z, front=False)
                    z += v["length"] + rng.uniform(0.5, 3)
                else:
                    z += rng.uniform(4, 12)


def _make_vehicle(rng: np.random.Generator, *, truck: bool) -> dict:
    if truck:
        return dict(truck=True, length=rng.uniform(6.5, 10), width=rng.uniform(2.3, 2.6), height=rng.uniform(2.8, 3.8),
                    color=jitter(rng, rgb(*[(220, 220, 220), (180, 180, 185), (60, 80, 120), (150, 40, 40), (90, 100, 90)][rng.integers(5)]), 10),
                    cab_color=jitter(rng, rgb(200, 200, 205), 30), seed=int(rng.integers(1 << 30)))
    body_col = jitter(rng, rgb(*CAR_COLORS[rng.integers(len(CAR_COLORS))]), 10)
    return dict(truck=False, length=rng.uniform(3.8, 4.9), width=rng.uniform(1.65, 1.9), height=rng.uniform(1.35, 1.65),
                color=body_col, glass=jitter(rng, rgb(35, 40, 50), 10), cabin=rng.uniform(0.72, 0.88),
                seed=int(rng.integers(1 << 30)))


def _add_vehicle(scene: Scene, v: dict, d: float, z: float, *, front: bool) -> None:
    road = scene.road
    label = TRUCK if v["truck"] else CAR

    def draw_vehicle(cv: Canvas) -> None:
        cam = cv.cam
        L, Wd, Hh = v["length"], v["width"], v["height"]
        Xc = float(road.center(z + L / 2)) + d
        xl, xr = Xc - Wd / 2, Xc + Wd / 2
        col = v["color"]
        n = cv.noise
        # contact shadow on the road
        xs, ys = cam.project(np.array([xl - 0.1, xr + 0.1, xr + 0.1, xl - 0.1]), np.zeros(4), np.array([z - 0.3, z - 0.3, z + L, z + L]))
        prr, pcc = draw.polygon(ys, xs, (cam.H, cam.W))
        if len(prr):
            keep = np.isin(cv.lab[prr, pcc], (ROAD, SIDEWALK))
            cv.img[prr[keep], pcc[keep]] *= 0.45
        # visible side face (towards the camera axis)
        if xr < -0.2 or xl > 0.2:
            Xs = xr if xr < 0 else xl
            px = cv.plane_x(Xs, z, z + L, 0.0, Hh)
            if px is not None:
                rr, cc, Z, Y = px
                u = Z - z  # 0 at the near end
                c = _vehicle_side_colors(cv, v, rr, cc, u, Y, front)
                m = c[1]
                cv.fill(rr[m], cc[m], c[0][m], label, Z[m])
        # rear or front face
        pz = cv.plane_z(z, xl, xr, 0.0, Hh)
        if pz is not None:
            rr, cc, X, Y = pz
            u = X - Xc
            c, m = _vehicle_end_colors(cv, v, rr, cc, u, Y, front)
            cv.fill(rr[m], cc[m], c[m], label, z)

    scene.add(Layer.OBJECT, z, _Closure(draw_vehicle))


def _vehicle_end_colors(cv, v, rr, cc, u, Y, front):
    Wd, Hh = v["width"], v["height"]
    col = np.tile(v["color"], (len(rr), 1))
    col = tex(v["color"], (cv.noise.grain[rr, cc], 0.02), (cv.noise.n16[rr, cc], 0.03))
    hw = Wd / 2
    if v["truck"]:
        m = (Y > 0.0) & (np.abs(u) <= hw)
        body = Y > 0.55
        col[~body] = rgb(35, 35, 38)
        door = (np.abs(u) < 0.03) & body
        col[door] = col[door] * 0.6
        wheel = (~body) & (np.abs(np.abs(u) - hw * 0.7) < 0.3) & (Y < 0.55)
        col[wheel] = rgb(20, 20, 20)
        lights = (Y > 0.6) & (Y < 0.8) & (np.abs(u) > hw - 0.25)
        col[lights] = rgb(190, 30, 30) if not front else rgb(240, 240, 220)
        if front:
            ws = (Y > Hh * 0.6) & (Y < Hh * 0.9) & (np.abs(u) < hw - 0.15)
            col[ws] = rgb(40, 50, 60)
        return col, m
    belt = 0.95 * Hh / 1.5
    top_w = hw * v["cabin"]
    cab_half = np.where(Y > belt, hw - (hw - top_w) * (Y - belt) / max(Hh - belt, 1e-3), hw)
    m = (np.abs(u) <= cab_half) & (Y > 0.0)
    # wheels below the body
    below = Y < 0.28
    wheel = below & (np.abs(u) > hw - 0.35)
    m &= ~below | wheel
    col[wheel] = rgb(22, 22, 24)
    win = (Y > belt + 0.07) & (Y < Hh - 0.07) & (np.abs(u) < cab_half - 0.1)
    col[win] = v.get("glass", rgb(40, 45, 55)) * (1.0 + 0.5 * (Y[win] - belt) / max(Hh - belt, 1e-3))[:, None]
    if front:
        lights = (Y > 0.55) & (Y < 0.72) & (np.abs(u) > hw - 0.35) & (np.abs(u) < hw - 0.05)
        col[lights] = rgb(235, 235, 215)
        grille = (Y > 0.4) & (Y < 0.6) & (np.abs(u) < 0.35)
        col[grille] = rgb(30, 30, 32)
    else:
        lights = (Y > 0.68) & (Y < 0.85) & (np.abs(u) > hw - 0.3) & (np.abs(u) < hw - 0.04)
        col[lights] = rgb(180, 25, 25)
        plate = (Y > 0.38) & (Y < 0.5) & (np.abs(u) < 0.25)
        col[plate] = rgb(220, 220, 210)
    bumper = (Y > 0.25) & (Y < 0.38)
    col[bumper & ~wheel] *= 0.7
    return col, m


def _vehicle_side_colors(cv, v, rr, cc, u, Y, front):
    L, Hh = v["length"], v["height"]
    col = tex(v["color"] * 0.85, (cv.noise.grain[rr, cc], 0.02))
    if v["truck"]:
        m = Y > 0.0
        cab = (u < 1.8) if front else (u > L - 1.8)
        col[cab] = v["cab_color"] * 0.85
        low = Y < 0.55
        col[low] = rgb(30, 30, 32)
        wheels = [1.2, L - 1.4, L - 2.4]
        for wc in wheels:
            w = np.hypot(u - wc, Y - 0.5) < 0.5
            col[w] = rgb(20, 20, 20)
        m &= ~low | (np.hypot(u - wheels[0], Y - 0.5) < 0.5) | (np.hypot(u - wheels[1], Y - 0.5) < 0.5) | (np.hypot(u - wheels[2], Y - 0.5) < 0.5) | (Y > 0.35)
        return col, m
    belt = 0.95 * Hh / 1.5
    # cabin: shorter than the body, sloped pillars
    c0, c1 = L * 0.22, L * 0.78
    slope = 0.5
    tt = np.clip((Y - belt) / max(Hh - belt, 1e-3), 0, 1)
    in_cab = (u > c0 + slope * tt) & (u < c1 - slope * tt * 1.4)
    m = (Y > 0.28) & ((Y <= belt) | in_cab)
    win = (Y > belt + 0.06) & (Y < Hh - 0.06) & (u > c0 + slope * tt + 0.08) & (u < c1 - slope * tt * 1.4 - 0.08)
    pillar = np.abs(u - 0.5 * (c0 + c1)) < 0.06
    col[win & ~pillar] = v.get("glass", rgb(40, 45, 55)) * 1.2
    for wc in (0.75, L - 0.85):
        w = np.hypot(u - wc, Y - 0.33) < 0.33
        col[w] = rgb(22, 22, 24)
        hub = np.hypot(u - wc, Y - 0.33) < 0.14
        col[hub] = rgb(120, 120, 125)
        m |= w
    return col, m


# --------------------------------------------------------------------------------------------
# persons
# --------------------------------------------------------------------------------------------


def _seg_dist(u, v, p, q):
    """Distance of points (u, v) to the segment p-q."""
    px, py = p
    qx, qy = q
    dx, dy = qx - px, qy - py
    L2 = dx * dx + dy * dy + 1e-12
    t = np.clip(((u - px) * dx + (v - py) * dy) / L2, 0, 1)
    return np.hypot(u - px - t * dx, v - py - t * dy)


def _add_people(rng: np.random.Generator, scene: Scene) -> None:
    road = scene.road
    for s in scene.sides:
        if s.sw < 1.0:
            n = int(rng.poisson(0.5))
        else:
            n = int(rng.poisson(rng.uniform(1.0, 5.0)))
        for _ in range(n):
            z = rng.uniform(3.5, 40) if rng.random() < 0.7 else rng.uniform(3.5, 20)
            a = rng.uniform(0.4, max(0.5, s.sw - 0.3)) if s.sw > 0 else rng.uniform(0.3, 2.0)
            group = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
            for g in range(group):
                _add_person(rng, scene, float(scene.road.side_x(s.side, a + 0.5 * g * rng.uniform(-1, 1), z)), z + g * rng.uniform(0.3, 1.2))
    # crossing pedestrians on the zebra / road
    if scene.ground.zebra is not None:
        for _ in range(int(rng.poisson(1.5))):
            z = scene.ground.zebra + rng.uniform(0.3, 3.2)
            d = rng.uniform(-road.rw + 0.5, road.rw - 0.5)
            _add_person(rng, scene, float(road.center(z) + d), z, walking_side=True)


def _person_parts(rng: np.random.Generator, height: float, side_view: bool) -> dict:
    k = height / 1.75
    phase = rng.uniform(-1, 1) if rng.random() < 0.7 else 0.0
    return dict(
        k=k, phase=phase, side_view=side_view,
        shirt=jitter(rng, rgb(*CLOTHES[rng.integers(len(CLOTHES))]), 12),
        trousers=jitter(rng, rgb(*CLOTHES[rng.integers(len(CLOTHES))]) * 0.8, 10),
        skin=jitter(rng, rgb(*SKIN[rng.integers(len(SKIN))]), 8),
        hair=jitter(rng, rgb(*[(30, 25, 20), (70, 50, 35), (120, 100, 70), (150, 150, 150)][rng.integers(4)]), 8),
        bag=rng.random() < 0.25, coat=rng.random() < 0.55, width=rng.uniform(1.0, 1.25),
    )


def _draw_person(cv: Canvas, x0, y0, s, P: dict, z: float) -> None:
    k, ph, wf = P["k"], P["phase"], P["width"]
    top = 1.85 * k
    loc = cv.local(x0, y0, s, -0.45 * k, 0.45 * k, 0.0, top)
    if loc is None:
        return
    rr, cc, u, v = loc
    u = u / wf
    col = np.zeros((len(rr), 3), np.float32)
    m = np.zeros(len(rr), bool)
    lw = max(0.07 * k, 0.75 / s)
    hip_y = 0.92 * k
    if P["side_view"]:
        feet = [(0.28 * ph * k, 0.04), (-0.28 * ph * k, 0.04)]
        hips = [(0.0, hip_y), (0.0, hip_y)]
    else:
        feet = [(-0.11 * k + 0.03 * ph, 0.04), (0.11 * k - 0.03 * ph, 0.04)]
        hips = [(-0.08 * k, hip_y), (0.08 * k, hip_y)]
    for hp, ft in zip(hips, feet):
        leg = _seg_dist(u, v, hp, ft) < lw
        col[leg] = P["trousers"]
        m |= leg
    # torso: trapezoid from hips to shoulders
    sh_y = 1.45 * k
    lean = 0.0
    t = np.clip((v - hip_y) / (sh_y - hip_y), 0, 1)
    half = (0.15 + 0.06 * t) * k
    torso = (v >= hip_y - (0.25 * k if P["coat"] else 0.05)) & (v <= sh_y + 0.03 * k) & (np.abs(u - lean * t) <= half)
    col[torso] = P["shirt"]
    m |= torso
    # arms
    swing = 0.18 * ph * k if P["side_view"] else 0.0
    for sgn in ((0,) if P["side_view"] else (-1, 1)):
        shoulder = (sgn * 0.2 * k + lean, sh_y - 0.05 * k)
        hand = (sgn * 0.2 * k + swing, 0.85 * k)
        arm = _seg_dist(u, v, shoulder, hand) < lw * 0.8
        col[arm] = P["shirt"] * 0.9
        hnd = np.hypot(u - hand[0], v - hand[1]) < lw
        col[hnd] = P["skin"]
        m |= arm | hnd
    if P["bag"]:
        bag = (np.abs(u - 0.22 * k) < 0.08 * k) & (v > 0.85 * k) & (v < 1.1 * k)
        col[bag] = rgb(45, 40, 35)
        m |= bag
    # head and neck
    hc_ = (lean, 1.62 * k)
    head = ((u - hc_[0]) / (0.085 * k)) ** 2 + ((v - hc_[1]) / (0.115 * k)) ** 2 <= 1.0
    neck = (np.abs(u - lean) < 0.045 * k) & (v > sh_y - 0.02) & (v < hc_[1])
    col[head | neck] = P["skin"]
    hair = head & (v > hc_[1] + 0.02 * k)
    col[hair] = P["hair"]
    m |= head | neck
    col = tex(col, (cv.noise.grain[rr, cc], 0.06))
    cv.fill(rr[m], cc[m], col[m], PERSON, z)


def _add_person(rng: np.random.Generator, scene: Scene, X: float, z: float, *, walking_side: bool | None = None) -> None:
    height = rng.uniform(1.55, 1.95) if rng.random() < 0.9 else rng.uniform(1.1, 1.4)
    side_view = bool(rng.random() < 0.35) if walking_side is None else walking_side
    P = _person_parts(rng, height, side_view)

    def draw_p(cv: Canvas) -> None:
        x0, y0 = cv.cam.project(X, 0.0, z)
        _draw_person(cv, x0, y0, cv.cam.f / z, P, z)

    scene.add(Layer.OBJECT, z, _Closure(draw_p))


# --------------------------------------------------------------------------------------------
# ego vehicle
# --------------------------------------------------------------------------------------------


def _add_ego(rng: np.random.Generator, scene: Scene) -> None:
    if rng.random() > 0.85:
        return
    frac = rng.uniform(0.05, 0.12)
    bulge = rng.uniform(0.2, 0.5)
    col = jitter(rng, rgb(*CAR_COLORS[rng.integers(len(CAR_COLORS))]) * 0.7, 8)

    def draw_ego(cv: Canvas) -> None:
        cam = cv.cam
        xs = (np.arange(cam.W) + 0.5) / cam.W * 2 - 1
        top = cam.H * (1 - frac * (1 + bulge * (1 - xs ** 2)) / (1 + bulge))
        rows = np.arange(cam.H)[:, None] + 0.5
        rr, cc = np.nonzero(rows >= top[None])
        refl = np.clip(1 - (rr - top[cc]) / max(cam.H * frac, 1), 0, 1)
        c = tex(col, (refl * 0.6, 1.0), (cv.noise.n16[rr, cc], 0.05))
        cv.img[rr, cc] = c
        cv.lab[rr, cc] = VOID
        cv.ood[rr, cc] = 0

    scene.add(Layer.EGO, 0.0, _Closure(draw_ego))


# --------------------------------------------------------------------------------------------
# unknown (OoD) objects
# --------------------------------------------------------------------------------------------


def _ood_pattern(rng: np.random.Generator) -> dict:
    """Colours and texture of one unknown object (never used for in-distribution classes)."""
    i, j = rng.choice(len(OOD_COLORS), 2, replace=False)
    c1 = OOD_COLORS[i]
    second = rng.random()
    c2 = OOD_COLORS[j] if second < 0.6 else (rgb(245, 245, 245) if second < 0.8 else rgb(20, 20, 20))
    return dict(kind=rng.choice(["checker", "stripes", "dots", "rings", "solid_dots"]), c1=c1, c2=c2,
                period=rng.uniform(3, 7), angle=rng.uniform(0, np.pi))


def _ood_colors(pat: dict, u: np.ndarray, v: np.ndarray, size: float) -> np.ndarray:
    q = size / pat["period"]
    kind = pat["kind"]
    if kind == "checker":
        sel = (np.floor(u / q) + np.floor(v / q)) % 2 == 0
    elif kind == "stripes":
        t = u * math.cos(pat["angle"]) + v * math.sin(pat["angle"])
        sel = np.floor(t / q) % 2 == 0
    elif kind == "dots":
        fu, fv = np.mod(u, q) / q - 0.5, np.mod(v, q) / q - 0.5
        sel = np.hypot(fu, fv) > 0.3
    elif kind == "rings":
        sel = np.floor(np.hypot(u, v - size / 2) / q) % 2 == 0
    else:
        fu, fv = np.mod(u + 0.5 * q, 2 * q) / (2 * q) - 0.5, np.mod(v, 2 * q) / (2 * q) - 0.5
        sel = np.hypot(fu, fv) > 0.2
    return np.where(sel[:, None], pat["c1"][None], pat["c2"][None]).astype(np.float32)


def _ood_shape(rng: np.random.Generator, *, large: bool) -> dict:
    kinds = ["box", "blob", "star", "ring", "cone", "sphere", "cross"] + (["creature", "spiky"] if large else ["cylinder"])
    kind = str(rng.choice(kinds))
    return dict(kind=kind, coeffs=np.stack([rng.uniform(0.05, 0.3, 5), rng.uniform(0, 2 * np.pi, 5)], 1),
                points=int(rng.integers(4, 9)), inner=rng.uniform(0.35, 0.6), tilt=rng.uniform(-0.4, 0.4))


def _ood_mask(shape: dict, u: np.ndarray, v: np.ndarray, w: float, h: float) -> np.ndarray:
    """Silhouette of an unknown object of width ``w`` and height ``h`` standing at u = 0, v = 0."""
    kind = shape["kind"]
    cu, cv_ = u / (w / 2), (v - h / 2) / (h / 2)  # normalised: [-1, 1] x [-1, 1]
    th = np.arctan2(cv_, cu) + shape["tilt"]
    rho = np.hypot(cu, cv_)
    if kind == "box":
        return (np.abs(cu) <= 1) & (np.abs(cv_) <= 1)
    if kind == "cylinder":
        return ((np.abs(cu) <= 1) & (np.abs(cv_) <= 0.8)) | (np.hypot(cu, (cv_ - 0.8) / 0.2) <= 1)
    if kind == "blob":
        return rho <= 0.75 * _blob_radius(th, shape["coeffs"])
    if kind == "sphere":
        return rho <= 1.0
    if kind == "star" or kind == "spiky":
        n = shape["points"] if kind == "star" else 2 * shape["points"] + 3
        inner = shape["inner"] if kind == "star" else 0.45
        t = np.mod(th * n / (2 * np.pi), 1.0)
        r = inner + (1 - inner) * np.abs(1 - 2 * t)
        return rho <= r
    if kind == "ring":
        return (rho <= 1.0) & (rho >= 0.5)
    if kind == "cone":
        return (cv_ >= -1) & (np.abs(cu) <= (1 - cv_) / 2)
    if kind == "cross":
        return ((np.abs(cu) <= 0.3) & (np.abs(cv_) <= 1)) | ((np.abs(cv_) <= 0.3) & (np.abs(cu) <= 1))
    if kind == "creature":
        body = np.hypot(cu / 0.8, (cv_ - 0.1) / 0.45) <= 1
        head = np.hypot((cu - 0.75) / 0.28, (cv_ - 0.55) / 0.3) <= 1
        legs = np.zeros_like(body)
        for lx in (-0.55, -0.25, 0.25, 0.55):
            legs |= (np.abs(cu - lx) <= 0.09) & (cv_ <= 0.0)
        return body | head | legs
    raise AssertionError(kind)


@dataclass
class _OoDObject:
    """One unknown object standing on the ground at lateral X and depth z (or floating at ``lift``)."""

    X: float
    z: float
    w: float
    h: float
    shape: dict
    pattern: dict
    lift: float = 0.0

    def pixels(self, cam: Camera):
        x0, y0 = cam.project(self.X, self.lift, self.z)
        s = cam.f / self.z
        rr, cc = np.mgrid[0:1, 0:1]
        box = (x0 - s * self.w / 2 - 1, x0 + s * self.w / 2 + 1, y0 - s * self.h - 1, y0 + 1)
        c0, c1 = max(int(math.floor(box[0])), 0), min(int(math.ceil(box[1])), cam.W - 1)
        r0, r1 = max(int(math.floor(box[2])), 0), min(int(math.ceil(box[3])), cam.H - 1)
        if c1 < c0 or r1 < r0:
            e = np.zeros(0, np.int64)
            return e, e, np.zeros(0), np.zeros(0)
        rr, cc = np.mgrid[r0:r1 + 1, c0:c1 + 1]
        rr, cc = rr.ravel(), cc.ravel()
        u = (cc + 0.5 - x0) / s
        v = (y0 - rr - 0.5) / s
        m = _ood_mask(self.shape, u, v, self.w, self.h)
        return rr[m], cc[m], u[m], v[m]

    def draw(self, cv: Canvas) -> None:
        rr, cc, u, v = self.pixels(cv.cam)
        if len(rr) == 0:
            return
        col = _ood_colors(self.pattern, u, v, max(self.w, self.h))
        # simple shading: lit from above, darker at the bottom; keeps the colours saturated
        shade = 0.8 + 0.2 * np.clip(v / max(self.h, 1e-3), 0, 1)
        col = col * shade[:, None].astype(np.float32)
        cv.fill(rr, cc, col, VOID, self.z, ood=1)


def _place_obstacles(rng: np.random.Generator, scene: Scene, clean_label: np.ndarray) -> list[_OoDObject]:
    """1-2 small unknown objects lying on the road, wholly over road pixels of the clean scene."""
    cam, road = scene.cam, scene.road
    out: list[_OoDObject] = []
    n = 1 if rng.random() < 0.7 else 2
    road_mask = clean_label == ROAD
    taken = np.zeros_like(road_mask)
    for _ in range(n):
        for attempt in range(60):
            z = rng.uniform(5, 30) if attempt < 40 else rng.uniform(5, 12)
            w = rng.uniform(0.25, 1.0)
            h = rng.uniform(0.2, 0.8) * (w if rng.random() < 0.5 else 1.0)
            h = max(h, 0.15)
            d = rng.uniform(-road.rw + 0.3 + w / 2, road.rw - 0.3 - w / 2) if road.rw > w else 0.0
            obj = _OoDObject(X=float(road.center(z) + d), z=z, w=w, h=h, shape=_ood_shape(rng, large=False),
                             pattern=_ood_pattern(rng))
            rr, cc, _, _ = obj.pixels(cam)
            if len(rr) < 40:
                continue
            if road_mask[rr, cc].all() and not taken[rr, cc].any():
                taken[rr, cc] = True
                out.append(obj)
                break
    return out


def _anomaly_candidates(rng: np.random.Generator, scene: Scene) -> _OoDObject:
    cam, road = scene.cam, scene.road
    z = rng.uniform(5, 40)
    large = rng.random() < 0.6
    w = rng.uniform(1.0, 4.5) if large else rng.uniform(0.5, 1.5)
    h = w * rng.uniform(0.5, 1.4)
    where = rng.random()
    if where < 0.5:
        d = rng.uniform(-road.rw, road.rw)
    else:
        side = rng.choice([-1, 1])
        sw = scene.sides[0 if side < 0 else 1].sw
        d = side * (road.rw + rng.uniform(0, sw + 3))
    lift = rng.uniform(2, 8) if rng.random() < 0.12 else 0.0
    return _OoDObject(X=float(road.center(z) + d), z=z, w=w, h=h, shape=_ood_shape(rng, large=True),
                      pattern=_ood_pattern(rng), lift=lift)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _render(scene: Scene, extra: Sequence[DrawItem] = (), noise=None):
    noise = noise_fields(scene.noise_seed, (scene.cam.H, scene.cam.W)) if noise is None else noise
    cv = Canvas(scene.cam, noise, scene.sky_horizon, scene.visibility)
    items = list(scene.items) + [
        DrawItem(it.layer, it.depth, it.thing, seq=len(scene.items) + i) for i, it in enumerate(extra)
    ]
    for it in sorted(items, key=lambda it: (it.layer, -it.depth, it.seq)):
        it.thing.draw(cv)
    return cv.img, cv.lab, cv.ood


def _postprocess(img: np.ndarray, post: PostFX, rng: np.random.Generator) -> np.ndarray:
    """Exposure, gamma, white balance, saturation, vignette, blur, sensor noise; returns uint8."""
    H, W, _ = img.shape
    x = img * post.exposure * post.wb[None, None, :].astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * post.saturation
    x = np.clip(x, 0, 1) ** post.gamma
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = ((yy - H / 2) / (H / 2)) ** 2 + ((xx - W / 2) / (W / 2)) ** 2
    x = x * (1 - post.vignette * 0.25 * r2)[..., None].astype(np.float32)
    x = ndimage.gaussian_filter(x, sigma=(post.blur, post.blur, 0), truncate=3.0)
    x = x + rng.standard_normal(x.shape).astype(np.float32) * post.noise
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


BLUR_RADIUS = 3
"""Pixels by which the blur can spread an object's colours beyond its mask (``ceil(3 * 0.9)``)."""


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
    track = split if split in ("obstacle", "anomaly") else None
    scene = _build_scene(frame_rng(seed, split, index, "scene"), H, W, obstacle_mode=track == "obstacle")
    noise = noise_fields(scene.noise_seed, (H, W))
    img, lab, _ = _render(scene, noise=noise)
    if track is None:
        image = _postprocess(img, scene.post, frame_rng(seed, split, index, "post"))
        return SyntheticSample(image=image, semantic=lab)

    orng = frame_rng(seed, split, index, "ood")
    if track == "obstacle":
        objects = _place_obstacles(orng, scene, lab)
        ood_img, ood_lab, mask = _render(scene, [DrawItem(Layer.OBJECT, o.z, o) for o in objects], noise=noise)
    else:
        n_obj = 1 if orng.random() < 0.65 else int(orng.integers(2, 4))
        objects = []
        for _ in range(n_obj):
            for attempt in range(12):
                cand = _anomaly_candidates(orng, scene)
                trial = objects + [cand]
                ood_img, ood_lab, mask = _render(scene, [DrawItem(Layer.OBJECT, o.z, o) for o in trial], noise=noise)
                # every object must stay visible enough (SMIYC voids components < 100 px in this track)
                ok = all(_visible(o, scene.cam, mask) >= 150 for o in trial)
                if ok:
                    objects = trial
                    break
        if not objects:  # every candidate was hidden: a large object on the road close ahead
            cand = _anomaly_candidates(orng, scene)
            z = float(orng.uniform(7, 10))
            objects = [_OoDObject(X=float(scene.road.center(z)), z=z, w=2.5, h=2.0, shape=cand.shape,
                                  pattern=cand.pattern)]
        ood_img, ood_lab, mask = _render(scene, [DrawItem(Layer.OBJECT, o.z, o) for o in objects], noise=noise)
    obj = mask.astype(bool)
    if track == "obstacle":
        ood = np.full((H, W), VOID, np.uint8)
        ood[ood_lab == ROAD] = 0
        ood[obj] = 1
    else:
        ood = np.zeros((H, W), np.uint8)
        ood[(ood_lab == VOID) & ~obj] = VOID
        ood[obj] = 1
    image = _postprocess(ood_img, scene.post, frame_rng(seed, split, index, "post"))
    sample = SyntheticSample(image=image, semantic=ood_lab, ood=ood, object_mask=obj)
    if with_clean:
        sample.clean_image = _postprocess(img, scene.post, frame_rng(seed, split, index, "post"))
        sample.clean_semantic = lab
    return sample


def _visible(obj: _OoDObject, cam: Camera, mask: np.ndarray) -> int:
    rr, cc, _, _ = obj.pixels(cam)
    return int(mask[rr, cc].sum())


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise DataError(f"synthetic: size must be (H, W), got {size!r}") from None
    if h < 8 or w < 8:
        raise DataError(f"synthetic: size {size!r} too small (at least 8 x 8)")
    return h, w


class SyntheticStreets(SegmentationDataset):
    """In-distribution synthetic street scenes with Cityscapes trainId labels.

    Parameters
    ----------
    split : {"train", "val", "test"}
    n : int, optional
        Number of frames; default :data:`SPLIT_SIZES` of the split.
    size : (int, int)
        (H, W), default (256, 512).
    seed : int
        World seed; frames of different seeds are independent.

    Notes
    -----
    Frame ids are ``f"{split}_{index:06d}"``. Frames are generated when loaded (about 20-50 ms each).
    """

    name = "synthetic"
    label_kind = "semantic"
    num_classes = 19

    def __init__(self, split: str = "train", n: int | None = None, size: Sequence[int] = DEFAULT_SIZE,
                 seed: int = 0) -> None:
        if split not in SPLIT_SIZES:
            raise DataError(f"synthetic: unknown split {split!r}; choose one of {sorted(SPLIT_SIZES)}")
        self.split = split
        self.n = SPLIT_SIZES[split] if n is None else int(n)
        if self.n < 0:
            raise DataError(f"synthetic: n must be >= 0, got {n!r}")
        self.size = _check_size(size)
        self.seed = int(seed)
        self._ids = [f"{split}_{i:06d}" for i in range(self.n)]

    @property
    def frame_ids(self) -> list[str]:
        return list(self._ids)

    def _index(self, frame_id: str) -> int:
        prefix = f"{self.split}_"
        if not frame_id.startswith(prefix) or not frame_id[len(prefix):].isdigit():
            raise DataError(f"synthetic {self.split}: no frame {frame_id!r} (ids look like {prefix}000017)")
        i = int(frame_id[len(prefix):])
        if i >= self.n:
            raise DataError(f"synthetic {self.split}: frame {frame_id!r} out of range (n={self.n})")
        return i

    def load(self, frame_id: str) -> Frame:
        s = generate_frame(self.seed, self.split, self._index(frame_id), self.size)
        return Frame(image=s.image, label=s.semantic, frame_id=frame_id)

    def __repr__(self) -> str:
        return f"SyntheticStreets(split={self.split!r}, n={self.n}, size={self.size}, seed={self.seed})"


class SyntheticOoD(SegmentationDataset):
    """Synthetic OoD frames in SegmentMeIfYouCan's label convention.

    Parameters
    ----------
    track : {"obstacle", "anomaly"}
        ``obstacle``: unknown objects lying on the road; label road 0, object 1, rest 255.
        ``anomaly``: unknown objects anywhere; object 1, rest 0, the scene's void 255.
    n : int
        Number of frames (default 30).
    size : (int, int)
        (H, W), default (256, 512).
    seed : int
        World seed.

    Notes
    -----
    Frame ids are ``f"{track}_{index:06d}"``. :meth:`load_sample` also gives the in-distribution
    semantic label and the same scene without the objects.
    """

    label_kind = "ood"
    num_classes = 19

    def __init__(self, track: str = "obstacle", n: int = OOD_DEFAULT_N, size: Sequence[int] = DEFAULT_SIZE,
                 seed: int = 0, split: str | None = None) -> None:
        if track not in ("obstacle", "anomaly"):
            raise DataError(f"synthetic OoD: unknown track {track!r}; choose 'obstacle' or 'anomaly'")
        if split not in (None, track):
            raise DataError(f"synthetic OoD: split {split!r} does not match track {track!r}")
        self.track = track
        self.split = track
        self.name = f"synthetic_{track}"
        self.n = int(n)
        if self.n < 0:
            raise DataError(f"synthetic OoD: n must be >= 0, got {n!r}")
        self.size = _check_size(size)
        self.seed = int(seed)
        self._ids = [f"{track}_{i:06d}" for i in range(self.n)]

    @property
    def frame_ids(self) -> list[str]:
        return list(self._ids)

    def _index(self, frame_id: str) -> int:
        prefix = f"{self.track}_"
        if not frame_id.startswith(prefix) or not frame_id[len(prefix):].isdigit():
            raise DataError(f"synthetic {self.track}: no frame {frame_id!r} (ids look like {prefix}000003)")
        i = int(frame_id[len(prefix):])
        if i >= self.n:
            raise DataError(f"synthetic {self.track}: frame {frame_id!r} out of range (n={self.n})")
        return i

    def load_sample(self, frame_id: str, with_clean: bool = False) -> SyntheticSample:
        """The full :class:`SyntheticSample` of a frame (semantic label, object mask, clean scene)."""
        return generate_frame(self.seed, self.track, self._index(frame_id), self.size, with_clean=with_clean)

    def load(self, frame_id: str) -> Frame:
        s = self.load_sample(frame_id)
        return Frame(image=s.image, label=s.ood, frame_id=frame_id)

    def __repr__(self) -> str:
        return f"SyntheticOoD(track={self.track!r}, n={self.n}, size={self.size}, seed={self.seed})"


def export_pngs(dataset: SegmentationDataset, root: str | Path, *, progress: bool = True) -> Path:
    """Write a dataset's frames as PNG files.

    Layout: ``root/images/{frame_id}.png`` (RGB) and, for semantic sets,
    ``root/labels/{frame_id}.png`` (trainIds, 255 void); for OoD sets SegmentMeIfYouCan's naming
    ``root/labels_masks/{frame_id}_labels_semantic.png`` (0 / 1 / 255).

    Parameters
    ----------
    dataset : SegmentationDataset
    root : path-like
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``root``.
    """
    from tqdm import tqdm

    from metaseg_pgn.io import atomic_write

    root = Path(root)
    for frame in tqdm(dataset, total=len(dataset), desc=f"export {dataset.name}", unit="frame", disable=not progress):
        _write_png(root / "images" / f"{frame.frame_id}.png", frame.image, atomic_write)
        if frame.label is None:
            continue
        if dataset.label_kind == "ood":
            path = root / "labels_masks" / f"{frame.frame_id}_labels_semantic.png"
        else:
            path = root / "labels" / f"{frame.frame_id}.png"
        _write_png(path, frame.label, atomic_write)
    return root


def _write_png(path: Path, array: np.ndarray, atomic_write) -> None:
    with atomic_write(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")
