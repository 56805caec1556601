"""Stage ``meta``: meta classification (IoU = 0) and regression (IoU) per feature set.

Reads only the columns the feature sets need from the Parquet table of the evaluated dataset and
writes ``meta/meta_results.csv`` (every run, train and test, per feature set and meta model from
``meta.models``), ``meta/meta_summary.{csv,json}``
(mean ± std) and ``meta/meta_predictions.csv`` (test part of run 0, for the report's figures).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ..meta import NON_FEATURE_COLUMNS, FeatureSet, check_models, evaluate, resolve_feature_sets, summarise, write_results
from ..table import read_features
from .base import Result, Stage
from .common import Plan, RunContext, StageError, dataset_key, evaluated_dataset, log

STAGE = "meta"
CODE = ("metaseg_pgn.stages.meta", "metaseg_pgn.meta", "metaseg_pgn.table")


def feature_sets_from_config(mcfg: dict) -> list:
    sets: list = []
    chosen = mcfg.get("feature_sets", "auto")
    if chosen not in (None, "auto"):
        sets.extend([chosen] if isinstance(chosen, str) else list(chosen))
    for name, patterns in (mcfg.get("custom_feature_sets") or {}).items():
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        sets.append(FeatureSet.from_patterns(name, *patterns))
    return sets


def work(ctx: RunContext, plan: Plan, upstream: dict[str, dict]) -> Result:
    """Evaluate the feature sets on the evaluated dataset's table (or skip, saying why)."""
    fman = upstream["features"]
    mcfg = dict(ctx.cfg["meta"])
    config_part = {"meta": mcfg, "seed": ctx.cfg["seed"]}
    main = evaluated_dataset(ctx.cfg)
    skipped = None
    if main is None:
        skipped = "the run has no evaluated dataset (dataset=none)"
    elif (fman["outputs"] or {}).get("skipped"):
        skipped = f"the features stage skipped itself ({fman['outputs']['skipped']})"
    else:
        kind = (fman["outputs"].get(dataset_key(main)) or {}).get("label_kind", "semantic")
        if kind != "semantic":
            skipped = (f"the evaluated dataset {dataset_key(main)!r} has no semantic labels, so its "
                       "segments have no IoU to learn")
    if skipped:
        log.warning("meta: skipped: %s", skipped)
        return Result({"skipped": skipped})
    key = dataset_key(main)
    if key not in fman["outputs"]:
        raise StageError(f"meta: the feature table has no part for the evaluated dataset {key!r}")
    path = ctx.run_dir / fman["outputs"][key]["path"]

    # Resolve the feature sets on the schema alone, then read only the columns they need.
    names = pq.read_schema(path).names
    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in names})
    try:  # unknown names, bad patterns, sets the table cannot serve: configuration errors
        sets = feature_sets_from_config(mcfg)
        resolved = resolve_feature_sets(empty, sets or None)
        models = check_models(mcfg.get("models", ["linear"]), "meta.models")
    except ValueError as e:
        raise StageError(f"meta: {e}") from None
    needed = sorted({c for _, cols in resolved for c in cols} | (set(NON_FEATURE_COLUMNS) & set(names)) | {"S_in"})
    df = read_features(path, columns=[c for c in names if c in needed])
    try:
        results, predictions = evaluate(
            df, [s for s, _ in resolved], protocol=mcfg["protocol"], n_runs=mcfg.get("n_runs"),
            seed=int(ctx.cfg["seed"]), test_size=mcfg.get("test_size"), min_inner=bool(mcfg["min_inner"]),
            standardize=mcfg["standardize"], source=str(path), return_predictions=True, models=models)
    except ValueError as e:
        raise StageError(f"meta: {e}") from None
    summary = summarise(results)
    files = write_results(results, summary, ctx.stage_dir(STAGE), predictions,
                          metadata={"table": path.relative_to(ctx.run_dir).as_posix(), "segments": len(df),
                                    "config": config_part})
    log.info("meta: %d feature sets, %d segments\n%s", len(resolved), len(df),
             summary[["feature_set", "model", "auroc_test_mean", "r2_test_mean"]].to_string(index=False))
    outputs = {k: Path(v).relative_to(ctx.run_dir).as_posix() for k, v in files.items()}
    return Result(outputs, files=tuple(files.values()))


#: The meta settings and seed, the feature table (checked against its manifest), the code.
DEFINITION = Stage(STAGE, upstream=("features",), sections=("meta", "seed", "dataset"), code=CODE, work=work)
plan, run = DEFINITION.plan, DEFINITION.run
