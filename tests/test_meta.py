"""Tests of metaseg_pgn.meta: every number is recomputed here with scikit-learn written plainly."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.preprocessing import StandardScaler

from metaseg_pgn import meta

STATS = ["mean", "in_mean", "bd_mean", "rel", "rel_in", "var", "in_var", "bd_var", "var_rel", "var_rel_in"]
PS = ["0_1", "0_3", "0_5", "1", "2"]
N_CLASSES = 4


def synthetic_table(n_frames: int = 30, seed: int = 0, maps: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Segment table with the architecture's schema; E and the one-hot PGN maps carry signal."""
    rng = np.random.default_rng(seed)
    if maps is None:
        maps = (
            ["E", "D", "V"]
            + [f"pgn_last_{lab}_p{p}" for lab in ("oh", "uni") for p in PS]
            + ["pgn_deep_oh_p1", "pgn_deep_uni_p1", "mcd_E", "mcd_MI"]
        )
    rows = []
    for f in range(n_frames):
        n = int(rng.integers(12, 25))
        for k in range(n):
            rows.append({"dataset": "syn", "split": "val", "frame_id": f"frame_{f:03d}", "segment_id": k + 1})
    ids = pd.DataFrame(rows)
    n = len(ids)
    data = {}
    data["pred_class"] = rng.integers(0, N_CLASSES, n).astype(np.int16)
    quality = rng.uniform(0, 1, n)
    data["S"] = rng.integers(1, 500, n).astype(np.int64)
    data["S_in"] = np.where(rng.uniform(size=n) < 0.2, 0, (data["S"] * 0.6).astype(np.int64))
    data["S_bd"] = data["S"] - data["S_in"]
    data["S_rel"] = data["S"] / np.maximum(data["S_bd"], 1)
    data["S_rel_in"] = data["S_in"] / np.maximum(data["S_bd"], 1)
    data["centroid_y"] = rng.uniform(0, 100, n)
    data["centroid_x"] = rng.uniform(0, 200, n)
    for m in maps:
        informative = m in ("E", "pgn_last_oh_p1", "pgn_last_oh_p2", "mcd_E")
        for s in STATS:
            noise = rng.normal(size=n)
            data[f"{m}_{s}"] = (1 - quality) * 2 + 0.7 * noise if informative else noise
    probs = rng.dirichlet(np.ones(N_CLASSES), n)
    for c in range(N_CLASSES):
        data[f"cprob_{c}"] = probs[:, c]
    iou = np.clip(quality + rng.normal(scale=0.15, size=n), 0, 1)
    iou[quality < 0.3] = 0.0
    data["iou"] = iou
    data["iou0"] = iou == 0
    return pd.concat([ids, pd.DataFrame(data)], axis=1)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_table()


def cols_of_maps(df, maps):
    return [c for c in df.columns if any(c == f"{m}_{s}" for m in maps for s in STATS)]


# ------------------------------------------------------------------------------------------------
# feature sets


def test_builtin_sets_select_documented_columns(table):
    cols = list(table.columns)
    sizes = ["S", "S_in", "S_bd", "S_rel", "S_rel_in"]
    cprob = [f"cprob_{c}" for c in range(N_CLASSES)]
    expected_metaseg = [c for c in cols if c in cols_of_maps(table, ["E", "D"]) or c in sizes or c in cprob]
    assert meta.get_feature_set("metaseg").columns(table) == expected_metaseg
    assert len(expected_metaseg) == 20 + 5 + N_CLASSES
    assert meta.get_feature_set("entropy").columns(table) == [f"E_{s}" for s in STATS]  # not mcd_E_*
    assert meta.get_feature_set("max_softmax").columns(table) == [f"V_{s}" for s in STATS]
    oh = [f"pgn_last_oh_p{p}" for p in PS]
    assert meta.get_feature_set("pgn_oh").columns(table) == cols_of_maps(table, oh)
    assert meta.get_feature_set("pgn_uni").columns(table) == cols_of_maps(table, [m.replace("oh", "uni") for m in oh])
    for lab in ("oh", "uni"):
        for p in PS:
            assert meta.get_feature_set(f"pgn_{lab}_p{p}").columns(table) == [f"pgn_last_{lab}_p{p}_{s}" for s in STATS]
    pgn_all = [c for c in cols if c.startswith("pgn_")]
    assert meta.get_feature_set("pgn_all").columns(table) == pgn_all
    assert len(pgn_all) == 12 * 10
    union = [c for c in cols if c in expected_metaseg or c in pgn_all]
    assert meta.get_feature_set("metaseg+pgn").columns(table) == union
    assert meta.get_feature_set("mcd").columns(table) == cols_of_maps(table, ["mcd_E", "mcd_MI"])

    names = [s.name for s in meta.available_feature_sets(table)]
    assert "ensemble" not in names
    expected_names = (
        ["metaseg", "entropy", "max_softmax", "pgn_oh", "pgn_uni"]
        + [f"pgn_{lab}_p{p}" for lab in ("oh", "uni") for p in PS]
        + ["pgn_all", "metaseg+pgn", "mcd"]
    )
    assert names == expected_names
    with pytest.raises(ValueError, match="ensemble"):
        meta.get_feature_set("ensemble").columns(table)


def test_identity_and_targets_never_selected(table):
    every = meta.FeatureSet.from_patterns("everything", ".*").columns(table)
    for c in ("dataset", "split", "frame_id", "segment_id", "pred_class", "centroid_y", "centroid_x", "iou", "iou0"):
        assert c not in every
    assert len(every) == len(table.columns) - 9


def test_custom_patterns_exclude_and_errors(table):
    fs = meta.FeatureSet.from_patterns("p2", "pgn_last_.*_p2_.*")
    assert fs.columns(table) == [c for c in table.columns if c.startswith("pgn_last_") and "_p2_" in c]
    fs = meta.FeatureSet.from_patterns("E_no_var", "E_.*", exclude=[".*var.*"])
    assert fs.columns(table) == [f"E_{s}" for s in STATS if "var" not in s]

    with pytest.raises(ValueError, match=r"'nothing'.*map prefixes.*'E'.*pgn_last_oh_p0_1"):
        meta.FeatureSet.from_patterns("nothing", "foo_.*").columns(table)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        meta.FeatureSet.from_patterns("bad", "E_(")
    with pytest.raises(ValueError, match="unknown feature set"):
        meta.get_feature_set("no_such_set")

    no_pgn = table[[c for c in table.columns if not c.startswith("pgn_")]]
    with pytest.raises(ValueError, match="metaseg\\+pgn"):
        meta.get_feature_set("metaseg+pgn").columns(no_pgn)
    assert meta.get_feature_set("metaseg").columns(no_pgn)  # still fine


def test_selection_is_re_fullmatch_in_table_order_on_awkward_names():
    """FeatureSet.select against a plain loop of re.fullmatch over the names (written here)."""
    import re

    names = ["E_mean", "E_mean\n", "xE_mean", 3, None, "E_var", "iou", "iou0", "centroid_q", "E_MEAN", "pgn_a_p2",
             "S", "S_in", "segment_id", "E_rel"]
    sets = [meta.FeatureSet("a", ("E_.*", "S"), exclude=("E_var",)),
            meta.FeatureSet("b", ("(?i)e_mean", "pgn_(a|b)_p\\d")),
            meta.FeatureSet("c", (".*",), exclude=("S.*", "E_(mean|rel)"))]
    never = ("dataset", "split", "frame_id", "segment_id", "pred_class", "iou", "iou0")
    for fs in sets:
        ref = [c for c in names if isinstance(c, str) and c not in never and not c.startswith("centroid_")
               and any(re.fullmatch(p, c) for p in fs.include) and not any(re.fullmatch(p, c) for p in fs.exclude)]
        assert fs.select(names) == ref
    # by hand: "." does not match the newline, (?i) ignores case, identity and targets never
    assert sets[0].select(names) == ["E_mean", "E_MEAN", "S", "E_rel"]
    assert sets[1].select(names) == ["E_mean", "E_MEAN", "pgn_a_p2"]
    assert sets[2].select(names) == ["xE_mean", "E_var", "E_MEAN", "pgn_a_p2"]


# ------------------------------------------------------------------------------------------------
# split protocols


def test_grouped_split_matches_group_shuffle_split_and_keeps_frames_apart(table):
    splits = list(meta.split_indices(table, "grouped", n_runs=4, seed=7))
    assert len(splits) == 4
    n_frames = table["frame_id"].nunique()
    for r, (train, test) in enumerate(splits):
        gss = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=7 + r)
        ref_train, ref_test = next(gss.split(table, groups=table["frame_id"]))
        np.testing.assert_array_equal(train, ref_train)
        np.testing.assert_array_equal(test, ref_test)
        assert len(train) + len(test) == len(table)
        tr_frames = set(table["frame_id"].iloc[train])
        te_frames = set(table["frame_id"].iloc[test])
        assert not tr_frames & te_frames
        assert len(te_frames) == math.ceil(0.2 * n_frames)


def test_grouped_split_separates_same_frame_id_in_two_datasets():
    a = synthetic_table(n_frames=6, seed=1)
    b = synthetic_table(n_frames=6, seed=2).assign(dataset="other")
    both = pd.concat([a, b], ignore_index=True)
    key = both["dataset"] + "/" + both["frame_id"]
    for train, test in meta.split_indices(both, "grouped", n_runs=5, test_size=0.25):
        assert not set(key.iloc[train]) & set(key.iloc[test])
        assert key.iloc[test].nunique() == 3  # 25 % of 12 images


@pytest.mark.parametrize("protocol, runs, frac", [("pgn_authors", 5, 0.2), ("metaseg", 10, 0.5)])
def test_per_segment_protocols_match_train_test_split(table, protocol, runs, frac):
    splits = list(meta.split_indices(table, protocol))
    assert len(splits) == runs
    for r, (train, test) in enumerate(splits):
        ref_train, ref_test = train_test_split(table, test_size=frac, random_state=r)
        np.testing.assert_array_equal(train, ref_train.index.to_numpy())
        np.testing.assert_array_equal(test, ref_test.index.to_numpy())


@pytest.mark.parametrize("protocol, runs, frac", [("grouped", 5, 0.2), ("pgn_authors", 5, 0.2), ("metaseg", 10, 0.5)])
def test_splits_are_numpys_seeded_permutations(table, protocol, runs, frac):
    """Run r is numpy's RandomState(seed + r) permutation of the segments (of the images when grouped), the
    first ceil(frac * n) of it the test part: the anchors' seeds and indices, written without scikit-learn."""
    seed = 3
    images = pd.factorize(table["frame_id"], sort=True)[0]  # one dataset and split: images by frame_id
    splits = list(meta.split_indices(table, protocol, seed=seed))
    assert len(splits) == runs
    for r, (train, test) in enumerate(splits):
        rng = np.random.RandomState(seed + r)
        if protocol == "grouped":
            perm = rng.permutation(images.max() + 1)
            k = math.ceil(frac * perm.size)
            ref_test, ref_train = np.flatnonzero(np.isin(images, perm[:k])), np.flatnonzero(np.isin(images, perm[k:]))
        else:
            perm = rng.permutation(len(table))
            k = math.ceil(frac * perm.size)
            ref_test, ref_train = perm[:k], perm[k:]
        np.testing.assert_array_equal(test, ref_test)
        np.testing.assert_array_equal(train, ref_train)


def test_unknown_protocol_and_single_frame(table):
    with pytest.raises(ValueError, match="unknown protocol"):
        list(meta.split_indices(table, "kfold"))
    one = table[table["frame_id"] == "frame_000"]
    with pytest.raises(ValueError, match="at least 2 images"):
        list(meta.split_indices(one, "grouped"))


# ------------------------------------------------------------------------------------------------
# evaluation against plain scikit-learn


def reference_run(X, y_cls, y_reg, train, test, scale_all=False):
    """One run computed plainly: scaler on train (or on all), LogisticRegression, LinearRegression."""
    scaler = StandardScaler().fit(X if scale_all else X[train])
    Xs = scaler.transform(X)
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(Xs[train], y_cls[train])
    reg = LinearRegression().fit(Xs[train], y_reg[train])
    out = {}
    for part, idx in (("train", train), ("test", test)):
        proba = clf.predict_proba(Xs[idx])[:, 1]
        pred_iou = np.clip(reg.predict(Xs[idx]), 0, 1)
        out[part] = {
            "auroc": roc_auc_score(y_cls[idx], proba),
            "accuracy": accuracy_score(y_cls[idx], proba > 0.5),
            "r2": r2_score(y_reg[idx], pred_iou),
            "sigma": np.sqrt(mean_squared_error(y_reg[idx], pred_iou)),
            "proba": proba,
            "pred_iou": pred_iou,
        }
    return out


def check_against_reference(results, df, sets, split_pairs, scale_all=False):
    y_cls = df["iou0"].to_numpy(bool)
    y_reg = df["iou"].to_numpy(float)
    for name, cols in sets.items():
        X = df[cols].to_numpy(float)
        for r, (train, test) in enumerate(split_pairs):
            ref = reference_run(X, y_cls, y_reg, train, test, scale_all)
            for part in ("train", "test"):
                row = results[(results.feature_set == name) & (results.run == r) & (results.part == part)]
                assert len(row) == 1
                row = row.iloc[0]
                for metric in ("auroc", "accuracy", "r2", "sigma"):
                    # Same arithmetic, so equal here to the last bit; the tolerance only allows for BLAS
                    # kernels that sum in another order for differently aligned arrays.
                    assert row[metric] == pytest.approx(ref[part][metric], rel=1e-10, abs=1e-13), (name, r, part, metric)
                assert row["n_segments"] == len(train if part == "train" else test)
                assert row["n_features"] == len(cols)
                assert row["iou0_rate"] == pytest.approx(y_cls[train if part == "train" else test].mean())


def test_evaluate_grouped_matches_plain_sklearn(table):
    results = meta.evaluate(table, ["metaseg", "pgn_oh", "entropy"], protocol="grouped", n_runs=3, seed=3)
    assert len(results) == 3 * 3 * 2
    assert set(results.columns) >= {
        "protocol", "standardize", "feature_set", "run", "part", "n_segments", "n_frames",
        "n_features", "iou0_rate", "auroc", "accuracy", "r2", "sigma", "note",
    }
    assert (results["protocol"] == "grouped").all() and (results["note"] == "").all()
    splits = [
        next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=3 + r).split(table, groups=table["frame_id"]))
        for r in range(3)
    ]
    E, D = ([f"{m}_{s}" for s in STATS] for m in ("E", "D"))
    sets = {
        "metaseg": [c for c in table.columns if c in E + D or c.startswith("S") or c.startswith("cprob_")],
        "pgn_oh": cols_of_maps(table, [f"pgn_last_oh_p{p}" for p in PS]),
        "entropy": E,
    }
    check_against_reference(results, table, sets, splits)
    test_rows = results[results.part == "test"]
    n_test_frames = [table["frame_id"].iloc[s[1]].nunique() for s in splits]
    assert test_rows.groupby("run")["n_frames"].first().tolist() == n_test_frames
    # The informative features are informative: a sanity check of the synthetic table itself.
    assert test_rows[test_rows.feature_set == "pgn_oh"]["auroc"].mean() > 0.8


def test_evaluate_authors_protocol_with_leaky_standardisation(table):
    custom = meta.FeatureSet.from_patterns("p1_both", "pgn_last_(oh|uni)_p1_.*")
    results = meta.evaluate(table, [custom, "max_softmax"], protocol="pgn_authors", n_runs=2, standardize="all")
    splits = [train_test_split(np.arange(len(table)), test_size=0.2, random_state=r) for r in range(2)]
    sets = {
        "p1_both": cols_of_maps(table, ["pgn_last_oh_p1", "pgn_last_uni_p1"]),
        "max_softmax": [f"V_{s}" for s in STATS],
    }
    check_against_reference(results, table, sets, splits, scale_all=True)
    # standardize="train" gives different numbers on the same split: the scaler sees train only.
    fair = meta.evaluate(table, [custom], protocol="pgn_authors", n_runs=2, standardize="train")
    check_against_reference(fair, table, {"p1_both": sets["p1_both"]}, splits, scale_all=False)


def test_min_inner_keeps_segments_with_inner_pixels(table):
    results = meta.evaluate(table, ["entropy"], protocol="metaseg", n_runs=2, min_inner=True)
    kept = table[table["S_in"] > 0]
    assert len(kept) < len(table)
    r0 = results[results.run == 0]
    assert r0["n_segments"].sum() == len(kept)
    pos = np.arange(len(kept))
    splits = [train_test_split(pos, test_size=0.5, random_state=r) for r in range(2)]
    check_against_reference(results, kept.reset_index(drop=True), {"entropy": [f"E_{s}" for s in STATS]}, splits)


def test_predictions_of_run0_test_part(table):
    results, preds = meta.evaluate(table, ["entropy", "mcd"], n_runs=2, seed=5, return_predictions=True)
    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=5).split(table, groups=table["frame_id"]))
    y_cls, y_reg = table["iou0"].to_numpy(bool), table["iou"].to_numpy(float)
    for name, maps in (("entropy", ["E"]), ("mcd", ["mcd_E", "mcd_MI"])):
        p = preds[preds.feature_set == name]
        assert (p["run"] == 0).all()
        np.testing.assert_array_equal(p["row"].to_numpy(), table.index.to_numpy()[test])
        np.testing.assert_array_equal(p["frame_id"].to_numpy(), table["frame_id"].to_numpy()[test])
        np.testing.assert_array_equal(p["segment_id"].to_numpy(), table["segment_id"].to_numpy()[test])
        ref = reference_run(table[cols_of_maps(table, maps)].to_numpy(float), y_cls, y_reg, train, test)["test"]
        np.testing.assert_allclose(p["p_iou0"].to_numpy(), ref["proba"], rtol=1e-10)
        np.testing.assert_allclose(p["iou_pred"].to_numpy(), ref["pred_iou"], rtol=1e-10, atol=1e-13)
        np.testing.assert_array_equal(p["iou"].to_numpy(), y_reg[test])
        np.testing.assert_array_equal(p["iou0"].to_numpy(), y_cls[test])
        assert p["iou_pred"].between(0, 1).all()
        row = results[(results.feature_set == name) & (results.run == 0) & (results.part == "test")].iloc[0]
        assert row["auroc"] == pytest.approx(roc_auc_score(p["iou0"], p["p_iou0"]), rel=1e-12)


def test_default_feature_sets_are_the_available_ones(table):
    small = table[[c for c in table.columns if not c.startswith(("pgn_", "mcd_"))]]
    results = meta.evaluate(small, n_runs=1)
    assert list(dict.fromkeys(results["feature_set"])) == ["metaseg", "entropy", "max_softmax"]


@pytest.mark.parametrize("model", ["linear", "gbt"])
def test_run_r_is_seeded_with_seed_plus_r(table, model):
    """Run 1 of seed 11 is run 0 of seed 12 (split and model seeds), and run 0 differs between them."""
    a = meta.evaluate(table, ["entropy"], n_runs=2, seed=11, models=[model])
    b = meta.evaluate(table, ["entropy"], n_runs=2, seed=12, models=[model])
    metrics = ["n_segments", "n_frames", "iou0_rate", "auroc", "accuracy", "r2", "sigma"]
    run = lambda res, r: res.loc[res["run"] == r, metrics].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(run(a, 1), run(b, 0))
    assert not np.array_equal(run(a, 0)["auroc"].to_numpy(), run(b, 0)["auroc"].to_numpy())


# ------------------------------------------------------------------------------------------------
# summary and files


def test_summarise_is_mean_and_std_over_runs(table):
    results = meta.evaluate(table, ["entropy", "metaseg"], protocol="metaseg", n_runs=4)
    summary = meta.summarise(results)
    assert summary["feature_set"].tolist() == ["entropy", "metaseg"]
    for _, row in summary.iterrows():
        assert row["n_runs"] == 4
        for metric in ("auroc", "accuracy", "r2", "sigma"):
            for part in ("train", "test"):
                v = [
                    results[(results.feature_set == row.feature_set) & (results.run == r) & (results.part == part)][metric].item()
                    for r in range(4)
                ]
                assert row[f"{metric}_{part}_mean"] == pytest.approx(sum(v) / 4, rel=1e-12)
                mean = sum(v) / 4
                assert row[f"{metric}_{part}_std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in v) / 4), rel=1e-9, abs=1e-15)
    sample = meta.summarise(results, ddof=1)
    assert (sample["auroc_test_std"] > summary["auroc_test_std"]).all()


def test_write_results_round_trip(table, tmp_path):
    results, preds = meta.evaluate(table, ["entropy", "pgn_oh_p2"], n_runs=2, return_predictions=True)
    summary = meta.summarise(results)
    paths = meta.write_results(results, summary, tmp_path / "meta", predictions=preds, metadata={"source": "t.parquet"})
    assert set(paths) == {"results_csv", "summary_csv", "summary_json", "predictions_csv"}
    back = pd.read_csv(paths["results_csv"], keep_default_na=False, na_values=[""])
    np.testing.assert_allclose(back["auroc"], results["auroc"], rtol=1e-15)
    assert back["feature_set"].tolist() == results["feature_set"].tolist()
    s_back = pd.read_csv(paths["summary_csv"])
    np.testing.assert_allclose(s_back["r2_test_mean"], summary["r2_test_mean"], rtol=1e-15)
    assert len(pd.read_csv(paths["predictions_csv"])) == len(preds)
    doc = json.loads(paths["summary_json"].read_text())
    assert doc["metadata"] == {"source": "t.parquet"}
    assert [r["feature_set"] for r in doc["summary"]] == ["entropy", "pgn_oh_p2"]
    assert doc["summary"][0]["auroc_test_mean"] == pytest.approx(summary["auroc_test_mean"].iloc[0])
    assert len(doc["results"]) == len(results)
    assert not list((tmp_path / "meta").glob("*.tmp"))


# ------------------------------------------------------------------------------------------------
# input checks


def test_table_without_targets_is_refused(table):
    no_cols = table.drop(columns=["iou", "iou0"])
    with pytest.raises(ValueError, match=r"^test_set\.parquet: .*no ground truth targets"):
        meta.evaluate(no_cols, ["entropy"], source="test_set.parquet")
    nulls = table.assign(iou=np.nan, iou0=pd.array([pd.NA] * len(table), dtype="boolean"))
    with pytest.raises(ValueError, match=r"^other\.parquet: .*no ground truth targets"):
        meta.evaluate(nulls, ["entropy"], source="other.parquet")
    partial = table.copy()
    partial["iou"] = partial["iou"].where(partial["frame_id"] != "frame_004")
    with pytest.raises(ValueError, match=r"no ground truth targets for \d+ of .*frame_004"):
        meta.evaluate(partial, ["entropy"])


def test_nullable_boolean_targets_are_accepted(table):
    t = table.assign(iou0=table["iou0"].astype("boolean"))
    pd.testing.assert_frame_equal(meta.evaluate(t, ["entropy"], n_runs=1), meta.evaluate(table, ["entropy"], n_runs=1))


def test_nan_or_inf_features_are_named(table):
    bad = table.copy()
    bad.loc[3, "E_var"] = np.nan
    bad.loc[7, "E_rel_in"] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf.*\['E_rel_in', 'E_var'\]|NaN or inf.*E_rel_in.*E_var"):
        meta.evaluate(bad, ["entropy"])
    # a set that does not use the broken columns is fine
    assert len(meta.evaluate(bad, ["max_softmax"], n_runs=1)) == 2


def test_single_class_training_part_skips_classifier_with_reason(table):
    one_class = table.assign(iou=np.clip(table["iou"], 0.05, 1), iou0=False)
    results = meta.evaluate(one_class, ["entropy"], protocol="pgn_authors", n_runs=2)
    assert results["auroc"].isna().all() and results["accuracy"].isna().all()
    assert results["note"].str.contains("classifier skipped.*only iou0=False").all()
    # the regression is still fitted and scored
    train, test = train_test_split(np.arange(len(table)), test_size=0.2, random_state=0)
    X = one_class[[f"E_{s}" for s in STATS]].to_numpy(float)
    scaler = StandardScaler().fit(X[train])
    reg = LinearRegression().fit(scaler.transform(X[train]), one_class["iou"].to_numpy()[train])
    pred = np.clip(reg.predict(scaler.transform(X[test])), 0, 1)
    row = results[(results.run == 0) & (results.part == "test")].iloc[0]
    assert row["r2"] == pytest.approx(r2_score(one_class["iou"].to_numpy()[test], pred), rel=1e-12)
    summary = meta.summarise(results)
    assert math.isnan(summary["auroc_test_mean"].iloc[0]) and "classifier skipped" in summary["notes"].iloc[0]
    assert not math.isnan(summary["r2_test_mean"].iloc[0])


def test_bad_arguments(table):
    with pytest.raises(ValueError, match="standardize"):
        meta.evaluate(table, ["entropy"], standardize="none")
    with pytest.raises(ValueError, match="unique"):
        meta.evaluate(table, ["entropy", meta.FeatureSet.from_patterns("entropy", "E_.*")])
    with pytest.raises(ValueError, match="not numeric"):
        meta.evaluate(table.assign(E_mean=table["E_mean"].astype(str)), ["entropy"])


def test_single_class_test_part_gives_nan_auroc_with_reason(table):
    # Two IoU-0 segments, both in the training part of run 0 (the split drawn plainly here).
    train, test = train_test_split(np.arange(len(table)), test_size=0.2, random_state=0)
    iou = np.clip(table["iou"].to_numpy(), 0.05, 1)
    iou[train[:2]] = 0.0
    rare = table.assign(iou=iou, iou0=iou == 0)
    results = meta.evaluate(rare, ["entropy"], protocol="pgn_authors", n_runs=1)
    tr = results[results.part == "train"].iloc[0]
    te = results[results.part == "test"].iloc[0]
    assert not math.isnan(tr["auroc"]) and tr["note"] == ""
    assert math.isnan(te["auroc"]) and "AuROC undefined: test part of run 0 has only iou0=False" in te["note"]
    assert not math.isnan(te["accuracy"]) and te["iou0_rate"] == 0.0


# ------------------------------------------------------------------------------------------------
# meta models beyond linear


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # the reference MLP, like ours
def test_gbt_and_mlp_models_match_plain_sklearn():
    from threadpoolctl import threadpool_limits

    table = synthetic_table(n_frames=12, seed=1)  # small: the MLPs run their epochs in Python

    results, preds = meta.evaluate(table, ["entropy"], n_runs=1, seed=3, models=["linear", "gbt", "mlp"],
                                   return_predictions=True)
    assert list(dict.fromkeys(results["model"])) == ["linear", "gbt", "mlp"]
    assert len(results) == 3 * 1 * 2
    X = table[[f"E_{s}" for s in STATS]].to_numpy(float)
    y, iou = table["iou0"].to_numpy(bool), table["iou"].to_numpy(float)
    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=3).split(table, groups=table["frame_id"]))
    scaler = StandardScaler().fit(X[train])
    Xs = scaler.transform(X)
    with threadpool_limits(limits=1):  # as evaluate() fits; OpenMP threads on a busy machine are slow
        refs = _reference_models(X, Xs, y, iou, train)
    for model, (clf, reg, Xm) in refs.items():
        p = preds[(preds["model"] == model) & (preds["feature_set"] == "entropy")]
        proba = clf.predict_proba(Xm[test])[:, 1]
        iou_pred = np.clip(reg.predict(Xm[test]), 0, 1)
        np.testing.assert_allclose(p["p_iou0"].to_numpy(), proba, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(p["iou_pred"].to_numpy(), iou_pred, rtol=1e-9, atol=1e-12)
        row = results[(results["model"] == model) & (results["run"] == 0) & (results["part"] == "test")].iloc[0]
        assert row["auroc"] == pytest.approx(roc_auc_score(y[test], proba), rel=1e-12)
        assert row["r2"] == pytest.approx(r2_score(iou[test], iou_pred), rel=1e-12)
        assert row["accuracy"] == pytest.approx(accuracy_score(y[test], proba > 0.5), rel=1e-12)
        assert 0.5 < row["auroc"] <= 1 and row["r2"] > 0  # E carries the signal of the synthetic table
    summary = meta.summarise(results)
    assert summary[["feature_set", "model"]].values.tolist() == [["entropy", "linear"], ["entropy", "gbt"],
                                                                 ["entropy", "mlp"]]
    # the linear rows are what evaluate() gives without models
    linear = results[results["model"] == "linear"].drop(columns="model").reset_index(drop=True)
    pd.testing.assert_frame_equal(linear, meta.evaluate(table, ["entropy"], n_runs=1, seed=3).drop(columns="model"))


def _reference_models(X, Xs, y, iou, train):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    return {
        "gbt": (HistGradientBoostingClassifier(**meta.GBT_PARAMS, random_state=3).fit(X[train], y[train]),
                HistGradientBoostingRegressor(**meta.GBT_PARAMS, random_state=3).fit(X[train], iou[train]), X),
        "mlp": (MLPClassifier(**meta.MLP_PARAMS, random_state=3).fit(Xs[train], y[train]),
                MLPRegressor(**meta.MLP_PARAMS, random_state=3).fit(Xs[train], iou[train]), Xs),
    }


def test_unknown_model_is_refused(table):
    with pytest.raises(ValueError, match=r"unknown meta model\(s\) \['forest'\]; choose from \['linear', 'gbt', 'mlp'\]"):
        meta.evaluate(table, ["entropy"], models=["linear", "forest"])
    with pytest.raises(ValueError, match="empty"):
        meta.evaluate(table, ["entropy"], models=[])
