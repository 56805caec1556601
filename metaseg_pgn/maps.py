"""Pixel uncertainty maps computed from softmax probabilities.

Softmax dispersion maps (MetaSeg, docs/design.md §2):

- ``E``: normalised entropy ``-Σ_c s_c log s_c / log C`` (``0·log 0 = 0``), or MetaSeg's own
  convention ``Σ_c s_c log(s_c + ε) / log(1/C)`` with ε = float32 eps = 1.1920929e-07
  (docs/design.md §6a): ``entropy="metaseg"``;
- ``D``: probability margin ``1 - s_(1) + s_(2)``;
- ``V``: variation ratio ``1 - s_(1)`` (1 - max softmax).

Probabilities may come channels-first, ``(C, H, W)`` (ours) or channels-last, ``(H, W, C)``
(MetaSeg's), and in either memory order; the work is done on channel planes in a
cache-friendly order, so a transposed view costs about as much as a contiguous array.

Every function accepts numpy arrays or torch tensors and answers in the same kind.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

__all__ = ["softmax_maps", "ENTROPY_CONVENTIONS", "METASEG_EPS"]

#: Names of the entropy conventions: the true normalised entropy, or MetaSeg's (eps in the log).
ENTROPY_CONVENTIONS: tuple[str, ...] = ("exact", "metaseg")
#: The eps MetaSeg adds inside the log: ``np.finfo(np.float32).eps``.
METASEG_EPS: float = float(np.finfo(np.float32).eps)

#: Rows per block when the channel axis is not the slowest in memory (≈ 1-4 MB per block).
_BLOCK_PIXELS = 1 << 16


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def softmax_maps(
    probs: Any, *, channel_axis: int = -3, entropy: Literal["exact", "metaseg"] = "exact"
) -> dict[str, Any]:
    """Entropy, probability margin and variation ratio of softmax probabilities.

    Parameters
    ----------
    probs : numpy.ndarray or torch.Tensor
        Softmax probabilities, ``C >= 2``, shape (C, H, W) / (B, C, H, W) with
        ``channel_axis=-3`` (default), or (H, W, C) / (B, H, W, C) with ``channel_axis=-1``
        (MetaSeg's layout). Any memory order (e.g. a transposed view). Floating point;
        float16/bfloat16 inputs are computed in float32. Entries ``<= 0`` contribute nothing to
        the true entropy.
    channel_axis : {-3, -1}
        Position of the class axis.
    entropy : {"exact", "metaseg"}
        ``"exact"``: ``E = -Σ_c s_c log s_c / log C``. ``"metaseg"``: MetaSeg's
        ``E = Σ_c s_c log(s_c + ε) / log(1/C)``, ε = :data:`METASEG_EPS`, which is slightly
        negative at ``s = (1, 0, ..., 0)`` and reproduces MetaSeg's E columns.

    Returns
    -------
    dict
        ``{"E": ..., "D": ..., "V": ...}``, each of shape (H, W) or (B, H, W): numpy arrays for a
        numpy input, tensors on the input's device for a torch input. dtype float64 for a float64
        input, float32 otherwise.

        - ``E`` as chosen by ``entropy``
        - ``D = 1 - s_(1) + s_(2)`` with ``s_(1) >= s_(2)`` the two largest probabilities
        - ``V = 1 - s_(1)``

    Raises
    ------
    ValueError
        If the shape does not fit ``channel_axis``, ``C < 2``, the dtype is not floating point,
        ``entropy`` is unknown, or the probabilities hold NaN or inf.
    """
    if probs.ndim not in (3, 4):
        raise ValueError(
            f"probs must have shape (C, H, W) / (B, C, H, W) (channel_axis=-3) or (H, W, C) / "
            f"(B, H, W, C) (channel_axis=-1), got {tuple(probs.shape)}"
        )
    if channel_axis not in (-3, -1):
        raise ValueError(f"channel_axis must be -3 (channels first) or -1 (channels last), got {channel_axis}")
    if entropy not in ENTROPY_CONVENTIONS:
        raise ValueError(f"entropy must be one of {ENTROPY_CONVENTIONS}, got {entropy!r}")
    n_classes = int(probs.shape[channel_axis])
    if n_classes < 2:
        raise ValueError(
            f"softmax maps need at least 2 classes, got C = {n_classes} on axis {channel_axis} of "
            f"shape {tuple(probs.shape)}"
        )
    if _is_torch(probs):
        maps = _softmax_maps_torch(probs, n_classes, channel_axis, entropy)
        finite = bool(maps["E"].isfinite().all())
    else:
        maps = _softmax_maps_numpy(np.asarray(probs), n_classes, channel_axis, entropy)
        finite = bool(np.isfinite(maps["E"]).all())
    if not finite:
        raise ValueError("probs contain NaN or inf")
    return maps


def _planes_numpy(probs: np.ndarray, c_axis: int, entropy: str, dtype) -> dict[str, np.ndarray]:
    """The maps of a (..., C, ...) array, one pass over the class planes with preallocated buffers."""
    n_classes = probs.shape[c_axis]
    out_shape = probs.shape[:c_axis] + probs.shape[c_axis + 1 :]
    tiny = np.finfo(dtype).tiny
    neg_ent = np.zeros(out_shape, dtype)
    top1 = np.full(out_shape, -np.inf, dtype)
    top2 = np.full(out_shape, -np.inf, dtype)
    pos = np.empty(out_shape, dtype)
    buf = np.empty(out_shape, dtype)
    eps = dtype(METASEG_EPS)
    for c in range(n_classes):
        s = probs[(slice(None),) * c_axis + (c,)]  # a view of the class plane, no copy
        if entropy == "metaseg":
            pos[...] = s
            np.add(pos, eps, out=buf)
            np.log(buf, out=buf)
            buf *= pos
            np.maximum(pos, 0, out=pos)
        else:
            np.maximum(s, 0, out=pos)
            np.maximum(pos, tiny, out=buf)
            np.log(buf, out=buf)
            buf *= pos
        neg_ent += buf
        np.minimum(top1, pos, out=buf)
        np.maximum(top2, buf, out=top2)
        np.maximum(top1, pos, out=top1)
    if entropy == "metaseg":
        # MetaSeg divides Σ p·log(p + ε) by log(1/C)
        ent = neg_ent * dtype(1.0 / math.log(1.0 / n_classes))
    else:
        ent = neg_ent * dtype(-1.0 / math.log(n_classes))
    return {"E": ent, "D": (1 - top1 + top2).astype(dtype, copy=False), "V": (1 - top1).astype(dtype, copy=False)}


def _softmax_maps_numpy(probs: np.ndarray, n_classes: int, channel_axis: int, entropy: str) -> dict[str, np.ndarray]:
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point, got dtype {probs.dtype}")
    dtype = np.float64 if probs.dtype == np.float64 else np.float32
    c_axis = probs.ndim + channel_axis
    # A class plane is cheap to read when the class axis has the largest stride (channels-first
    # memory). Otherwise (channels-last memory, e.g. MetaSeg's (H, W, C) or a transposed view of
    # it) take the pixels in blocks, copy each block to channels-first order and work on that.
    strides = [abs(st) for st in probs.strides]
    if probs.strides[c_axis] == max(strides):
        return _planes_numpy(probs, c_axis, entropy, dtype)
    planes_first = np.moveaxis(probs, c_axis, -1)  # (..., H, W, C) view
    lead = planes_first.shape[:-1]
    flat = planes_first.reshape(-1, n_classes)  # a view for channels-last memory, else a copy
    n = flat.shape[0]
    out = {k: np.empty(n, dtype) for k in ("E", "D", "V")}
    for start in range(0, n, _BLOCK_PIXELS):
        block = np.ascontiguousarray(flat[start : start + _BLOCK_PIXELS].T, dtype=dtype)  # (C, P)
        part = _planes_numpy(block, 0, entropy, dtype)
        for k in out:
            out[k][start : start + block.shape[1]] = part[k]
    return {k: v.reshape(lead) for k, v in out.items()}


def _softmax_maps_torch(probs: Any, n_classes: int, channel_axis: int, entropy: str) -> dict[str, Any]:
    import torch

    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got dtype {probs.dtype}")
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    raw = probs.to(dtype)
    s = raw.clamp_min(0)
    if entropy == "metaseg":
        ent = (raw * (raw + METASEG_EPS).log()).sum(dim=channel_axis) / math.log(1.0 / n_classes)
    else:
        tiny = torch.finfo(dtype).tiny
        ent = -(s * s.clamp_min(tiny).log()).sum(dim=channel_axis) / math.log(n_classes)
    top = s.topk(2, dim=channel_axis).values
    top1, top2 = top.select(channel_axis, 0), top.select(channel_axis, 1)
    return {"E": ent, "D": 1 - top1 + top2, "V": 1 - top1}
