"""Unknown (OoD) objects: saturated magenta / cyan / orange patterns on shapes no in-distribution
class has, and their placement for the two SegmentMeIfYouCan tracks.

- obstacle: 1-2 small objects lying on the road, wholly over road pixels of the clean scene;
- anomaly: 1-3 objects anywhere (often large, sometimes floating), each visible on at least 150
  pixels, else one large object on the road close ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import Camera
from .canvas import Canvas, DrawItem, Layer
from .classes import ROAD, VOID
from .colors import OOD_COLORS, rgb
from .noise import NoiseFields
from .render import render
from .scene import Scene
from .shapes import blob_radius

__all__ = ["OoDObject", "OoDPattern", "OoDShape", "make_pattern", "make_shape", "place_anomalies",
           "place_obstacles", "render_with"]

_PATTERN_KINDS = ["checker", "stripes", "dots", "rings", "solid_dots"]
_SHAPE_KINDS = ["box", "blob", "star", "ring", "cone", "sphere", "cross"]


@dataclass
class OoDPattern:
    """The texture of an unknown object: ``kind`` (checker, stripes, dots, rings, solid_dots) in
    colours ``c1`` (an :data:`OOD_COLORS` entry) and ``c2``, ``period`` repeats across the object,
    stripes at ``angle`` radians."""

    kind: str
    c1: np.ndarray
    c2: np.ndarray
    period: float
    angle: float

    def colors(self, u: np.ndarray, v: np.ndarray, size: float) -> np.ndarray:
        """Colours (n, 3) float32 at object coordinates ``u``, ``v`` (metres) of an object ``size`` metres big."""
        q = size / self.period
        kind = self.kind
        if kind == "checker":
            sel = (np.floor(u / q) + np.floor(v / q)) % 2 == 0
        elif kind == "stripes":
            t = u * math.cos(self.angle) + v * math.sin(self.angle)
            sel = np.floor(t / q) % 2 == 0
        elif kind == "dots":
            fu, fv = np.mod(u, q) / q - 0.5, np.mod(v, q) / q - 0.5
            sel = np.hypot(fu, fv) > 0.3
        elif kind == "rings":
            sel = np.floor(np.hypot(u, v - size / 2) / q) % 2 == 0
        else:
            fu, fv = np.mod(u + 0.5 * q, 2 * q) / (2 * q) - 0.5, np.mod(v, 2 * q) / (2 * q) - 0.5
            sel = np.hypot(fu, fv) > 0.2
        return np.where(sel[:, None], self.c1[None], self.c2[None]).astype(np.float32)


def make_pattern(rng: np.random.Generator) -> OoDPattern:
    """Draw the colours and texture of one unknown object (never used for in-distribution classes)."""
    i, j = rng.choice(len(OOD_COLORS), 2, replace=False)
    c1 = OOD_COLORS[i]
    second = rng.random()
    c2 = OOD_COLORS[j] if second < 0.6 else (rgb(245, 245, 245) if second < 0.8 else rgb(20, 20, 20))
    return OoDPattern(kind=str(rng.choice(_PATTERN_KINDS)), c1=c1, c2=c2, period=rng.uniform(3, 7),
                      angle=rng.uniform(0, np.pi))


@dataclass
class OoDShape:
    """The silhouette of an unknown object: ``kind`` with its outline harmonics ``coeffs`` (blob),
    ``points`` and ``inner`` radius (star, spiky) and a ``tilt`` (radians)."""

    kind: str
    coeffs: np.ndarray  # (5, 2)
    points: int
    inner: float
    tilt: float

    def mask(self, u: np.ndarray, v: np.ndarray, w: float, h: float) -> np.ndarray:
        """bool (n,): inside the silhouette of width ``w``, height ``h`` standing at u = 0, v = 0."""
        kind = self.kind
        cu, cv_ = u / (w / 2), (v - h / 2) / (h / 2)  # normalised: [-1, 1] x [-1, 1]
        th = np.arctan2(cv_, cu) + self.tilt
        rho = np.hypot(cu, cv_)
        if kind == "box":
            return (np.abs(cu) <= 1) & (np.abs(cv_) <= 1)
        if kind == "cylinder":
            return ((np.abs(cu) <= 1) & (np.abs(cv_) <= 0.8)) | (np.hypot(cu, (cv_ - 0.8) / 0.2) <= 1)
        if kind == "blob":
            return rho <= 0.75 * blob_radius(th, self.coeffs)
        if kind == "sphere":
            return rho <= 1.0
        if kind == "star" or kind == "spiky":
            n = self.points if kind == "star" else 2 * self.points + 3
            inner = self.inner if kind == "star" else 0.45
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
        raise ValueError(f"unknown OoD shape kind {kind!r}")


def make_shape(rng: np.random.Generator, *, large: bool) -> OoDShape:
    """Draw a silhouette; ``large`` objects may be creatures or spiky, small ones cylinders."""
    kind = str(rng.choice(_SHAPE_KINDS + (["creature", "spiky"] if large else ["cylinder"])))
    return OoDShape(kind=kind, coeffs=np.stack([rng.uniform(0.05, 0.3, 5), rng.uniform(0, 2 * np.pi, 5)], 1),
                    points=int(rng.integers(4, 9)), inner=rng.uniform(0.35, 0.6), tilt=rng.uniform(-0.4, 0.4))


@dataclass
class OoDObject:
    """One unknown object of width ``w``, height ``h`` standing on the ground at lateral ``X`` and
    depth ``z`` (or floating ``lift`` metres above it); painted void (255) in the semantic label."""

    X: float
    z: float
    w: float
    h: float
    shape: OoDShape
    pattern: OoDPattern
    lift: float = 0.0

    def pixels(self, cam: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows, columns and object coordinates ``u``, ``v`` (metres) of the silhouette's pixels, each (n,)."""
        x0, y0 = cam.project(self.X, self.lift, self.z)
        s = cam.f / self.z
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
        m = self.shape.mask(u, v, self.w, self.h)
        return rr[m], cc[m], u[m], v[m]

    def draw(self, cv: Canvas) -> None:
        rr, cc, u, v = self.pixels(cv.cam)
        if len(rr) == 0:
            return
        col = self.pattern.colors(u, v, max(self.w, self.h))
        # simple shading: lit from above, darker at the bottom; keeps the colours saturated
        shade = 0.8 + 0.2 * np.clip(v / max(self.h, 1e-3), 0, 1)
        col = col * shade[:, None].astype(np.float32)
        cv.fill(rr, cc, col, VOID, self.z, ood=1)

    def visible(self, cam: Camera, mask: np.ndarray) -> int:
        """Pixels of the silhouette where ``mask`` (H, W) is set: how much of it is not hidden."""
        rr, cc, _, _ = self.pixels(cam)
        return int(mask[rr, cc].sum())


def render_with(scene: Scene, objects: list[OoDObject], noise: NoiseFields):
    """:func:`~metaseg_pgn.data.synthetic.render.render` of the scene with the unknown ``objects``
    (each at its own depth among the other objects)."""
    return render(scene, [DrawItem(Layer.OBJECT, o.z, o) for o in objects], noise=noise)


def place_obstacles(rng: np.random.Generator, scene: Scene, clean_label: np.ndarray) -> list[OoDObject]:
    """1-2 small unknown objects lying on the road, wholly over road pixels of ``clean_label`` (H, W)
    and not overlapping (up to 60 attempts each; an object that never fits is left out)."""
    cam, road = scene.cam, scene.road
    out: list[OoDObject] = []
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
            obj = OoDObject(X=float(road.center(z) + d), z=z, w=w, h=h, shape=make_shape(rng, large=False),
                            pattern=make_pattern(rng))
            rr, cc, _, _ = obj.pixels(cam)
            if len(rr) < 40:
                continue
            if road_mask[rr, cc].all() and not taken[rr, cc].any():
                taken[rr, cc] = True
                out.append(obj)
                break
    return out


def _anomaly_candidate(rng: np.random.Generator, scene: Scene) -> OoDObject:
    """One candidate anomaly 5-40 m ahead: on the road or beside it, 60 % large, 12 % floating."""
    road = scene.road
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
    return OoDObject(X=float(road.center(z) + d), z=z, w=w, h=h, shape=make_shape(rng, large=True),
                     pattern=make_pattern(rng), lift=lift)


def place_anomalies(rng: np.random.Generator, scene: Scene, noise: NoiseFields) -> list[OoDObject]:
    """1 (65 %) or 2-3 unknown objects anywhere, each visible on at least 150 pixels.

    Each object gets up to 12 candidates; a candidate is kept when, rendered with the objects kept
    so far, every one of them stays visible enough (SMIYC voids components under 100 pixels in this
    track). When none is kept, one large object stands on the road 7-10 m ahead.
    """
    n_obj = 1 if rng.random() < 0.65 else int(rng.integers(2, 4))
    objects: list[OoDObject] = []
    for _ in range(n_obj):
        for _attempt in range(12):
            trial = objects + [_anomaly_candidate(rng, scene)]
            _, _, mask = render_with(scene, trial, noise)
            if all(o.visible(scene.cam, mask) >= 150 for o in trial):
                objects = trial
                break
    if not objects:  # every candidate was hidden: a large object on the road close ahead
        cand = _anomaly_candidate(rng, scene)
        z = float(rng.uniform(7, 10))
        objects = [OoDObject(X=float(scene.road.center(z)), z=z, w=2.5, h=2.0, shape=cand.shape,
                             pattern=cand.pattern)]
    return objects
