"""Trees (along the kerb or scattered in the terrain) and bushes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .canvas import Canvas, Layer
from .classes import VEG
from .colors import jitter, rgb, tex
from .scene import Scene
from .shapes import blob_radius

__all__ = ["Bush", "Tree", "add_vegetation"]


@dataclass
class Tree:
    """A trunk and a wobbly crown (half width ``R``, height ``crown_h``) at lateral ``X``, depth ``z``."""

    X: float
    z: float
    trunk_h: float
    R: float
    crown_h: float
    trunk_w: float
    coeffs: np.ndarray  # (5, 2) harmonics of the crown's outline, see blob_radius
    color: np.ndarray
    trunk_col: np.ndarray

    def draw(self, cv: Canvas) -> None:
        z, R, trunk_h, crown_h = self.z, self.R, self.trunk_h, self.crown_h
        x0, y0, s = cv.upright(self.X, z)
        hw = max(self.trunk_w / 2, 0.5 / s)
        loc = cv.local(x0, y0, s, -hw, hw, 0, trunk_h + 0.3)
        if loc is not None:
            rr, cc, u, v = loc
            cv.fill(rr, cc, tex(self.trunk_col, (cv.noise.grain[rr, cc], 0.1)), VEG, z)
        cy = trunk_h + crown_h / 2
        loc = cv.local(x0, y0, s, -R * 1.4, R * 1.4, trunk_h - 0.2, trunk_h + crown_h * 1.2)
        if loc is not None:
            rr, cc, u, v = loc
            th = np.arctan2((v - cy) / (crown_h / 2), u / R)
            rho = np.hypot(u / R, (v - cy) / (crown_h / 2))
            leafy = cv.noise.n4[rr, cc] * 0.12
            m = rho < blob_radius(th, self.coeffs) + leafy
            shade = 1.0 - 0.35 * np.clip((cy - v[m]) / crown_h + 0.3, 0, 1)
            col = tex(self.color, (cv.noise.n4[rr[m], cc[m]], 0.3), (cv.noise.grain[rr[m], cc[m]], 0.18),
                      (shade - 1.0, 1.0))
            cv.fill(rr[m], cc[m], col, VEG, z)


@dataclass
class Bush:
    """A low wobbly blob (half width ``R``, height ``h``) at lateral ``X``, depth ``z``."""

    X: float
    z: float
    R: float
    h: float
    coeffs: np.ndarray  # (4, 2)
    color: np.ndarray

    def draw(self, cv: Canvas) -> None:
        R, h = self.R, self.h
        x0, y0, s = cv.upright(self.X, self.z)
        loc = cv.local(x0, y0, s, -R * 1.3, R * 1.3, 0, h * 1.3)
        if loc is None:
            return
        rr, cc, u, v = loc
        th = np.arctan2((v - h / 2) / (h / 2), u / R)
        rho = np.hypot(u / R, (v - h / 2) / (h / 2))
        m = (rho < blob_radius(th, self.coeffs) + cv.noise.n4[rr, cc] * 0.15) & (v >= 0)
        col = tex(self.color, (cv.noise.n4[rr[m], cc[m]], 0.3), (cv.noise.grain[rr[m], cc[m]], 0.15))
        cv.fill(rr[m], cc[m], col, VEG, self.z)


def add_vegetation(rng: np.random.Generator, scene: Scene) -> None:
    """Rows of trees on some sides (in the sidewalk or the terrain) and bushes in open terrain."""
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


def _add_tree(rng: np.random.Generator, scene: Scene, side: int, a: float, z: float) -> None:
    """Draw a :class:`Tree` ``a`` metres beyond the kerb on ``side`` at depth ``z`` and add it."""
    trunk_h = rng.uniform(1.8, 3.2)
    R = rng.uniform(1.2, 3.2)
    crown_h = R * rng.uniform(1.3, 2.2)
    trunk_w = rng.uniform(0.2, 0.45)
    coeffs = np.stack([rng.uniform(0, 0.12, 5), rng.uniform(0, 2 * np.pi, 5)], 1)
    color = np.clip(scene.ground.veg * rng.uniform(0.75, 1.25) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    trunk_col = jitter(rng, rgb(85, 70, 55), 15)
    X = float(scene.road.side_x(side, a, z))
    scene.add(Layer.OBJECT, z, Tree(X=X, z=z, trunk_h=trunk_h, R=R, crown_h=crown_h, trunk_w=trunk_w,
                                    coeffs=coeffs, color=color, trunk_col=trunk_col))


def _add_bush(rng: np.random.Generator, scene: Scene, side: int, a: float, z: float) -> None:
    """Draw a :class:`Bush` ``a`` metres beyond the kerb on ``side`` at depth ``z`` and add it."""
    R = rng.uniform(0.5, 1.5)
    h = R * rng.uniform(0.8, 1.4)
    coeffs = np.stack([rng.uniform(0, 0.15, 4), rng.uniform(0, 2 * np.pi, 4)], 1)
    color = np.clip(scene.ground.veg * rng.uniform(0.8, 1.2), 0, 1)
    X = float(scene.road.side_x(side, a, z))
    scene.add(Layer.OBJECT, z, Bush(X=X, z=z, R=R, h=h, coeffs=coeffs, color=color))
