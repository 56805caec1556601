"""2-D shape helpers in an object's local coordinates (metres or normalised units)."""

from __future__ import annotations

import numpy as np

__all__ = ["blob_radius", "seg_dist"]


def blob_radius(theta: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Radius of a wobbly blob at angles ``theta``: ``1 + sum_k amp_k cos(k theta + phase_k)``.

    Parameters
    ----------
    theta : ndarray, float
    coeffs : ndarray, shape (K, 2)
        ``(amp, phase)`` of the harmonics k = 2 .. K + 1.

    Returns
    -------
    ndarray, same shape as ``theta``
    """
    r = np.ones_like(theta)
    for k, (amp, ph) in enumerate(coeffs, start=2):
        r = r + amp * np.cos(k * theta + ph)
    return r


def seg_dist(u, v, p, q) -> np.ndarray:
    """Distance of the points ``(u, v)`` (arrays) to the segment from ``p`` to ``q`` (pairs)."""
    px, py = p
    qx, qy = q
    dx, dy = qx - px, qy - py
    L2 = dx * dx + dy * dy + 1e-12
    t = np.clip(((u - px) * dx + (v - py) * dy) / L2, 0, 1)
    return np.hypot(u - px - t * dx, v - py - t * dy)
