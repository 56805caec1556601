"""The report stage on a tiny pipeline run: files, figures, numbers read back, determinism."""

from __future__ import annotations

import math
import os
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
from metaseg_pgn.names import method_label, order_feature_sets
from metaseg_pgn.report import fmt
from metaseg_pgn.report.context import published
from metaseg_pgn.report.stats import feature_correlations
from metaseg_pgn.stages import report
from metaseg_pgn.stages.common import RunContext

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The shared run was made by the command line with one thread (part of infer's fingerprint).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_run_dir) -> dict:
    """The configuration of a copy of the session's tiny run (``conftest.tiny_run_dir``: all stages
    including the report); a copy, since these tests regenerate the report in it."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    return config_mod.compose(tiny_overrides(run_dir))


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
    html_figs = re.findall(r'<img [^>]*\bsrc="([^"]+)"', html)
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
        assert f'id="{fmt.slug(section)}"' in html
    # every figure of the HTML is a <figure> with its caption, linked to the full-size file
    figures = re.findall(r'<figure><a href="([^"]+)"><img [^>]*src="([^"]+)"[^>]*></a>'
                         r'<figcaption>Figure (\d+)\. ', html)
    assert [(a, b) for a, b, _ in figures] == [(f, f) for f in md_figs]
    assert [int(n) for _, _, n in figures] == list(range(1, len(md_figs) + 1))


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
    assert f"ECE with {tiny_run['pixel_eval']['n_bins']} equal-width bins" in md  # from pixel_eval's manifest
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
        assert f"{100 * part.loc[best, 'AuPRC_smiyc']:.2f} % ({method_label(best)})" in sentence
        assert "entropy" in sentence and "max softmax" in sentence and "ensemble" in sentence


def test_report_is_deterministic_and_skips_when_up_to_date(tiny_run):
    folder = _folder(tiny_run)
    ctx = RunContext(tiny_run)
    assert report.run(ctx) == {}  # up to date: nothing rewritten
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "manifest.json"}
    shutil.rmtree(folder)
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's backend other than Agg: writing the report must keep it
    try:
        assert report.run(ctx)["markdown"] == "report/report.md"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
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


def _brute_force_correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson from its definition in exact rational arithmetic (float inputs are exact rationals),
    Spearman as Pearson of the average ranks (ties share the mean of their positions)."""
    from fractions import Fraction

    def pearson(a, b):
        a, b = [Fraction(float(v)) for v in a], [Fraction(float(v)) for v in b]
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((u - ma) * (v - mb) for u, v in zip(a, b))
        return float(cov) / math.sqrt(float(sum((u - ma) ** 2 for u in a)) * float(sum((v - mb) ** 2 for v in b)))

    def ranks(a):
        order = sorted(range(len(a)), key=lambda i: a[i])
        r = [0.0] * len(a)
        i = 0
        while i < len(a):
            j = i
            while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r

    return pearson(x, y), pearson(ranks(list(x)), ranks(list(y)))


def test_feature_correlations_against_brute_force(recwarn):
    rng = np.random.default_rng(0)
    iou = np.round(rng.random(200), 2)  # ties in the target, as IoU_adj has (0 for a fifth of segments)
    iou[:40] = 0.0
    df = pd.DataFrame({"a_mean": iou * 3 + rng.normal(0, 0.5, 200),
                       "b_mean": np.exp(40 * rng.random(200)) * 1e20,  # PGN-like range, no overflow
                       "c_mean": -iou ** 3, "d_mean": np.round(rng.random(200), 1),  # ties in a feature
                       "const_mean": np.ones(200)})
    corr = feature_correlations(df, list(df.columns), iou).set_index("feature")
    assert "const_mean" not in corr.index  # undefined: left out, and without a warning
    assert not [w for w in recwarn if "onstant" in str(w.message)]
    for c in ("a_mean", "b_mean", "c_mean", "d_mean"):
        pearson, spearman = _brute_force_correlations(df[c].to_numpy(), iou)
        assert corr.loc[c, "pearson"] == pytest.approx(pearson, abs=1e-12)
        assert corr.loc[c, "spearman"] == pytest.approx(spearman, abs=1e-12)
    assert list(corr.index)[0] == "c_mean"  # |Spearman| = 1 first
    assert list(corr.index) == sorted(corr.index, key=lambda c: -abs(corr.loc[c, "spearman"]))
    # a constant target: every correlation is undefined, no warning
    assert feature_correlations(df, list(df.columns), np.full(200, 0.5)).empty
    assert not [w for w in recwarn if "onstant" in str(w.message)]


def test_formatting():
    assert fmt.fmt_pct(0.85714) == "85.71" and fmt.fmt_pct(float("nan")) == "–"
    assert fmt.fmt_pm(0.5, 0.01234) == "50.00 ± 1.23" and fmt.fmt_pm(None, 0.1) == "–"
    assert fmt.fmt_num(pd.NA) == "–" and fmt.fmt_num(0.123456) == "0.1235"
    assert order_feature_sets(["entropy", "pgn_uni_p2", "metaseg+pgn", "pgn_uni_p0_5", "mine", "metaseg"]) \
        == ["metaseg", "pgn_uni_p0_5", "pgn_uni_p2", "metaseg+pgn", "entropy", "mine"]
    assert method_label("pgn_deep_uni_p0_5") == "PGN uniform, p = 0.5 (deeper layer)"
    assert fmt.md_escape("_target_ a*b") == "\\_target\\_ a\\*b"


def test_published_values_are_cited_and_shown(tiny_run):
    """Every published table carries its citation, and the report shows its numbers."""
    ref = published()
    md, _ = _texts(tiny_run)
    for part in ("meta", "pixel", "ood"):
        assert "Maag & Riedlinger" in ref[part]["citation"]
    assert "Rottmann" in ref["meta"]["citation"]
    assert f"MetaSeg reports AuROC {ref['meta']['metaseg_auroc']:.2f} % and R² {ref['meta']['metaseg_r2']:.2f} %" in md
    rows = _table(md, "Pixel-level evaluation", "Method (published),ECE,AuSE")
    assert [(r["Method (published)"], float(r["ECE"]), float(r["AuSE"])) for r in rows] == \
        [(r["method"], r["ECE"], r["AuSE"]) for r in ref["pixel"]["rows"]]
    rows = _table(md, "OoD segmentation", "Dataset (published),AuPRC,FPR95")
    assert [[r["Dataset (published)"], *(float(r[c]) for c in ref["ood"]["columns"])] for r in rows] == \
        [[d["name"], *d["values"]] for d in ref["ood"]["datasets"].values()]


def test_importing_plots_leaves_the_matplotlib_backend_alone(tmp_path):
    """Importing ``metaseg_pgn.plots`` and saving a figure keep a user's backend (no matplotlib.use)."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import numpy as np\n"
            "import metaseg_pgn.plots as plots\n"
            "fig = plots.roc_figure({'a': {'fpr': np.r_[0., 1.], 'tpr': np.r_[0., 1.], 'auc': 0.5}})\n"
            f"plots.save_figure(fig, {str(tmp_path / 'roc.png')!r})\n"
            "import matplotlib.pyplot as plt; assert plt.get_fignums() == []\n"
            "print(matplotlib.get_backend())")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"
    assert (tmp_path / "roc.png").read_bytes()[:8] == PNG_SIGNATURE
    # the report itself under another backend: test_report_is_deterministic_and_skips_when_up_to_date


def test_an_untrained_network_is_said_in_the_first_line(tiny_run):
    md, html = _texts(tiny_run)
    first = [line for line in md.splitlines()[1:] if line.strip()][0]
    assert "Untrained network" in first and "model.init=random" in first
    assert "Untrained network" in html


def test_the_wheel_ships_the_report_templates():
    """Every template, style sheet and data file of ``metaseg_pgn/report`` is package data in pyproject."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["metaseg_pgn"]
    shipped = {p for g in globs for p in (root / "metaseg_pgn").glob(g)}
    data = {p for p in (root / "metaseg_pgn" / "report").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data and {p.suffix for p in data} >= {".j2", ".css", ".yaml"}
    assert data <= shipped, sorted(str(p) for p in data - shipped)


def test_the_report_package_reads_stored_outputs_only():
    """No module of ``metaseg_pgn.report`` imports a stage, opens a dataset or recomputes segments:
    the image is infer's preview, the segments and their IoU are what ``features`` stored."""
    import ast

    package = Path(__file__).resolve().parents[1] / "metaseg_pgn" / "report"
    forbidden = ("metaseg_pgn.stages", "metaseg_pgn.data.select", "metaseg_pgn.data.base", "metaseg_pgn.segments")
    modules = sorted(package.glob("*.py"))
    assert len(modules) >= 5
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = "metaseg_pgn" if node.level == 2 else "metaseg_pgn.report" if node.level == 1 else ""
                names = [".".join(p for p in (base, node.module) if p)]
                names += [f"{names[0]}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
