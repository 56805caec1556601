"""The per-frame record that ``infer`` writes and every later stage reads.

One compressed ``.npz`` per frame, written atomically. What is computed at the last conv's
resolution stays at that resolution and is resized when read, the way the model resizes its logits:

==================  =================  ==========================================================
key                 dtype, shape       content
==================  =================  ==========================================================
``pred``            uint8 (H, W)       the model's prediction (argmax of its output)
``logits``          float16 (C, h, w)  last-conv logits minus their per-pixel maximum (≤ 0); the
                                       classes that matter are near 0, where float16 is precise;
                                       values below -65504 (float16's limit) are stored as -65504
                                       (their softmax is 0 either way)
``label``           uint8 (H, W)       ground truth (only when the dataset has labels)
``log_pgn``         float32 (K, h, w)  natural log of the K PGN maps (p = 0.1 exceeds float32)
                                       minus a per-map float64 offset ``log_pgn_offset`` (K,),
                                       so the stored residuals are small and precise (~1e-7
                                       relative); at feature resolution, (K, H, W) for
                                       resolution=input
``baselines``       float16 (M, H, W)  sampling-baseline maps (mcd_E, mcd_MI, ens_E, ens_MI)
``meta``            JSON string        frame id, map names, sizes, align_corners, fingerprints
==================  =================  ==========================================================

A fingerprint per group of contents ("core", "pgn", "baselines") lets ``infer`` recompute only the
group whose configuration changed, and lets readers refuse a record made by another configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .io import write_npz
from .maps import softmax_maps

LOG_ZERO = -1e4  # stands for log(0): exp() of it is exactly 0.0 in float64


class RecordError(ValueError):
    """A record that cannot be read or was made by another configuration."""


@dataclass
class Record:
    """One frame's inference outputs (see the module docstring for the layout)."""

    frame_id: str
    pred: np.ndarray
    logits: np.ndarray
    label: np.ndarray | None = None
    log_pgn: np.ndarray | None = None
    log_pgn_offset: np.ndarray | None = None
    pgn_names: list[str] = field(default_factory=list)
    baselines: np.ndarray | None = None
    baseline_names: list[str] = field(default_factory=list)
    align_corners: bool = False
    fingerprints: dict[str, str] = field(default_factory=dict)
    label_kind: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.pred.shape)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[0]

    def probs(self) -> np.ndarray:
        """Softmax at the output size, (C, H, W) float32, from the stored feature-resolution logits."""
        z = torch.from_numpy(self.logits.astype(np.float32))[None]
        if z.shape[-2:] != self.size:
            z = F.interpolate(z, size=self.size, mode="bilinear", align_corners=self.align_corners)
        return torch.softmax(z, dim=1)[0].numpy()

    def pgn_maps(self, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """PGN maps as float64 values resized to ``size`` (default: the output size)."""
        if self.log_pgn is None or not self.pgn_names:
            return {}
        size = self.size if size is None else size
        logs = self.log_pgn.astype(np.float64)
        offset = np.zeros(len(logs)) if self.log_pgn_offset is None else self.log_pgn_offset
        values = np.where(logs > LOG_ZERO / 2, np.exp(logs + offset[:, None, None]), 0.0)
        values = torch.from_numpy(values)[None]
        if values.shape[-2:] != tuple(size):
            values = F.interpolate(values, size=size, mode="bilinear", align_corners=self.align_corners)
        return {name: values[0, k].numpy() for k, name in enumerate(self.pgn_names)}

    def baseline_maps(self) -> dict[str, np.ndarray]:
        if self.baselines is None:
            return {}
        return {name: self.baselines[k].astype(np.float64) for k, name in enumerate(self.baseline_names)}

    def pixel_maps(self, probs: np.ndarray | None = None, entropy: str = "exact") -> dict[str, np.ndarray]:
        """Every pixel map at the output size: E, D, V, the PGN maps and the baselines.

        ``entropy``: the convention of ``E`` (:func:`metaseg_pgn.maps.softmax_maps`): ``"exact"``
        or MetaSeg's ``"metaseg"``."""
        probs = self.probs() if probs is None else probs
        maps = {k: v.astype(np.float64) for k, v in softmax_maps(probs, entropy=entropy).items()}
        maps.update(self.pgn_maps())
        maps.update(self.baseline_maps())
        return maps


#: The most negative finite float16: relative logits are clamped here instead of becoming -inf.
FLOAT16_MIN = float(np.finfo(np.float16).min)


def relative_logits(logits: torch.Tensor) -> np.ndarray:
    """(C, h, w) logits → float16 logits minus their per-pixel maximum (what :class:`Record` stores).

    A class more than 65504 below the maximum is stored at -65504 (not -inf, which turns into NaN
    when resized): its softmax probability, ``exp(-65504)``, is 0 in float32 as it would be for the
    true value. Resizing can mix such a value with a neighbour's; a probability then stays below
    ``exp(-65504 · w)`` for the interpolation weight ``w`` of the clamped pixel.
    """
    z = logits.detach().to(torch.float32)
    rel = (z - z.max(dim=0, keepdim=True).values).clamp_min(FLOAT16_MIN)
    return rel.cpu().numpy().astype(np.float16)


def encode_logs(maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(K, h, w) float64 maps ≥ 0 → (float32 log residuals, float64 per-map offsets).

    ``value = exp(residual + offset)``; zeros are stored as :data:`LOG_ZERO` (no offset added).
    """
    v = maps.detach().to(torch.float64).cpu()
    positive = v > 0
    logs = torch.log(v.clamp_min(1e-300))
    counts = positive.flatten(1).sum(1).clamp_min(1)
    offset = torch.where(positive, logs, torch.zeros_like(logs)).flatten(1).sum(1) / counts
    residual = torch.where(positive, logs - offset[:, None, None], torch.full_like(logs, LOG_ZERO))
    return residual.numpy().astype(np.float32), offset.numpy()


def write_record(path: str | Path, record: Record) -> None:
    """Write a record atomically."""
    arrays = {"pred": record.pred.astype(np.uint8), "logits": record.logits}
    if record.label is not None:
        arrays["label"] = record.label.astype(np.uint8)
    if record.log_pgn is not None:
        arrays["log_pgn"] = record.log_pgn
        arrays["log_pgn_offset"] = record.log_pgn_offset
    if record.baselines is not None:
        arrays["baselines"] = record.baselines
    meta = {
        "frame_id": record.frame_id,
        "pgn_names": record.pgn_names,
        "baseline_names": record.baseline_names,
        "align_corners": record.align_corners,
        "fingerprints": record.fingerprints,
        "label_kind": record.label_kind,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_npz(path, **arrays)


def read_meta(path: str | Path) -> dict:
    """Only the JSON metadata of a record (cheap: the arrays are not decompressed)."""
    try:
        with np.load(path) as data:
            return json.loads(data["meta"].tobytes().decode())
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the caller
        raise RecordError(f"{path}: not a readable record ({type(e).__name__}: {e})") from None


def read_record(path: str | Path, expect: dict[str, str] | None = None) -> Record:
    """Read a record; with ``expect`` (group → fingerprint) refuse one from another configuration."""
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            arrays = {k: data[k] for k in data.files if k != "meta"}
    except Exception as e:  # noqa: BLE001
        raise RecordError(f"{path}: not a readable record ({type(e).__name__}: {e})") from None
    if expect:
        for group, fp in expect.items():
            if meta["fingerprints"].get(group) != fp:
                raise RecordError(
                    f"{path}: record was made by another configuration (group {group!r}: "
                    f"{meta['fingerprints'].get(group)} != {fp}); re-run stage=infer")
    return Record(
        frame_id=meta["frame_id"],
        pred=arrays["pred"],
        logits=arrays["logits"],
        label=arrays.get("label"),
        log_pgn=arrays.get("log_pgn"),
        log_pgn_offset=arrays.get("log_pgn_offset"),
        pgn_names=meta["pgn_names"],
        baselines=arrays.get("baselines"),
        baseline_names=meta["baseline_names"],
        align_corners=meta["align_corners"],
        fingerprints=meta["fingerprints"],
        label_kind=meta.get("label_kind"),
    )
