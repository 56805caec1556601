"""Segments, inner/boundary, IoU_adj and segment features.

Checked against MetaSeg's own output (the reference CSV) and against a brute-force computation
written plainly here: Python loops over pixels, BFS for components, exact variances.
"""

import math
import statistics
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from metaseg_pgn.maps import softmax_maps
from metaseg_pgn.segments import (
    _raster_ordered,
    adjusted_iou,
    boundary_mask,
    label_segments,
    map_columns,
    segment_features,
)

from conftest import REFERENCE_DATA

REFERENCE = REFERENCE_DATA / "metaseg"
VOID = 255
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


# ------------------------------------------------------------------------------------------------
# Brute force
# ------------------------------------------------------------------------------------------------


def brute_force(pred, probs, maps, gt=None, void=VOID):
    """Per-segment features by plain loops: returns (segment id image, boundary image, row dicts)."""
    h, w = pred.shape
    voided = [[int(pred[y][x]) for x in range(w)] for y in range(h)]
    if gt is not None:
        for y in range(h):
            for x in range(w):
                if gt[y][x] == void:
                    voided[y][x] = void

    def neighbours(y, x):
        for dy, dx in NEIGHBOURS:
            if 0 <= y + dy < h and 0 <= x + dx < w:
                yield y + dy, x + dx

    # Components by BFS, started in raster order, so ids follow each segment's first pixel.
    seg = [[0] * w for _ in range(h)]
    members = []
    for y0 in range(h):
        for x0 in range(w):
            if voided[y0][x0] == void or seg[y0][x0]:
                continue
            sid = len(members) + 1
            c = voided[y0][x0]
            seg[y0][x0] = sid
            queue, pixels = deque([(y0, x0)]), []
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for ny, nx in neighbours(y, x):
                    if voided[ny][nx] == c and not seg[ny][nx]:
                        seg[ny][nx] = sid
                        queue.append((ny, nx))
            members.append(pixels)

    rows = []
    boundary = np.zeros((h, w), dtype=bool)
    for k, pixels in enumerate(members, start=1):
        c = voided[pixels[0][0]][pixels[0][1]]
        is_bd = {p: any(voided[ny][nx] != c for ny, nx in neighbours(*p)) for p in pixels}
        for p, b in is_bd.items():
            boundary[p] = b
        inner = [p for p in pixels if not is_bd[p]]
        bound = [p for p in pixels if is_bd[p]]
        s, s_in, s_bd = len(pixels), len(inner), len(bound)
        denom = max(s_bd, 1)
        row = {
            "segment_id": k, "pred_class": c, "S": s, "S_in": s_in, "S_bd": s_bd,
            "S_rel": s / denom, "S_rel_in": s_in / denom,
            "centroid_y": sum(p[0] for p in pixels) / s, "centroid_x": sum(p[1] for p in pixels) / s,
        }
        for name, m in maps.items():
            def mean(region):
                return math.fsum(float(m[y][x]) for y, x in region) / len(region) if region else 0.0

            def var(region):  # exact rational arithmetic
                return float(statistics.pvariance([float(m[y][x]) for y, x in region])) if region else 0.0

            row[f"{name}_mean"], row[f"{name}_in_mean"], row[f"{name}_bd_mean"] = mean(pixels), mean(inner), mean(bound)
            row[f"{name}_rel"] = row[f"{name}_mean"] * s / denom
            row[f"{name}_rel_in"] = row[f"{name}_in_mean"] * s_in / denom
            row[f"{name}_var"], row[f"{name}_in_var"], row[f"{name}_bd_var"] = var(pixels), var(inner), var(bound)
            row[f"{name}_var_rel"] = row[f"{name}_var"] * s / denom
            row[f"{name}_var_rel_in"] = row[f"{name}_in_var"] * s_in / denom
        for ch in range(probs.shape[0]):
            row[f"cprob_{ch}"] = math.fsum(float(probs[ch][y][x]) for y, x in pixels) / s
        if gt is not None:
            inter = sum(1 for y, x in pixels if gt[y][x] == c)
            # A_k: grow {gt == c and pred != c} from the pixels touching the segment.
            in_seg = set(pixels)
            added = set()
            queue = deque()
            for p in pixels:
                for q in neighbours(*p):
                    if q not in in_seg and gt[q[0]][q[1]] == c and pred[q[0]][q[1]] != c and q not in added:
                        added.add(q)
                        queue.append(q)
            while queue:
                for q in neighbours(*queue.popleft()):
                    if gt[q[0]][q[1]] == c and pred[q[0]][q[1]] != c and q not in added:
                        added.add(q)
                        queue.append(q)
            row["iou"] = inter / (s + len(added))
            row["iou0"] = inter == 0
        rows.append(row)
    return np.array(seg, dtype=np.int64), boundary, rows


def random_scene(rng, h, w, n_classes, void_frac=0.1, smooth=True):
    """A label map with blobs and single-pixel speckles, a ground truth, probs (C, H, W)."""
    speckle = rng.random((h, w)) < 0.08
    if smooth:
        coarse = rng.integers(0, n_classes, size=(h // 3 + 1, w // 3 + 1))
        pred = np.kron(coarse, np.ones((3, 3), dtype=np.int64))[:h, :w]
        pred[speckle] = rng.integers(0, n_classes, size=speckle.sum())
    else:
        pred = rng.integers(0, n_classes, size=(h, w))
    gt = pred.copy()
    flip = rng.random((h, w)) < 0.25
    gt[flip] = rng.integers(0, n_classes, size=flip.sum())
    gt[speckle] = (pred[speckle] + 1) % n_classes  # false positives
    gt[rng.random((h, w)) < void_frac] = VOID
    if void_frac:
        gt[h // 2 : h // 2 + 2, : w // 3] = VOID  # a void bar
    logits = rng.standard_normal((n_classes, h, w)) * 2
    logits[pred, np.arange(h)[:, None], np.arange(w)] += 5  # pred = argmax
    probs = np.exp(logits - logits.max(0))
    probs /= probs.sum(0)
    return pred, gt, probs


def random_maps(rng, probs):
    e = softmax_maps(probs)
    h, w = probs.shape[1:]
    return {
        "E": e["E"].astype(np.float32),
        "D": e["D"],
        "V": e["V"],
        "pgn_last_oh_p0_1": 1e30 * rng.random((h, w)),  # huge values, spread
        "pgn_last_uni_p2": 10.0 ** rng.uniform(-5, 30, size=(h, w)),  # huge dynamic range
        "const_big": np.full((h, w), 3e29) + rng.integers(0, 2, size=(h, w)) * 1e14,  # tiny spread, huge mean
    }


def assert_matches(df, rows, with_gt=True):
    assert len(df) == len(rows)
    for col in df.columns:
        got = df[col].to_numpy()
        want = np.array([r[col] for r in rows])
        if col in ("segment_id", "pred_class", "S", "S_in", "S_bd", "iou0"):
            np.testing.assert_array_equal(got, want, err_msg=col)
        elif col.endswith("var") or "_var_" in col:
            scale = max((abs(r[col.split("_var")[0] + "_mean"]) for r in rows), default=1.0)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-13 * scale**2, err_msg=col)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300, err_msg=col)
    if with_gt:
        assert "iou" in df and "iou0" in df


def segments_touching_border(segments):
    border = np.concatenate([segments[0], segments[-1], segments[:, 0], segments[:, -1]])
    return np.unique(border[border > 0])


def assert_all_finite(df):
    for col in df.columns:
        if df[col].dtype.kind == "f":
            assert np.isfinite(df[col].to_numpy()).all(), col


def expected_columns(map_names, n_classes, with_target=True):
    cols = ["segment_id", "pred_class", "S", "S_in", "S_bd", "S_rel", "S_rel_in", "centroid_y", "centroid_x"]
    for m in map_names:
        cols += map_columns(m)
    cols += [f"cprob_{c}" for c in range(n_classes)]
    return cols + ["iou", "iou0"]


# ------------------------------------------------------------------------------------------------
# Reference: MetaSeg's own extractor
# ------------------------------------------------------------------------------------------------


def test_reproduces_metaseg_reference():
    data = np.load(REFERENCE / "syn1.npz")
    ref = pd.read_csv(REFERENCE / "syn1_metaseg.csv")
    probs = data["probs"].transpose(2, 0, 1)
    gt = data["gt"]
    m = softmax_maps(probs)
    df = segment_features(probs.argmax(0), probs, {"E": m["E"], "D": m["D"]}, gt)

    assert len(df) == len(ref)
    np.testing.assert_array_equal(df["segment_id"], ref["segment_id"])
    np.testing.assert_array_equal(df["pred_class"], ref["class"])
    for col in ("S", "S_in", "S_bd"):
        np.testing.assert_array_equal(df[col], ref[col])
    np.testing.assert_array_equal(df["iou"], ref["iou"])
    np.testing.assert_array_equal(df["iou0"], ref["iou0"].astype(bool))
    pairs = {"S_rel": "S_rel", "S_rel_in": "S_rel_in"}
    for h in ("E", "D"):
        pairs.update({f"{h}_mean": h, f"{h}_in_mean": f"{h}_in", f"{h}_bd_mean": f"{h}_bd",
                      f"{h}_rel": f"{h}_rel", f"{h}_rel_in": f"{h}_rel_in"})
    pairs.update({f"cprob_{c}": f"cprob{c}" for c in range(probs.shape[0])})
    for ours, theirs in pairs.items():
        np.testing.assert_allclose(df[ours], ref[theirs], rtol=1e-4, atol=0, err_msg=ours)
    assert_all_finite(df)


# ------------------------------------------------------------------------------------------------
# Brute force on random scenes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_features_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    h, w = [(11, 17), (9, 9), (16, 12), (7, 23), (12, 12), (10, 15)][seed]
    n_classes = 3 + seed % 3
    pred, gt, probs = random_scene(rng, h, w, n_classes, smooth=seed % 2 == 0)
    maps = random_maps(rng, probs)
    df = segment_features(pred, probs, maps, gt)
    seg, bd_brute, rows = brute_force(pred, probs, maps, gt)

    assert list(df.columns) == expected_columns(maps, n_classes)
    assert df["segment_id"].dtype == np.int32 and df["pred_class"].dtype == np.int16
    assert all(df[c].dtype == np.int64 for c in ("S", "S_in", "S_bd"))
    assert df["iou"].dtype == np.float64 and df["iou0"].dtype == bool
    if seed % 2 == 0:  # the blob scenes hold the cases that matter (noise scenes: no inner pixels)
        assert (df["S"] == 1).any() and (df["S_in"] == 0).any() and (df["S_in"] > 0).any()
        assert (segments_touching_border(label_segments(pred, gt)[0]) > 0).any()
        assert ((df["iou"] > 0) & (df["iou"] < 1)).any() and df["iou0"].any()
    assert_matches(df, rows)
    assert_all_finite(df)

    segments, n = label_segments(pred, gt)
    assert segments.dtype == np.int32 and n == len(rows)
    np.testing.assert_array_equal(segments, seg)
    bd = boundary_mask(segments)
    assert bd.dtype == bool
    np.testing.assert_array_equal(bd, bd_brute)
    np.testing.assert_allclose(adjusted_iou(segments, pred, gt), [r["iou"] for r in rows], rtol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_without_ground_truth(seed):
    rng = np.random.default_rng(100 + seed)
    pred, _, probs = random_scene(rng, 10, 14, 4, void_frac=0.0)
    pred[0, :3] = VOID  # pixels already void in the prediction belong to no segment
    maps = random_maps(rng, probs)
    df = segment_features(pred, probs, maps)
    seg, _, rows = brute_force(pred, probs, maps)
    assert list(df.columns) == expected_columns(maps, 4)
    assert df["iou"].isna().all() and df["iou0"].isna().all()
    assert_matches(df.drop(columns=["iou", "iou0"]), rows, with_gt=False)
    assert_all_finite(df.drop(columns=["iou", "iou0"]))
    np.testing.assert_array_equal(label_segments(pred)[0], seg)

    # Arrow: the same types as with ground truth, targets as nulls
    table = pa.Table.from_pandas(df, preserve_index=False)
    with_gt = pa.Table.from_pandas(segment_features(pred, probs, maps, np.where(pred == VOID, 0, pred)),
                                   preserve_index=False)
    assert table.schema.field("iou").type == pa.float64() == with_gt.schema.field("iou").type
    assert table.schema.field("iou0").type == pa.bool_() == with_gt.schema.field("iou0").type
    assert table.column("iou").null_count == len(df) and with_gt.column("iou").null_count == 0


def test_segment_filling_the_image_and_empty_frame():
    rng = np.random.default_rng(7)
    h, w = 6, 8
    pred = np.full((h, w), 2)
    probs = rng.dirichlet(np.ones(3), size=(h, w)).transpose(2, 0, 1)
    probs[2] += 2
    probs /= probs.sum(0)
    maps = {"E": softmax_maps(probs)["E"], "big": 1e30 * rng.random((h, w))}
    for gt in (np.full((h, w), 2), np.full((h, w), 1)):
        df = segment_features(pred, probs, maps, gt)
        _, _, rows = brute_force(pred, probs, maps, gt)
        assert len(df) == 1 and df["S_bd"].iloc[0] == 0 and df["S_in"].iloc[0] == h * w
        assert df["S_rel"].iloc[0] == h * w and df["E_bd_mean"].iloc[0] == 0 and df["E_bd_var"].iloc[0] == 0
        assert_matches(df, rows)
        assert_all_finite(df)
    assert segment_features(pred, probs, maps, np.full((h, w), 2))["iou"].iloc[0] == 1.0
    assert segment_features(pred, probs, maps, np.full((h, w), 1))["iou0"].iloc[0]

    empty = segment_features(pred, probs, maps, np.full((h, w), VOID))
    assert len(empty) == 0 and list(empty.columns) == expected_columns(maps, 3)
    assert label_segments(pred, np.full((h, w), VOID))[1] == 0


def test_raster_renumbering_of_any_labelling():
    rng = np.random.default_rng(3)
    pred, gt, _ = random_scene(rng, 12, 12, 3)
    segments, n = label_segments(pred, gt)
    perm = np.concatenate(([0], 1 + rng.permutation(n)))
    scrambled = perm[segments].astype(np.int32)
    assert not np.array_equal(scrambled, segments)
    np.testing.assert_array_equal(_raster_ordered(scrambled, n), segments)


def test_bad_inputs_raise():
    rng = np.random.default_rng(4)
    pred, gt, probs = random_scene(rng, 8, 8, 3)
    ok = {"E": np.zeros((8, 8))}
    with pytest.raises(ValueError):
        segment_features(pred, probs.transpose(1, 2, 0), ok, gt)  # (H, W, C)
    with pytest.raises(ValueError):
        segment_features(pred, probs, {"E": np.zeros((8, 7))}, gt)
    with pytest.raises(ValueError):
        segment_features(pred, probs, {"E": np.full((8, 8), np.nan)}, gt)
    with pytest.raises(ValueError):
        segment_features(pred, probs, {"E": np.full((8, 8), 1e200) * rng.random((8, 8))}, gt)  # var overflows
    with pytest.raises(ValueError):
        segment_features(pred, probs, {"S": np.zeros((8, 8))}, gt)  # S_rel collides
    with pytest.raises(ValueError):
        label_segments(pred.astype(float))
