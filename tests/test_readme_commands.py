"""Every README pipeline, run through the command line on tiny data in the official layouts.

The datasets are written by :mod:`official_layouts` (once per session, 64 × 128 frames); each
test runs the README's own command in a subprocess, as a user would, to a finished report. (The
main job, ``python -m metaseg_pgn.run`` on the embedded world, is ``deep_run`` in
``test_realdata.py``.)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import official_layouts as layouts
from conftest import cli_in_process, real_data_overrides
from metaseg_pgn.data.registry import get_dataset
from metaseg_pgn.data.synthetic import SyntheticOoD, SyntheticStreets

cli = cli_in_process  # the README's commands, through the command line's entry point in this process

pytestmark = pytest.mark.slow  # every README pipeline through the command line


def finished(proc: subprocess.CompletedProcess, run_dir: Path) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr[-3000:]
    return (run_dir / "report" / "report.md").read_text()


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """A working folder with ``data/cityscapes``, ``data/smiyc/dataset_*``, ``data/images`` and a
    checkpoint ``weights.pt`` of :func:`official_layouts.compact_model`."""
    root = tmp_path_factory.mktemp("user")
    layouts.make_cityscapes(root / "data" / "cityscapes")
    layouts.make_smiyc(root / "data" / "smiyc")
    layouts.make_image_folder(root / "data" / "images")
    layouts.make_checkpoint(root / "weights.pt")
    return root


# ---------------------------------------------------------------------------- the adapters


def test_every_adapter_reads_its_official_layout(data):
    smiyc = data / "data" / "smiyc"
    # Cityscapes: labelIds mapped back to the generator's trainIds, frame by frame
    streets = {i: f for i, f in enumerate(SyntheticStreets(split="val", n=3, size=layouts.SIZE))}
    cs = get_dataset("cityscapes", root=data / "data" / "cityscapes", split="val")
    assert cs.label_source == "labelIds" and len(cs) == 3
    for frame in cs:
        src = streets[int(frame.frame_id.split("_")[1])]
        assert np.array_equal(frame.image, src.image) and np.array_equal(frame.label, src.label)
    test = get_dataset("cityscapes", root=data / "data" / "cityscapes", split="test")
    assert test.label_kind is None and all(f.label is None for f in test)

    # the SMIYC tracks: labelled validation frames, unlabelled test frames
    anomaly = list(SyntheticOoD(track="anomaly", n=4, size=layouts.SIZE, seed=1))
    val = get_dataset("road_anomaly21", root=smiyc / "dataset_AnomalyTrack", split="validation")
    assert val.label_kind == "ood" and val.frame_ids == ["validation0000", "validation0001"]
    assert all(np.array_equal(f.label, anomaly[i].label) for i, f in enumerate(val))
    for name, folder in (("road_anomaly21", "dataset_AnomalyTrack"), ("road_obstacle21", "dataset_ObstacleTrack")):
        unlabelled = get_dataset(name, root=smiyc / folder, split="test")
        assert unlabelled.label_kind is None and len(unlabelled) == 2
        assert all(f.label is None and f.image.shape == (*layouts.SIZE, 3) for f in unlabelled)
    obstacle = list(SyntheticOoD(track="obstacle", n=4, size=layouts.SIZE, seed=2))
    ro = get_dataset("road_obstacle21", root=smiyc / "dataset_ObstacleTrack", split="validation")
    assert [np.array_equal(f.image, obstacle[i].image) for i, f in enumerate(ro)] == [True, True]  # lossless webp
    assert all(np.array_equal(f.label, obstacle[i].label) for i, f in enumerate(ro))

    # LostAndFound gtCoarse ids → 0/1/255 equal the source OoD labels; Fishyscapes labels as stored
    laf_src = list(SyntheticOoD(track="obstacle", n=4, size=layouts.SIZE, seed=3))
    laf = get_dataset("lost_and_found", root=smiyc / "dataset_LostAndFound", split="test", invalid_frames=[])
    assert len(laf) == 2 and all(np.array_equal(f.label, laf_src[i].label) for i, f in enumerate(laf))
    fishy_src = list(SyntheticOoD(track="anomaly", n=2, size=layouts.SIZE, seed=4))
    fishy = get_dataset("fishyscapes_laf", root=smiyc / "dataset_FishyLAF")
    assert all(np.array_equal(f.label, fishy_src[i].label) for i, f in enumerate(fishy))
    assert all(np.array_equal(f.image, fishy_src[i].image) for i, f in enumerate(fishy))

    folder = get_dataset("folder", root=data / "data" / "images")
    assert folder.frame_ids == ["c", "trip1__a", "trip1__b"] and folder.label_kind is None


# ---------------------------------------------------------------------------- the README commands


def test_readme_cityscapes_command(data, tmp_path):
    # python -m metaseg_pgn.run pipeline=cityscapes dataset.root=/data/cityscapes \
    #     model._target_=mypackage.models.build model.num_classes=19 model.checkpoint=/path/weights.pt
    run_dir = tmp_path / "run"
    proc = cli("pipeline=cityscapes", f"dataset.root={data / 'data' / 'cityscapes'}",
               "model._target_=official_layouts.compact_model", "model.num_classes=19",
               f"model.checkpoint={data / 'weights.pt'}",
               *real_data_overrides(run_dir), cwd=data)
    md = finished(proc, run_dir)
    pixel = pd.read_csv(run_dir / "pixel_eval" / "pixel_eval.csv")
    assert {"pgn_deep_uni_p0_1", "pgn_last_oh_p2"} <= set(pixel["method"])  # the pipeline's deep layer
    summary = pd.read_csv(run_dir / "meta" / "meta_summary.csv")
    assert len(summary) > 5
    features = pd.read_parquet(run_dir / "features" / "data")
    assert features["iou"].notna().all() and set(features["frame_id"]) == {
        "frankfurt_000000_000019", "lindau_000001_000020", "frankfurt_000002_000021"}
    assert "`cityscapes-val`: 3 frames" in md and "ood_eval` skipped itself" in md


def test_readme_smiyc_command_without_a_cityscapes_folder(data, tmp_path):
    # metaseg-pgn pipeline=smiyc stage=[infer,ood_eval,report] model._target_=... model.checkpoint=...
    # in a folder with data/smiyc/ only; the datasets' labelled and unlabelled splits, and the
    # partial LostAndFound copy with invalid_frames=[] (its no_known positions need all 1203).
    smiyc = "data/smiyc"
    ood = (f"[{{name: road_anomaly21, root: {smiyc}/dataset_AnomalyTrack, split: validation}},"
           f"{{name: road_anomaly21, root: {smiyc}/dataset_AnomalyTrack, split: test}},"
           f"{{name: road_obstacle21, root: {smiyc}/dataset_ObstacleTrack, split: validation}},"
           f"{{name: road_obstacle21, root: {smiyc}/dataset_ObstacleTrack, split: test}},"
           f"{{name: lost_and_found, root: {smiyc}/dataset_LostAndFound, split: test, no_known: true,"
           f" invalid_frames: []}},"
           f"{{name: fishyscapes_laf, root: {smiyc}/dataset_FishyLAF}}]")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "smiyc").symlink_to(data / "data" / "smiyc")  # no data/cityscapes here
    run_dir = tmp_path / "run"
    proc = cli("pipeline=smiyc", "stage=[infer,ood_eval,report]", "model._target_=official_layouts.compact_model",
               f"model.checkpoint={data / 'weights.pt'}", f"ood_datasets={ood}", *real_data_overrides(run_dir),
               cwd=work)
    md = finished(proc, run_dir)
    table = pd.read_csv(run_dir / "ood_eval" / "ood_eval.csv")
    assert set(table["dataset"]) == {"road_anomaly21-validation", "road_obstacle21-validation",
                                     "lost_and_found-test", "fishyscapes_laf-all"}
    assert set(table.loc[table["dataset"] == "lost_and_found-test", "track"]) == {"obstacle"}
    manifest = json.loads((run_dir / "ood_eval" / "manifest.json").read_text())
    assert set(manifest["outputs"]["unlabelled"]) == {"road_anomaly21-test", "road_obstacle21-test"}
    assert "scored and exported" in proc.stderr or "exported, not evaluated" in proc.stderr
    # the unlabelled test frames are in the export, in the benchmark's float16 HDF5 files
    exported = {p.stem for p in (run_dir / "ood_eval" / "submission").rglob("*.hdf5")}
    assert {"airplane0002", "airplane0003", "gravel_0002", "gravel_0003", "validation0000"} <= exported
    assert "without OoD labels" in md
    assert not (run_dir / "features").exists() and "cityscapes" not in proc.stderr


def test_readme_image_folder_command(data, tmp_path):
    # metaseg-pgn pipeline=folder dataset.root=/my/images
    run_dir = tmp_path / "run"
    proc = cli("pipeline=folder", f"dataset.root={data / 'data' / 'images'}", *real_data_overrides(run_dir))
    md = finished(proc, run_dir)
    features = pd.read_parquet(run_dir / "features" / "data")
    assert set(features["frame_id"]) == {"c", "trip1__a", "trip1__b"} and features["iou"].isna().all()
    assert len(features) > 3 and "pgn_last_uni_p0_5_mean" in features.columns
    assert "has an IoU target (the dataset has no labels)" in md
    for stage in ("meta", "pixel_eval", "ood_eval"):
        assert f"`{stage}` skipped itself" in md, stage
        assert "skipped" in json.loads((run_dir / stage / "manifest.json").read_text())["outputs"]


def test_dataset_keys_of_another_adapter_are_a_one_line_error(data, tmp_path):
    # the old README command (dataset.name=folder on the synthetic group) is one line, not a TypeError
    proc = cli("dataset.name=folder", f"dataset.root={data / 'data' / 'images'}", "stage=infer",
               *real_data_overrides(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: dataset.root: unknown configuration key"), line  # dataset=folder is the way
