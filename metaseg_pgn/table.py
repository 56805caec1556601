"""The segment feature table: its documented schema, writing it as Parquet, reading it back.

The table is a Parquet dataset partitioned by dataset and split
(``features/dataset=<name>/split=<split>/part-0.parquet``, Hive layout), so pandas, Dask, DuckDB and
Spark read it directly. Each file carries the column documentation in its key-value metadata
(``metaseg_pgn.columns``) and a fingerprint of the infer records it was made from. Every data page
is written with its CRC checksum, and :func:`read_features` verifies them, so a damaged file is an
error, never wrong values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .io import atomic_write

PARTITIONING = pads.partitioning(pa.schema([("dataset", pa.string()), ("split", pa.string())]), flavor="hive")

_FIXED = {
    "dataset": "dataset name (Hive partition)",
    "split": "dataset split (Hive partition)",
    "frame_id": "frame identifier, unique within dataset and split",
    "segment_id": "1, 2, ... in raster order of each segment's first pixel, per frame",
    "pred_class": "predicted class (Cityscapes trainId) of the segment",
    "S": "segment size in pixels",
    "S_in": "inner pixels (no 8-neighbour of another prediction or void)",
    "S_bd": "boundary pixels",
    "S_rel": "S / S_bd (S_bd = 0 counts as 1)",
    "S_rel_in": "S_in / S_bd (S_bd = 0 counts as 1)",
    "centroid_y": "mean row of the segment's pixels",
    "centroid_x": "mean column of the segment's pixels",
    "iou": "MetaSeg's adjusted IoU of the segment (null without ground truth)",
    "iou0": "iou == 0, a false-positive segment (null without ground truth)",
}

_STATS = {
    "mean": "mean over the segment", "in_mean": "mean over inner pixels (0 without any)",
    "bd_mean": "mean over boundary pixels", "rel": "mean · S/S_bd", "rel_in": "inner mean · S_in/S_bd",
    "var": "population variance over the segment", "in_var": "variance over inner pixels",
    "bd_var": "variance over boundary pixels", "var_rel": "var · S/S_bd", "var_rel_in": "inner var · S_in/S_bd",
}

_MAPS = {
    "E": "normalised entropy", "D": "probability margin 1 - s1 + s2", "V": "variation ratio 1 - s1",
    "mcd_E": "MC dropout entropy of the mean softmax", "mcd_MI": "MC dropout mutual information",
    "ens_E": "ensemble entropy of the mean softmax", "ens_MI": "ensemble mutual information",
}

_PGN = re.compile(r"pgn_(last|deep)_(oh|uni)_p([0-9_]+)$")


def describe_column(name: str) -> str:
    """A one-line description of a feature-table column."""
    if name in _FIXED:
        return _FIXED[name]
    if m := re.fullmatch(r"cprob_(\d+)", name):
        return f"mean softmax probability of class {m.group(1)} over the segment"
    for stat in sorted(_STATS, key=len, reverse=True):
        if name.endswith("_" + stat):
            map_name = name[: -len(stat) - 1]
            return f"{_describe_map(map_name)}: {_STATS[stat]}"
    return "undocumented column"


def _describe_map(map_name: str) -> str:
    if map_name in _MAPS:
        return _MAPS[map_name]
    if m := _PGN.match(map_name):
        layer, label, p = m.groups()
        label = "one-hot" if label == "oh" else "uniform"
        layer = "last conv" if layer == "last" else "conv before the last"
        return f"PGN ({label} label, p = {p.replace('_', '.')}, {layer})"
    return map_name


def schema_metadata(columns: Iterable[str], config: dict) -> dict[bytes, bytes]:
    return {
        b"metaseg_pgn.columns": json.dumps({c: describe_column(c) for c in columns}).encode(),
        b"metaseg_pgn.config": json.dumps(config, sort_keys=True).encode(),
    }


def write_parquet_options() -> dict:
    """Keyword arguments of every Parquet writer here: zstd, and a CRC checksum per data page."""
    return {"compression": "zstd", "write_page_checksum": True}


def write_table(path: str | Path, table: pa.Table) -> None:
    """Write one Parquet file atomically (page checksums included)."""
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f, **write_parquet_options())


def read_parquet_verified(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file, verifying the page checksums (a damaged page raises ``OSError``)."""
    return pq.read_table(path, columns=columns, page_checksum_verification=True)


def read_features(path: str | Path, columns: list[str] | None = None,
                  filters=None) -> pd.DataFrame:
    """Read the segment feature table into pandas.

    Parameters
    ----------
    path : path-like
        The ``features`` folder of a run (or any folder in Hive layout below it), or one file.
    columns : list of str, optional
        Read only these columns (the meta stage reads only what its feature sets need).
    filters : optional
        pyarrow filter expression or DNF list, e.g. ``[("split", "=", "val")]``.

    Returns
    -------
    DataFrame
        One row per segment, ordered by dataset, split, frame_id, segment_id. Targets ``iou`` and
        ``iou0`` use pandas' nullable dtypes (``<NA>`` without ground truth, never NaN).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no feature table here (run stage=features first)")
    source = path / "data" if (path / "data").is_dir() else path
    fmt = pads.ParquetFileFormat(default_fragment_scan_options=pads.ParquetFragmentScanOptions(
        page_checksum_verification=True))
    dataset = pads.dataset(source, format=fmt, partitioning=PARTITIONING if source.is_dir() else None,
                           exclude_invalid_files=False)  # a damaged file is an error, not skipped
    table = dataset.to_table(columns=columns, filter=_filter_expression(filters))
    df = table.to_pandas(types_mapper={pa.float64(): None}.get)
    for col in ("iou", "iou0"):
        if col in df.columns:
            df[col] = df[col].astype("Float64" if col == "iou" else "boolean")
    sort = [c for c in ("dataset", "split", "frame_id", "segment_id") if c in df.columns]
    return df.sort_values(sort, kind="stable").reset_index(drop=True) if sort else df


def _filter_expression(filters):
    if filters is None or isinstance(filters, pads.Expression):
        return filters
    return pq.filters_to_expression(filters)


def column_docs(path: str | Path) -> dict[str, str]:
    """The column documentation stored in a feature file's metadata."""
    path = Path(path)
    file = path if path.is_file() else next(iter(sorted(path.rglob("*.parquet"))), None)
    if file is None:
        raise FileNotFoundError(f"{path}: no Parquet file")
    meta = pq.read_schema(file).metadata or {}
    return json.loads(meta.get(b"metaseg_pgn.columns", b"{}"))
