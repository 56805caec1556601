"""Pixel uncertainty maps computed from softmax probabilities.

Softmax dispersion maps (MetaSeg, DESIGN.md §2):

- ``E``: normalised entropy ``-Σ_c s_c log s_c / log C`` (``0·log 0 = 0``),
- ``D``: probability margin ``1 - s_(1) + s_(2)``,
- ``V``: variation ratio ``1 - s_(1)`` (1 - max softmax).

Every function accepts numpy arrays or torch tensors and answers in the same kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["softmax_maps"]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def softmax_maps(probs: Any) -> dict[str, Any]:
    """Entropy, probability margin and variation ratio of softmax probabilities.

    Parameters
    ----------
    probs : numpy.ndarray or torch.Tensor, shape (C, H, W) or (B, C, H, W)
        Softmax probabilities, channel-first, ``C >= 2``. Floating point; float16/bfloat16 inputs
        are computed in float32. Entries ``<= 0`` contribute nothing to the entropy.

    Returns
    -------
    dict
        ``{"E": ..., "D": ..., "V": ...}``, each of shape (H, W) or (B, H, W): numpy arrays for a
        numpy input, tensors on the input's device for a torch input. dtype float64 for a float64
        input, float32 otherwise.

        - ``E = -Σ_c s_c log s_c / log C``
        - ``D = 1 - s_(1) + s_(2)`` with ``s_(1) >= s_(2)`` the two largest probabilities
        - ``V = 1 - s_(1)``

    Raises
    ------
    ValueError
        If the shape is not (C, H, W) / (B, C, H, W), ``C < 2``, the dtype is not floating point,
        or the probabilities hold NaN or inf.
    """
    if probs.ndim not in (3, 4):
        raise ValueError(f"probs must have shape (C, H, W) or (B, C, H, W), got {tuple(probs.shape)}")
    n_classes = int(probs.shape[-3])
    if n_classes < 2:
        raise ValueError(f"softmax maps need at least 2 classes, got C = {n_classes}")
    if _is_torch(probs):
        maps = _softmax_maps_torch(probs, n_classes)
        finite = bool(maps["E"].isfinite().all())
    else:
        maps = _softmax_maps_numpy(np.asarray(probs), n_classes)
        finite = bool(np.isfinite(maps["E"]).all())
    if not finite:
        raise ValueError("probs contain NaN or inf")
    return maps


def _softmax_maps_numpy(probs: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point, got dtype {probs.dtype}")
    dtype = np.float64 if probs.dtype == np.float64 else np.float32
    tiny = np.finfo(dtype).tiny
    c_axis = probs.ndim - 3
    out_shape = probs.shape[:c_axis] + probs.shape[c_axis + 1 :]

    # One pass over the channels with preallocated buffers: no (C, H, W) temporaries.
    neg_ent = np.zeros(out_shape, dtype)
    top1 = np.full(out_shape, -np.inf, dtype)
    top2 = np.full(out_shape, -np.inf, dtype)
    pos = np.empty(out_shape, dtype)
    buf = np.empty(out_shape, dtype)
    for c in range(n_classes):
        s = np.take(probs, c, axis=c_axis)
        np.maximum(s, 0, out=pos)
        np.maximum(pos, tiny, out=buf)
        np.log(buf, out=buf)
        buf *= pos
        neg_ent += buf
        np.minimum(top1, pos, out=buf)
        np.maximum(top2, buf, out=top2)
        np.maximum(top1, pos, out=top1)

    entropy = neg_ent * (-1.0 / math.log(n_classes))
    margin = 1 - top1 + top2
    variation = 1 - top1
    return {"E": entropy, "D": margin.astype(dtype, copy=False), "V": variation.astype(dtype, copy=False)}


def _softmax_maps_torch(probs: Any, n_classes: int) -> dict[str, Any]:
    import torch

    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got dtype {probs.dtype}")
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    s = probs.to(dtype).clamp_min(0)
    tiny = torch.finfo(dtype).tiny
    entropy = -(s * s.clamp_min(tiny).log()).sum(dim=-3) / math.log(n_classes)
    top = s.topk(2, dim=-3).values
    top1, top2 = top.select(-3, 0), top.select(-3, 1)
    return {"E": entropy, "D": 1 - top1 + top2, "V": 1 - top1}
