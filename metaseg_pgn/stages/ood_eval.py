"""Stage ``ood_eval``: OoD segmentation with the SegmentMeIfYouCan metrics, the paper's Tables 2–3.

For each OoD dataset of the run (labels 0 / 1 / 255) and each score map (max softmax as 1 − max
softmax, entropy, MC dropout, ensemble, every PGN map), in the modes ``ood_eval.modes`` of
:mod:`metaseg_pgn.metrics.ood` (``smiyc``: the benchmark now; ``smiyc2021``: the benchmark before
2023-08-24, as in the paper; ``exact``): pixel AuPRC / AP, FPR95, AUROC; component sIoU, PPV,
mean F1. The CSV names the version of every number (column ``version_{mode}``).

Every score is divided by its maximum over the split before evaluation and export, so it lies in
[0, 1] and survives the benchmark's float16 storage (PGN with p = 0.1 reaches 1e30); a monotone
rescaling leaves the exact-mode metrics unchanged. Three passes over the records: maxima, pixel
metrics (+ export ``submission/anomaly_p/{method}/{folder}/{frame}.hdf5`` in the folders the
benchmark reads, :func:`metaseg_pgn.metrics.submission.submission_folder`; datasets the benchmark
does not know go to ``{dataset}-{split}``), components at each method's best-F1 threshold.
Memory stays bounded by the metric objects.

Frames without an OoD label (the benchmark withholds the RoadAnomaly21 / RoadObstacle21 test
labels) are scored and, with ``ood_eval.export``, exported, but not evaluated; a split with no
label at all is only exported. The manifest's ``unlabelled`` and the log say what was left out.
The export is off by default (a default run would write ~200 MB of HDF5) and on in
``pipeline=smiyc``, whose purpose is a benchmark submission.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
from tqdm import tqdm

from ..io import atomic_write, write_json
from ..metrics.ood import MODES, SMIYC_MODES, VERSIONS, ComponentOoDMetrics, PixelOoDMetrics
from ..metrics.submission import submission_folder, write_scores
from ..data.select import dataset_configs, make_dataset
from ..names import method_label, method_names
from ..store import read_record
from .base import Result, Stage
from .common import Plan, RunContext, StageError, dataset_key, evaluated_dataset, log, recorded_track

STAGE = "ood_eval"
CODE = ("metaseg_pgn.stages.ood_eval", "metaseg_pgn.metrics.ood", "metaseg_pgn.metrics.ood_input",
        "metaseg_pgn.metrics.ood_pixel", "metaseg_pgn.metrics.ood_components", "metaseg_pgn.metrics.submission",
        "metaseg_pgn.store", "metaseg_pgn.maps", "metaseg_pgn.names")


def score_maps(record) -> dict[str, np.ndarray]:
    """Every score map of a record, higher = more anomalous (V = 1 − max softmax)."""
    maps = record.pixel_maps()
    return {m: maps[m] for m in method_names(record)}


def work(ctx: RunContext, plan: Plan, upstream: dict[str, dict]) -> Result:
    """Every OoD split of the records: the metrics (and the export), or skip when none is labelled."""
    infer = upstream["infer"]
    ocfg = ctx.cfg["ood_eval"]
    bad = [m for m in ocfg["modes"] if m not in MODES]
    if bad or not ocfg["modes"]:
        raise StageError(f"ood_eval.modes={list(ocfg['modes'])!r}: choose among {list(MODES)}")
    results, rows, exported, unlabelled = {}, [], {}, {}
    main = evaluated_dataset(ctx.cfg)
    main_key = dataset_key(main) if main is not None else None
    written: list = []  # every exported score file, recorded in the manifest
    for ds_cfg in dataset_configs(ctx.cfg):
        key = dataset_key(ds_cfg)
        out = infer["outputs"].get(key)
        # The evaluated dataset takes part only with OoD labels; an OoD set without any label (the
        # benchmark's test frames as distributed) is scored and exported, not evaluated.
        if out is None or out["label_kind"] not in ("ood", None) or (key == main_key and out["label_kind"] != "ood"):
            continue
        track = recorded_track(out, ds_cfg, STAGE)
        paths = [ctx.run_dir / out["records"] / f"{f}.npz" for f in out["frames"]]
        # The benchmark's folder of each frame is a property of the dataset's files (not recorded
        # upstream): the dataset is built for the export alone.
        folder_of = export_folders(make_dataset(ds_cfg), key, out["frames"], exported) if ocfg.get("export") else None
        split = evaluate_split(paths, out["fingerprints"], track, ocfg, ctx, key, folder_of, written)
        if split["unlabelled_frames"]:
            unlabelled[key] = split["unlabelled_frames"]
        if split["frames"] == 0:
            continue
        results[key] = split
        for method, by_mode in results[key]["methods"].items():
            rows.append(_table_row(key, track, method, by_mode))
    skipped = {k: (f"{len(v)} frames without OoD labels: scores " +
                   ("exported, not evaluated" if ocfg.get("export") else "not evaluated (ood_eval.export=false)"))
               for k, v in unlabelled.items()}
    for key, text in skipped.items():
        log.warning("ood_eval: %s: %s", key, text)
    if not results:
        why = "no OoD dataset with labels (0/1/255)" + (
            f"; {'; '.join(f'{k}: {t}' for k, t in skipped.items())}" if skipped else "")
        log.warning("ood_eval: skipped: %s", why)
        return Result({"skipped": why, "unlabelled": skipped}, files=tuple(written))
    folder = ctx.stage_dir(STAGE)
    table = pd.DataFrame(rows)
    with atomic_write(folder / "ood_eval.csv", "w") as f:
        table.to_csv(f, index=False)
    write_json(folder / "ood_eval.json", results)
    log.info("ood_eval:\n%s", table.to_string(index=False, max_rows=40))
    outputs = {"table": f"{STAGE}/ood_eval.csv", "json": f"{STAGE}/ood_eval.json",
               "datasets": sorted(results), "unlabelled": skipped}
    # The exported maps of this configuration only: folders of methods or splits no longer
    # configured, and frames no longer in a split, are removed with the manifest's pruning.
    return Result(outputs, files=(folder / "ood_eval.csv", folder / "ood_eval.json", *written))


#: Its settings, the OoD datasets (their tracks, recorded by infer), the records, the code.
DEFINITION = Stage(STAGE, upstream=("infer",), sections=("ood_eval", "ood_datasets", "dataset"), code=CODE,
                   work=work)
plan, run = DEFINITION.plan, DEFINITION.run


def export_folders(ds, key: str, frame_ids, exported: dict) -> dict[str, str]:
    """Submission folder of every frame of one split, warning when two splits of the run share a
    frame (subsets of the same benchmark folder): the later export, scaled by its own split's
    maximum, replaces the earlier file."""
    folders = {}
    for fid in frame_ids:
        folder = submission_folder(ds, fid) if hasattr(ds, "name") and hasattr(ds, "split") else None
        folders[fid] = folder or key
        other = exported.setdefault((folders[fid], fid), key)
        if other != key:
            log.warning("ood_eval: %s and %s both export frame %s to folder %s; the export of %s "
                        "(scaled by its split's maximum) is the one kept", other, key, fid, folders[fid], key)
    return folders


def evaluate_split(paths, expect, track: str, ocfg: dict, ctx: RunContext, key: str,
                   folder_of: dict[str, str] | None = None, written: list | None = None) -> dict:
    """Every mode for every score map of one split (three passes over the records).

    ``folder_of`` maps frame ids to their submission folder (default: ``key``); the paths of the
    exported score files are appended to ``written``."""
    modes = list(ocfg["modes"])
    progress = ctx.progress

    def records(desc, which=None):
        for path in tqdm(which if which is not None else paths, desc=f"ood_eval {key} ({desc})",
                         unit="frame", disable=not progress):
            record = read_record(path, expect)
            yield record, score_maps(record)

    maxima: dict[str, float] = {}
    labelled, unlabelled = [], []
    for record, maps in records("max"):
        (labelled if record.label is not None else unlabelled).append(record.frame_id)
        for m, s in maps.items():
            maxima[m] = max(maxima.get(m, 0.0), float(s.max()))
    methods = list(maxima)
    scale = {m: (1.0 / maxima[m] if maxima[m] > 0 else 1.0) for m in methods}
    export_root = ctx.stage_dir(STAGE) / "submission"
    if not labelled:  # nothing to evaluate: only the export
        if ocfg.get("export"):
            for record, maps in records("export"):
                for m in methods:
                    folder = (folder_of or {}).get(record.frame_id, key)
                    path = write_scores(export_root, m, folder, record.frame_id, maps[m] * scale[m])
                    if written is not None:
                        written.append(path)
        return {"track": track, "frames": 0, "unlabelled_frames": unlabelled, "score_scale": scale,
                "methods": {}}

    pixel = {(m, mode): PixelOoDMetrics(mode) for m in methods for mode in modes}
    uniform = {(m, mode): PixelOoDMetrics(mode, binning="uniform")
               for m in methods for mode in modes if mode in SMIYC_MODES}
    for record, maps in records("pixels"):
        for m in methods:
            score = maps[m] * scale[m]
            if ocfg.get("export"):
                folder = (folder_of or {}).get(record.frame_id, key)
                path = write_scores(export_root, m, folder, record.frame_id, score)
                if written is not None:
                    written.append(path)
            if record.label is None:
                continue  # scored (and exported), not evaluated
            for mode in modes:
                pixel[m, mode].update(score, record.label, record.frame_id)
                if (m, mode) in uniform:
                    uniform[m, mode].update(score, record.label, record.frame_id)

    summary = {m: {} for m in methods}
    components = {}
    for m in methods:
        for mode in modes:
            try:
                summary[m][mode] = {"pixel": pixel[m, mode].compute()}
            except ValueError as e:
                raise StageError(f"ood_eval: {key}, method {m}: {e}") from None
            suffix = pixel[m, mode].suffix
            threshold = summary[m][mode]["pixel"][f"best_F1_threshold_{suffix}"]
            components[m, mode] = ComponentOoDMetrics(track, threshold, mode)
            if (m, mode) in uniform:
                summary[m][mode]["pixel_uniform"] = uniform[m, mode].compute()
    labelled_paths = [p for p in paths if p.stem in set(labelled)]
    for record, maps in records("components", labelled_paths):
        for (m, mode), comp in components.items():
            comp.update(maps[m] * scale[m], record.label, record.frame_id)
    for (m, mode), comp in components.items():
        try:
            summary[m][mode]["component"] = comp.compute()
        except ValueError as e:
            summary[m][mode]["component"] = {"error": str(e)}
    return {"track": track, "frames": len(labelled), "unlabelled_frames": unlabelled, "score_scale": scale,
            "methods": summary}


def _table_row(key: str, track: str, method: str, by_mode: dict) -> dict:
    row = {"dataset": key, "track": track, "method": method, "name": method_label(method)}
    for mode, res in by_mode.items():
        pix, comp = res["pixel"], res.get("component", {})
        auprc = f"AuPRC_{mode}" if mode in SMIYC_MODES else "AP_exact"
        row[f"version_{mode}"] = VERSIONS[mode]
        row[f"{auprc}"] = pix[auprc]
        row[f"FPR95_{mode}"] = pix[f"FPR95_{mode}"]
        row[f"AUROC_{mode}"] = pix[f"AUROC_{mode}"]
        for name in ("sIoU_gt", "PPV", "F1_mean"):
            row[f"{name}_{mode}"] = comp.get(f"{name}_{mode}")  # None where undefined (JSON says why)
    return row
