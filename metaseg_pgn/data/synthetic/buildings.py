"""Buildings (facades with windows, shops, bricks) and the long structures along the sidewalk
(fences, hedges)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import Road
from .canvas import Canvas, Layer
from .classes import BUILDING, FENCE, VEG
from .colors import FACADE_COLORS, jitter, rgb, tex
from .noise import hash01
from .scene import Scene, Side

__all__ = ["Building", "Facade", "LongStructure", "add_buildings", "add_long_structures", "make_building"]


@dataclass
class Building:
    """A block of facade along the street from depth ``z0`` to ``z1`` (metres).

    Windows repeat every ``win_sx`` metres along the facade (width ``win_w``, height ``win_h``, from
    ``sill`` above each floor of ``floor_h``) above a ground floor of ``ground_h`` with shop windows
    or plain ones; ``win_seed`` varies the glass per window.
    """

    z0: float
    z1: float
    height: float
    color: np.ndarray
    side: int
    brick: bool
    brick_h: float
    win_sx: float
    win_w: float
    floor_h: float
    win_h: float
    sill: float
    ground_h: float
    shop: bool
    win_phase: float
    glass: np.ndarray
    frame: np.ndarray
    win_seed: int
    no_windows: bool
    cornice: float
    depth: float  # of the front end, metres
    setback: float = 0.0  # behind the sidewalk's outer edge, metres
    front: bool = False  # whether the end facing the camera is drawn (not hidden by a taller neighbour)


def make_building(rng: np.random.Generator, z0: float, z1: float, side: int) -> Building:
    """Draw a :class:`Building`'s appearance (its ``setback`` and ``front`` are set by the caller)."""
    height = rng.uniform(6, 30) if rng.random() < 0.8 else rng.uniform(30, 45)
    color = jitter(rng, rgb(*FACADE_COLORS[rng.integers(len(FACADE_COLORS))]), 12)
    sx = rng.uniform(2.4, 4.5)
    return Building(
        z0=z0, z1=z1, height=height, color=color, side=side,
        brick=bool(rng.random() < 0.25), brick_h=rng.uniform(0.25, 0.4),
        win_sx=sx, win_w=rng.uniform(0.8, min(1.8, sx - 0.6)), floor_h=rng.uniform(2.8, 3.6),
        win_h=rng.uniform(1.2, 1.9), sill=rng.uniform(0.7, 1.0), ground_h=rng.uniform(3.2, 4.6),
        shop=bool(rng.random() < 0.45), win_phase=rng.uniform(0, sx),
        glass=jitter(rng, rgb(55, 65, 80), 15), frame=jitter(rng, rgb(200, 200, 195), 40),
        win_seed=int(rng.integers(1 << 30)), no_windows=bool(rng.random() < 0.08),
        cornice=rng.uniform(0.2, 0.8), depth=rng.uniform(8, 20),
    )


def add_buildings(rng: np.random.Generator, scene: Scene) -> None:
    """Rows of buildings on built-up sides (with gaps and side streets), a few far back on open ones."""
    for s in scene.sides:
        side = s.side
        if s.kind == "buildings":
            z = rng.uniform(-5, 6)
            zend = rng.uniform(120, 260)
            prev_h = 0.0
            while z < zend:
                if rng.random() < 0.22:
                    z += rng.uniform(3, 14)  # gap
                    prev_h = 0.0
                    continue
                length = rng.uniform(8, 40)
                if s.side_street is not None:
                    ss0, ssw = s.side_street
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
                b = make_building(rng, z, z + length, side)
                b.setback = rng.uniform(0, 2.5) if rng.random() < 0.5 else 0.0
                b.front = b.height > prev_h + 0.5
                s.buildings.append(b)
                prev_h = b.height
                z += length
        else:
            # open side: occasionally distant buildings far back
            if rng.random() < 0.5:
                z = rng.uniform(20, 80)
                for _ in range(int(rng.integers(1, 4))):
                    b = make_building(rng, z, z + rng.uniform(10, 30), side)
                    b.setback = s.sw + rng.uniform(12, 40)
                    b.front = True
                    s.buildings.append(b)
                    z = b.z1 + rng.uniform(5, 30)
        for b in sorted(s.buildings, key=lambda b: -b.z0):
            scene.add(Layer.FACADE, b.z0, Facade(b, s, scene.road, scene.overcast, scene.sky_horizon))


@dataclass
class Facade:
    """The visible faces of a :class:`Building`: the road-facing side and, if ``building.front``, the
    end facing the camera."""

    building: Building
    side: Side
    road: Road
    overcast: bool
    sky_horizon: np.ndarray  # some windows reflect it

    def draw(self, cv: Canvas) -> None:
        b, s = self.building, self.side
        shade_side = 1.0 if self.overcast else (1.0 if s.sun else 0.8)
        # the road-facing side, in chunks so that it follows a curving road
        z0, z1 = b.z0, b.z1
        a = s.sw + b.setback
        zc = max(z0, 0.5)
        while zc < z1:
            step = max(2.0, 0.15 * zc)
            za, zb = zc, min(z1, zc + step)
            X = float(self.road.side_x(s.side, a, 0.5 * (za + zb)))
            px = cv.plane_x(X, za, zb + 0.3, 0.0, b.height)
            if px is not None:
                rr, cc, Z, Y = px
                cv.fill(rr, cc, self.colors(cv, rr, cc, Z - z0, Y, shade_side), BUILDING, Z)
            zc = zb
        # the front end (facing the camera) when it is not hidden by a taller nearer building
        if b.front and z0 > 0.5:
            X = float(self.road.side_x(s.side, a, z0))
            lo, hi = (X - b.depth, X) if s.side < 0 else (X, X + b.depth)
            pz = cv.plane_z(z0, lo, hi, 0.0, b.height)
            if pz is not None:
                rr, cc, Xp, Y = pz
                shade = 0.88 if not self.overcast else 0.95
                cv.fill(rr, cc, self.colors(cv, rr, cc, np.abs(Xp - X), Y, shade), BUILDING, z0)

    def colors(self, cv: Canvas, rr, cc, u, v, shade: float) -> np.ndarray:
        """Colours (n, 3) of facade pixels ``(rr, cc)`` at along-facade ``u`` and height ``v`` (metres)."""
        b = self.building
        n = cv.noise
        base = b.color * shade
        fields = [(n.n16[rr, cc], 0.06), (n.grain[rr, cc], 0.03)]
        if b.brick:
            row = np.floor(v / b.brick_h).astype(np.int64)
            bu = np.mod(u + 0.5 * (row % 2) * 0.9, 0.9)
            bv = np.mod(v, b.brick_h)
            mortar = ((bu < 0.06) | (bv < 0.04)).astype(np.float32)
            fields.append((mortar, 0.25))
        col = tex(base, *fields)
        top = v > b.height - b.cornice
        col[top] *= 0.75
        if b.no_windows:
            return col
        sx, fh = b.win_sx, b.floor_h
        uu = u + b.win_phase
        iu = np.floor(uu / sx).astype(np.int64)
        fu = uu - iu * sx
        upper = v >= b.ground_h
        iv = np.floor((v - b.ground_h) / fh).astype(np.int64)
        fv = (v - b.ground_h) - iv * fh
        win_up = upper & (fu < b.win_w) & (fv > b.sill) & (fv < b.sill + b.win_h) & (v < b.height - 1.0)
        if b.shop:
            win_gr = (~upper) & (v > 0.5) & (v < b.ground_h - 0.6) & (fu < sx * 0.85)
            ivg = np.full_like(iv, -1)
            iv = np.where(upper, iv, ivg)
        else:
            win_gr = (~upper) & (v > 1.0) & (v < 2.4) & (fu < b.win_w)
        win = win_up | win_gr
        if win.any():
            h = hash01(iu[win], iv[win], salt=b.win_seed)
            frame = (fu[win] < 0.08) | (fu[win] > (np.where(win_gr[win], sx * 0.85, b.win_w) - 0.08))
            glass = b.glass[None, :] * (0.6 + 0.9 * h[:, None]) * shade
            # some windows reflect the sky
            refl = h > 0.8
            glass[refl] = glass[refl] * 0.5 + self.sky_horizon * 0.45 * shade
            glass[frame] = b.frame * shade
            col[win] = np.clip(glass, 0, 1)
        return col


@dataclass
class LongStructure:
    """A fence or hedge along the sidewalk's outer edge, ``a`` metres beyond the kerb, from ``z0`` to ``z1``.

    Fences are wooden planks (``planks``) or a wire mesh of period ``mesh`` metres through which the
    background shows (opacity about ``alpha``), labelled as a whole as Cityscapes annotates them.
    """

    side: int
    road: Road
    kind: str  # "fence" or "hedge"
    z0: float
    z1: float
    a: float
    height: float
    color: np.ndarray
    mesh: float
    alpha: float
    planks: bool
    post_gap: float

    def draw(self, cv: Canvas) -> None:
        label = {"fence": FENCE, "hedge": VEG}[self.kind]
        zc = max(self.z0, 0.5)
        while zc < self.z1:
            step = max(2.0, 0.15 * zc)
            za, zb = zc, min(self.z1, zc + step)
            X = float(self.road.side_x(self.side, self.a, 0.5 * (za + zb)))
            px = cv.plane_x(X, za, zb + 0.2, 0.0, self.height)
            if px is not None:
                rr, cc, Z, Y = px
                col, alpha = self.colors(cv, rr, cc, Z, Y, 0.95, u_depth=Z)
                cv.fill(rr, cc, col, label, Z, alpha=alpha)
            zc = zb
        if self.z0 > 1.0:
            X = float(self.road.side_x(self.side, self.a, self.z0))
            lo, hi = (X - 0.3, X) if self.side < 0 else (X, X + 0.3)
            pz = cv.plane_z(self.z0, lo, hi, 0.0, self.height)
            if pz is not None:
                rr, cc, Xp, Y = pz
                col, alpha = self.colors(cv, rr, cc, np.abs(Xp - X), Y, 0.85, u_depth=np.full(len(rr), self.z0))
                cv.fill(rr, cc, col, label, self.z0, alpha=alpha)

    def colors(self, cv: Canvas, rr, cc, u, v, shade: float, u_depth: np.ndarray):
        """Colours (n, 3) and opacity (n,) float32 or None of pixels at along-structure ``u`` and height
        ``v`` (metres), seen at depths ``u_depth``."""
        n = cv.noise
        if self.kind == "hedge":
            return tex(self.color * shade, (n.n4[rr, cc], 0.3), (n.grain[rr, cc], 0.2)), None
        col = tex(self.color * shade, (n.grain[rr, cc], 0.06))
        frame = (np.abs(v - self.height + 0.04) < 0.04) | (v < 0.08) | (np.mod(u, self.post_gap) < 0.07)
        if self.planks:
            joint = (np.mod(u, 0.16) < 0.025) & ~frame
            col[joint] *= 0.55
            return col, None
        period_px = self.mesh * cv.cam.f / np.maximum(u_depth, 1e-3)
        wire = (np.mod(u + v, self.mesh) < 0.2 * self.mesh) | (np.mod(u - v, self.mesh) < 0.2 * self.mesh)
        alpha = np.where(period_px < 3.0, 0.25 + self.alpha, np.where(wire, 0.9, 0.3))
        alpha = np.where(frame, 1.0, np.minimum(alpha, 0.95))
        return col, alpha.astype(np.float32)


_FENCE_COLORS = [(70, 75, 80), (40, 45, 45), (130, 110, 85), (150, 150, 150), (95, 80, 70)]


def _long_color(rng: np.random.Generator, kind: str, scene: Scene) -> np.ndarray:
    """A fence's paint (one of five, jittered) or a hedge's green (the scene's vegetation, scaled)."""
    if kind == "fence":
        return jitter(rng, rgb(*_FENCE_COLORS[rng.integers(5)]), 12)
    return np.clip(scene.ground.veg * rng.uniform(0.8, 1.2), 0, 1)


def add_long_structures(rng: np.random.Generator, scene: Scene) -> None:
    """Fences and hedges along the outer edge of the sidewalk (always on open sides, sometimes on built-up ones)."""
    for s in scene.sides:
        if s.kind != "open" and rng.random() < 0.6:
            continue
        z = rng.uniform(2, 15)
        zend = rng.uniform(40, 150)
        while z < zend:
            length = rng.uniform(8, 40)
            kind = rng.choice(["fence", "hedge", "none"], p=[0.45, 0.35, 0.2])
            if s.side_street is not None:
                ss0, ssw = s.side_street
                if z < ss0 + ssw and z + length > ss0:
                    length = max(ss0 - z, 0.0)
                    if length < 1.0:
                        z = ss0 + ssw + 0.5
                        continue
            if kind != "none":
                st = LongStructure(
                    side=s.side, road=scene.road,
                    kind=str(kind), z0=z, z1=z + length, a=s.sw + rng.uniform(0.0, 0.6),
                    height=rng.uniform(0.6, 2.0) if kind == "hedge" else rng.uniform(0.9, 2.0),
                    color=_long_color(rng, kind, scene), mesh=rng.uniform(0.08, 0.2),
                    alpha=rng.uniform(0.5, 0.7), planks=bool(rng.random() < 0.4), post_gap=rng.uniform(2.0, 3.0))
                scene.add(Layer.LONG, z, st)
            z += length + (rng.uniform(2, 20) if rng.random() < 0.4 else 0.0)
