"""The canvas being painted (image, labels, OoD mask) and the draw list that paints it.

Everything in a scene is a :class:`DrawItem`: a thing with a ``draw(canvas)`` method, a layer and a
depth. :func:`metaseg_pgn.data.synthetic.render.render` paints the items by layer, then far to
near (painter's algorithm), then in the order they were added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

from metaseg_pgn.data.palette import VOID

from .camera import Camera
from .noise import NoiseFields

__all__ = ["Canvas", "Drawable", "DrawItem", "Layer"]


class Layer(IntEnum):
    """Painting order of the kinds of things (lower first)."""

    SKY = 0
    GROUND = 1
    FACADE = 2
    LONG = 3  # fences and hedges along the road
    OBJECT = 4  # trees, poles, vehicles, persons, clutter, unknown objects
    EGO = 9  # the ego vehicle's bonnet, over everything


class Canvas:
    """Image (float RGB in [0, 1]), semantic label and OoD mask being painted.

    Parameters
    ----------
    cam : Camera
    noise : NoiseFields
        The frame's shared noise.
    haze_color : ndarray, shape (3,)
        Colour that distant things fade to.
    visibility : float
        Depth in metres at which a colour keeps ``1/e`` of itself.

    Attributes
    ----------
    img : ndarray, shape (H, W, 3), float32
    lab : ndarray, shape (H, W), uint8
        Cityscapes trainIds, 255 void (the initial value).
    ood : ndarray, shape (H, W), uint8
        1 where an unknown object is visible.
    """

    def __init__(self, cam: Camera, noise: NoiseFields, haze_color: np.ndarray, visibility: float):
        self.cam = cam
        H, W = cam.H, cam.W
        self.img = np.zeros((H, W, 3), np.float32)
        self.lab = np.full((H, W), VOID, np.uint8)
        self.ood = np.zeros((H, W), np.uint8)
        self.noise = noise
        self.haze_color = haze_color.astype(np.float32)
        self.visibility = visibility

    def haze(self, color: np.ndarray, z) -> np.ndarray:
        """``color`` (3,) or (n, 3) seen at depth(s) ``z``: blended towards the haze colour."""
        t = np.exp(-np.asarray(z, dtype=np.float32) / self.visibility)
        if np.ndim(t) == 1:
            t = t[:, None]
        return color * t + self.haze_color * (1.0 - t)

    def fill(self, rr, cc, color, label: int, z, ood: int = 0, alpha=None) -> None:
        """Paint pixels ``(rr, cc)``.

        Parameters
        ----------
        rr, cc : ndarray, shape (n,), int
            Rows and columns.
        color : array-like, shape (3,) or (n, 3)
            RGB in [0, 1], before haze.
        label : int
            trainId written to ``lab``.
        z : float or ndarray, shape (n,)
            Depth for the haze.
        ood : int
            Value written to ``ood``.
        alpha : ndarray, shape (n,), optional
            Blend over what is there (the label is set regardless).
        """
        if len(rr) == 0:
            return
        col = self.haze(np.asarray(color, dtype=np.float32), z)
        if alpha is not None:
            a = np.asarray(alpha, np.float32)[:, None]
            col = col * a + self.img[rr, cc] * (1 - a)
        self.img[rr, cc] = col
        self.lab[rr, cc] = label
        self.ood[rr, cc] = ood

    def bbox(self, x0, x1, y0, y1) -> tuple[np.ndarray, np.ndarray] | None:
        """Flat rows and columns of the integer pixel grid covering a float box, clipped; None when empty."""
        c0, c1 = max(int(math.floor(min(x0, x1))), 0), min(int(math.ceil(max(x0, x1))), self.cam.W - 1)
        r0, r1 = max(int(math.floor(min(y0, y1))), 0), min(int(math.ceil(max(y0, y1))), self.cam.H - 1)
        if c1 < c0 or r1 < r0:
            return None
        rr, cc = np.mgrid[r0:r1 + 1, c0:c1 + 1]
        return rr.ravel(), cc.ravel()

    def upright(self, X: float, z: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Image position ``(x0, y0)`` of the ground point at lateral ``X``, depth ``z``, and the
        scale ``s`` (pixels per metre) of an upright object standing there."""
        x0, y0 = self.cam.project(X, 0.0, z)
        return x0, y0, self.cam.f / z

    def local(self, x0: float, y0: float, s: float, u0: float, u1: float, v0: float, v1: float):
        """Pixels of the box ``u in [u0, u1]``, ``v in [v0, v1]`` (metres) of an upright object.

        The object's foot point projects to ``(x0, y0)`` with ``s`` pixels per metre; ``u`` grows to
        the right, ``v`` upwards.

        Returns
        -------
        (rr, cc, u, v) : tuple of ndarray, shape (n,), or None
        """
        box = self.bbox(x0 + s * u0 - 0.5, x0 + s * u1 + 0.5, y0 - s * v1 - 0.5, y0 - s * v0 + 0.5)
        if box is None:
            return None
        rr, cc = box
        u = (cc + 0.5 - x0) / s
        v = (y0 - rr - 0.5) / s
        return rr, cc, u, v

    def plane_x(self, X: float, z0: float, z1: float, y0: float, y1: float):
        """Pixels of the vertical plane at lateral ``X`` (parallel to the road).

        Covers depths ``[z0, z1]`` (``z0`` at least 0.3 m) and heights ``[y0, y1]``.

        Returns
        -------
        (rr, cc, Z, Y) : tuple of ndarray, shape (n,), or None
        """
        cam = self.cam
        z0 = max(z0, 0.3)
        if z1 <= z0 or abs(X) < 1e-3:
            return None
        xs, ys = cam.project(np.array([X, X, X, X]), np.array([y0, y1, y0, y1]), np.array([z0, z0, z1, z1]))
        box = self.bbox(xs.min() - 1, xs.max() + 1, ys.min() - 1, ys.max() + 1)
        if box is None:
            return None
        rr, cc = box
        dx = cc + 0.5 - cam.xv
        with np.errstate(divide="ignore", invalid="ignore"):
            Z = cam.f * X / dx
        ok = np.isfinite(Z) & (Z >= z0) & (Z <= z1)
        rr, cc, Z = rr[ok], cc[ok], Z[ok]
        Y = cam.hc - (rr + 0.5 - cam.yh) * Z / cam.f
        ok = (Y >= y0) & (Y <= y1)
        return rr[ok], cc[ok], Z[ok], Y[ok]

    def plane_z(self, Z: float, x0: float, x1: float, y0: float, y1: float):
        """Pixels of the plane facing the camera at depth ``Z`` for lateral ``[x0, x1]`` and heights ``[y0, y1]``.

        Returns
        -------
        (rr, cc, X, Y) : tuple of ndarray, shape (n,), or None
        """
        cam = self.cam
        if Z < 0.3:
            return None
        xs, ys = cam.project(np.array([x0, x1]), np.array([y1, y0]), np.array([Z, Z]))
        box = self.bbox(xs[0], xs[1], ys[0], ys[1])
        if box is None:
            return None
        rr, cc = box
        X = (cc + 0.5 - cam.xv) * Z / cam.f
        Y = cam.hc - (rr + 0.5 - cam.yh) * Z / cam.f
        ok = (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1)
        return rr[ok], cc[ok], X[ok], Y[ok]


class Drawable(Protocol):
    """Anything that paints itself on a :class:`Canvas`."""

    def draw(self, cv: Canvas) -> None: ...


@dataclass
class DrawItem:
    """One entry of a scene's draw list.

    Attributes
    ----------
    layer : Layer
    depth : float
        Metres; within a layer, deeper items are painted first.
    thing : Drawable
    seq : int
        Position in the draw list (breaks ties in the order things were added).
    """

    layer: Layer
    depth: float
    thing: Drawable
    seq: int = 0
