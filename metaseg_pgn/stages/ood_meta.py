"""Stage ``ood_meta``: segment-level OoD post-processing (Meta-OoD) with softmax and PGN features.

For each OoD dataset of the run (labels 0 / 1 / 255), each score of ``ood_meta.scores``, each run
(frames split by frame into fitting and evaluation frames), each feature set and meta model:
threshold the score, meta-classify the candidate components, remove the rejected ones, and compute
the SegmentMeIfYouCan component metrics on the evaluation frames before and after
(:func:`metaseg_pgn.ood_meta.evaluate_dataset`). Writes into ``ood_meta/``:

- ``ood_meta_results.csv``: every dataset × score × run × variant (``before``, ``after`` per
  feature set and model, ``benchmark`` = the evaluation frames at their own best-F1 threshold);
- ``ood_meta_summary.csv`` and ``ood_meta_summary.json`` (mean ± std over runs; the JSON also
  holds every result, the thresholds, score scales, splits and feature columns);
- ``ood_meta_candidates.csv`` (every candidate of every score and run: size, PPV, target, part)
  and ``ood_meta_predictions.csv`` (evaluation candidates: predicted probability, removed).

Frames without a label (a benchmark's test split) are left out; the manifest's ``unlabelled``
counts them per dataset, and a dataset with fewer than 2 labelled frames is skipped.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from ..io import atomic_write, write_json
from ..maps import softmax_maps
from ..ood_meta import OoDMetaSettings, evaluate_dataset, summarise
from ..store import read_record
from ..data.select import dataset_configs
from .base import Result, Stage
from .common import Plan, RunContext, StageError, dataset_key, log, recorded_track

STAGE = "ood_meta"
CODE = ("metaseg_pgn.stages.ood_meta", "metaseg_pgn.ood_meta", "metaseg_pgn.meta", "metaseg_pgn.segments",
        "metaseg_pgn.metrics.ood", "metaseg_pgn.metrics.ood_input", "metaseg_pgn.metrics.ood_pixel",
        "metaseg_pgn.metrics.ood_components", "metaseg_pgn.store", "metaseg_pgn.maps")


def _json_records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with NaN/NA written as null (JSON has no NaN)."""
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def _has_label(path) -> bool:
    """Whether a record holds a label (the archive's member list only: nothing is decompressed)."""
    import numpy as np

    try:
        with np.load(path) as data:
            return "label" in data.files
    except Exception as e:  # noqa: BLE001 - unreadable: read_record names the problem
        raise StageError(f"ood_meta: {path}: not a readable record ({type(e).__name__}: {e})") from None


def _score_maps(record, names) -> tuple:
    """The label and the maps among ``names`` that the record offers, computing only their kind:
    E, D, V from the softmax, PGN maps, sampling baselines (a missing name is reported upstream)."""
    maps: dict = {}
    if any(n in ("E", "D", "V") for n in names):
        maps.update((k, v) for k, v in softmax_maps(record.probs()).items())
    if any(n in record.pgn_names for n in names):
        maps.update(record.pgn_maps())
    if any(n in record.baseline_names for n in names):
        maps.update(record.baseline_maps())
    return record.label, maps


def work(ctx: RunContext, plan: Plan, upstream: dict[str, dict]) -> Result:
    """Meta-OoD on every OoD dataset with at least 2 labelled frames (or skip, saying why)."""
    infer = upstream["infer"]
    config_part = {"ood_meta": ctx.cfg["ood_meta"], "seed": ctx.cfg["seed"]}
    try:
        settings = OoDMetaSettings.from_config(ctx.cfg["ood_meta"], ctx.cfg["seed"])
    except ValueError as e:
        raise StageError(f"ood_meta: {e}") from None

    results, candidates, predictions, info, unlabelled, info_dropped = [], [], [], {}, {}, {}
    for ds_cfg in dataset_configs(ctx.cfg):
        key = dataset_key(ds_cfg)
        out = infer["outputs"].get(key)
        if out is None or out["label_kind"] != "ood":
            continue
        track = recorded_track(out, ds_cfg, STAGE)
        folder = ctx.run_dir / out["records"]
        expect = out["fingerprints"]
        frames = [f for f in out["frames"] if _has_label(folder / f"{f}.npz")]
        if len(frames) < len(out["frames"]):
            unlabelled[key] = len(out["frames"]) - len(frames)
            log.warning("ood_meta: %s: %d of %d frames have no label and are left out", key, unlabelled[key],
                        len(out["frames"]))
        if len(frames) < 2:
            continue

        def read(frame_id, folder=folder, expect=expect):
            record = read_record(folder / f"{frame_id}.npz", expect)
            if record.label is None:
                raise StageError(f"ood_meta: {folder / f'{frame_id}.npz'} has no OoD label")
            return record

        def load(frame_id):
            record = read(frame_id)
            probs = record.probs()
            return record.label, probs, record.pixel_maps(probs)

        first = read(frames[0])
        offered = {"V", "E", "D", *first.pgn_names, *first.baseline_names}
        dropped = [m for m in settings.scores if m not in offered]
        if dropped:
            log.warning("ood_meta: %s: scores %s are not among this run's maps (see pgn.ps, pgn.labels, "
                        "baselines) and are left out", key, dropped)
        scores = tuple(m for m in settings.scores if m in offered)
        if not scores:
            raise StageError(f"ood_meta: {key}: none of ood_meta.scores {list(settings.scores)} is a map of this "
                             f"run (maps: {sorted(offered)})")
        ds_settings = dataclasses.replace(settings, scores=scores)
        info_dropped[key] = dropped

        def load_scores(frame_id, scores=scores):
            return _score_maps(read(frame_id), scores)

        try:
            res = evaluate_dataset(frames, load, track, ds_settings, load_scores=load_scores,
                                   progress=ctx.progress, desc=f"ood_meta {key}")
        except ValueError as e:
            raise StageError(f"ood_meta: {key}: {e}") from None
        for name, frame in (("results", results), ("candidates", candidates), ("predictions", predictions)):
            part = res[name]
            part.insert(0, "dataset", key)
            if name == "results":
                part.insert(1, "track", track)
            frame.append(part)
        info[key] = {**res["info"], "scores_left_out": info_dropped[key]}
    if not results:
        why = ("no OoD dataset with at least 2 labelled frames" if unlabelled else "no OoD dataset")
        log.warning("ood_meta: the run has %s (labels 0/1/255); skipped", why)
        return Result({"skipped": why, "unlabelled": unlabelled})

    folder = ctx.stage_dir(STAGE)
    table = pd.concat(results, ignore_index=True)
    summary = summarise(table)
    files = {"results_csv": table, "summary_csv": summary,
             "candidates_csv": pd.concat(candidates, ignore_index=True),
             "predictions_csv": pd.concat(predictions, ignore_index=True)}
    outputs, written = {}, []
    for kind, frame in files.items():
        name = f"{STAGE}_{kind[:-4]}.csv"
        with atomic_write(folder / name, "w") as f:
            frame.to_csv(f, index=False, lineterminator="\n")
        outputs[kind] = f"{STAGE}/{name}"
        written.append(folder / name)
    write_json(folder / f"{STAGE}_summary.json", {"summary": _json_records(summary), "results": _json_records(table),
                                                   "datasets": info, "config": config_part})
    outputs["summary_json"] = f"{STAGE}/{STAGE}_summary.json"
    written.append(folder / f"{STAGE}_summary.json")
    outputs["datasets"] = sorted(info)
    outputs["unlabelled"] = unlabelled
    mode = settings.mode
    view = summary[summary["variant"].isin(["before", "after"])]
    log.info("ood_meta: mean F1 (%s) before/after, mean over %d runs\n%s", mode, settings.n_runs,
             view[["dataset", "score", "variant", "feature_set", "model", f"F1_mean_{mode}_mean",
                   f"F1_mean_{mode}_std"]].to_string(index=False))
    return Result(outputs, files=tuple(written))


#: Its settings and seed, the OoD datasets (their tracks, recorded by infer), the records, the code.
DEFINITION = Stage(STAGE, upstream=("infer",), sections=("ood_meta", "seed", "ood_datasets", "dataset"), code=CODE,
                   work=work)
plan, run = DEFINITION.plan, DEFINITION.run
