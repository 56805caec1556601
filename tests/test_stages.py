"""The stages as a layer: what they import, what they record for each other, what they leave as found.

- no stage module imports another stage module (what several share lives below them);
- ``infer`` records each dataset's OoD track and a preview of every input image; ``features``
  stores every frame's segment label map; each is checked against an independent computation
  (the dataset's own image, scipy's connected components, the Parquet rows) and recomputed alone
  when damaged;
- ``features.compute_frame`` gives its caller the torch thread count back on every path.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage

from conftest import REPO, tiny_overrides
from metaseg_pgn import config as config_mod
from metaseg_pgn.data.select import dataset_configs, dataset_key, make_dataset
from metaseg_pgn.frame_files import (PREVIEW_MAX_SIDE, preview_image, preview_size, read_preview,
                                     read_segment_map)
from metaseg_pgn.run import run_pipeline
from metaseg_pgn.store import RecordError, read_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES_DIR = REPO / "metaseg_pgn" / "stages"
SHARED = {"__init__", "common", "base"}  # the stages' own shared layer, not stages

#: Imports between stage modules still to be removed; each must still exist (so the list shrinks
#: instead of hiding new ones). Empty since the report's rewrite (branch h11-report).
PENDING: set[tuple[str, str]] = set()


def stage_imports(path: Path) -> set[str]:
    """The stage modules (siblings in metaseg_pgn/stages/) that the module at ``path`` imports."""
    siblings = {p.stem for p in STAGES_DIR.glob("*.py")} - SHARED
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # from .x import y / from . import x
                names = [module.split(".")[0]] if module else [a.name for a in node.names]
            elif node.level == 0 and module.startswith("metaseg_pgn.stages"):
                rest = module.split(".")[2:]
                names = rest[:1] if rest else [a.name for a in node.names]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[2] for a in node.names
                     if a.name.startswith("metaseg_pgn.stages.") and len(a.name.split(".")) > 2]
        else:
            continue
        found |= set(names) & siblings
    return found


def test_no_stage_module_imports_another():
    edges = {(p.stem, other) for p in sorted(STAGES_DIR.glob("*.py")) if p.stem not in SHARED
             for other in stage_imports(p) if other != p.stem}
    assert edges - PENDING == set(), "stage modules import each other; move what they share below them"
    assert PENDING <= edges, f"no longer imported, remove from PENDING: {sorted(PENDING - edges)}"


def test_the_import_check_sees_every_form_of_import(tmp_path, monkeypatch):
    for text in ("from .infer import make_plan", "from . import infer", "import metaseg_pgn.stages.infer",
                 "from metaseg_pgn.stages.infer import x", "from metaseg_pgn.stages import infer",
                 "def f():\n    from .infer import x"):
        path = tmp_path / "probe.py"
        path.write_text(text + "\n")
        assert stage_imports(path) == {"infer"}, text
    for text in ("from .common import x", "from ..data.select import make_dataset", "import metaseg_pgn.io"):
        (tmp_path / "probe.py").write_text(text + "\n")
        assert stage_imports(tmp_path / "probe.py") == set(), text


# ------------------------------------------------------------------------------------------------
# what infer and features record


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("stages") / "run"
    cfg = config_mod.compose(tiny_overrides(run_dir, n=3, n_ood=2) + ["stage=[infer,features,ood_eval]"])
    run_pipeline(cfg)
    return run_dir


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def compose(run: Path, stage: str) -> dict:
    return config_mod.compose(tiny_overrides(run, n=3, n_ood=2) + [f"stage={stage}"])


def test_infer_records_each_dataset_track_and_ood_eval_uses_it(run):
    outputs = manifest(run, "infer")["outputs"]
    assert {k: v["track"] for k, v in outputs.items()} == {
        "synthetic-val": None, "synthetic_obstacle-all": "obstacle", "synthetic_anomaly-all": "anomaly"}
    table = pd.read_csv(run / "ood_eval" / "ood_eval.csv")
    assert dict(table.groupby("dataset")["track"].unique().map(list)) == {
        "synthetic_obstacle-all": ["obstacle"], "synthetic_anomaly-all": ["anomaly"]}


def test_previews_are_the_input_images_and_listed_in_the_manifest(run):
    man = manifest(run, "infer")
    cfg = compose(run, "infer")
    for ds_cfg in dataset_configs(cfg):
        out = man["outputs"][dataset_key(ds_cfg)]
        ds = make_dataset(ds_cfg)
        for frame_id in out["frames"]:
            rel = f"{out['previews']}/{frame_id}.png"
            assert rel in man["files"]
            png = Image.open(run / rel)
            assert (png.format, png.mode) == ("PNG", "RGB")
            # 64 x 128 frames are below the size limit: the preview is the image, pixel for pixel
            assert np.array_equal(read_preview(run / rel), ds.load(frame_id).image)


def test_a_large_image_is_shrunk_to_the_limit_by_area_averaging():
    assert preview_size(300, 400) == (300, 400)
    assert preview_size(1024, 2048) == (256, 512) and preview_size(2048, 1000) == (512, 250)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    small = preview_image(image)
    assert small.shape == (256, 512, 3) and small.dtype == np.uint8
    blocks = image.reshape(256, 4, 512, 4, 3).astype(np.float64).mean(axis=(1, 3))  # 4 x 4 means
    # Pillow's box filter: two passes (rows, then columns), each rounded to 8 bits
    assert np.abs(small - blocks).max() <= 1
    assert max(preview_image(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)).shape[:2]) == PREVIEW_MAX_SIDE


def test_segment_maps_are_the_connected_components_of_the_rows(run):
    man = manifest(run, "features")
    out = man["outputs"]["synthetic-val"]
    table = pd.read_parquet(run / out["path"])
    infer_out = manifest(run, "infer")["outputs"]["synthetic-val"]
    checked = 0
    for frame_id in infer_out["frames"]:
        rel = f"{out['segments']}/{frame_id}.npz"
        assert rel in man["files"]
        segments = read_segment_map(run / rel)
        record = read_record(run / infer_out["records"] / f"{frame_id}.npz", infer_out["fingerprints"])
        rows = table[table["frame_id"] == frame_id].set_index("segment_id")
        assert segments.dtype == np.int32 and segments.shape == record.pred.shape
        assert (segments == 0).sum() == (record.label == 255).sum()  # void pixels belong to no segment
        assert sorted(np.unique(segments[segments > 0])) == sorted(rows.index)
        # each segment: one predicted class, the size of its row, and one 8-connected component of
        # that class (scipy), numbered in raster order of first pixels
        first = []
        for seg_id, row in rows.iterrows():
            mask = segments == seg_id
            assert mask.sum() == row["S"]
            assert set(np.unique(record.pred[mask])) == {row["pred_class"]}
            cls = (record.pred == row["pred_class"]) & (record.label != 255)
            comp, _ = ndimage.label(cls, structure=np.ones((3, 3)))
            ids = np.unique(comp[mask])
            assert len(ids) == 1 and np.array_equal(comp == ids[0], mask)
            first.append(np.flatnonzero(mask.ravel())[0])
            checked += 1
        assert first == sorted(first)
    assert checked >= 10


def test_a_damaged_preview_or_segment_map_is_recomputed_alone(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    infer_out = manifest(copy, "infer")["outputs"]["synthetic-val"]
    feat_out = manifest(copy, "features")["outputs"]["synthetic-val"]
    preview = copy / infer_out["previews"] / "val_000001.png"
    untagged = copy / infer_out["previews"] / "val_000002.png"  # a whole PNG of another format
    segmap = copy / feat_out["segments"] / "val_000002.npz"
    want_preview, want_untagged, want_segments = preview.read_bytes(), untagged.read_bytes(), segmap.read_bytes()
    preview.write_bytes(want_preview[: len(want_preview) // 2])
    Image.fromarray(read_preview(untagged)).save(untagged)
    segmap.unlink()
    records = sorted((copy / infer_out["records"]).iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in records}

    run_pipeline(compose(copy, "[infer,features]"))
    assert preview.read_bytes() == want_preview and segmap.read_bytes() == want_segments
    assert untagged.read_bytes() == want_untagged
    assert {p: p.stat().st_mtime_ns for p in records} == stamps  # no record was recomputed
    assert manifest(copy, "infer")["files"] == manifest(run, "infer")["files"]
    assert manifest(copy, "features")["files"] == manifest(run, "features")["files"]


# ------------------------------------------------------------------------------------------------
# global state


def test_compute_frame_gives_the_caller_its_thread_count_back(run, tmp_path):
    from metaseg_pgn.stages.features import compute_frame

    out = manifest(run, "infer")["outputs"]["synthetic-val"]
    record = str(run / out["records"] / "val_000000.npz")
    torch.set_num_threads(2)  # the module fixture restores the caller's count afterwards
    compute_frame(record, str(tmp_path / "f.parquet"), out["fingerprints"], "fp", "exact", str(tmp_path / "s.npz"))
    assert torch.get_num_threads() == 2
    assert (tmp_path / "f.parquet").exists() and (tmp_path / "s.npz").exists()
    with pytest.raises(RecordError, match="another configuration"):
        compute_frame(record, str(tmp_path / "g.parquet"), {"core": "other"}, "fp", "exact")
    assert torch.get_num_threads() == 2


def test_training_uses_its_threads_and_gives_the_caller_its_count_back(tmp_path):
    from metaseg_pgn.stages.train import train

    torch.set_num_threads(1)  # the module fixture restores the caller's count afterwards
    record = train({"threads": 2, "n_train": 2, "n_val": 1, "size": [32, 64], "crop": [32, 64], "iterations": 1,
                    "eval_every": 0, "batch_size": 2, "progress": False, "cache": None, "out": str(tmp_path)})
    assert record["timing"]["torch_threads"] == 2  # what it trained with
    assert torch.get_num_threads() == 1


# ------------------------------------------------------------------------------------------------
# the stage definitions


def package_imports(path: Path) -> set[str]:
    """The metaseg_pgn modules (dotted) that the stage module at ``path`` imports, at any depth of
    its code (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:  # relative to metaseg_pgn.stages
                parts = ["metaseg_pgn", "stages"][: 3 - node.level]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not base.startswith("metaseg_pgn"):
                continue
            for alias in node.names:  # "from .. import x" may name a module
                dotted = f"{base}.{alias.name}"
                found.add(dotted if (REPO / (dotted.replace(".", "/") + ".py")).exists() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("metaseg_pgn")}
    return found


def covered(module: str, code: dict[str, str]) -> bool:
    return module == "metaseg_pgn" or any(module == m or module.startswith(m + ".") for m in code)


@pytest.mark.parametrize("name", [n for n in config_mod.STAGES if n != "train"])
def test_a_stage_definition_names_its_module_upstream_and_code(name):
    """Its upstream stages come before it, and its code fingerprint covers every module of the
    package that its own modules import (a module moved out of a stage stays fingerprinted)."""
    from metaseg_pgn.stages import definition

    stage = definition(name)
    assert stage.name == name
    earlier = config_mod.STAGES[: config_mod.STAGES.index(name)]
    assert set(stage.upstream) | set(stage.optional) <= set(earlier)  # the flow goes one way
    from metaseg_pgn.integrity import code_fingerprint
    from metaseg_pgn.stages.common import COMMON_CODE

    fingerprinted = code_fingerprint([*COMMON_CODE, *stage.code])
    own = [STAGES_DIR / f"{m.split('.')[-1]}.py" for m in stage.code if m.startswith("metaseg_pgn.stages.")]
    imported = set().union(*map(package_imports, own))  # the stage module and its helpers in stages/
    # The configuration's schema is not code the stage runs: its values enter the plan as configuration.
    schema = {"metaseg_pgn.config", "metaseg_pgn.config_schema"}
    missing = sorted(m for m in imported if m not in schema and not covered(m, fingerprinted))
    assert missing == [], f"stage {name} runs modules its code fingerprint leaves out"
    assert f"metaseg_pgn.stages.{name}" in stage.code


def test_run_stage_skips_an_up_to_date_stage_and_reruns_a_forced_or_damaged_one(tmp_path):
    """One toy stage through :func:`run_stage`: the manifest lists the work's files; a second run is
    skipped; ``force`` or a damaged output runs the work again; another setting changes the plan."""
    from metaseg_pgn.io import atomic_write
    from metaseg_pgn.stages.base import Result, Stage, run_stage
    from metaseg_pgn.stages.common import RunContext, read_manifest

    calls = []

    def work(ctx, plan, upstream):
        calls.append(plan.fingerprint)
        path = ctx.stage_dir("toy") / "out.txt"
        with atomic_write(path, "w") as f:
            f.write(str(ctx.cfg["toy"]["value"]))
        return Result({"value": ctx.cfg["toy"]["value"]}, files=(path,))

    toy = Stage("toy", upstream=(), sections=("toy",), code=("metaseg_pgn.io",), work=work)
    cfg = {"run_dir": str(tmp_path), "toy": {"value": 1}}
    assert run_stage(toy, RunContext(cfg)) == {"value": 1}
    manifest = read_manifest(RunContext(cfg), "toy")
    assert list(manifest["files"]) == ["toy/out.txt"] and manifest["config"] == {"toy": {"value": 1}}
    assert run_stage(toy, RunContext(cfg)) == {} and len(calls) == 1  # up to date
    assert run_stage(toy, RunContext({**cfg, "force": ["toy"]})) == {"value": 1} and len(calls) == 2
    (tmp_path / "toy" / "out.txt").write_text("9")  # damaged: other bytes than recorded
    assert run_stage(toy, RunContext(cfg)) == {"value": 1} and len(calls) == 3
    assert (tmp_path / "toy" / "out.txt").read_text() == "1"
    assert run_stage(toy, RunContext({**cfg, "toy": {"value": 2}})) == {"value": 2}
    assert calls[3] != calls[0] and (tmp_path / "toy" / "out.txt").read_text() == "2"
