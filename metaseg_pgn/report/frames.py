"""The report's example frames (the paper's Figures 1 and 4): panels of stored per-frame outputs.

Each figure shows one frame: the input image (``infer``'s preview), the ground truth, the
prediction and uncertainty maps (the frame's ``infer`` record), and for frames of the evaluated
set the segment-wise IoU_adj, true (the feature table's ``iou``) and predicted by the meta
regression (``meta_predictions.csv``), painted on ``features``' segment map. Nothing is
recomputed and no dataset is opened: a file that is not there leaves its panel out.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.palette import CLASS_NAMES, PALETTE, colorize
from ..frame_files import FrameFileError, read_preview, read_segment_map
from ..names import feature_set_label, method_label
from ..plots import frame_figure
from .context import Figures, Inputs
from .fmt import safe_name

log = logging.getLogger("metaseg_pgn")

#: PGN maps preferred in the example frames (the OoD paper's choice, then Table 1's).
PGN_PREFERENCE = ("pgn_last_uni_p0_5", "pgn_last_oh_p2")
#: Colours of the OoD ground truth (RGB): in-distribution, anomaly; void stays black.
OOD_IN_RGB, OOD_ANOMALY_RGB = (200, 200, 200), (255, 140, 0)
#: Sampling baselines shown where a panel is free (first present).
BASELINE_PREFERENCE = ("ens_E", "mcd_E", "V")


def read_record(inp: Inputs, o: dict, frame_id: str):
    """The ``infer`` record of one frame (checked against the fingerprints infer recorded)."""
    from ..store import read_record as read

    return read(inp.run_dir / o["records"] / f"{frame_id}.npz", o["fingerprints"])


def load_image(inp: Inputs, o: dict, frame_id: str) -> np.ndarray | None:
    """The frame's input image as ``infer`` stored it (its preview), (h, w, 3) uint8; None without one.

    ``o`` is the dataset's entry of infer's manifest outputs (``previews`` names the folder).
    """
    if not o.get("previews"):
        return None
    try:
        return read_preview(inp.path(o["previews"]) / f"{frame_id}.png")
    except FrameFileError as e:
        log.warning("report: no input image for frame %s (%s)", frame_id, e)
        return None


def stored_segments(inp: Inputs, key: str) -> tuple[str, pd.DataFrame] | None:
    """The folder of ``features``' segment maps of a dataset and its rows' ``frame_id, segment_id,
    iou`` (iou float64, NaN without ground truth); None when ``features`` stored none."""
    from ..table import read_features

    part = ((inp.manifests.get("features") or {}).get("outputs") or {}).get(key) or {}
    if not part.get("segments") or not part.get("path"):
        return None
    rows = read_features(inp.path(part["path"]), columns=["frame_id", "segment_id", "iou"])
    rows["iou"] = rows["iou"].to_numpy(dtype=np.float64, na_value=np.nan)
    return part["segments"], rows


def paint(segments: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A per-pixel map of per-segment values.

    Parameters
    ----------
    segments : ndarray, shape (H, W), int
        Segment id per pixel (0: no segment).
    ids, values : ndarray, shape (K,)
        Segment ids (≥ 1) and their values.

    Returns
    -------
    ndarray, shape (H, W), float64
        The value of each pixel's segment; NaN for id 0 and segments without a value.
    """
    lut = np.full(int(segments.max()) + 1, np.nan)
    ok = (ids >= 1) & (ids < lut.size)
    lut[ids[ok]] = values[ok]
    return lut[segments]


def ood_colors(label: np.ndarray) -> np.ndarray:
    """An OoD label map (0, 1, 255) as RGB, (H, W, 3) uint8."""
    out = np.zeros(label.shape + (3,), dtype=np.uint8)
    out[label == 0] = OOD_IN_RGB
    out[label == 1] = OOD_ANOMALY_RGB
    return out


def example_pgn(names: Sequence[str]) -> list[str]:
    """Up to two PGN maps to show: the preferred ones present, else the first of each label."""
    chosen = [m for m in PGN_PREFERENCE if m in names]
    for label in ("_uni_", "_oh_"):
        if not any(label in m for m in chosen):
            chosen += [m for m in names if label in m][:1]
    return chosen[:2]


def evenly(items: Sequence[str], k: int) -> list[str]:
    """``k`` items spread evenly over the sequence, first and last included (all if fewer)."""
    if k <= 0 or not items:
        return []
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, min(k, len(items)))).astype(int))
    return [items[i] for i in idx]


def _heat(maps: dict, m: str) -> dict:
    return {"title": method_label(m), "kind": "heat", "data": maps[m]}


def examples_section(inp: Inputs, figures: Figures, predictions: pd.DataFrame | None) -> dict:
    """Example frames of the evaluated dataset (test frames of run 0 first) and one per OoD set."""
    n = int(inp.settings.get("example_frames", 3))
    if n <= 0:
        return {"disabled": True, "figures": []}
    out = inp.infer["outputs"]
    shown = []
    ev = out.get(inp.key) if inp.key else None
    if ev:
        fs, frames = _example_frames(ev, n, predictions)
        segments = stored_segments(inp, inp.key)
        shown += [_semantic_frame(inp, figures, ev, f, fs, predictions, segments) for f in frames]
    shown += [_ood_frame(inp, figures, key, o) for key, o in out.items()
              if o.get("label_kind") == "ood" and o["frames"]]
    return {"disabled": False, "figures": shown}


def _example_frames(ev: dict, n: int, pred: pd.DataFrame | None) -> tuple[str | None, list[str]]:
    """The feature set whose predicted IoU is shown and the frames to show.

    Frames of the test part of run 0 first (their predicted IoU is out of sample), evenly
    spaced, then other frames, evenly spaced, up to ``n``.
    """
    fs, tested = None, set()
    if pred is not None and not pred.empty and "frame_id" in pred.columns:
        have = set(pred["feature_set"])
        fs = next((s for s in ("metaseg+pgn", "metaseg") if s in have), None)
        if fs:
            tested = set(pred.loc[pred["feature_set"] == fs, "frame_id"].astype(str))
    first = evenly([f for f in ev["frames"] if f in tested], n)
    return fs, first + evenly([f for f in ev["frames"] if f not in tested], n - len(first))


def _first_panels(inp: Inputs, o: dict, frame_id: str, record, maps: dict, truth: str,
                  truth_colors) -> list[dict]:
    """The panels every example frame starts with: the stored image (when infer stored one), the
    ground truth coloured by ``truth_colors`` (when there is one), the prediction and the entropy."""
    panels = []
    image = load_image(inp, o, frame_id)
    if image is not None:
        panels.append({"title": "image", "kind": "rgb", "data": image})
    if record.label is not None:
        panels.append({"title": truth, "kind": "rgb", "data": truth_colors(record.label)})
    panels.append({"title": "prediction", "kind": "rgb", "data": colorize(record.pred)})
    panels.append({"title": "entropy E", "kind": "heat", "data": maps["E"]})
    return panels


def _semantic_frame(inp: Inputs, figures: Figures, ev: dict, frame_id: str, fs: str | None,
                    pred: pd.DataFrame | None, stored: tuple[str, pd.DataFrame] | None) -> dict:
    record = read_record(inp, ev, frame_id)
    maps = record.pixel_maps()
    panels = _first_panels(inp, ev, frame_id, record, maps, "ground truth", colorize)
    panels += [_heat(maps, m) for m in example_pgn(record.pgn_names)]
    caption = f"`{inp.key}` frame `{frame_id}`: image, ground truth, prediction and uncertainty maps"
    if stored is not None and record.label is not None and record.label_kind == "semantic":
        folder, rows = stored
        segments = read_segment_map(inp.path(folder) / f"{frame_id}.npz")
        rows = rows[rows["frame_id"].astype(str) == frame_id]
        panels.append({"title": "true IoU$_{adj}$ per segment", "kind": "iou",
                       "data": paint(segments, rows["segment_id"].to_numpy(int), rows["iou"].to_numpy(float))})
        if fs is not None:
            part = pred[(pred["feature_set"] == fs) & (pred["frame_id"].astype(str) == frame_id)]
            if len(part):
                panels.append({"title": f"predicted IoU ({feature_set_label(fs)})", "kind": "iou",
                               "data": paint(segments, part["segment_id"].to_numpy(int),
                                             part["iou_pred"].to_numpy(float))})
                caption += (f"; segment-wise IoU_adj, true and predicted by meta regression on "
                            f"{feature_set_label(fs)} features (a test frame of run 0)")
    if len(panels) % 4:  # fill the grid with a sampling baseline where there is one
        panels += [_heat(maps, m) for m in BASELINE_PREFERENCE if m in maps][:1]
    classes = np.unique(np.concatenate([np.unique(record.pred), np.unique(record.label)
                                        if record.label is not None else np.array([], np.uint8)]))
    legend = [(CLASS_NAMES[c], PALETTE[c]) for c in classes if c < len(CLASS_NAMES)]
    return figures.add(f"example_{safe_name(inp.key)}_{safe_name(frame_id)}.png",
                       lambda: frame_figure(panels, ncols=4, legend=legend), caption + ".")


def _ood_frame(inp: Inputs, figures: Figures, key: str, o: dict) -> dict:
    frame_id, record = _pick_ood_frame(inp, o)
    maps = record.pixel_maps()
    panels = _first_panels(inp, o, frame_id, record, maps, "OoD ground truth", ood_colors)
    pgn = example_pgn(record.pgn_names)[:1]
    panels += [_heat(maps, m) for m in pgn]
    panels += [_heat(maps, m) for m in BASELINE_PREFERENCE if m in maps][:1]
    legend = [("in-distribution", OOD_IN_RGB), ("anomaly", OOD_ANOMALY_RGB), ("void", (0, 0, 0))]
    return figures.add(f"example_{safe_name(key)}_{safe_name(frame_id)}.png",
                       lambda: frame_figure(panels, ncols=3, legend=legend),
                       f"`{key}` frame `{frame_id}` (OoD): image, OoD ground truth, prediction, entropy, "
                       f"{', '.join(method_label(m) for m in pgn) or 'no PGN map'} and a baseline score.")


def _pick_ood_frame(inp: Inputs, o: dict):
    """Among the first frames, the one with the most anomaly pixels (first on ties)."""
    best = None
    for frame_id in o["frames"][:8]:
        record = read_record(inp, o, frame_id)
        count = int((record.label == 1).sum()) if record.label is not None else 0
        if best is None or count > best[0]:
            best = (count, frame_id, record)
    return best[1], best[2]
