"""Street furniture: poles and street lamps, traffic signs, traffic lights, and unlabelled clutter
(bins, bollards, boxes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .canvas import Canvas, Layer
from .classes import LIGHT, POLE, SIGN, VOID
from .colors import jitter, rgb, tex
from .scene import Scene

__all__ = ["Clutter", "Pole", "Sign", "TrafficLight", "add_clutter", "add_street_furniture"]

SIGN_KINDS = ("circle_red", "circle_blue", "triangle", "diamond", "rect_blue", "rect_white", "octagon")


@dataclass
class Sign:
    """A traffic sign of ``kind`` (one of :data:`SIGN_KINDS`), ``size`` metres across, centred at
    height ``h`` and ``offset`` metres beside its pole."""

    kind: str
    size: float
    h: float
    offset: float

    def draw(self, cv: Canvas, x0, y0, s: float, z: float) -> None:
        """Paint on the pole whose foot projects to ``(x0, y0)``, ``s`` pixels per metre, depth ``z``."""
        r = self.size / 2
        cy = self.h
        loc = cv.local(x0, y0, s, self.offset - r, self.offset + r, cy - r, cy + r)
        if loc is None:
            return
        rr, cc, u, v = loc
        du, dv = (u - self.offset) / r, (v - cy) / r
        kind = self.kind
        red, white, blue = rgb(200, 30, 35), rgb(235, 235, 235), rgb(25, 70, 170)
        yellow, black = rgb(230, 215, 40), rgb(25, 25, 25)
        rho = np.hypot(du, dv)
        if kind in ("circle_red", "circle_blue"):
            m = rho <= 1.0
            if kind == "circle_red":
                col = np.where((rho < 0.72)[:, None], white, red)
            else:
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
            face = (np.abs(du) + np.abs(dv) <= 1.25) & (np.abs(du) < 0.85) & (np.abs(dv) < 0.85)
            col = np.where(face[:, None], red, white)
        else:
            m = (np.abs(du) <= 1) & (np.abs(dv) <= 0.7)
            base = blue if kind == "rect_blue" else white
            ink = white if kind == "rect_blue" else black
            glyph = (np.abs(dv) < 0.35) & (np.abs(du) < 0.7) & (np.mod((du + 1) * 4, 1.0) < 0.55)
            col = np.where(glyph[:, None], ink, base)
            col = np.where(((np.abs(du) > 0.9) | (np.abs(dv) > 0.6))[:, None], ink, col)
        col = np.broadcast_to(col, (len(rr), 3))
        cv.fill(rr[m], cc[m], tex(col[m], (cv.noise.grain[rr[m], cc[m]], 0.03)), SIGN, z - 0.05)


@dataclass
class TrafficLight:
    """A three-lamp traffic light of width ``w`` whose top is at ``h + 0.3`` m, lamp ``lit`` (0 red,
    1 amber, 2 green) on; with ``arm`` a second head hangs ``arm_len`` metres over the road."""

    h: float
    lit: int
    w: float
    arm: bool
    arm_len: float

    def draw_head(self, cv: Canvas, x0, y0, s: float, z: float) -> None:
        """Paint one head on the post whose foot projects to ``(x0, y0)``."""
        w, h = self.w, self.w * 2.8
        top = self.h + 0.3
        loc = cv.local(x0, y0, s, -w / 2, w / 2, top - h, top)
        if loc is None:
            return
        rr, cc, u, v = loc
        col = np.tile(rgb(30, 32, 30), (len(rr), 1))
        lamps = [rgb(235, 40, 30), rgb(235, 205, 40), rgb(40, 200, 90)]
        for i in range(3):
            cy = top - h * (i + 0.5) / 3
            m = np.hypot(u, v - cy) < w * 0.33
            on = i == self.lit
            col[m] = lamps[i] if on else lamps[i] * 0.25 + 0.05
        cv.fill(rr, cc, col, LIGHT, z - 0.05)


@dataclass
class Pole:
    """A pole at lateral ``X``, depth ``z`` on ``side``, with an optional lamp arm (``lamp_arm`` > 0
    metres, towards the road), sign and traffic light."""

    X: float
    z: float
    side: int
    height: float
    width: float
    color: np.ndarray
    sign: Sign | None
    light: TrafficLight | None
    lamp_arm: float

    def draw(self, cv: Canvas) -> None:
        z, height, color = self.z, self.height, self.color
        x0, y0, s = cv.upright(self.X, z)
        hw = max(self.width / 2, 1.0 / s)  # at least about 2 pixels wide
        loc = cv.local(x0, y0, s, -hw, hw, 0, height)
        if loc is not None:
            rr, cc, u, v = loc
            shade = 1.0 + 0.25 * (u / hw)
            cv.fill(rr, cc, tex(color, (shade - 1, 1.0)), POLE, z)
        d = -self.side  # towards the road
        if self.lamp_arm > 0:
            lo, hi = sorted((0.0, d * self.lamp_arm))
            self._bar(cv, x0, y0, s, lo, hi, height - max(0.1, 1.2 / s), height, color)
            lo, hi = sorted((d * (self.lamp_arm - 0.5), d * (self.lamp_arm + 0.1)))
            self._bar(cv, x0, y0, s, lo, hi, height - 0.25, height, color * 0.7)  # the lamp head
        if self.sign is not None:
            self.sign.draw(cv, x0, y0, s, z)
        tl = self.light
        if tl is not None:
            if tl.arm:
                lo, hi = sorted((0.0, d * tl.arm_len))
                self._bar(cv, x0, y0, s, lo, hi, tl.h + 0.35, tl.h + 0.35 + max(0.12, 1.2 / s), color)
                tl.draw_head(cv, x0 + s * d * tl.arm_len, y0, s, z)
            tl.draw_head(cv, x0, y0, s, z)

    def _bar(self, cv: Canvas, x0, y0, s: float, u0: float, u1: float, v0: float, v1: float, color) -> None:
        loc = cv.local(x0, y0, s, u0, u1, v0, v1)
        if loc is not None:
            rr, cc, _, _ = loc
            cv.fill(rr, cc, color, POLE, self.z)


def add_street_furniture(rng: np.random.Generator, scene: Scene) -> None:
    """Per side: a row of poles or lamps, sign posts, traffic lights at side streets and zebras."""
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


_POLE_COLORS = [(150, 150, 150), (110, 110, 110), (60, 70, 65), (40, 40, 40), (170, 170, 165)]


def _add_pole(rng: np.random.Generator, scene: Scene, side: int, a: float, z: float, *, lamp: bool,
              sign_only: bool = False, traffic_light: bool = False) -> None:
    """Draw a :class:`Pole` (a lamp post with ``lamp``, a short sign post with ``sign_only``, a
    traffic-light post with ``traffic_light``; other poles carry a sign 35 % of the time) and add it."""
    height = rng.uniform(2.6, 3.4) if sign_only else (rng.uniform(3.8, 5.0) if traffic_light else rng.uniform(5, 9))
    width = rng.uniform(0.14, 0.28) if not sign_only else rng.uniform(0.08, 0.12)
    color = jitter(rng, rgb(*_POLE_COLORS[rng.integers(5)]), 10)
    has_sign = sign_only or (not traffic_light and rng.random() < 0.35)
    sign = None
    if has_sign:
        kind = rng.choice(list(SIGN_KINDS))
        sign = Sign(kind=str(kind), size=rng.uniform(0.6, 1.0), h=rng.uniform(2.0, height - 0.2),
                    offset=rng.uniform(-0.1, 0.1))
        if sign.h + sign.size / 2 > height:
            sign.h = height - sign.size / 2
    tl = None
    if traffic_light:
        tl = TrafficLight(h=height - rng.uniform(0.1, 0.6), lit=int(rng.integers(3)), w=rng.uniform(0.3, 0.42),
                          arm=rng.random() < 0.4, arm_len=rng.uniform(2.5, 5.0))
    lamp_arm = rng.uniform(0.8, 2.0) if lamp else 0.0
    X = float(scene.road.side_x(side, a, z))
    scene.add(Layer.OBJECT, z, Pole(X=X, z=z, side=side, height=height, width=width, color=color, sign=sign,
                                    light=tl, lamp_arm=lamp_arm))


@dataclass
class Clutter:
    """An unlabelled box-like street object (bin, bollard, box) of width ``w``, height ``h``: void,
    as Cityscapes' 'static' class."""

    X: float
    z: float
    w: float
    h: float
    color: np.ndarray
    label: int = VOID

    def draw(self, cv: Canvas) -> None:
        w, h = self.w, self.h
        x0, y0, s = cv.upright(self.X, self.z)
        loc = cv.local(x0, y0, s, -w / 2, w / 2, 0, h)
        if loc is not None:
            rr, cc, u, v = loc
            top = (v > h - 0.08).astype(np.float32)
            cv.fill(rr, cc, tex(self.color, (cv.noise.grain[rr, cc], 0.05), (top, 0.2)), self.label, self.z)


_CLUTTER_COLORS = [(60, 70, 60), (90, 90, 95), (110, 95, 70), (50, 50, 55)]


def add_clutter(rng: np.random.Generator, scene: Scene) -> None:
    """Unlabelled street objects on sidewalks wider than 0.8 m."""
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
            col = jitter(rng, rgb(*_CLUTTER_COLORS[rng.integers(4)]), 12)
            X = float(scene.road.side_x(s.side, a, z))
            scene.add(Layer.OBJECT, z, Clutter(X=X, z=z, w=w, h=h, color=col))
