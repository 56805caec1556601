"""What a new user meets on real data: the value ranges of a trained model's maps, file modes,
degenerate inputs, model loading, and every README command on data in the official layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, tiny_overrides
from metaseg_pgn import run as run_mod


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory) -> Path:
    """The README's main job, ``python -m metaseg_pgn.run``, made tiny (shipped model, 64 × 128)
    and with the deeper layer, run by the CLI under ``python -W error`` and umask 027."""
    run_dir = tmp_path_factory.mktemp("deep") / "run"
    overrides = tiny_overrides(run_dir, n=3, n_ood=2, shipped_model=True) + [
        "pgn.layers=[last,deep]", "pgn.ps=[0.1,1]", "meta.n_runs=2"]
    proc = run_cli(*overrides, umask=0o027, warnings_as_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_deep_layer_run_of_the_default_world_finishes_every_evaluation_without_warning(deep_run):
    # The shipped model's deeper-layer p = 0.1 maps reach ~1e38.5, beyond float32 (pixel_eval
    # used to fail with "overflow encountered in cast", then "uncertainty holds NaN or inf").
    run_dir = deep_run
    pixel = pd.read_csv(run_dir / "pixel_eval" / "pixel_eval.csv")
    deep = pixel[pixel["method"] == "pgn_deep_uni_p0_1"]
    assert len(deep) == 1 and float(deep["max_over_test"].iloc[0]) > float(np.finfo(np.float32).max)
    assert np.isfinite(pixel[["ECE", "AuSE", "max_over_test"]].to_numpy()).all()
    ood = pd.read_csv(run_dir / "ood_eval" / "ood_eval.csv")
    assert {"pgn_deep_uni_p0_1", "pgn_deep_oh_p0_1"} <= set(ood["method"])
    assert np.isfinite(ood[["AuPRC_smiyc", "AP_exact", "FPR95_smiyc", "AUROC_exact"]].to_numpy()).all()
    assert (run_dir / "report" / "report.html").is_file()
    md = (run_dir / "report" / "report.md").read_text()

    # the network's mIoU and per-class IoU, against a loop over the records' pixels
    from metaseg_pgn.store import read_record

    inter, union = np.zeros(19), np.zeros(19)
    for path in sorted((run_dir / "infer" / "records" / "synthetic-val").glob("*.npz")):
        rec = read_record(path)
        for c in range(19):
            p, g = (rec.pred == c) & (rec.label != 255), rec.label == c
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    seg = pd.read_csv(run_dir / "pixel_eval" / "segmentation.csv")
    np.testing.assert_allclose(seg["IoU"].to_numpy(), iou, rtol=1e-12, equal_nan=True)
    assert f"mIoU {np.nanmean(iou):.3f} on `synthetic-val`" in md

    # inverted scores (AUROC < 50 %) flagged, exactly those; the orientation stated
    assert "Orientation: every score is used as *higher = more anomalous*" in md
    for key, part in ood.groupby("dataset"):
        section = md.split(f"### {key}")[1].split("### ")[0]
        inverted = set(part.loc[part["AUROC_exact"] < 0.5, "method"])
        flagged = {line.split("`")[1] for line in section.splitlines() if "⚠ inverted |" in line}
        assert flagged == inverted, key
    assert "⚠ inverted" in md  # the shipped model at this size has some (the check above is not vacuous)

    # total output size of the stages, against a walk over the files
    size = sum(p.stat().st_size for s in ("infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta")
               for p in (run_dir / s).rglob("*") if p.is_file())
    assert f"| Output size | {size / 1e6:.1f} MB before the report" in md
    seconds = sum(json.loads((run_dir / s / "manifest.json").read_text())["seconds"]
                  for s in ("infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta"))
    assert "| Run time | " in md and f"{int(round(seconds)) % 60} s for the stages" in md


@pytest.mark.slow
def test_main_job_outputs_are_readable_as_the_umask_says_and_export_is_off(deep_run):
    # run under umask 027: every output rw-r----- (atomic writes used to leave them 0600)
    import stat

    files = [p for p in deep_run.rglob("*") if p.is_file()]
    assert len(files) > 20
    modes = {p.relative_to(deep_run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o640)}, modes
    assert not (deep_run / "ood_eval" / "submission").exists()  # the SMIYC export is off by default


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, umask):
    import os
    import stat

    from metaseg_pgn.io import atomic_write, write_json

    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.bin") as f:
            f.write(b"x")
        write_json(tmp_path / "sub" / "b.json", {"k": 1})
        with open(tmp_path / "plain", "w") as f:  # what an ordinary open gives
            f.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == expected
    for name in ("a.bin", "sub/b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert not list(tmp_path.rglob(".*.tmp"))


def all_wrong_model(num_classes: int = 19):
    """A network that predicts class 18 (bicycle, absent from the synthetic world) everywhere:
    every segment has IoU 0."""
    import torch

    conv = torch.nn.Conv2d(3, num_classes, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.bias[num_classes - 1] = 5.0
    return conv


@pytest.mark.slow
def test_a_network_wrong_everywhere_gets_undefined_metrics_not_perfect_scores(tmp_path):
    # Every segment has IoU 0: R² and AuROC are undefined (constant target, one class), the
    # Brier error is the same on every pixel (AuSE undefined). Before, R² read 100.00 ± 0.00 in
    # bold and MetaSeg was called best.
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir, n=3, n_ood=2, target="test_realdata.all_wrong_model") + [
        "baselines.mc_dropout.enabled=false", "pgn.ps=[0.5]", "stage=[infer,features,meta,pixel_eval,report]"]
    assert run_mod.main(overrides) == 0
    meta = run_dir / "meta"
    summary = pd.read_csv(meta / "meta_summary.csv")
    assert summary["r2_test_mean"].isna().all() and summary["auroc_test_mean"].isna().all()
    assert summary["notes"].str.contains("R² undefined").all()
    for name in ("meta_summary.csv", "meta_results.csv"):
        assert "nan" not in (meta / name).read_text().lower(), name
    js = json.loads((meta / "meta_summary.json").read_text())  # strict JSON: no NaN token
    assert all(r["r2_test_mean"] is None for r in js["summary"])
    pixel = json.loads((run_dir / "pixel_eval" / "pixel_eval.json").read_text())
    assert all(r["AuSE"] is None and "AuSE undefined" in r["note"] for r in pixel["table"])
    assert "nan" not in (run_dir / "pixel_eval" / "pixel_eval.csv").read_text().lower()

    md = (run_dir / "report" / "report.md").read_text()
    test_table = md.split("### Test part")[1].split("###")[0]
    assert "100.00" not in test_table
    rows = [line for line in test_table.splitlines() if line.startswith("| ") and "`" in line]
    assert rows and all(line.count("–") >= 3 and "**" not in line for line in rows)
    assert "R² undefined" in md and "AuSE undefined" in md
    assert "best" not in md.split("### Test part")[1].split("Notes of the meta stage")[0]


def raising_factory(num_classes: int = 19):
    raise RuntimeError("out of\nmemory while building")


@pytest.mark.parametrize("extra, named", [
    (["device=cuda"], "device='cuda'"),
    (["device=tpu:0"], "device='tpu:0'"),
    (["model.init=checkpoint", "model.checkpoint={tmp}/missing.pt"], "missing.pt does not exist"),
    (["model.init=checkpoint", "model.checkpoint={tmp}/garbage.pt"], "garbage.pt: cannot be read as a PyTorch state_dict"),
    (["model.init=checkpoint", "model.checkpoint={tmp}/other.pt"], "other.pt: does not fit the model"),
    (["model._target_=no_such_module.build"], "no_such_module"),
    (["model._target_=test_realdata.raising_factory"], "RuntimeError: out of"),
])
def test_model_and_device_problems_are_one_line_errors(tmp_path, capsys, extra, named):
    import torch

    if "cuda" in named and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    overrides = tiny_overrides(tmp_path / "run", n=1, n_ood=1) + [
        e.format(tmp=tmp_path) for e in extra] + ["stage=infer"]
    assert run_mod.main(overrides) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err
    assert not list((tmp_path / "run").rglob("*.npz"))


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_keeps_the_finished_frames(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    run_dir = tmp_path / "run"
    args = tiny_overrides(run_dir, n=60, n_ood=1) + ["stage=infer", "infer.batch_size=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metaseg_pgn.run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = run_dir / "infer" / "records" / "synthetic-val"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and len(list(records.glob("*.npz"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: the frames finished so far are kept")
    kept = sorted(records.glob("*.npz"))
    assert 2 <= len(kept) < 60 and not list(records.glob(".*.tmp"))
    from metaseg_pgn.store import read_record

    for path in kept:  # every kept record is whole
        assert read_record(path).pred.shape == (64, 128)


def test_confusion_matrix_iou_matches_scikit_learn_and_leaves_absent_classes_undefined():
    from sklearn.metrics import confusion_matrix

    from metaseg_pgn.metrics.segmentation import ConfusionMatrix

    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(5)
    preds, labels = [], []
    for _ in range(3):
        pred = rng.integers(0, 4, (6, 7))           # class 4 never predicted ...
        label = rng.integers(0, 3, (6, 7))          # ... nor in the ground truth; class 3 only predicted
        label[rng.random((6, 7)) < 0.2] = 255
        cm.update(pred, label)
        preds.append(pred[label != 255])
        labels.append(label[label != 255])
    ref = confusion_matrix(np.concatenate(labels), np.concatenate(preds), labels=range(5))
    np.testing.assert_array_equal(cm.matrix, ref)
    iou = cm.iou()
    for c in range(4):
        tp, fp, fn = ref[c, c], ref[:, c].sum() - ref[c, c], ref[c, :].sum() - ref[c, c]
        assert iou[c] == pytest.approx(tp / (tp + fp + fn), rel=1e-12)
    assert iou[3] == 0.0 and np.isnan(iou[4])
    assert cm.miou() == pytest.approx(np.mean(iou[:4]), rel=1e-12)
    with pytest.raises(ValueError, match="outside 0..4"):
        cm.update(np.full((2, 2), 5), np.zeros((2, 2), int))


def test_reliability_bars_stack_without_overlap():
    from metaseg_pgn.plots import reliability_bars

    acc = np.array([0.2, 0.5, 0.9, 0.4])
    conf = np.array([0.05, 0.6, 0.9, 0.35])
    bars = reliability_bars(acc, conf)
    (b0, h0), (b1, h1), (b2, h2) = bars["common"], bars["over"], bars["under"]
    assert (b0 == 0).all() and np.allclose(h0, [0.05, 0.5, 0.9, 0.35])
    assert np.allclose(h1, [0, 0.1, 0, 0]) and np.allclose(h2, [0.15, 0, 0, 0.05])
    # each gap sits on top of the common part: nothing is drawn over anything else
    assert np.allclose(b1, h0) and np.allclose(b2, h0)
    assert np.allclose(h0 + h1 + h2, np.maximum(acc, conf))
    assert np.allclose(np.where(h2 > 0, b2 + h2, np.where(h1 > 0, b1, h0)), acc)  # accuracy readable


def _md_table(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_readme_results_tables_equal_the_runs_csvs(deep_run, tmp_path):
    from metaseg_pgn import readme_results
    from metaseg_pgn.names import method_label
    from metaseg_pgn.names import feature_set_label

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n\n<!-- results:begin -->\nold numbers\n<!-- results:end -->\n\nafter\n")
    assert readme_results.main([str(deep_run), "--readme", str(readme), "--images", str(tmp_path / "docs" / "images")]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n<!-- results:begin -->\n") and text.endswith("<!-- results:end -->\n\nafter\n")
    assert "old numbers" not in text
    body = text.split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]

    def close(cell: str, value: float, digits: int, scale: float = 100.0) -> bool:
        return abs(float(cell) - scale * value) <= 0.5 * 10 ** -digits + 1e-9

    # meta: every family set, AuROC and R² mean ± std of the test part
    summary = pd.read_csv(deep_run / "meta" / "meta_summary.csv").set_index("feature_set")
    names = {feature_set_label(n): n for n in summary.index}
    rows = _md_table(body, "feature set")
    assert len(rows) >= 5 and "metaseg+pgn" in {names[r[0]] for r in rows}
    for label, n_feat, auroc, r2 in rows:
        ref = summary.loc[names[label]]
        assert int(n_feat) == ref["n_features"]
        for cell, col in ((auroc, "auroc"), (r2, "r2")):
            mean, std = cell.split(" ± ")
            assert close(mean, ref[f"{col}_test_mean"], 2) and close(std, ref[f"{col}_test_std"], 2), (label, col)

    # OoD: smiyc AuPRC, FPR95, mean F1 per dataset
    ood = pd.read_csv(deep_run / "ood_eval" / "ood_eval.csv")
    labels = {method_label(m): m for m in ood["method"]}
    header = [c.strip() for c in body.split("| score |")[1].splitlines()[0].strip("|").split("|")]
    rows = _md_table(body, "score")
    assert {labels[r[0].split(" (inverted")[0]] for r in rows} >= {"V", "E", "mcd_MI"}
    for row in rows:
        method = labels[row[0].split(" (inverted")[0]]
        for head, cell in zip(header, row[1:]):
            key, metric = head.rsplit(" ", 1) if not head.endswith("mean F1") else (head[:-8], "mean F1")
            col = {"AuPRC": "AuPRC_smiyc", "FPR95": "FPR95_smiyc", "mean F1": "F1_mean_smiyc"}[metric]
            ref = ood[(ood["dataset"] == key) & (ood["method"] == method)][col].iloc[0]
            assert close(cell, ref, 1), (method, head)
        inverted = [k for k in ood["dataset"].unique()
                    if ood[(ood["dataset"] == k) & (ood["method"] == method)]["AUROC_exact"].iloc[0] < 0.5]
        assert ("inverted on" in row[0]) == bool(inverted), method

    # ood_meta: mean F1 (linear meta classifier) before and after per track, score and feature set
    om = pd.read_csv(deep_run / "ood_meta" / "ood_meta_summary.csv")
    om = om[om["model"].isna() | (om["model"] == "linear")]
    om_body = body.split("OoD post-processing")[1]
    om_header = [c.strip() for c in om_body.split("| score |")[1].splitlines()[0].strip("|").split("|")]
    score_of = {method_label(m): m for m in om["score"]}
    om_rows = _md_table(om_body, "score")
    assert {score_of[r[0]] for r in om_rows} == set(om["score"])
    for row in om_rows:
        track = None
        for head, cell in zip(om_header, row[1:]):
            if head.endswith(": before"):
                track, variant, fs = head[: -len(": before")], "before", None
            else:
                variant, fs = "after", head[len("after, "): -len(" features")]
            part = om[(om["track"] == track) & (om["score"] == score_of[row[0]]) & (om["variant"] == variant)]
            if fs is not None:
                part = part[part["feature_set"] == fs]
            mean, std = cell.split(" ± ")
            assert close(mean, part["F1_mean_smiyc_mean"].iloc[0], 1), (row[0], head)
            assert close(std, part["F1_mean_smiyc_std"].iloc[0], 1), (row[0], head)

    # pixel level and per-class IoU
    pixel = pd.read_csv(deep_run / "pixel_eval" / "pixel_eval.csv").set_index("name")
    pix_rows = _md_table(body.split("Pixel-level")[1], "score")
    for label, ece, ause in pix_rows:
        assert close(ece, pixel.loc[label, "ECE"], 4, 1.0) and close(ause, pixel.loc[label, "AuSE"], 4, 1.0)
    seg = pd.read_csv(deep_run / "pixel_eval" / "segmentation.csv").set_index("class")
    class_rows = _md_table(body, "class")
    assert len(class_rows) == int(((seg["gt_pixels"] > 0) | (seg["pred_pixels"] > 0)).sum())
    for name, iou in class_rows:
        assert close(iou, seg.loc[name, "IoU"], 3, 1.0)

    # the run's machine, load, date and segment count; the figure copied
    info = json.loads((deep_run / "run_info.json").read_text())
    features = json.loads((deep_run / "features" / "manifest.json").read_text())
    assert info["finished"] in body and info["machine"]["cpu"] in body
    assert " / ".join(f"{x:.2f}" for x in info["load_average_start"]) in body
    assert [s for s, _ in info["stages"]] == ["infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta",
                                              "report"]
    assert "Stage times: infer " in body and body.index("pixel_eval ") < body.index("ood_eval ")
    assert f"({features['outputs']['synthetic-val']['rows']} segments)" in body
    assert (tmp_path / "docs" / "images" / "meta_bars.png").read_bytes() == (
        deep_run / "report" / "meta_bars.png").read_bytes()
    assert "](docs/images/meta_bars.png)" in body


@pytest.mark.slow
def test_readme_results_refuses_a_readme_without_markers_and_an_unfinished_run(deep_run, tmp_path, capsys):
    from metaseg_pgn import readme_results

    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert readme_results.main([str(deep_run), "--readme", str(readme), "--images", str(tmp_path / "img")]) == 2
    assert "needs exactly one <!-- results:begin -->" in capsys.readouterr().err
    assert readme.read_text() == "# no markers\n" and not (tmp_path / "img").exists()
    readme.write_text("<!-- results:begin -->\n<!-- results:end -->\n")
    assert readme_results.main([str(tmp_path / "nothing"), "--readme", str(readme)]) == 2
    assert "run_info.json: missing" in capsys.readouterr().err
