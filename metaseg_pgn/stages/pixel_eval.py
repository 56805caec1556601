"""Stage ``pixel_eval``: pixel-level calibration (ECE) and sparsification (AuSE), the paper's Table 1.

For every score map of the evaluated dataset's records — max softmax, entropy, MC dropout,
ensemble, every PGN map — over its non-void pixels:

- ECE with ``n_bins`` equal-width bins; correct = prediction equals ground truth. The confidence of
  max softmax is the max softmax itself; every other score is turned into a confidence as
  ``1 − score / max(score over the test data)`` (the paper's wording), which takes a first pass.
- AuSE: error = per-pixel Brier score, uncertainty = the score (V = 1 − max softmax for max
  softmax); pixels subsampled per frame (seeded) to ``max_pixels`` in total.

An undefined metric (AuSE when every pixel has the same error) is empty in the CSV, null in the
JSON, with the reason in the row's ``note``.

The network's own quality on the same pixels: per-class IoU and mIoU (pooled confusion matrix,
``pixel_eval/segmentation.csv``, and ``mIoU`` in the JSON and the manifest).

Writes ``pixel_eval/pixel_eval.{json,csv}`` (one row per method; the JSON also holds the
reliability diagrams and sparsification curves) and figures ``reliability.png``,
``sparsification.png``.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
from tqdm import tqdm

from ..names import method_label, method_names
from ..io import atomic_write, write_json
from ..metrics.calibration import AuSE, ECE, brier_error, confidence_from_score
from ..metrics.segmentation import ConfusionMatrix
from ..store import read_record
from .base import Result, Stage
from .common import Plan, RunContext, StageError, dataset_key, evaluated_dataset, log

STAGE = "pixel_eval"
CODE = ("metaseg_pgn.stages.pixel_eval", "metaseg_pgn.metrics.calibration", "metaseg_pgn.store",
        "metaseg_pgn.maps", "metaseg_pgn.plots", "metaseg_pgn.names", "metaseg_pgn.metrics.segmentation",
        "metaseg_pgn.data.palette")
VOID = 255
UNDEFINED_AUSE = ("AuSE undefined: every evaluated pixel has the same Brier error, so no ordering "
                  "of the pixels can be better than another")


def _frames(paths, expect, progress, desc):
    for path in tqdm(paths, desc=desc, unit="frame", disable=not progress):
        record = read_record(path, expect)
        if record.label is None or record.label_kind != "semantic":
            raise StageError(f"pixel_eval: {path} has no semantic ground truth")
        probs = record.probs()
        yield record, probs, record.pixel_maps(probs)


def work(ctx: RunContext, plan: Plan, upstream: dict[str, dict]) -> Result:
    """ECE, AuSE and the segmentation quality over the evaluated dataset's records (or skip)."""
    infer = upstream["infer"]
    pcfg = ctx.cfg["pixel_eval"]
    main = evaluated_dataset(ctx.cfg)
    out = infer["outputs"].get(dataset_key(main)) if main is not None else None
    if out is None or out["label_kind"] != "semantic":
        why = ("the run has no evaluated dataset (dataset=none)" if main is None else
               f"the evaluated dataset {dataset_key(main)!r} has no semantic labels")
        log.warning("pixel_eval: skipped: %s", why)
        return Result({"skipped": why})
    paths = [ctx.run_dir / out["records"] / f"{f}.npz" for f in out["frames"]]
    expect = out["fingerprints"]

    # Pass 1: the maximum of each score over the test data (for the confidence normalisation).
    maxima: dict[str, float] = {}
    methods: list[str] = []
    for record, _, maps in _frames(paths, expect, ctx.progress, "pixel_eval (max)"):
        valid = record.label != VOID
        methods = methods or method_names(record)
        for m in methods:
            maxima[m] = max(maxima.get(m, 0.0), float(maps[m][valid].max(initial=0.0)))

    per_frame = max(1, int(pcfg["max_pixels"]) // max(len(paths), 1))
    confusion = None
    eces = {m: ECE(int(pcfg["n_bins"])) for m in methods}
    auses = {m: AuSE(max_pixels_per_frame=per_frame, seed=int(ctx.cfg["seed"])) for m in methods}
    for record, probs, maps in _frames(paths, expect, ctx.progress, "pixel_eval"):
        valid = record.label != VOID
        correct = record.pred == record.label
        error = brier_error(probs, record.label)
        confusion = confusion or ConfusionMatrix(record.num_classes, VOID)
        confusion.update(record.pred, record.label)
        for m in methods:
            if m == "V":
                confidence = 1.0 - maps["V"]
            elif maxima[m] > 0:
                confidence = confidence_from_score(np.minimum(maps[m], maxima[m]), maxima[m])
            else:
                confidence = np.ones_like(maps[m])
            eces[m].update(confidence, correct, valid)
            auses[m].update(maps[m], error, valid)

    rows, curves = [], {}
    for m in methods:
        value, curve = auses[m].compute(return_curves=True)
        note = "" if np.isfinite(value) else UNDEFINED_AUSE
        rows.append({"method": m, "name": method_label(m), "ECE": eces[m].compute(), "AuSE": value,
                     "max_over_test": maxima[m], "note": note})
        curves[m] = {"reliability": _plain(eces[m].diagram()), "sparsification": _plain(curve)}
    table = pd.DataFrame(rows)
    folder = ctx.stage_dir(STAGE)
    with atomic_write(folder / "pixel_eval.csv", "w") as f:
        table.to_csv(f, index=False)
    segmentation = segmentation_table(confusion)
    with atomic_write(folder / "segmentation.csv", "w") as f:
        segmentation.to_csv(f, index=False)
    write_json(folder / "pixel_eval.json", {"table": rows, "curves": curves, "n_bins": pcfg["n_bins"],
                                            "frames": len(paths), "dataset": dataset_key(main),
                                            "mIoU": confusion.miou(),
                                            "segmentation": segmentation.to_dict(orient="records")})
    _figures(folder, table, curves)
    log.info("pixel_eval:\n%s", table[["name", "ECE", "AuSE"]].to_string(index=False))
    log.info("pixel_eval: the network's mIoU on %s: %.4f", dataset_key(main), confusion.miou())
    outputs = {"table": f"{STAGE}/pixel_eval.csv", "json": f"{STAGE}/pixel_eval.json",
               "segmentation": f"{STAGE}/segmentation.csv", "mIoU": confusion.miou(),
               "figures": [f"{STAGE}/reliability.png", f"{STAGE}/sparsification.png"]}
    return Result(outputs, files=(outputs["table"], outputs["json"], outputs["segmentation"], *outputs["figures"]))


#: Its settings, the seed (pixel subsampling), the evaluated dataset, the records, the code.
DEFINITION = Stage(STAGE, upstream=("infer",), sections=("pixel_eval", "seed", "dataset"), code=CODE, work=work)
plan, run = DEFINITION.plan, DEFINITION.run


def segmentation_table(confusion: ConfusionMatrix) -> pd.DataFrame:
    """One row per class: ``class_id, class, IoU`` (NaN where undefined), ``gt_pixels``,
    ``pred_pixels`` (predictions on non-void pixels)."""
    from ..data.palette import CLASS_NAMES

    c = confusion.num_classes
    names = [CLASS_NAMES[k] if c == len(CLASS_NAMES) else f"class {k}" for k in range(c)]
    return pd.DataFrame({"class_id": np.arange(c), "class": names, "IoU": confusion.iou(),
                         "gt_pixels": confusion.gt_pixels(), "pred_pixels": confusion.pred_pixels()})


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _figures(folder, table: pd.DataFrame, curves: dict) -> None:
    from ..plots import reliability_figure, save_figure, sparsification_figure

    shown = _figure_methods(table)
    save_figure(reliability_figure({method_label(m): curves[m]["reliability"] for m in shown}),
                folder / "reliability.png")
    save_figure(sparsification_figure({method_label(m): curves[m]["sparsification"] for m in shown}),
                folder / "sparsification.png")


def _figure_methods(table: pd.DataFrame) -> list[str]:
    """Baselines plus the best PGN map by AuSE of each label (figures stay readable)."""
    methods = [m for m in table["method"] if not m.startswith("pgn_")]
    pgn = table[table["method"].str.startswith("pgn_")]
    for label in ("_oh_", "_uni_"):
        part = pgn[pgn["method"].str.contains(label)]
        if len(part):
            methods.append(part.sort_values("AuSE")["method"].iloc[0])
    return methods
