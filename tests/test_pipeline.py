"""The pipeline's promises (infer → features → meta), each checked end to end on tiny runs.

- an interrupted stage leaves nothing a later stage would trust and resumes to exactly the result
  of an uninterrupted run (records, Parquet bytes);
- a stage re-runs only when something it depends on changed, and a changed PGN setting recomputes
  the PGN maps but keeps the costly sampling baselines;
- the meta results, the segment features and the IoU targets agree with computations written here
  from their definitions (plain scikit-learn, scipy.ndimage and loops over segments);
- bad inputs give clear errors and leave earlier outputs untouched;
- two runs of one configuration give identical records and byte-identical tables.

The model is the compact DeepLabV3+ randomly initialised (``model=custom model.init=random``,
seeded by ``seed``), so no shipped weights are needed; with it about 70 % of the segments have
IoU = 0, so both meta classes occur.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.preprocessing import StandardScaler

from conftest import REPO, tiny_overrides
from metaseg_pgn import config as config_mod
from metaseg_pgn.data.registry import get_dataset
from metaseg_pgn.run import main, run_pipeline
from metaseg_pgn.stages.common import StageError, upstream_token
from metaseg_pgn.table import read_features

VAL = "synthetic-val"
SIZE = (64, 128)
N_CLASSES = 19
STATS = ["mean", "in_mean", "bd_mean", "rel", "rel_in", "var", "in_var", "bd_var", "var_rel", "var_rel_in"]
LOG_ZERO = -1e4  # the store's stand-in for log(0), from the record format (metaseg_pgn/store.py)


# ------------------------------------------------------------------------------------------------
# helpers


def overrides(run_dir: Path, *extra: str, n: int = 4, n_ood: int = 0,
              stage: str = "[infer,features,meta]") -> list[str]:
    """Tiny-run overrides; two built-in feature sets keep meta quick."""
    ov = tiny_overrides(run_dir, n=n, n_ood=max(n_ood, 1), size=SIZE)
    if n_ood == 0:
        ov.append("ood_datasets=[]")
    return ov + [f"stage={stage}", "meta.feature_sets=[metaseg,pgn_oh]", *extra]


def compose(run_dir: Path, *extra: str, **kw) -> dict:
    return config_mod.compose(overrides(run_dir, *extra, **kw))


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file below ``root``: relative path → (mtime_ns, sha256 of the bytes)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def under(snap: dict, prefix: str) -> dict:
    return {k: v for k, v in snap.items() if k.startswith(prefix)}


def load_npz(path: Path) -> dict:
    """All arrays of a record as stored, the JSON metadata decoded (read with numpy alone)."""
    with np.load(path) as data:
        out = {k: data[k] for k in data.files}
    out["meta"] = json.loads(out["meta"].tobytes().decode())
    return out


def assert_same_record(a: Path, b: Path) -> None:
    ra, rb = load_npz(a), load_npz(b)
    assert sorted(ra) == sorted(rb), (a, b)
    assert ra["meta"] == rb["meta"], a.name
    for key in ra:
        if key != "meta":
            assert ra[key].dtype == rb[key].dtype and np.array_equal(ra[key], rb[key]), (a.name, key)


def assert_same_records(run_a: Path, run_b: Path) -> None:
    files_a = sorted(p.relative_to(run_a) for p in (run_a / "infer" / "records").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(run_b) for p in (run_b / "infer" / "records").rglob("*") if p.is_file())
    assert files_a == files_b and files_a
    for rel in files_a:
        assert_same_record(run_a / rel, run_b / rel)


def temp_files(root: Path) -> list[str]:
    """Leftovers of atomic writes (``.NAME.XXXX.tmp``); Hydra's saved configuration (``.hydra/``) is not one."""
    return [str(p) for p in root.rglob("*")
            if p.name.endswith(".tmp") or (p.name.startswith(".") and p.name != ".hydra")]


def table_path(run: Path) -> Path:
    return run / "features" / "data" / "dataset=synthetic" / "split=val" / "part-0.parquet"


def records(run: Path, key: str = VAL) -> Path:
    return run / "infer" / "records" / key


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny frames: a second thread only contends on a shared machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: 5 labelled frames (batches of 2) and one frame of each OoD track."""
    run = tmp_path_factory.mktemp("reference") / "run"
    run_pipeline(compose(run, "infer.batch_size=2", n=5, n_ood=1))
    return run


# ------------------------------------------------------------------------------------------------
# 1. resume after an interruption


def test_interrupted_infer_and_features_resume_to_the_uninterrupted_result(reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = compose(run, "infer.batch_size=2", n=5, n_ood=1)

    # infer: Ctrl-C while the 4th frame is read (frames 0, 1, 2 done: each goes through the network alone)
    streets = type(get_dataset("synthetic", split="val", n=1, size=SIZE))
    real_load, calls = streets.load, []

    def interrupted_load(self, frame_id):
        calls.append(frame_id)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_load(self, frame_id)

    monkeypatch.setattr(streets, "load", interrupted_load)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline({**cfg, "stage": "infer"})
    monkeypatch.setattr(streets, "load", real_load)
    assert sorted(p.name for p in records(run).iterdir()) == ["val_000000.npz", "val_000001.npz", "val_000002.npz"]
    assert not (run / "infer" / "manifest.json").exists()
    assert temp_files(run) == []
    with pytest.raises(StageError, match="run stage=infer first"):  # the next stage does not trust it
        run_pipeline({**cfg, "stage": "features"})
    done = under(snapshot(run), "infer/records")

    run_pipeline({**cfg, "stage": "infer"})
    after = snapshot(run)
    assert {k: after[k] for k in done} == done  # frames written before the interruption were kept
    assert_same_records(run, reference)

    # features: every frame writes two files (its segment map, then its rows). Ctrl-C in the 5th
    # file write (frame 2's segment map), then in the 7th of the resumed run (the concatenation of
    # all frames into the table), then to the end
    real_fsync = os.fsync
    frames_dir = run / "features" / "_frames" / VAL
    for interrupt_at, expect_frames in ((5, 2), (7, 5)):
        count = []

        def interrupted_fsync(fd, interrupt_at=interrupt_at, count=count):
            count.append(fd)
            if len(count) == interrupt_at:
                raise KeyboardInterrupt
            return real_fsync(fd)

        before = under(snapshot(run), "features/")
        monkeypatch.setattr(os, "fsync", interrupted_fsync)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline({**cfg, "stage": "features"})
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert len(list(frames_dir.iterdir())) == expect_frames
        assert not table_path(run).exists() and not (run / "features" / "manifest.json").exists()
        assert temp_files(run) == []
        now = snapshot(run)
        assert {k: now[k] for k in before} == before  # finished frames are never rewritten
        with pytest.raises(StageError, match="run stage=features first"):
            run_pipeline({**cfg, "stage": "meta"})

    run_pipeline({**cfg, "stage": "features"})
    assert table_path(run).read_bytes() == table_path(reference).read_bytes()
    segments = sorted((run / "features" / "segments" / VAL).iterdir())
    assert len(segments) == 5
    for path in segments:
        assert path.read_bytes() == (reference / path.relative_to(run)).read_bytes()


# ------------------------------------------------------------------------------------------------
# 2. staleness


def test_stages_rerun_exactly_when_their_inputs_change(tmp_path, caplog):
    caplog.set_level("INFO")
    run = tmp_path / "run"
    run_pipeline(compose(run, n=3))
    snap0 = snapshot(run)
    fps0 = {s: manifest(run, s)["fingerprint"] for s in ("infer", "features", "meta")}

    # (a) nothing changed: nothing is touched
    caplog.clear()
    run_pipeline(compose(run, n=3))
    assert snapshot(run) == snap0
    for stage in ("infer", "features", "meta"):
        assert f"{stage}: up to date" in caplog.text

    # (b) a meta setting: only meta re-runs
    caplog.clear()
    run_pipeline(compose(run, "meta.n_runs=3", n=3))
    snap_b = snapshot(run)
    assert under(snap_b, "infer/") == under(snap0, "infer/")
    assert under(snap_b, "features/") == under(snap0, "features/")
    assert snap_b["meta/manifest.json"] != snap0["meta/manifest.json"]
    assert sorted(pd.read_csv(run / "meta" / "meta_results.csv")["run"].unique()) == [0, 1, 2]
    assert "infer: up to date" in caplog.text and "features: up to date" in caplog.text
    assert "meta: up to date" not in caplog.text

    # (c) the p values: the PGN maps are recomputed, the MC-dropout maps are kept. To see that they
    # are kept rather than recomputed to the same values, they are first replaced in the records.
    original = {p.name: load_npz(p) for p in sorted(records(run).iterdir())}
    for p in records(run).iterdir():
        arrays = load_npz(p)
        arrays["baselines"] = (arrays["baselines"] * 0.5).astype(np.float16)
        arrays["meta"] = np.frombuffer(json.dumps(arrays["meta"]).encode(), dtype=np.uint8)
        np.savez_compressed(p, **arrays)
    tampered = {p.name: load_npz(p)["baselines"] for p in sorted(records(run).iterdir())}

    run_pipeline(compose(run, "pgn.ps=[0.5,2]", n=3))
    fresh = tmp_path / "fresh"
    run_pipeline(compose(fresh, "pgn.ps=[0.5,2]", n=3, stage="infer"))
    for name, old in original.items():
        new, ref = load_npz(records(run) / name), load_npz(records(fresh) / name)
        assert np.array_equal(new["baselines"], tampered[name])  # reused, not recomputed
        assert np.array_equal(ref["baselines"], old["baselines"])
        assert sorted(new["meta"]["pgn_names"]) == sorted(f"pgn_last_{lab}_p{p}" for p in ("0_5", "2")
                                                          for lab in ("oh", "uni"))
        assert new["log_pgn"].shape[0] == 4 and old["log_pgn"].shape[0] == 10
        for key in ("pred", "logits", "label", "log_pgn", "log_pgn_offset"):  # as a fresh run makes them
            assert np.array_equal(new[key], ref[key]), (name, key)
        assert new["meta"] == ref["meta"]
    fps_c = {s: manifest(run, s)["fingerprint"] for s in ("infer", "features", "meta")}
    assert all(fps_c[s] != fps0[s] for s in fps_c)
    assert manifest(run, "features")["upstream"] == {"infer": upstream_token(manifest(run, "infer"))}
    assert manifest(run, "meta")["upstream"] == {"features": upstream_token(manifest(run, "features"))}
    columns = pq.read_schema(table_path(run)).names
    assert "pgn_last_uni_p2_mean" in columns and "pgn_last_uni_p0_1_mean" not in columns

    # (d) the PGN weights: every stage is invalidated, the baselines still kept
    before = {p.name: load_npz(p) for p in sorted(records(run).iterdir())}
    run_pipeline(compose(run, "pgn.ps=[0.5,2]", "pgn.weights=gradient", n=3))
    fps_d = {s: manifest(run, s)["fingerprint"] for s in ("infer", "features", "meta")}
    assert all(fps_d[s] != fps_c[s] for s in fps_d)
    for name, old in before.items():
        new = load_npz(records(run) / name)
        assert not np.array_equal(new["log_pgn"], old["log_pgn"])
        assert np.array_equal(new["baselines"], tampered[name])
        assert np.array_equal(new["pred"], old["pred"])


def test_a_stage_refuses_upstream_outputs_of_another_configuration(tmp_path):
    """Asked to run alone, a stage must not silently read outputs that the current configuration
    would not produce (e.g. the PGN maps of the previous p values)."""
    run = tmp_path / "run"
    run_pipeline(compose(run, n=3))
    before = snapshot(run)
    for stage in ("features", "meta"):  # infer has not run with the new p values
        with pytest.raises(StageError, match=r"'pgn'.*run stage=infer"):
            run_pipeline(compose(run, "pgn.ps=[2]", n=3, stage=stage))
    assert snapshot(run) == before

    run_pipeline(compose(run, "pgn.ps=[2]", n=3, stage="infer"))
    with pytest.raises(StageError, match="run stage=features"):  # the table is from the old records
        run_pipeline(compose(run, "pgn.ps=[2]", n=3, stage="meta"))
    run_pipeline(compose(run, "pgn.ps=[2]", n=3, stage="[features,meta]"))
    assert "pgn_last_oh_p2_mean" in pq.read_schema(table_path(run)).names
    assert "pgn_last_oh_p0_5_mean" not in pq.read_schema(table_path(run)).names


# ------------------------------------------------------------------------------------------------
# 3. meta results recomputed with plain scikit-learn


def metaseg_columns(df: pd.DataFrame) -> list[str]:
    return ([f"{m}_{s}" for m in ("E", "D") for s in STATS] + ["S", "S_in", "S_bd", "S_rel", "S_rel_in"]
            + [f"cprob_{c}" for c in range(N_CLASSES)])


def pgn_oh_columns(df: pd.DataFrame) -> list[str]:
    return [f"pgn_last_oh_p{p}_{s}" for p in ("0_1", "0_3", "0_5", "1", "2") for s in STATS]


def test_meta_results_match_plain_scikit_learn(tmp_path):
    run = tmp_path / "run"
    run_pipeline(compose(run, "meta.n_runs=3", n=8))
    df = read_features(run / "features")
    assert len(df) > 50 and df["frame_id"].nunique() == 8
    for protocol in ("grouped", "pgn_authors"):
        if protocol != "grouped":  # the same table, only meta re-runs
            run_pipeline(compose(run, "meta.n_runs=3", f"meta.protocol={protocol}", n=8, stage="meta"))
        check_meta_results(df, pd.read_csv(run / "meta" / "meta_results.csv"), protocol)


def check_meta_results(df: pd.DataFrame, results: pd.DataFrame, protocol: str) -> None:
    y_all = df["iou0"].to_numpy(dtype=bool)
    iou_all = df["iou"].to_numpy(dtype=np.float64)
    frames = df["frame_id"].to_numpy(dtype=object)
    assert len(results) == 2 * 3 * 2
    for name, cols in (("metaseg", metaseg_columns(df)), ("pgn_oh", pgn_oh_columns(df))):
        X_all = df[cols].to_numpy(dtype=np.float64)
        for r in range(3):
            if protocol == "grouped":  # 20 % of the frames, no frame on both sides, seed 0 + r
                train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=r)
                                   .split(X_all, groups=frames))
                assert not set(frames[train]) & set(frames[test])
            else:  # 80/20 per segment
                train, test = train_test_split(np.arange(len(df)), test_size=0.2, random_state=r)
            scaler = StandardScaler().fit(X_all[train])
            clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, tol=1e-4)
            clf.fit(scaler.transform(X_all[train]), y_all[train])
            reg = LinearRegression().fit(scaler.transform(X_all[train]), iou_all[train])
            for part, idx in (("train", train), ("test", test)):
                X, y, iou = scaler.transform(X_all[idx]), y_all[idx], iou_all[idx]
                assert 0 < y.sum() < len(y), "both classes needed for an AuROC"
                p_iou0 = clf.predict_proba(X)[:, list(clf.classes_).index(True)]
                iou_pred = np.clip(reg.predict(X), 0.0, 1.0)
                row = results[(results.feature_set == name) & (results.run == r) & (results.part == part)]
                assert len(row) == 1
                row = row.iloc[0]
                assert row["n_segments"] == len(idx) and row["n_features"] == len(cols)
                assert row["protocol"] == protocol
                assert row["auroc"] == pytest.approx(roc_auc_score(y, p_iou0), abs=1e-6)
                assert row["accuracy"] == pytest.approx(accuracy_score(y, clf.predict(X)), abs=1e-9)
                assert row["r2"] == pytest.approx(r2_score(iou, iou_pred), rel=1e-6, abs=1e-6)
                assert row["sigma"] == pytest.approx(math.sqrt(mean_squared_error(iou, iou_pred)), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# 4. the feature table against the record, segment by segment


def brute_force_segments(record: dict, maps: dict[str, np.ndarray], probs: np.ndarray) -> list[dict]:
    """docs/design.md §3 written as loops: voided prediction, per-class 8-connected components,
    boundary = an in-image 8-neighbour with another voided prediction, IoU_adj."""
    pred, gt = record["pred"].astype(np.int64), record["label"].astype(np.int64)
    voided = np.where(gt == 255, 255, pred)
    h, w = voided.shape
    eight = np.ones((3, 3), dtype=bool)
    segments = []
    for c in np.unique(voided):
        if c == 255:
            continue
        lab, n = ndimage.label(voided == c, structure=eight)
        missed, n_missed = ndimage.label((gt == c) & (voided != c), structure=eight)
        for j in range(1, n + 1):
            mask = lab == j
            ys, xs = np.nonzero(mask)
            boundary = np.zeros_like(mask)
            for y, x in zip(ys, xs):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if (dy or dx) and 0 <= yy < h and 0 <= xx < w and voided[yy, xx] != c:
                            boundary[y, x] = True
            grown = ndimage.binary_dilation(mask, structure=eight)
            touching = set(np.unique(missed[grown])) - {0}
            added = sum(int((missed == t).sum()) for t in touching)
            inter = int((gt[mask] == c).sum())
            segments.append({"first": int(ys[0] * w + xs[0]), "class": int(c), "mask": mask,
                             "boundary": boundary, "iou": inter / (mask.sum() + added)})
    segments.sort(key=lambda s: s["first"])

    rows = []
    for k, s in enumerate(segments, start=1):
        mask, bd = s["mask"], s["boundary"]
        inner = mask & ~bd
        S, S_in, S_bd = int(mask.sum()), int(inner.sum()), int(bd.sum())
        div = max(S_bd, 1)
        ys, xs = np.nonzero(mask)
        row = {"segment_id": k, "pred_class": s["class"], "S": S, "S_in": S_in, "S_bd": S_bd,
               "S_rel": S / div, "S_rel_in": S_in / div, "centroid_y": ys.mean(), "centroid_x": xs.mean(),
               "iou": s["iou"], "iou0": s["iou"] == 0}
        for name, m in maps.items():
            full, inn, bnd = m[mask], m[inner], m[bd]
            mean_in = inn.mean() if inn.size else 0.0
            var_in = inn.var() if inn.size else 0.0
            row.update({f"{name}_mean": full.mean(), f"{name}_in_mean": mean_in,
                        f"{name}_bd_mean": bnd.mean() if bnd.size else 0.0,
                        f"{name}_rel": full.mean() * S / div, f"{name}_rel_in": mean_in * S_in / div,
                        f"{name}_var": full.var(), f"{name}_in_var": var_in,
                        f"{name}_bd_var": bnd.var() if bnd.size else 0.0,
                        f"{name}_var_rel": full.var() * S / div, f"{name}_var_rel_in": var_in * S_in / div})
        for c in range(probs.shape[0]):
            row[f"cprob_{c}"] = probs[c][mask].mean()
        rows.append(row)
    return rows


def test_feature_rows_match_a_brute_force_from_the_record(reference):
    frame = "val_000001"
    rec = load_npz(records(reference) / f"{frame}.npz")
    meta = rec["meta"]
    size = rec["pred"].shape
    align = meta["align_corners"]

    # probabilities: the stored (relative) logits resized like the model's output, softmax
    z = torch.from_numpy(rec["logits"].astype(np.float64))[None]
    probs = torch.softmax(F.interpolate(z, size=size, mode="bilinear", align_corners=align), 1)[0].numpy()
    maps = {"E": -(probs * np.log(np.maximum(probs, 1e-300))).sum(0) / math.log(N_CLASSES),
            "V": 1 - probs.max(0)}
    # a PGN map: exp(residual + offset), zero where the residual stands for log(0), resized
    k = meta["pgn_names"].index("pgn_last_uni_p0_5")
    res = rec["log_pgn"][k].astype(np.float64)
    small = np.where(res > LOG_ZERO / 2, np.exp(res + rec["log_pgn_offset"][k]), 0.0)
    maps["pgn_last_uni_p0_5"] = F.interpolate(torch.from_numpy(small)[None, None], size=size, mode="bilinear",
                                              align_corners=align)[0, 0].numpy()
    maps["mcd_MI"] = rec["baselines"][meta["baseline_names"].index("mcd_MI")].astype(np.float64)

    expected = brute_force_segments(rec, maps, probs)
    table = read_features(reference / "features", filters=[("frame_id", "=", frame)])
    assert len(expected) >= 5 and len(table) == len(expected)
    assert table["iou0"].any() and not table["iou0"].all()
    for exp, (_, got) in zip(expected, table.iterrows()):
        for key in ("segment_id", "pred_class", "S", "S_in", "S_bd", "iou0"):
            assert got[key] == exp[key], (exp["segment_id"], key)
        for key, value in exp.items():
            if key in ("segment_id", "pred_class", "S", "S_in", "S_bd", "iou0"):
                continue
            if key.startswith(("E_", "V_", "cprob_")):
                # the pipeline's probabilities are float32 (from float16 logits), these float64
                tol = dict(rel=1e-5, abs=1e-6)
            else:  # the same float64 inputs: only the order of summation differs
                tol = dict(rel=1e-9, abs=1e-12)
            assert got[key] == pytest.approx(value, **tol), (exp["segment_id"], key)


def test_metaseg_entropy_setting_reaches_the_features(reference, tmp_path):
    """``features.entropy=metaseg`` re-runs only the features, and their E columns are MetaSeg's
    ``Σ p·log(p + ε)/log(1/C)`` of the record's probabilities; every other column is unchanged."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    run_pipeline(compose(run, "infer.batch_size=2", "features.entropy=metaseg", n=5, n_ood=1,
                         stage="[infer,features]"))
    assert manifest(run, "infer") == manifest(reference, "infer")
    assert manifest(run, "features")["fingerprint"] != manifest(reference, "features")["fingerprint"]
    frame = "val_000001"
    new = read_features(run / "features", filters=[("frame_id", "=", frame)])
    old = read_features(reference / "features", filters=[("frame_id", "=", frame)])
    e_cols = [c for c in new.columns if c.startswith("E_")]
    assert e_cols and new.drop(columns=e_cols).equals(old.drop(columns=e_cols))

    rec = load_npz(records(reference) / f"{frame}.npz")
    z = torch.from_numpy(rec["logits"].astype(np.float64))[None]
    probs = torch.softmax(F.interpolate(z, size=rec["pred"].shape, mode="bilinear",
                                        align_corners=rec["meta"]["align_corners"]), 1)[0].numpy()
    eps = float(np.finfo(np.float32).eps)
    e_metaseg = (probs * np.log(probs + eps)).sum(0) / math.log(1.0 / N_CLASSES)
    expected = brute_force_segments(rec, {"E": e_metaseg}, probs)
    assert len(expected) == len(new)
    for exp, (_, got) in zip(expected, new.iterrows()):
        # the pipeline's probabilities are float32 (from float16 logits), these float64
        assert got["E_mean"] == pytest.approx(exp["E_mean"], rel=1e-5, abs=1e-6)
        assert got["E_bd_mean"] == pytest.approx(exp["E_bd_mean"], rel=1e-5, abs=1e-6)
    assert (new["E_mean"] != old["E_mean"]).any()


# ------------------------------------------------------------------------------------------------
# 5. bad input


def nan_compact(num_classes: int = 19):
    """A compact model whose logits are all NaN (classifier bias NaN)."""
    from metaseg_pgn.models.deeplab import compact

    model = compact(num_classes)
    with torch.no_grad():
        model.head.classifier.bias.fill_(math.nan)
    return model


def test_model_output_with_nan_is_refused_naming_the_frame(tmp_path):
    run = tmp_path / "run"
    run_pipeline(compose(run, n=2, stage="infer"))
    before = snapshot(run)
    bad = compose(run, f"model._target_={__name__}.nan_compact", n=2, stage="infer")
    with pytest.raises(StageError, match=r"val_000000.*NaN"):
        run_pipeline(bad)
    assert snapshot(run) == before
    assert temp_files(run) == []


def test_features_refuse_a_record_of_another_configuration(tmp_path, capsys):
    run = tmp_path / "run"
    run_pipeline(compose(run, n=3, stage="[infer,features]"))
    old_record = (records(run) / "val_000001.npz").read_bytes()
    run_pipeline(compose(run, "pgn.ps=[2]", n=3, stage="infer"))
    (records(run) / "val_000001.npz").write_bytes(old_record)  # e.g. restored from a backup
    kept = ("features/manifest.json", str(table_path(run).relative_to(run)))
    before = {k: v for k, v in snapshot(run).items() if k in kept}
    assert len(before) == 2

    argv = overrides(run, "pgn.ps=[2]", n=3, stage="features")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert "val_000001.npz" in err and "changed since infer wrote them" in err
    now = snapshot(run)
    assert {k: now[k] for k in kept} == before  # the table and manifest of the last good run stay
    assert temp_files(run) == []


def test_meta_refuses_a_table_without_targets(tmp_path):
    run = tmp_path / "run"
    run_pipeline(compose(run, n=3))
    path = table_path(run)
    table = pq.read_table(path)
    for col in ("iou", "iou0"):  # what features write for frames without labels
        i = table.schema.get_field_index(col)
        table = table.set_column(i, table.schema.field(i), pa.nulls(len(table), table.schema.field(i).type))
    pq.write_table(table, path)
    # recorded as features' own output (an edited table is otherwise refused as changed)
    from metaseg_pgn.stages import features
    from metaseg_pgn.stages.common import RunContext, read_manifest, write_manifest

    ctx = RunContext(compose(run, n=3))
    frames = sorted((run / "features" / "_frames").rglob("*.parquet"))
    write_manifest(ctx, "features", features.plan(ctx), read_manifest(ctx, "features")["outputs"], 0.0,
                   files=[path], keep=frames)
    before = under(snapshot(run), "meta/")

    with pytest.raises(StageError, match="no ground truth targets") as err:
        run_pipeline(compose(run, "meta.n_runs=3", n=3, stage="meta"))
    assert "part-0.parquet" in str(err.value)
    assert under(snapshot(run), "meta/") == before


def test_meta_bad_feature_sets_are_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    run_pipeline(compose(run, n=3, stage="[infer,features]"))
    for override, named in (("meta.feature_sets=[nosuch]", "'nosuch'"),
                            ("meta.custom_feature_sets.mine=['E_(']", "'mine'"),
                            ("meta.feature_sets=[metaseg,ensemble]", "'ensemble'")):  # no ensemble maps
        assert main(overrides(run, override, n=3, stage="meta")) == 2, override
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: meta:") and named in err, err
    assert not (run / "meta").exists()


@pytest.mark.parametrize("override, named", [("pgn.wieghts=paper", "pgn.wieghts"),
                                             ("pgn.weights=papr", "papr"), ("stage=inference", "inference"),
                                             ("stage=[]", "stage=[]")])
def test_cli_bad_override_exits_2_with_one_line(tmp_path, override, named):
    proc = subprocess.run([sys.executable, "-m", "metaseg_pgn.run", override, f"run_dir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert named in lines[0]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# 6. determinism


def test_two_runs_of_one_configuration_are_identical(reference, tmp_path):
    run = tmp_path / "again"
    run_pipeline(compose(run, "infer.batch_size=2", n=5, n_ood=1))
    assert_same_records(run, reference)
    assert table_path(run).read_bytes() == table_path(reference).read_bytes()
    for name in ("meta_results.csv", "meta_summary.csv", "meta_predictions.csv"):
        assert (run / "meta" / name).read_bytes() == (reference / "meta" / name).read_bytes()
