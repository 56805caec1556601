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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw

from metaseg_pgn.data.base import DataError, Frame, SegmentationDataset
from metaseg_pgn.data.palette import VOID

from .camera import Camera, Road
from .canvas import Canvas
from .classes import BUILDING, CAR, FENCE, LIGHT, PERSON, POLE, ROAD, SIDEWALK, SIGN, SKY, TERRAIN, TRUCK, VEG
from .colors import CAR_COLORS, CLOTHES, FACADE_COLORS, OOD_COLORS, SKIN, hsv, jitter, rgb, tex
from .noise import frame_rng, hash01, noise_fields, value_noise, world_noise

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

_LAYER_SKY, _LAYER_GROUND, _LAYER_FACADE, _LAYER_LONG, _LAYER_OBJECT, _LAYER_EGO = 0, 1, 2, 3, 4, 9


# --------------------------------------------------------------------------------------------
# random streams
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
    layer: int
    depth: float
    draw: Callable[[Canvas], None]
    seq: int = 0


# --------------------------------------------------------------------------------------------
# scene description
# --------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    cam: Camera
    road: Road
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    overcast: bool
    cloudiness: float
    visibility: float
    sides: list  # per side (-1 left, +1 right) parameters
    ground: dict
    items: list[_Item] = field(default_factory=list)
    noise_seed: int = 0
    post: dict = field(default_factory=dict)
    sidewalk_ids: dict = field(default_factory=dict)
    obstacle_mode: bool = False


def _side_X(scene: _Scene, side: int, a: float, Z) -> np.ndarray:
    """Lateral world X of the point at distance ``a`` beyond the kerb on ``side`` at depth Z."""
    return scene.road.center(Z) + side * (scene.road.rw + a)


def _build_scene(rng: np.random.Generator, H: int, W: int, *, obstacle_mode: bool = False) -> _Scene:
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
    ground = dict(
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

    scene = _Scene(cam=cam, road=road, sky_top=sky_top, sky_horizon=sky_horizon, overcast=overcast,
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
        scene.sides.append(dict(side=side, kind=kind, sw=sw + verge, verge=verge, beyond=beyond,
                                side_street=side_street, buildings=[], sun=(side == sun_side)))
    scene.sidewalk_ids = {}
    _add_sky_items(rng, scene)
    _add_buildings(rng, scene)
    _add_long_structures(rng, scene)
    _add_vegetation(rng, scene)
    _add_street_furniture(rng, scene)
    _add_vehicles(rng, scene)
    _add_people(rng, scene)
    _add_clutter(rng, scene)
    _add_ego(rng, scene)
    for i, it in enumerate(scene.items):
        it.seq = i
    scene.post = dict(
        exposure=rng.uniform(0.8, 1.15), gamma=rng.uniform(0.85, 1.15),
        wb=1.0 + rng.uniform(-0.05, 0.05, 3), vignette=rng.uniform(0.0, 0.3),
        blur=rng.uniform(0.3, 0.9), noise=rng.uniform(1.0, 4.0) / 255.0,
        saturation=rng.uniform(0.85, 1.05),
    )
    return scene


def _in_side_street(side: dict, Z) -> np.ndarray:
    ss = side["side_street"]
    if ss is None:
        return np.zeros(np.shape(Z), bool)
    return (np.asarray(Z) >= ss[0]) & (np.asarray(Z) <= ss[0] + ss[1])


# --------------------------------------------------------------------------------------------
# sky, skyline, ground
# --------------------------------------------------------------------------------------------


def _add_sky_items(rng: np.random.Generator, scene: _Scene) -> None:
    cam = scene.cam
    # distant skyline: per-column heights (metres at a distance), buildings as blocks, trees smooth
    W = cam.W
    n_blocks = int(rng.integers(4, 18))
    edges = np.sort(rng.uniform(0, W, n_blocks))
    heights = rng.uniform(0, 1, n_blocks + 1) ** 1.5 * rng.uniform(8, 40)
    kinds = rng.random(n_blocks + 1) < rng.uniform(0.2, 0.8)  # True: building block
    tree_h = rng.uniform(3, 14)
    col_seed = int(rng.integers(1 << 31))
    dist = rng.uniform(250, 500)
    building_col = jitter(rng, rgb(120, 120, 125), 20)
    tree_col = scene.ground["veg"] * rng.uniform(0.7, 1.0)

    def draw_skyline(cv: Canvas) -> None:
        idx = np.searchsorted(edges, np.arange(W) + 0.5)
        h_b = np.where(kinds[idx], heights[idx], 0.0)
        nz = value_noise(np.random.default_rng(col_seed), (2, W), 6)[0]
        h_t = np.maximum(tree_h * (0.6 + 0.5 * nz), 0)
        top_b = cam.yh - cam.f * (h_b - cam.hc) / dist
        top_t = cam.yh - cam.f * (h_t - cam.hc) / dist
        base = int(math.ceil(cam.yh + cam.f * cam.hc / dist))
        rows = np.arange(cam.H)[:, None]
        mb = (rows >= top_b[None]) & (rows <= base) & (h_b[None] > 0)
        mt = (rows >= top_t[None]) & (rows <= base) & ~mb
        rr, cc = np.nonzero(mt)
        cv.fill(rr, cc, tex(tree_col, (cv.noise.n4[rr, cc], 0.25)), VEG, dist)
        rr, cc = np.nonzero(mb)
        cv.fill(rr, cc, tex(building_col, (cv.noise.n16[rr, cc], 0.15)), BUILDING, dist)

    scene.items.append(_Item(_LAYER_SKY, 1e9, lambda cv: _draw_sky(cv, scene)))
    scene.items.append(_Item(_LAYER_SKY, 1e8, draw_skyline))
    scene.items.append(_Item(_LAYER_GROUND, 1e7, lambda cv: _draw_ground(cv, scene)))


def _draw_sky(cv: Canvas, scene: _Scene) -> None:
    cam = scene.cam
    rows = np.arange(cam.H, dtype=np.float32)
    t = np.clip(rows / max(cam.yh, 1.0), 0, 1) ** 0.7
    col = scene.sky_top[None, :] * (1 - t[:, None]) + scene.sky_horizon[None, :] * t[:, None]
    img = np.broadcast_to(col[:, None, :], (cam.H, cam.W, 3)).copy()
    if scene.cloudiness > 0:
        c = np.clip(cv.noise.n64 * 1.2 + cv.noise.n16 * 0.4 + (scene.cloudiness - 0.6), 0, 1)
        c = c * (1 - t[:, None]) ** 0.5
        img = img * (1 - c[..., None]) + np.float32(0.93) * c[..., None]
    img = img * (1 + 0.015 * cv.noise.n4[..., None])
    cv.img[...] = np.clip(img, 0, 1)
    cv.lab[...] = SKY
    cv.ood[...] = 0


def _draw_ground(cv: Canvas, scene: _Scene) -> None:
    cam, road, g = scene.cam, scene.road, scene.ground
    r0 = int(math.floor(cam.yh + 0.5))
    if r0 >= cam.H:
        return
    rr, cc = np.mgrid[max(r0, 0):cam.H, 0:cam.W]
    rr, cc = rr.ravel(), cc.ravel()
    dy = rr + 0.5 - cam.yh
    keep = dy > 0.05
    rr, cc, dy = rr[keep], cc[keep], dy[keep]
    Z = np.minimum(cam.f * cam.hc / dy, 3000.0)
    X = (cc + 0.5 - cam.xv) * Z / cam.f
    d = X - road.center(Z)
    side = np.where(d < 0, 0, 1)
    a = np.abs(d) - road.rw  # distance beyond the kerb line

    sw = np.array([s["sw"] for s in scene.sides])[side]
    beyond_terrain = np.array([s["beyond"] == "terrain" for s in scene.sides])[side]
    in_ss = np.zeros_like(a, dtype=bool)
    for i, s in enumerate(scene.sides):
        in_ss |= (side == i) & _in_side_street(s, Z)

    label = np.full(len(rr), ROAD, np.uint8)
    verge = np.array([s["verge"] for s in scene.sides])[side]
    is_curb = (a >= 0) & (a < 0.25) & (sw > 0) & ~in_ss
    is_verge = (a >= 0.25) & (a < 0.25 + verge) & ~in_ss
    is_sw = (a >= 0.25) & (a < sw) & ~in_ss & ~is_verge
    is_beyond = (a >= np.maximum(sw, 0)) & ~in_ss & ~((a >= 0) & (a < sw))
    label[is_curb | is_sw] = SIDEWALK
    label[is_verge] = TERRAIN
    label[is_beyond] = np.where(beyond_terrain[is_beyond], TERRAIN, SIDEWALK)
    # grass verge when there is no sidewalk
    label[(a >= 0) & (sw == 0) & ~in_ss] = np.where(beyond_terrain[(a >= 0) & (sw == 0) & ~in_ss], TERRAIN, SIDEWALK)

    # world-space textures
    n_w = world_noise(scene.noise_seed, X, Z, 1.7)
    n_w2 = world_noise(scene.noise_seed + 1, X, Z, 0.25)
    grain = cv.noise.grain[rr, cc]
    col = np.empty((len(rr), 3), np.float32)
    m = label == ROAD
    col[m] = tex(g["road"], (n_w[m], g["texture_amp"]), (grain[m], 0.05), (n_w2[m], g["crack_amp"]))
    m = label == SIDEWALK
    tile = g["tiles"]
    tu, tz = np.mod(d[m], tile) / tile, np.mod(Z[m], tile) / tile
    joint = ((tu < 0.08) | (tz < 0.08)) & (Z[m] < 30)
    col[m] = tex(g["sidewalk"], (n_w[m], 0.05), (grain[m], 0.04), (-joint.astype(np.float32), g["tile_contrast"]))
    m = label == TERRAIN
    col[m] = tex(g["terrain"], (n_w[m], 0.12), (cv.noise.n4[rr[m], cc[m]], 0.1), (grain[m], 0.12))
    # kerb stones: lighter
    col[is_curb] = np.clip(col[is_curb] * 1.18 + 0.03, 0, 1)

    # lane markings, on the road only
    on_road = label == ROAD
    lw = g["lane_width"]
    n_lanes = max(1, int(round(2 * road.rw / 3.2)))
    lane_w = 2 * road.rw / n_lanes
    paint = np.zeros(len(rr), bool)
    period = g["dash_len"] + g["dash_gap"]
    dashed = np.mod(Z + g["dash_phase"], period) < g["dash_len"]
    for kk in range(1, n_lanes):
        pos = -road.rw + kk * lane_w
        near = np.abs(d - pos) < lw / 2
        solid = g["center_solid"] and kk == n_lanes // 2
        paint |= near & (dashed | solid)
    if g["edge_lines"]:
        paint |= np.abs(np.abs(d) - (road.rw - 0.35)) < lw / 2
    if g["zebra"] is not None:
        zz = g["zebra"]
        paint |= (Z >= zz) & (Z <= zz + 3.5) & (np.mod(d, 1.1) < 0.55) & (np.abs(d) < road.rw - 0.4)
    paint &= on_road & ~in_ss
    col[paint] = tex(g["marking"], (grain[paint], 0.04), (n_w[paint], 0.08))

    # cast shadows of the buildings on the sun side
    if g["sun_side"] != 0:
        si = 0 if g["sun_side"] < 0 else 1
        s = scene.sides[si]
        shadow = np.zeros(len(rr), bool)
        for b in s["buildings"]:
            reach = b["height"] * g["shadow_len"]
            facade_a = s["sw"] + b["setback"]
            shadow |= (side == si) & (Z >= b["z0"]) & (Z <= b["z1"]) & (a > facade_a - reach)
        col[shadow] *= np.array([g["shadow_factor"], g["shadow_factor"], g["shadow_factor"] * 1.08], np.float32)

    cv.fill(rr, cc, col, 0, Z)
    cv.lab[rr, cc] = label


# --------------------------------------------------------------------------------------------
# buildings, walls, fences, hedges
# --------------------------------------------------------------------------------------------


def _add_buildings(rng: np.random.Generator, scene: _Scene) -> None:
    road = scene.road
    for s in scene.sides:
        side = s["side"]
        if s["kind"] == "buildings":
            z = rng.uniform(-5, 6)
            zend = rng.uniform(120, 260)
            prev_h = 0.0
            while z < zend:
                if rng.random() < 0.22:
                    z += rng.uniform(3, 14)  # gap
                    prev_h = 0.0
                    continue
                length = rng.uniform(8, 40)
                if s["side_street"] is not None:
                    ss0, ssw = s["side_street"]
                    if z < ss0 + ssw and z + length > ss0:
                        if z < ss0:
                            length = ss0 - z
                        else:
                            z = ss0 + ssw + 0.01
                            prev_h = 0.0
                            continue
                if length < 2:
                    z += 2
                    continue
                b = _make_building(rng, z, z + length, side)
                b["setback"] = rng.uniform(0, 2.5) if rng.random() < 0.5 else 0.0
                b["front"] = b["height"] > prev_h + 0.5
                s["buildings"].append(b)
                prev_h = b["height"]
                z += length
        else:
            # open side: occasionally distant buildings far back
            if rng.random() < 0.5:
                z = rng.uniform(20, 80)
                for _ in range(int(rng.integers(1, 4))):
                    b = _make_building(rng, z, z + rng.uniform(10, 30), side)
                    b["setback"] = s["sw"] + rng.uniform(12, 40)
                    b["front"] = True
                    s["buildings"].append(b)
                    z = b["z1"] + rng.uniform(5, 30)
        for b in sorted(s["buildings"], key=lambda b: -b["z0"]):
            scene.items.append(_Item(_LAYER_FACADE, b["z0"], _facade_drawer(scene, s, b)))


def _make_building(rng: np.random.Generator, z0: float, z1: float, side: int) -> dict:
    height = rng.uniform(6, 30) if rng.random() < 0.8 else rng.uniform(30, 45)
    color = jitter(rng, rgb(*FACADE_COLORS[rng.integers(len(FACADE_COLORS))]), 12)
    sx = rng.uniform(2.4, 4.5)
    return dict(
        z0=z0, z1=z1, height=height, color=color, side=side,
        brick=bool(rng.random() < 0.25), brick_h=rng.uniform(0.25, 0.4),
        win_sx=sx, win_w=rng.uniform(0.8, min(1.8, sx - 0.6)), floor_h=rng.uniform(2.8, 3.6),
        win_h=rng.uniform(1.2, 1.9), sill=rng.uniform(0.7, 1.0), ground_h=rng.uniform(3.2, 4.6),
        shop=bool(rng.random() < 0.45), win_phase=rng.uniform(0, sx),
        glass=jitter(rng, rgb(55, 65, 80), 15), frame=jitter(rng, rgb(200, 200, 195), 40),
        win_seed=int(rng.integers(1 << 30)), no_windows=bool(rng.random() < 0.08),
        cornice=rng.uniform(0.2, 0.8), depth=rng.uniform(8, 20),
    )


def _facade_colors(cv: Canvas, scene: _Scene, b: dict, rr, cc, u, v, shade: float) -> np.ndarray:
    """Colours of facade pixels with along-facade coordinate ``u`` and height ``v`` (metres)."""
    n = cv.noise
    base = b["color"] * shade
    fields = [(n.n16[rr, cc], 0.06), (n.grain[rr, cc], 0.03)]
    if b["brick"]:
        row = np.floor(v / b["brick_h"]).astype(np.int64)
        bu = np.mod(u + 0.5 * (row % 2) * 0.9, 0.9)
        bv = np.mod(v, b["brick_h"])
        mortar = ((bu < 0.06) | (bv < 0.04)).astype(np.float32)
        fields.append((mortar, 0.25))
    col = tex(base, *fields)
    top = v > b["height"] - b["cornice"]
    col[top] *= 0.75
    if b["no_windows"]:
        return col
    sx, fh = b["win_sx"], b["floor_h"]
    uu = u + b["win_phase"]
    iu = np.floor(uu / sx).astype(np.int64)
    fu = uu - iu * sx
    upper = v >= b["ground_h"]
    iv = np.floor((v - b["ground_h"]) / fh).astype(np.int64)
    fv = (v - b["ground_h"]) - iv * fh
    win_up = upper & (fu < b["win_w"]) & (fv > b["sill"]) & (fv < b["sill"] + b["win_h"]) & (v < b["height"] - 1.0)
    if b["shop"]:
        win_gr = (~upper) & (v > 0.5) & (v < b["ground_h"] - 0.6) & (fu < sx * 0.85)
        ivg = np.full_like(iv, -1)
        iv = np.where(upper, iv, ivg)
    else:
        win_gr = (~upper) & (v > 1.0) & (v < 2.4) & (fu < b["win_w"])
    win = win_up | win_gr
    if win.any():
        h = hash01(iu[win], iv[win], salt=b["win_seed"])
        frame = (fu[win] < 0.08) | (fu[win] > (np.where(win_gr[win], sx * 0.85, b["win_w"]) - 0.08))
        glass = b["glass"][None, :] * (0.6 + 0.9 * h[:, None]) * shade
        # some windows reflect the sky
        refl = h > 0.8
        glass[refl] = glass[refl] * 0.5 + scene.sky_horizon * 0.45 * shade
        glass[frame] = b["frame"] * shade
        col[win] = np.clip(glass, 0, 1)
    return col


def _facade_drawer(scene: _Scene, s: dict, b: dict) -> Callable[[Canvas], None]:
    side = s["side"]
    road = scene.road
    sun = s["sun"]
    shade_side = 1.0 if scene.overcast else (1.0 if sun else 0.8)

    def draw_facade(cv: Canvas) -> None:
        # the road-facing side, in chunks so that it follows a curving road
        z0, z1 = b["z0"], b["z1"]
        a = s["sw"] + b["setback"]
        zc = max(z0, 0.5)
        while zc < z1:
            step = max(2.0, 0.15 * zc)
            za, zb = zc, min(z1, zc + step)
            X = float(_side_X(scene, side, a, 0.5 * (za + zb)))
            px = cv.plane_x(X, za, zb + 0.3, 0.0, b["height"])
            if px is not None:
                rr, cc, Z, Y = px
                col = _facade_colors(cv, scene, b, rr, cc, Z - z0, Y, shade_side)
                cv.fill(rr, cc, col, BUILDING, Z)
            zc = zb
        # the front end (facing the camera) when it is not hidden by a taller nearer building
        if b["front"] and z0 > 0.5:
            X = float(_side_X(scene, side, a, z0))
            lo, hi = (X - b["depth"], X) if side < 0 else (X, X + b["depth"])
            pz = cv.plane_z(z0, lo, hi, 0.0, b["height"])
            if pz is not None:
                rr, cc, Xp, Y = pz
                shade = 0.88 if not scene.overcast else 0.95
                col = _facade_colors(cv, scene, b, rr, cc, np.abs(Xp - X), Y, shade)
                cv.fill(rr, cc, col, BUILDING, z0)

    return draw_facade


def _add_long_structures(rng: np.random.Generator, scene: _Scene) -> None:
    """Fences and hedges along the outer edge of the sidewalk."""
    for s in scene.sides:
        if s["kind"] != "open" and rng.random() < 0.6:
            continue
        z = rng.uniform(2, 15)
        zend = rng.uniform(40, 150)
        while z < zend:
            length = rng.uniform(8, 40)
            kind = rng.choice(["fence", "hedge", "none"], p=[0.45, 0.35, 0.2])
            if s["side_street"] is not None:
                ss0, ssw = s["side_street"]
                if z < ss0 + ssw and z + length > ss0:
                    length = max(ss0 - z, 0.0)
                    if length < 1.0:
                        z = ss0 + ssw + 0.5
                        continue
            if kind != "none":
                st = dict(kind=kind, z0=z, z1=z + length, a=s["sw"] + rng.uniform(0.0, 0.6),
                          height=rng.uniform(0.6, 2.0) if kind == "hedge" else rng.uniform(0.9, 2.0),
                          color=_long_color(rng, kind, scene), mesh=rng.uniform(0.08, 0.2),
                          alpha=rng.uniform(0.5, 0.7), planks=bool(rng.random() < 0.4), post_gap=rng.uniform(2.0, 3.0))
                scene.items.append(_Item(_LAYER_LONG, z, _long_drawer(scene, s, st)))
            z += length + (rng.uniform(2, 20) if rng.random() < 0.4 else 0.0)


def _long_color(rng: np.random.Generator, kind: str, scene: _Scene) -> np.ndarray:
    if kind == "fence":
        return jitter(rng, rgb(*[(70, 75, 80), (40, 45, 45), (130, 110, 85), (150, 150, 150), (95, 80, 70)][rng.integers(5)]), 12)
    return np.clip(scene.ground["veg"] * rng.uniform(0.8, 1.2), 0, 1)


def _long_drawer(scene: _Scene, s: dict, st: dict) -> Callable[[Canvas], None]:
    side = s["side"]
    label = {"fence": FENCE, "hedge": VEG}[st["kind"]]

    def colors(cv, rr, cc, u, v, shade, u_depth=None):
        n = cv.noise
        if st["kind"] == "hedge":
            return tex(st["color"] * shade, (n.n4[rr, cc], 0.3), (n.grain[rr, cc], 0.2)), None
        # fence panels, labelled as a whole (as Cityscapes annotates fences): wooden planks with
        # dark joints, or a wire mesh through which the background shows (alpha blending)
        col = tex(st["color"] * shade, (n.grain[rr, cc], 0.06))
        frame = (np.abs(v - st["height"] + 0.04) < 0.04) | (v < 0.08) | (np.mod(u, st["post_gap"]) < 0.07)
        if st["planks"]:
            joint = (np.mod(u, 0.16) < 0.025) & ~frame
            col[joint] *= 0.55
            return col, None
        period_px = st["mesh"] * cv.cam.f / np.maximum(u_depth, 1e-3)
        wire = (np.mod(u + v, st["mesh"]) < 0.2 * st["mesh"]) | (np.mod(u - v, st["mesh"]) < 0.2 * st["mesh"])
        alpha = np.where(period_px < 3.0, 0.25 + st["alpha"], np.where(wire, 0.9, 0.3))
        alpha = np.where(frame, 1.0, np.minimum(alpha, 0.95))
        return col, alpha.astype(np.float32)

    def draw_long(cv: Canvas) -> None:
        zc = max(st["z0"], 0.5)
        while zc < st["z1"]:
            step = max(2.0, 0.15 * zc)
            za, zb = zc, min(st["z1"], zc + step)
            X = float(_side_X(scene, side, st["a"], 0.5 * (za + zb)))
            px = cv.plane_x(X, za, zb + 0.2, 0.0, st["height"])
            if px is not None:
                rr, cc, Z, Y = px
                col, alpha = colors(cv, rr, cc, Z, Y, 0.95, u_depth=Z)
                cv.fill(rr, cc, col, label, Z, alpha=alpha)
            zc = zb
        if st["z0"] > 1.0:
            X = float(_side_X(scene, side, st["a"], st["z0"]))
            lo, hi = (X - 0.3, X) if side < 0 else (X, X + 0.3)
            pz = cv.plane_z(st["z0"], lo, hi, 0.0, st["height"])
            if pz is not None:
                rr, cc, Xp, Y = pz
                col, alpha = colors(cv, rr, cc, np.abs(Xp - X), Y, 0.85, u_depth=np.full(len(rr), st["z0"]))
                cv.fill(rr, cc, col, label, st["z0"], alpha=alpha)

    return draw_long


# --------------------------------------------------------------------------------------------
# vegetation
# --------------------------------------------------------------------------------------------


def _add_vegetation(rng: np.random.Generator, scene: _Scene) -> None:
    for s in scene.sides:
        p_trees = 0.8 if s["kind"] == "open" else 0.45
        if rng.random() > p_trees:
            continue
        spacing = rng.uniform(6, 16)
        z = rng.uniform(3, 12)
        zend = rng.uniform(50, 160)
        in_terrain = s["kind"] == "open"
        while z < zend:
            if not _in_side_street(s, z):
                if in_terrain and rng.random() < 0.6:
                    a = s["sw"] + rng.uniform(1.0, 12.0)
                else:
                    a = max(s["sw"] - rng.uniform(0.5, 0.9), 0.3) if s["sw"] > 0 else rng.uniform(0.5, 2)
                _add_tree(rng, scene, s["side"], a, z)
            z += spacing * rng.uniform(0.6, 1.4)
        # bushes in the terrain
        if in_terrain:
            for _ in range(int(rng.integers(0, 6))):
                z = rng.uniform(5, 60)
                a = s["sw"] + rng.uniform(0.5, 8)
                _add_bush(rng, scene, s["side"], a, z)


def _blob_radius(theta: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    r = np.ones_like(theta)
    for k, (amp, ph) in enumerate(coeffs, start=2):
        r = r + amp * np.cos(k * theta + ph)
    return r


def _add_tree(rng: np.random.Generator, scene: _Scene, side: int, a: float, z: float) -> None:
    trunk_h = rng.uniform(1.8, 3.2)
    R = rng.uniform(1.2, 3.2)
    crown_h = R * rng.uniform(1.3, 2.2)
    trunk_w = rng.uniform(0.2, 0.45)
    coeffs = np.stack([rng.uniform(0, 0.12, 5), rng.uniform(0, 2 * np.pi, 5)], 1)
    color = np.clip(scene.ground["veg"] * rng.uniform(0.75, 1.25) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    trunk_col = jitter(rng, rgb(85, 70, 55), 15)
    X = float(_side_X(scene, side, a, z))

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

    scene.items.append(_Item(_LAYER_OBJECT, z, draw_tree))


def _add_bush(rng: np.random.Generator, scene: _Scene, side: int, a: float, z: float) -> None:
    R = rng.uniform(0.5, 1.5)
    h = R * rng.uniform(0.8, 1.4)
    coeffs = np.stack([rng.uniform(0, 0.15, 4), rng.uniform(0, 2 * np.pi, 4)], 1)
    color = np.clip(scene.ground["veg"] * rng.uniform(0.8, 1.2), 0, 1)
    X = float(_side_X(scene, side, a, z))

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

    scene.items.append(_Item(_LAYER_OBJECT, z, draw_bush))


# --------------------------------------------------------------------------------------------
# poles, signs, traffic lights, clutter
# --------------------------------------------------------------------------------------------


def _add_street_furniture(rng: np.random.Generator, scene: _Scene) -> None:
    for s in scene.sides:
        side = s["side"]
        if rng.random() < 0.85:
            spacing = rng.uniform(12, 35)
            z = rng.uniform(2, spacing)
            lamp = rng.random() < 0.6
            a_pole = rng.uniform(0.3, 0.8) if s["sw"] > 1.0 else rng.uniform(0.2, 1.0)
            zend = rng.uniform(50, 110)
            while z < zend:
                if not _in_side_street(s, z):
                    _add_pole(rng, scene, side, a_pole, z, lamp=lamp)
                z += spacing * rng.uniform(0.8, 1.2)
        # separate sign posts
        for _ in range(int(rng.poisson(1.5))):
            z = rng.uniform(4, 60)
            if not _in_side_street(s, z):
                _add_pole(rng, scene, side, rng.uniform(0.2, 1.0), z, lamp=False, sign_only=True)
        # traffic lights near the side street or the zebra
        ref = None
        if s["side_street"] is not None:
            ref = s["side_street"][0] - rng.uniform(0.5, 3)
        elif scene.ground["zebra"] is not None and rng.random() < 0.7:
            ref = scene.ground["zebra"] - rng.uniform(0.5, 2)
        if ref is not None and ref > 4:
            _add_pole(rng, scene, side, rng.uniform(0.3, 0.8), ref, lamp=False, traffic_light=True)
        for _ in range(int(rng.poisson(0.4))):
            z = rng.uniform(6, 50)
            if not _in_side_street(s, z):
                _add_pole(rng, scene, side, rng.uniform(0.3, 0.8), z, lamp=False, traffic_light=True)


def _add_pole(rng: np.random.Generator, scene: _Scene, side: int, a: float, z: float, *, lamp: bool,
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
    X = float(_side_X(scene, side, a, z))

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

    scene.items.append(_Item(_LAYER_OBJECT, z, draw_pole))


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


def _add_clutter(rng: np.random.Generator, scene: _Scene) -> None:
    """Unlabelled street objects (bins, bollards, boxes): void, as Cityscapes' 'static' class."""
    for s in scene.sides:
        if s["sw"] <= 0.8:
            continue
        for _ in range(int(rng.poisson(0.8))):
            z = rng.uniform(4, 40)
            if _in_side_street(s, z):
                continue
            a = rng.uniform(0.4, s["sw"] - 0.3)
            kind = rng.choice(["bin", "bollard", "box"])
            w = {"bin": 0.6, "bollard": 0.15, "box": 0.9}[kind] * rng.uniform(0.8, 1.2)
            h = {"bin": 1.0, "bollard": 0.9, "box": 1.3}[kind] * rng.uniform(0.8, 1.2)
            col = jitter(rng, rgb(*[(60, 70, 60), (90, 90, 95), (110, 95, 70), (50, 50, 55)][rng.integers(4)]), 12)
            X = float(_side_X(scene, s["side"], a, z))
            scene.items.append(_Item(_LAYER_OBJECT, z, _box_drawer(X, z, w, h, col, VOID)))


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


def _add_vehicles(rng: np.random.Generator, scene: _Scene) -> None:
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
            d = s["side"] * (road.rw - rng.uniform(1.0, 1.3))
            z = rng.uniform(3, 20)
            zend = rng.uniform(30, 90)
            while z < zend:
                if not _in_side_street(s, z) and rng.random() < 0.8:
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


def _add_vehicle(scene: _Scene, v: dict, d: float, z: float, *, front: bool) -> None:
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

    scene.items.append(_Item(_LAYER_OBJECT, z, draw_vehicle))


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


def _add_people(rng: np.random.Generator, scene: _Scene) -> None:
    road = scene.road
    for s in scene.sides:
        if s["sw"] < 1.0:
            n = int(rng.poisson(0.5))
        else:
            n = int(rng.poisson(rng.uniform(1.0, 5.0)))
        for _ in range(n):
            z = rng.uniform(3.5, 40) if rng.random() < 0.7 else rng.uniform(3.5, 20)
            a = rng.uniform(0.4, max(0.5, s["sw"] - 0.3)) if s["sw"] > 0 else rng.uniform(0.3, 2.0)
            group = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
            for g in range(group):
                _add_person(rng, scene, float(_side_X(scene, s["side"], a + 0.5 * g * rng.uniform(-1, 1), z)), z + g * rng.uniform(0.3, 1.2))
    # crossing pedestrians on the zebra / road
    if scene.ground["zebra"] is not None:
        for _ in range(int(rng.poisson(1.5))):
            z = scene.ground["zebra"] + rng.uniform(0.3, 3.2)
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


def _add_person(rng: np.random.Generator, scene: _Scene, X: float, z: float, *, walking_side: bool | None = None) -> None:
    height = rng.uniform(1.55, 1.95) if rng.random() < 0.9 else rng.uniform(1.1, 1.4)
    side_view = bool(rng.random() < 0.35) if walking_side is None else walking_side
    P = _person_parts(rng, height, side_view)

    def draw_p(cv: Canvas) -> None:
        x0, y0 = cv.cam.project(X, 0.0, z)
        _draw_person(cv, x0, y0, cv.cam.f / z, P, z)

    scene.items.append(_Item(_LAYER_OBJECT, z, draw_p))


# --------------------------------------------------------------------------------------------
# ego vehicle
# --------------------------------------------------------------------------------------------


def _add_ego(rng: np.random.Generator, scene: _Scene) -> None:
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

    scene.items.append(_Item(_LAYER_EGO, 0.0, draw_ego))


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


def _place_obstacles(rng: np.random.Generator, scene: _Scene, clean_label: np.ndarray) -> list[_OoDObject]:
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


def _anomaly_candidates(rng: np.random.Generator, scene: _Scene) -> _OoDObject:
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
        sw = scene.sides[0 if side < 0 else 1]["sw"]
        d = side * (road.rw + rng.uniform(0, sw + 3))
    lift = rng.uniform(2, 8) if rng.random() < 0.12 else 0.0
    return _OoDObject(X=float(road.center(z) + d), z=z, w=w, h=h, shape=_ood_shape(rng, large=True),
                      pattern=_ood_pattern(rng), lift=lift)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _render(scene: _Scene, extra: Sequence[_Item] = (), noise=None):
    noise = noise_fields(scene.noise_seed, (scene.cam.H, scene.cam.W)) if noise is None else noise
    cv = Canvas(scene.cam, noise, scene.sky_horizon, scene.visibility)
    items = list(scene.items) + [
        _Item(it.layer, it.depth, it.draw, seq=len(scene.items) + i) for i, it in enumerate(extra)
    ]
    for it in sorted(items, key=lambda it: (it.layer, -it.depth, it.seq)):
        it.draw(cv)
    return cv.img, cv.lab, cv.ood


def _postprocess(img: np.ndarray, post: dict, rng: np.random.Generator) -> np.ndarray:
    """Exposure, gamma, white balance, saturation, vignette, blur, sensor noise; returns uint8."""
    H, W, _ = img.shape
    x = img * post["exposure"] * post["wb"][None, None, :].astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * post["saturation"]
    x = np.clip(x, 0, 1) ** post["gamma"]
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = ((yy - H / 2) / (H / 2)) ** 2 + ((xx - W / 2) / (W / 2)) ** 2
    x = x * (1 - post["vignette"] * 0.25 * r2)[..., None].astype(np.float32)
    x = ndimage.gaussian_filter(x, sigma=(post["blur"], post["blur"], 0), truncate=3.0)
    x = x + rng.standard_normal(x.shape).astype(np.float32) * post["noise"]
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
        ood_img, ood_lab, mask = _render(scene, [_Item(_LAYER_OBJECT, o.z, o.draw) for o in objects], noise=noise)
    else:
        n_obj = 1 if orng.random() < 0.65 else int(orng.integers(2, 4))
        objects = []
        for _ in range(n_obj):
            for attempt in range(12):
                cand = _anomaly_candidates(orng, scene)
                trial = objects + [cand]
                ood_img, ood_lab, mask = _render(scene, [_Item(_LAYER_OBJECT, o.z, o.draw) for o in trial], noise=noise)
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
        ood_img, ood_lab, mask = _render(scene, [_Item(_LAYER_OBJECT, o.z, o.draw) for o in objects], noise=noise)
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
