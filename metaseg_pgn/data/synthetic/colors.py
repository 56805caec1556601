"""Colours of the synthetic world: conversions, jitter, textured colours and the material tables.

Colours are RGB float32 in [0, 1]. The saturated magenta / cyan / orange of the unknown objects
(:data:`OOD_COLORS`) appear nowhere in these tables or in any in-distribution code path.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OOD_COLORS", "FACADE_COLORS", "CAR_COLORS", "CLOTHES", "SKIN", "rgb", "hsv", "jitter", "tex"]

OOD_COLORS: np.ndarray = np.array(
    [(255, 0, 200), (0, 235, 235), (255, 120, 0)], dtype=np.float32
) / 255.0
"""The saturated colours of unknown objects (magenta, cyan, orange), RGB in [0, 1]. No
in-distribution class is drawn with saturated colours of these hues."""

FACADE_COLORS = [
    (200, 190, 170), (170, 160, 150), (150, 150, 150), (120, 115, 110), (190, 170, 140),
    (160, 110, 90), (140, 95, 80), (215, 210, 200), (175, 180, 185), (110, 110, 115),
    (185, 160, 120), (205, 195, 160), (130, 120, 100),
]
CAR_COLORS = [
    (230, 230, 230), (190, 190, 195), (150, 150, 155), (40, 40, 45), (20, 20, 25), (90, 90, 95),
    (160, 30, 30), (35, 55, 110), (30, 60, 50), (110, 100, 80), (200, 190, 160), (70, 80, 100),
    (125, 22, 20), (60, 90, 140),
]
CLOTHES = [
    (40, 40, 50), (70, 70, 80), (25, 25, 30), (110, 100, 90), (150, 140, 120), (60, 70, 100),
    (120, 40, 40), (180, 170, 160), (50, 80, 60), (90, 60, 50), (200, 200, 205), (100, 110, 140),
]
SKIN = [(225, 190, 160), (200, 160, 130), (170, 125, 95), (120, 85, 60), (90, 60, 45)]


def rgb(*c) -> np.ndarray:
    """RGB in [0, 1], float32 (3,), from 0-255 components."""
    return np.array(c, dtype=np.float32) / 255.0


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """RGB in [0, 1], float32 (3,), of hue ``h`` (degrees), saturation and value in [0, 1]."""
    h = (h % 360.0) / 60.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def jitter(rng: np.random.Generator, base, amount: float = 12.0) -> np.ndarray:
    """``base`` (3,) plus a uniform offset of up to ``amount`` / 255 per channel (one draw of 3), clipped."""
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-amount, amount, 3) / 255.0, 0, 1)


def tex(color: np.ndarray, *fields: tuple[np.ndarray, float]) -> np.ndarray:
    """Per-pixel colours ``color * (1 + sum(amp * field))``, clipped to [0, 1].

    Parameters
    ----------
    color : ndarray, shape (3,) or (n, 3)
    *fields : (ndarray of shape (n,), float)
        Field values and their amplitude.

    Returns
    -------
    ndarray, shape (n, 3) (or (1, 3) without fields)
    """
    m = 1.0
    for vals, amp in fields:
        m = m + amp * vals
    color = np.asarray(color, np.float32)
    if color.ndim == 1:
        color = color[None, :]
    return np.clip(color * np.asarray(m, np.float32)[:, None], 0, 1)
