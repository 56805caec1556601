"""Geometry: a pinhole camera over a flat ground plane, and the road's centre line.

World coordinates are metres: ``X`` lateral (right positive), ``Y`` up from the ground, ``Z`` depth
along the viewing direction. Image coordinates are pixels: columns ``x``, rows ``y`` (down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Camera", "Road"]


@dataclass
class Camera:
    """Pinhole camera at height ``hc`` over the ground plane, looking along +Z (Y up).

    Attributes
    ----------
    H, W : int
        Image size in pixels.
    f : float
        Focal length in pixels.
    yh : float
        Horizon row.
    xv : float
        Column of the vanishing point.
    hc : float
        Camera height in metres.
    """

    H: int
    W: int
    f: float
    yh: float
    xv: float
    hc: float

    def project(self, X, Y, Z) -> tuple[np.ndarray, np.ndarray]:
        """Image position ``(x, y)`` in pixels of world points (arrays broadcast; Z clipped at 1 mm)."""
        Z = np.maximum(np.asarray(Z, dtype=np.float64), 1e-3)
        return self.xv + self.f * np.asarray(X) / Z, self.yh + self.f * (self.hc - np.asarray(Y)) / Z


@dataclass
class Road:
    """A road whose centre is at lateral ``c(Z) = c0 + k Z^2``, of half width ``rw`` (metres)."""

    c0: float
    k: float
    rw: float

    def center(self, Z):
        """Lateral X of the centre line at depth(s) ``Z``."""
        return self.c0 + self.k * np.asarray(Z) ** 2

    def side_x(self, side: int, a: float, Z):
        """Lateral X of the point ``a`` metres beyond the kerb on ``side`` (-1 left, +1 right) at depth ``Z``."""
        return self.center(Z) + side * (self.rw + a)
