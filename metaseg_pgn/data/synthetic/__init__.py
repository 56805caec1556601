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
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from metaseg_pgn.data.base import DataError, Frame, SegmentationDataset
from metaseg_pgn.data.palette import VOID

from .buildings import add_buildings, add_long_structures
from .camera import Camera, Road
from .canvas import Canvas, DrawItem, Layer
from .classes import ROAD
from .colors import OOD_COLORS, hsv, rgb
from .furniture import add_clutter, add_street_furniture
from .ground import add_sky_and_ground
from .people import add_people
from .vegetation import add_vegetation
from .vehicles import add_ego, add_vehicles
from .noise import frame_rng, noise_fields
from .scene import GroundStyle, PostFX, Scene, Side
from .shapes import blob_radius

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
        return rho <= 0.75 * blob_radius(th, shape["coeffs"])
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
