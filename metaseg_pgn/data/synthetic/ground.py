"""The backdrop: sky with clouds, a distant skyline, and the ground (road, markings, kerbs,
sidewalks, verges, terrain, building shadows)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import Road
from .canvas import Canvas, Layer
from .classes import BUILDING, ROAD, SIDEWALK, SKY, TERRAIN, VEG
from .colors import jitter, rgb, tex
from .noise import value_noise, world_noise
from .scene import GroundStyle, Scene, Side

__all__ = ["Ground", "Sky", "Skyline", "add_sky_and_ground"]


@dataclass
class Sky:
    """A vertical gradient from ``top`` to ``horizon`` with clouds; fills the whole canvas (label sky)."""

    top: np.ndarray
    horizon: np.ndarray
    cloudiness: float

    def draw(self, cv: Canvas) -> None:
        cam = cv.cam
        rows = np.arange(cam.H, dtype=np.float32)
        t = np.clip(rows / max(cam.yh, 1.0), 0, 1) ** 0.7
        col = self.top[None, :] * (1 - t[:, None]) + self.horizon[None, :] * t[:, None]
        img = np.broadcast_to(col[:, None, :], (cam.H, cam.W, 3)).copy()
        if self.cloudiness > 0:
            c = np.clip(cv.noise.n64 * 1.2 + cv.noise.n16 * 0.4 + (self.cloudiness - 0.6), 0, 1)
            c = c * (1 - t[:, None]) ** 0.5
            img = img * (1 - c[..., None]) + np.float32(0.93) * c[..., None]
        img = img * (1 + 0.015 * cv.noise.n4[..., None])
        cv.img[...] = np.clip(img, 0, 1)
        cv.lab[...] = SKY
        cv.ood[...] = 0


@dataclass
class Skyline:
    """Distant blocks (building) and tree lines (vegetation) at the horizon, ``dist`` metres away.

    The image width is cut at the sorted column ``edges`` into ``len(edges) + 1`` blocks, each of
    height ``heights[i]`` metres and a building where ``kinds[i]``; trees fill the rest.
    """

    edges: np.ndarray
    heights: np.ndarray
    kinds: np.ndarray
    tree_h: float
    col_seed: int
    dist: float
    building_col: np.ndarray
    tree_col: np.ndarray

    def draw(self, cv: Canvas) -> None:
        cam = cv.cam
        W, dist = cam.W, self.dist
        idx = np.searchsorted(self.edges, np.arange(W) + 0.5)
        h_b = np.where(self.kinds[idx], self.heights[idx], 0.0)
        nz = value_noise(np.random.default_rng(self.col_seed), (2, W), 6)[0]
        h_t = np.maximum(self.tree_h * (0.6 + 0.5 * nz), 0)
        top_b = cam.yh - cam.f * (h_b - cam.hc) / dist
        top_t = cam.yh - cam.f * (h_t - cam.hc) / dist
        base = int(math.ceil(cam.yh + cam.f * cam.hc / dist))
        rows = np.arange(cam.H)[:, None]
        mb = (rows >= top_b[None]) & (rows <= base) & (h_b[None] > 0)
        mt = (rows >= top_t[None]) & (rows <= base) & ~mb
        rr, cc = np.nonzero(mt)
        cv.fill(rr, cc, tex(self.tree_col, (cv.noise.n4[rr, cc], 0.25)), VEG, dist)
        rr, cc = np.nonzero(mb)
        cv.fill(rr, cc, tex(self.building_col, (cv.noise.n16[rr, cc], 0.15)), BUILDING, dist)


@dataclass
class Ground:
    """The ground plane below the horizon, labelled road / sidewalk / terrain by lateral distance.

    ``sides`` is the scene's list: the buildings added to it later cast the shadows.
    """

    road: Road
    style: GroundStyle
    sides: list[Side]
    noise_seed: int

    def draw(self, cv: Canvas) -> None:
        cam, road, g = cv.cam, self.road, self.style
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
        label, is_curb, in_ss = self._labels(side, a, Z)

        # world-space textures
        n_w = world_noise(self.noise_seed, X, Z, 1.7)
        n_w2 = world_noise(self.noise_seed + 1, X, Z, 0.25)
        grain = cv.noise.grain[rr, cc]
        col = np.empty((len(rr), 3), np.float32)
        m = label == ROAD
        col[m] = tex(g.road, (n_w[m], g.texture_amp), (grain[m], 0.05), (n_w2[m], g.crack_amp))
        m = label == SIDEWALK
        tile = g.tiles
        tu, tz = np.mod(d[m], tile) / tile, np.mod(Z[m], tile) / tile
        joint = ((tu < 0.08) | (tz < 0.08)) & (Z[m] < 30)
        col[m] = tex(g.sidewalk, (n_w[m], 0.05), (grain[m], 0.04), (-joint.astype(np.float32), g.tile_contrast))
        m = label == TERRAIN
        col[m] = tex(g.terrain, (n_w[m], 0.12), (cv.noise.n4[rr[m], cc[m]], 0.1), (grain[m], 0.12))
        # kerb stones: lighter
        col[is_curb] = np.clip(col[is_curb] * 1.18 + 0.03, 0, 1)

        paint = self._markings(d, Z, label == ROAD) & ~in_ss
        col[paint] = tex(g.marking, (grain[paint], 0.04), (n_w[paint], 0.08))
        if g.sun_side != 0:
            col[self._shadow(side, a, Z)] *= np.array([g.shadow_factor, g.shadow_factor, g.shadow_factor * 1.08],
                                                      np.float32)
        cv.fill(rr, cc, col, 0, Z)
        cv.lab[rr, cc] = label

    def _labels(self, side: np.ndarray, a: np.ndarray, Z: np.ndarray):
        """trainIds (n,) uint8 of ground points on ``side`` (0 left, 1 right) at ``a`` metres beyond
        the kerb, and the kerb and side-street masks (n,) bool."""
        sides = self.sides
        sw = np.array([s.sw for s in sides])[side]
        beyond_terrain = np.array([s.beyond == "terrain" for s in sides])[side]
        in_ss = np.zeros_like(a, dtype=bool)
        for i, s in enumerate(sides):
            in_ss |= (side == i) & s.in_side_street(Z)
        label = np.full(len(a), ROAD, np.uint8)
        verge = np.array([s.verge for s in sides])[side]
        is_curb = (a >= 0) & (a < 0.25) & (sw > 0) & ~in_ss
        is_verge = (a >= 0.25) & (a < 0.25 + verge) & ~in_ss
        is_sw = (a >= 0.25) & (a < sw) & ~in_ss & ~is_verge
        is_beyond = (a >= np.maximum(sw, 0)) & ~in_ss & ~((a >= 0) & (a < sw))
        label[is_curb | is_sw] = SIDEWALK
        label[is_verge] = TERRAIN
        label[is_beyond] = np.where(beyond_terrain[is_beyond], TERRAIN, SIDEWALK)
        # grass verge when there is no sidewalk
        bare = (a >= 0) & (sw == 0) & ~in_ss
        label[bare] = np.where(beyond_terrain[bare], TERRAIN, SIDEWALK)
        return label, is_curb, in_ss

    def _markings(self, d: np.ndarray, Z: np.ndarray, on_road: np.ndarray) -> np.ndarray:
        """bool (n,): painted lane lines, edge lines and zebra stripes (on the road only)."""
        road, g = self.road, self.style
        lw = g.lane_width
        n_lanes = max(1, int(round(2 * road.rw / 3.2)))
        lane_w = 2 * road.rw / n_lanes
        paint = np.zeros(len(d), bool)
        period = g.dash_len + g.dash_gap
        dashed = np.mod(Z + g.dash_phase, period) < g.dash_len
        for kk in range(1, n_lanes):
            pos = -road.rw + kk * lane_w
            near = np.abs(d - pos) < lw / 2
            solid = g.center_solid and kk == n_lanes // 2
            paint |= near & (dashed | solid)
        if g.edge_lines:
            paint |= np.abs(np.abs(d) - (road.rw - 0.35)) < lw / 2
        if g.zebra is not None:
            zz = g.zebra
            paint |= (Z >= zz) & (Z <= zz + 3.5) & (np.mod(d, 1.1) < 0.55) & (np.abs(d) < road.rw - 0.4)
        return paint & on_road

    def _shadow(self, side: np.ndarray, a: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """bool (n,): ground in the shadow of the buildings on the sun side."""
        g = self.style
        si = 0 if g.sun_side < 0 else 1
        s = self.sides[si]
        shadow = np.zeros(len(a), bool)
        for b in s.buildings:
            reach = b.height * g.shadow_len
            facade_a = s.sw + b.setback
            shadow |= (side == si) & (Z >= b.z0) & (Z <= b.z1) & (a > facade_a - reach)
        return shadow


def add_sky_and_ground(rng: np.random.Generator, scene: Scene) -> None:
    """Draw the skyline's parameters and add sky, skyline and ground to the draw list."""
    W = scene.cam.W
    n_blocks = int(rng.integers(4, 18))
    edges = np.sort(rng.uniform(0, W, n_blocks))
    heights = rng.uniform(0, 1, n_blocks + 1) ** 1.5 * rng.uniform(8, 40)
    kinds = rng.random(n_blocks + 1) < rng.uniform(0.2, 0.8)  # True: building block
    tree_h = rng.uniform(3, 14)
    col_seed = int(rng.integers(1 << 31))
    dist = rng.uniform(250, 500)
    building_col = jitter(rng, rgb(120, 120, 125), 20)
    tree_col = scene.ground.veg * rng.uniform(0.7, 1.0)
    skyline = Skyline(edges=edges, heights=heights, kinds=kinds, tree_h=tree_h, col_seed=col_seed, dist=dist,
                      building_col=building_col, tree_col=tree_col)
    scene.add(Layer.SKY, 1e9, Sky(scene.sky_top, scene.sky_horizon, scene.cloudiness))
    scene.add(Layer.SKY, 1e8, skyline)
    scene.add(Layer.GROUND, 1e7, Ground(scene.road, scene.ground, scene.sides, scene.noise_seed))
