import pytest

from metaseg_pgn import config as c


def test_default_pipeline_is_the_synthetic_world():
    cfg = c.compose([])
    assert cfg["pipeline"] == "synthetic"
    assert cfg["dataset"]["name"] == "synthetic"
    assert cfg["model"]["name"] == "synthetic_compact"
    assert [d["name"] for d in cfg["ood_datasets"]] == ["synthetic_obstacle", "synthetic_anomaly"]
    assert cfg["run_dir"] == "data/runs/synthetic"


def test_overrides_parse_yaml_values_and_groups_replace_whole_options():
    cfg = c.compose(["pgn.ps=[0.5,2]", "meta.n_runs=3", "dataset=cityscapes", "dataset.root=/x"])
    assert cfg["pgn"]["ps"] == [0.5, 2]
    assert cfg["meta"]["n_runs"] == 3
    assert cfg["dataset"] == {"name": "cityscapes", "root": "/x", "split": "val", "label_source": "auto"}


@pytest.mark.parametrize("override, message", [
    ("pgn.foo=1", "unknown configuration key 'pgn.foo'"),
    ("pgn.weights=exact", "choose 'paper' or 'gradient'"),
    ("pgn.ps=[0.5,-1]", "every p must be a number > 0"),
    ("pipeline=nope", "unknown pipeline 'nope'"),
    ("model=nope", "unknown model option 'nope'"),
    ("stage=infer_all", "stage='infer_all'"),
    ("novalue", "not of the form key=value"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(c.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        c.compose([override])


def test_plus_adds_a_new_key():
    cfg = c.compose(["+report.title=hello"])
    assert cfg["report"]["title"] == "hello"


def test_multirun_sweeps_the_cartesian_product_and_keeps_lists_whole():
    runs = c.expand_sweep(["pgn.weights=paper,gradient", "meta.n_runs=2,3", "pgn.ps=[1,2]"])
    assert len(runs) == 4
    assert ["pgn.weights=gradient", "meta.n_runs=3", "pgn.ps=[1,2]"] in runs
    assert all(r[2] == "pgn.ps=[1,2]" for r in runs)


def test_stage_all_expands_in_pipeline_order():
    assert c.stages_to_run(c.compose([])) == ["infer", "features", "meta", "pixel_eval", "ood_eval", "report"]
    assert c.stages_to_run(c.compose(["stage=[infer,features]"])) == ["infer", "features"]
