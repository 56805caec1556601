"""Vehicles: cars and trucks in the lanes (oncoming ones show their front) and parked along the
kerbs, and the ego vehicle's bonnet at the bottom of the frame (void, as in Cityscapes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import draw

from .camera import Road
from .canvas import Canvas, Layer
from .classes import CAR, ROAD, SIDEWALK, TRUCK, VOID
from .colors import CAR_COLORS, jitter, rgb, tex
from .scene import Scene

__all__ = ["EgoBonnet", "Vehicle", "VehicleBody", "add_ego", "add_vehicles", "make_vehicle"]

_TRUCK_COLORS = [(220, 220, 220), (180, 180, 185), (60, 80, 120), (150, 40, 40), (90, 100, 90)]


@dataclass
class VehicleBody:
    """The shape and paint of a car or truck (metres, RGB in [0, 1]).

    ``glass`` and ``cabin`` (the roof's width relative to the body) are a car's, ``cab_color`` a
    truck's; ``seed`` is drawn but not used by the drawing.
    """

    truck: bool
    length: float
    width: float
    height: float
    color: np.ndarray
    seed: int
    glass: np.ndarray | None = None
    cabin: float | None = None
    cab_color: np.ndarray | None = None

    def end_colors(self, cv: Canvas, rr, cc, u, Y, front: bool) -> tuple[np.ndarray, np.ndarray]:
        """Colours (n, 3) and mask (n,) of the rear (or, with ``front``, front) face at lateral ``u``
        from the centre and height ``Y``."""
        Wd, Hh = self.width, self.height
        col = tex(self.color, (cv.noise.grain[rr, cc], 0.02), (cv.noise.n16[rr, cc], 0.03))
        hw = Wd / 2
        if self.truck:
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
        top_w = hw * self.cabin
        cab_half = np.where(Y > belt, hw - (hw - top_w) * (Y - belt) / max(Hh - belt, 1e-3), hw)
        m = (np.abs(u) <= cab_half) & (Y > 0.0)
        # wheels below the body
        below = Y < 0.28
        wheel = below & (np.abs(u) > hw - 0.35)
        m &= ~below | wheel
        col[wheel] = rgb(22, 22, 24)
        win = (Y > belt + 0.07) & (Y < Hh - 0.07) & (np.abs(u) < cab_half - 0.1)
        col[win] = self.glass * (1.0 + 0.5 * (Y[win] - belt) / max(Hh - belt, 1e-3))[:, None]
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

    def side_colors(self, cv: Canvas, rr, cc, u, Y, front: bool) -> tuple[np.ndarray, np.ndarray]:
        """Colours (n, 3) and mask (n,) of the side face at ``u`` metres from the near end, height ``Y``."""
        L, Hh = self.length, self.height
        col = tex(self.color * 0.85, (cv.noise.grain[rr, cc], 0.02))
        if self.truck:
            m = Y > 0.0
            cab = (u < 1.8) if front else (u > L - 1.8)
            col[cab] = self.cab_color * 0.85
            low = Y < 0.55
            col[low] = rgb(30, 30, 32)
            wheels = [np.hypot(u - wc, Y - 0.5) < 0.5 for wc in (1.2, L - 1.4, L - 2.4)]
            for w in wheels:
                col[w] = rgb(20, 20, 20)
            m &= ~low | wheels[0] | wheels[1] | wheels[2] | (Y > 0.35)
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
        col[win & ~pillar] = self.glass * 1.2
        for wc in (0.75, L - 0.85):
            w = np.hypot(u - wc, Y - 0.33) < 0.33
            col[w] = rgb(22, 22, 24)
            hub = np.hypot(u - wc, Y - 0.33) < 0.14
            col[hub] = rgb(120, 120, 125)
            m |= w
        return col, m


def make_vehicle(rng: np.random.Generator, *, truck: bool) -> VehicleBody:
    """Draw a truck's or a car's :class:`VehicleBody`."""
    if truck:
        return VehicleBody(truck=True, length=rng.uniform(6.5, 10), width=rng.uniform(2.3, 2.6),
                           height=rng.uniform(2.8, 3.8), color=jitter(rng, rgb(*_TRUCK_COLORS[rng.integers(5)]), 10),
                           cab_color=jitter(rng, rgb(200, 200, 205), 30), seed=int(rng.integers(1 << 30)))
    body_col = jitter(rng, rgb(*CAR_COLORS[rng.integers(len(CAR_COLORS))]), 10)
    return VehicleBody(truck=False, length=rng.uniform(3.8, 4.9), width=rng.uniform(1.65, 1.9),
                       height=rng.uniform(1.35, 1.65), color=body_col, glass=jitter(rng, rgb(35, 40, 50), 10),
                       cabin=rng.uniform(0.72, 0.88), seed=int(rng.integers(1 << 30)))


@dataclass
class Vehicle:
    """A :class:`VehicleBody` ``d`` metres beside the road's centre line, its near end at depth ``z``;
    ``front``: it faces the camera (oncoming)."""

    body: VehicleBody
    road: Road
    d: float
    z: float
    front: bool

    def draw(self, cv: Canvas) -> None:
        cam, v, z = cv.cam, self.body, self.z
        label = TRUCK if v.truck else CAR
        L, Wd, Hh = v.length, v.width, v.height
        Xc = float(self.road.center(z + L / 2)) + self.d
        xl, xr = Xc - Wd / 2, Xc + Wd / 2
        # contact shadow on the road
        xs, ys = cam.project(np.array([xl - 0.1, xr + 0.1, xr + 0.1, xl - 0.1]), np.zeros(4),
                             np.array([z - 0.3, z - 0.3, z + L, z + L]))
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
                col, m = v.side_colors(cv, rr, cc, Z - z, Y, self.front)  # u = 0 at the near end
                cv.fill(rr[m], cc[m], col[m], label, Z[m])
        # rear or front face
        pz = cv.plane_z(z, xl, xr, 0.0, Hh)
        if pz is not None:
            rr, cc, X, Y = pz
            col, m = v.end_colors(cv, rr, cc, X - Xc, Y, self.front)
            cv.fill(rr[m], cc[m], col[m], label, z)


def add_vehicles(rng: np.random.Generator, scene: Scene) -> None:
    """Traffic in every lane (sparser in obstacle scenes, whose road ahead stays free) and parked cars."""
    road = scene.road
    n_lanes = max(1, int(round(2 * road.rw / 3.2)))
    lane_w = 2 * road.rw / n_lanes
    busy = rng.uniform(0.15, 0.75) * (0.35 if scene.obstacle_mode else 1.0)
    for lane in range(n_lanes):
        d = -road.rw + (lane + 0.5) * lane_w
        oncoming = (lane < n_lanes // 2) and n_lanes >= 2
        # obstacle scenes keep the road ahead free (as in RoadObstacle21)
        z = rng.uniform(15, 30) if scene.obstacle_mode else rng.uniform(5, 20)
        while z < 100:
            if rng.random() < busy:
                truck = rng.random() < 0.12
                v = make_vehicle(rng, truck=truck)
                dd = d + rng.uniform(-0.4, 0.4)
                scene.add(Layer.OBJECT, z, Vehicle(v, road, dd, z, front=oncoming))
                z += v.length + rng.uniform(3, 25)
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
                    v = make_vehicle(rng, truck=rng.random() < 0.05)
                    scene.add(Layer.OBJECT, z, Vehicle(v, road, d, z, front=False))
                    z += v.length + rng.uniform(0.5, 3)
                else:
                    z += rng.uniform(4, 12)


@dataclass
class EgoBonnet:
    """The ego vehicle's bonnet: the bottom ``frac`` of the frame, bulging up by ``bulge`` in the middle."""

    frac: float
    bulge: float
    color: np.ndarray

    def draw(self, cv: Canvas) -> None:
        cam, frac, bulge = cv.cam, self.frac, self.bulge
        xs = (np.arange(cam.W) + 0.5) / cam.W * 2 - 1
        top = cam.H * (1 - frac * (1 + bulge * (1 - xs ** 2)) / (1 + bulge))
        rows = np.arange(cam.H)[:, None] + 0.5
        rr, cc = np.nonzero(rows >= top[None])
        refl = np.clip(1 - (rr - top[cc]) / max(cam.H * frac, 1), 0, 1)
        cv.img[rr, cc] = tex(self.color, (refl * 0.6, 1.0), (cv.noise.n16[rr, cc], 0.05))
        cv.lab[rr, cc] = VOID
        cv.ood[rr, cc] = 0


def add_ego(rng: np.random.Generator, scene: Scene) -> None:
    """The ego vehicle's bonnet in 85 % of the frames."""
    if rng.random() > 0.85:
        return
    frac = rng.uniform(0.05, 0.12)
    bulge = rng.uniform(0.2, 0.5)
    col = jitter(rng, rgb(*CAR_COLORS[rng.integers(len(CAR_COLORS))]) * 0.7, 8)
    scene.add(Layer.EGO, 0.0, EgoBonnet(frac, bulge, col))
