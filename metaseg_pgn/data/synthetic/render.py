"""Rendering a scene: painting its draw list on a canvas, and the camera's processing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .canvas import Canvas, DrawItem
from .noise import NoiseFields, noise_fields
from .scene import PostFX, Scene

__all__ = ["BLUR_RADIUS", "postprocess", "render"]

BLUR_RADIUS = 3
"""Pixels by which the blur can spread an object's colours beyond its mask (``ceil(3 * 0.9)``)."""


def render(scene: Scene, extra: Sequence[DrawItem] = (), noise: NoiseFields | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint a scene's draw list, plus ``extra`` items, by layer, far to near, then in order added.

    Parameters
    ----------
    scene : Scene
    extra : sequence of DrawItem
        Items painted as if appended to the draw list (the unknown objects); their ``seq`` is ignored.
    noise : NoiseFields, optional
        The scene's noise fields, when already computed (they depend only on ``scene.noise_seed``).

    Returns
    -------
    image : ndarray, shape (H, W, 3), float32
        Linear RGB in [0, 1], before :func:`postprocess`.
    label : ndarray, shape (H, W), uint8
        trainIds, 255 void.
    ood : ndarray, shape (H, W), uint8
        1 on visible unknown objects.
    """
    noise = noise_fields(scene.noise_seed, (scene.cam.H, scene.cam.W)) if noise is None else noise
    cv = Canvas(scene.cam, noise, scene.sky_horizon, scene.visibility)
    items = list(scene.items) + [
        DrawItem(it.layer, it.depth, it.thing, seq=len(scene.items) + i) for i, it in enumerate(extra)
    ]
    for it in sorted(items, key=lambda it: (it.layer, -it.depth, it.seq)):
        it.thing.draw(cv)
    return cv.img, cv.lab, cv.ood


def postprocess(img: np.ndarray, post: PostFX, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, saturation, gamma, vignette, blur and sensor noise.

    Parameters
    ----------
    img : ndarray, shape (H, W, 3), float32
        A :func:`render` image.
    post : PostFX
    rng : numpy.random.Generator
        The frame's ``"post"`` stream (draws the sensor noise).

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    H, W, _ = img.shape
    x = img * post.exposure * post.wb[None, None, :].astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * post.saturation
    x = np.clip(x, 0, 1) ** post.gamma
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = ((yy - H / 2) / (H / 2)) ** 2 + ((xx - W / 2) / (W / 2)) ** 2
    x = x * (1 - post.vignette * 0.25 * r2)[..., None].astype(np.float32)
    x = ndimage.gaussian_filter(x, sigma=(post.blur, post.blur, 0), truncate=3.0)
    x = x + rng.standard_normal(x.shape).astype(np.float32) * post.noise
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
