"""The report stage on a tiny pipeline run: files, figures, numbers read back, determinism."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import tiny_overrides
from metaseg_pgn import config as config_mod
from metaseg_pgn.metrics.ood import VERSIONS
from metaseg_pgn.run import run_pipeline
from metaseg_pgn.stages import report
from metaseg_pgn.stages.common import RunContext

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """The tiny pipeline of ``conftest.tiny_cfg`` run once, all stages including the report."""
    cfg = config_mod.compose(tiny_overrides(tmp_path_factory.mktemp("report") / "run"))
    run_pipeline(cfg)
    return cfg


def _folder(cfg) -> Path:
    return Path(cfg["run_dir"]) / "report"


def _texts(cfg) -> tuple[str, str]:
    return (_folder(cfg) / "report.md").read_text(), (_folder(cfg) / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# Reading the Markdown back


def _sections(md: str) -> list[tuple[str, list[list[str]]]]:
    """Every table of the Markdown with the heading above it: (heading, rows incl. header)."""
    out, heading, rows = [], "", []
    for line in md.splitlines() + [""]:
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if not all(re.fullmatch(r"-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            out.append((heading, rows))
            rows = []
    return out


def _clean(cell: str) -> str:
    return cell.replace("**", "").replace("`", "").strip()


def _value(cell: str) -> tuple[float, float]:
    """``"12.34 ± 5.67"`` → (12.34, 5.67); ``"12.34"`` → (12.34, nan); ``"–"`` → (nan, nan)."""
    cell = _clean(cell)
    if cell == "–":
        return math.nan, math.nan
    parts = cell.split(" ± ")
    return float(parts[0]), float(parts[1]) if len(parts) > 1 else math.nan


def _close(shown: float, expected, scale: float, digits: int) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)) or pd.isna(expected):
        return math.isnan(shown)
    return abs(shown - scale * float(expected)) <= 0.5 * 10 ** -digits + 1e-9


def _table(md: str, heading: str, first_header: str) -> list[dict]:
    found = [rows for h, rows in _sections(md) if h == heading and rows[0][:3] == first_header.split(",")]
    assert len(found) == 1, f"expected one table {first_header!r} under {heading!r}, found {len(found)}"
    header, *rows = found[0]
    return [dict(zip(header, r)) for r in rows]


# ---------------------------------------------------------------------------------------------
# Tests


def test_report_files_and_figures(tiny_run):
    folder = _folder(tiny_run)
    md, html = _texts(tiny_run)
    md_figs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    html_figs = re.findall(r'<img src="([^"]+)"', html)
    assert md_figs and md_figs == html_figs
    assert {"meta_bars.png", "meta_roc.png", "meta_iou_scatter.png", "feature_correlation.png",
            "pixel_reliability.png", "pixel_sparsification.png", "ood_auprc.png"} <= set(md_figs)
    # Three example frames of the evaluated set (report.example_frames) and one per OoD set.
    examples = [f for f in md_figs if f.startswith("example_")]
    assert len([f for f in examples if "synthetic-val" in f]) == tiny_run["report"]["example_frames"]
    assert len([f for f in examples if "synthetic_obstacle" in f]) == 1
    assert len([f for f in examples if "synthetic_anomaly" in f]) == 1
    for name in md_figs:
        path = folder / name
        assert not Path(name).is_absolute() and path.exists(), name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as im:
            im.verify()
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(md_figs)  # nothing stale or unlisted
    for text in (md, html):
        assert not re.search(r"\bnan\b", text, re.IGNORECASE)
        assert str(tiny_run["run_dir"]) not in text  # no absolute paths: the folder can be moved
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html and "http" not in html.split("<body>")[1]
    for section in ("Run", "Meta classification and meta regression", "Example frames",
                    "Pixel-level evaluation", "OoD segmentation"):
        assert f"\n## {section}\n" in md
        assert f'id="{report.slug(section)}"' in html


def test_meta_tables_match_summary(tiny_run):
    md, _ = _texts(tiny_run)
    summary = pd.read_csv(Path(tiny_run["run_dir"]) / "meta" / "meta_summary.csv").set_index("feature_set")
    for heading, part in (("Test part", "test"), ("Training part", "train")):
        rows = _table(md, heading, "Feature set,key,#features")
        assert sorted(_clean(r["key"]) for r in rows) == sorted(summary.index)
        for r in rows:
            s = summary.loc[_clean(r["key"])]
            assert int(r["#features"]) == s["n_features"]
            for col, metric, scale, digits in (("AuROC (%)", "auroc", 100, 2), ("accuracy (%)", "accuracy", 100, 2),
                                               ("R² (%)", "r2", 100, 2), ("σ", "sigma", 1, 4)):
                mean, std = _value(r[col])
                assert _close(mean, s[f"{metric}_{part}_mean"], scale, digits), (r["key"], col, part)
                assert _close(std, s[f"{metric}_{part}_std"], scale, digits), (r["key"], col, part)
    # The paper's grouping: MetaSeg first, MetaSeg + PGN after the PGN sets, single scores last.
    keys = [_clean(r["key"]) for r in _table(md, "Test part", "Feature set,key,#features")]
    assert keys[0] == "metaseg" and keys.index("metaseg+pgn") > keys.index("pgn_all") > keys.index("pgn_uni")
    assert keys.index("entropy") > keys.index("metaseg+pgn")


def test_pixel_table_matches_csv(tiny_run):
    md, _ = _texts(tiny_run)
    table = pd.read_csv(Path(tiny_run["run_dir"]) / "pixel_eval" / "pixel_eval.csv")
    rows = _table(md, "Pixel-level evaluation", "Method,key,ECE")
    assert [_clean(r["key"]) for r in rows] == list(table["method"])
    for r, (_, t) in zip(rows, table.iterrows()):
        assert _close(_value(r["ECE"])[0], t["ECE"], 1, 4) and _close(_value(r["AuSE"])[0], t["AuSE"], 1, 4)
    best = [r for r in rows if r["ECE"].startswith("**")]
    assert [_clean(r["key"]) for r in best] == [table.loc[table["ECE"].idxmin(), "method"]]


def test_ood_tables_match_csv(tiny_run):
    md, _ = _texts(tiny_run)
    table = pd.read_csv(Path(tiny_run["run_dir"]) / "ood_eval" / "ood_eval.csv")
    columns = {"smiyc": {"AuPRC (%)": "AuPRC_smiyc", "FPR95 (%)": "FPR95_smiyc", "sIoU (%)": "sIoU_gt_smiyc",
                         "PPV (%)": "PPV_smiyc", "mean F1 (%)": "F1_mean_smiyc"},
               "exact": {"AP (%)": "AP_exact", "FPR95 (%)": "FPR95_exact", "AUROC (%)": "AUROC_exact",
                         "sIoU (%)": "sIoU_gt_exact", "PPV (%)": "PPV_exact", "mean F1 (%)": "F1_mean_exact"}}
    datasets = list(dict.fromkeys(table["dataset"]))
    assert len(datasets) == 2
    # every number names its metric version, in the CSV and above each report table
    for mode in ("smiyc", "exact"):
        assert set(table[f"version_{mode}"]) == {VERSIONS[mode]}
        assert f"`{mode}` mode — {VERSIONS[mode]}:" in md
    for ds in datasets:
        part = table[table["dataset"] == ds].set_index("method")
        for mode, first in (("smiyc", "Method,key,AuPRC (%)"), ("exact", "Method,key,AP (%)")):
            rows = _table(md, ds, first)
            assert [_clean(r["key"]) for r in rows] == list(part.index)
            for r in rows:
                for col, csv_col in columns[mode].items():
                    assert _close(_value(r[col])[0], part.loc[_clean(r["key"]), csv_col], 100, 2), (ds, r["key"], col)
        # The generated sentence names the best method by AuPRC, with its value.
        best = part["AuPRC_smiyc"].idxmax()
        sentence = next(line for line in md.splitlines() if line.startswith(f"On `{ds}` the highest AuPRC"))
        assert f"{100 * part.loc[best, 'AuPRC_smiyc']:.2f} % ({report.method_label(best)})" in sentence
        assert "entropy" in sentence and "max softmax" in sentence and "ensemble" in sentence


def test_report_is_deterministic_and_skips_when_up_to_date(tiny_run):
    folder = _folder(tiny_run)
    ctx = RunContext(tiny_run)
    assert report.run(ctx) == {}  # up to date: nothing rewritten
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "manifest.json"}
    shutil.rmtree(folder)
    assert report.run(ctx)["markdown"] == "report/report.md"
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "manifest.json"}
    assert sorted(after) == sorted(before)
    for name in ("report.md", "report.html"):
        assert after[name] == before[name], name
    for name in before:
        assert after[name] == before[name], f"{name} differs when regenerated"


def test_missing_stages_are_named(tiny_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run["run_dir"], run_dir, ignore=shutil.ignore_patterns("report", "submission"))
    for stage in ("meta", "ood_eval"):
        shutil.rmtree(run_dir / stage)
    cfg = dict(tiny_run, run_dir=str(run_dir), report={"example_frames": 1})
    report.run(RunContext(cfg))
    md = (run_dir / "report" / "report.md").read_text()
    assert "The stage `meta` has not run" in md and "The stage `ood_eval` has not run" in md
    assert "| Method | key | ECE | AuSE |" in md  # the pixel section is still there
    assert "feature_correlation.png" in md  # needs only the feature table
    assert not re.search(r"\bnan\b", md, re.IGNORECASE)
    assert len(re.findall(r"!\[[^\]]*\]\((example_synthetic-val[^)]+)\)", md)) == 1


def test_feature_correlations_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    iou = rng.random(200)
    df = pd.DataFrame({"a_mean": iou * 3 + rng.normal(0, 0.5, 200),
                       "b_mean": np.exp(40 * rng.random(200)) * 1e20,  # PGN-like range, no overflow
                       "c_mean": -iou ** 3, "const_mean": np.ones(200)})
    corr = report.feature_correlations(df, list(df.columns), iou).set_index("feature")
    assert "const_mean" not in corr.index
    for c in ("a_mean", "b_mean", "c_mean"):
        assert corr.loc[c, "pearson"] == pytest.approx(stats.pearsonr(df[c], iou)[0], abs=1e-9)
        assert corr.loc[c, "spearman"] == pytest.approx(stats.spearmanr(df[c], iou)[0], abs=1e-9)
    assert list(corr.index)[0] == "c_mean"  # |Spearman| = 1 first


def test_formatting():
    assert report.fmt_pct(0.85714) == "85.71" and report.fmt_pct(float("nan")) == "–"
    assert report.fmt_pm(0.5, 0.01234) == "50.00 ± 1.23" and report.fmt_pm(None, 0.1) == "–"
    assert report.fmt_num(pd.NA) == "–" and report.fmt_num(0.123456) == "0.1235"
    assert report.order_feature_sets(["entropy", "pgn_uni_p2", "metaseg+pgn", "pgn_uni_p0_5", "mine", "metaseg"]) \
        == ["metaseg", "pgn_uni_p0_5", "pgn_uni_p2", "metaseg+pgn", "entropy", "mine"]
    assert report.method_label("pgn_deep_uni_p0_5") == "PGN uniform, p = 0.5 (deeper layer)"


def test_an_untrained_network_is_said_in_the_first_line(tiny_run):
    md, html = _texts(tiny_run)
    first = [line for line in md.splitlines()[1:] if line.strip()][0]
    assert "Untrained network" in first and "model.init=random" in first
    assert "Untrained network" in html
