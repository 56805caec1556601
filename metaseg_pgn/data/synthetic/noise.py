"""Random streams and noise: one generator per frame and purpose, smooth noise, hashed noise.

No global random state is read or written: every frame draws from generators seeded by a hash of
``(seed, split, index, stream)``, and the noise fields of a scene from its own ``noise_seed``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["frame_rng", "value_noise", "world_noise", "hash01", "NoiseFields", "noise_fields"]


def frame_rng(seed: int, split: str, index: int, stream: str) -> np.random.Generator:
    """An independent generator for one frame and one purpose.

    Parameters
    ----------
    seed : int
        World seed.
    split : str
        Split or OoD track name.
    index : int
        Frame index.
    stream : str
        ``"scene"`` (the scene's parameters), ``"ood"`` (the unknown objects) or ``"post"``
        (sensor noise).

    Returns
    -------
    numpy.random.Generator
        Seeded with the four 64-bit words of ``sha256("metaseg_pgn.synthetic/{seed}/{split}/{index}/{stream}")``.
    """
    digest = hashlib.sha256(f"metaseg_pgn.synthetic/{int(seed)}/{split}/{int(index)}/{stream}".encode()).digest()
    words = [int.from_bytes(digest[i:i + 8], "little") for i in range(0, 32, 8)]
    return np.random.default_rng(words)


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise with features of about ``cell`` pixels: a random lattice, bicubic upsampled.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the lattice, then the crop offset (row, column).
    shape : (int, int)
        (H, W) of the result.
    cell : float
        Lattice spacing in pixels.

    Returns
    -------
    ndarray, shape (H, W), float32
        Values in about [-1, 1], clipped to [-1.2, 1.2].
    """
    h, w = shape
    gh, gw = max(2, int(math.ceil(h / cell)) + 2), max(2, int(math.ceil(w / cell)) + 2)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    big = np.asarray(Image.fromarray(grid).resize((int((gw - 1) * cell), int((gh - 1) * cell)), Image.BICUBIC))
    oy = int(rng.integers(0, max(1, big.shape[0] - h + 1)))
    ox = int(rng.integers(0, max(1, big.shape[1] - w + 1)))
    out = big[oy:oy + h, ox:ox + w]
    if out.shape != (h, w):  # tiny images
        out = np.resize(out, (h, w))
    return np.clip(out, -1.2, 1.2)


def world_noise(seed: int, X: np.ndarray, Z: np.ndarray, scale: float) -> np.ndarray:
    """Ground texture sampled in world coordinates (a 96 x 96 tile of :func:`value_noise`, wrapped).

    Parameters
    ----------
    seed : int
        Seed of the tile.
    X, Z : ndarray, shape (n,), float
        Lateral position and depth in metres of the points to sample.
    scale : float
        Metres per lattice cell of the tile.

    Returns
    -------
    ndarray, shape (n,), float32
    """
    tile = value_noise(np.random.default_rng(seed), (96, 96), 6)
    coords = np.stack([np.mod(Z / scale, 96.0), np.mod(X / scale + 31.0, 96.0)])
    return ndimage.map_coordinates(tile, coords, order=1, mode="grid-wrap").astype(np.float32)


def hash01(*ints: np.ndarray, salt: int = 0) -> np.ndarray:
    """A cheap deterministic hash of integer arrays to [0, 1) (per window of a facade, say).

    Parameters
    ----------
    *ints : ndarray, integer
        Arrays of the same shape (or broadcastable).
    salt : int
        Varies the hash between objects.

    Returns
    -------
    ndarray, float64
        Multiples of 1/10007 in [0, 1).
    """
    h = np.int64(salt * 2654435761 % (1 << 31))
    for i, a in enumerate(ints):
        h = h ^ (np.asarray(a, dtype=np.int64) * np.int64((73856093, 19349663, 83492791)[i % 3]))
        h = (h * np.int64(1103515245) + np.int64(12345)) & np.int64(0x7FFFFFFF)
    return (h % 10007) / 10007.0


@dataclass
class NoiseFields:
    """Per-pixel noise shared by everything painted in one frame.

    Attributes
    ----------
    grain : ndarray, shape (H, W), float32
        Clipped white noise in [-1.25, 1.25] (surface grain).
    n4, n16, n64 : ndarray, shape (H, W), float32
        :func:`value_noise` with features of about 3, 14 and 60 pixels.
    """

    grain: np.ndarray
    n4: np.ndarray
    n16: np.ndarray
    n64: np.ndarray


def noise_fields(seed: int, shape: tuple[int, int]) -> NoiseFields:
    """The :class:`NoiseFields` of a frame of ``shape`` (H, W), drawn in the order grain, n4, n16, n64."""
    rng = np.random.default_rng(seed)
    H, W = shape
    grain = np.clip(rng.standard_normal((H, W)).astype(np.float32), -2.5, 2.5) * 0.5
    n4 = value_noise(rng, (H, W), 3.0)
    n16 = value_noise(rng, (H, W), 14.0)
    n64 = value_noise(rng, (H, W), 60.0)
    return NoiseFields(grain=grain, n4=n4, n16=n16, n64=n64)
