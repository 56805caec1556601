"""Composing configurations in-process (metaseg_pgn.config.compose): schema, groups, interpolation."""

import dataclasses

import pytest

from conftest import REPO
from metaseg_pgn import config as c


def test_default_pipeline_is_the_synthetic_world():
    cfg = c.compose([])
    assert cfg["pipeline"] == "synthetic"
    assert cfg["dataset"] == {"name": "synthetic", "split": "val", "n": 80, "size": [256, 512], "seed": 0}
    assert cfg["model"] == {"name": "synthetic_compact", "seed": 0, "last_conv": None}
    assert [d["name"] for d in cfg["ood_datasets"]] == ["synthetic_obstacle", "synthetic_anomaly"]
    assert cfg["run_dir"] == "data/runs/synthetic"
    assert cfg["pgn"]["weights"] == "paper" and cfg["pgn"]["labels"] == ["oh", "uni"]  # enums as strings


def test_every_section_of_the_schema_is_in_the_composed_config():
    cfg = c.compose([])
    assert set(cfg) == {f.name for f in dataclasses.fields(c.RunConfig)}
    for name, cls in c.SECTIONS.items():
        assert set(cfg[name]) == {f.name for f in dataclasses.fields(cls)}, name


def test_a_chosen_group_option_replaces_the_whole_group():
    cfg = c.compose(["pgn.ps=[0.5,2]", "meta.n_runs=3", "dataset=cityscapes", "dataset.root=/x"])
    assert cfg["pgn"]["ps"] == [0.5, 2.0]
    assert cfg["meta"]["n_runs"] == 3
    assert cfg["dataset"] == {"name": "cityscapes", "root": "/x", "split": "val", "label_source": "auto"}
    folder = c.compose(["dataset=folder", "dataset.root=/imgs"])["dataset"]
    assert folder == {"name": "folder", "root": "/imgs", "pattern": "**/*.png|jpg|jpeg|webp", "split": "all"}


def test_ood_sets_follow_the_dataset_size_and_seed():
    cfg = c.compose(["dataset.size=[512,1024]", "dataset.seed=3"])
    assert [d["size"] for d in cfg["ood_datasets"]] == [[512, 1024], [512, 1024]]
    assert [d["seed"] for d in cfg["ood_datasets"]] == [3, 3]


def test_run_dir_follows_the_pipeline():
    assert c.compose(["pipeline=smiyc", "model.init=random"])["run_dir"] == "data/runs/smiyc"


def test_training_is_a_section_of_the_same_config():
    cfg = c.compose(["stage=train", "train.iterations=1", "seed=4"])
    assert cfg["train"]["iterations"] == 1
    assert cfg["train"]["seed"] == 4  # follows the run's seed unless set
    assert c.compose(["seed=4", "train.seed=1"])["train"]["seed"] == 1


def test_custom_model_arguments_go_to_the_target():
    cfg = c.compose(["model=custom", "model.init=random", "model.num_classes=3",
                     "model._target_=metaseg_pgn.models.resnet50_sized"])
    assert cfg["model"]["num_classes"] == 3
    assert cfg["model"]["_target_"] == "metaseg_pgn.models.resnet50_sized"


@pytest.mark.parametrize("overrides, message", [
    (["pgn.foo=1"], "pgn.foo: unknown configuration key"),
    (["+pgn.foo=1"], "pgn.foo: unknown configuration key"),
    (["baselines.mc_dropout.sample=3"], "did you mean 'samples'"),
    (["pgn.weights=exact"], "expected one of [paper, gradient]"),
    (["pgn.ps=[0.5,-1]"], "every p must be > 0"),
    (["pipeline=nope"], "pipeline=nope: no such option"),
    (["model=nope"], "model=nope: no such option"),
    (["stage=infr"], "did you mean 'infer'"),
    (["stage=[]"], "non-empty list"),
    (["dataset.roo=/x"], "dataset.roo: unknown configuration key"),
    (["dataset.name=folder"], "dataset.n: not a setting of dataset 'folder'"),
    (["model=custom", "model.chekpoint=/x.pt"], "did you mean 'checkpoint'"),
    (["model=custom"], "model.checkpoint is not set"),
    (["model=custom", "model.checkpoint=/no/such/file.pt"], "/no/such/file.pt does not exist"),
    (["model=custom", "model.init=bogus"], "model.init: Invalid value 'bogus'"),
    (["model=custom", "model.init=random", "model._target_=no_such_module.build"],
     "cannot be imported (ModuleNotFoundError: No module named 'no_such_module'; give module.callable"),
    (["model=custom", "model.init=random", "model._target_=metaseg_pgn.models.no_such_builder"],
     "cannot be imported (give module.callable"),
    (["ood_datasets=[{name: synthetic_anomaly, m: 3}]"], "ood_datasets[0].m: not a setting"),
    (["train.iteration=1"], "did you mean 'iterations'"),
])
def test_bad_configurations_are_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(c.ConfigError) as info:
        c.compose(overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_users_config_folder_joins_the_search_path():
    cfg = c.compose(["pipeline=synthetic_deep"], config_dir=REPO / "pipelines")
    assert cfg["pipeline"] == "synthetic_deep" and cfg["run_dir"] == "data/runs/synthetic_deep"
    assert cfg["pgn"]["layers"] == ["last", "deep"] and cfg["pgn"]["weights"] == "gradient"
    assert cfg["dataset"]["name"] == "synthetic"  # from the shipped pipeline it starts from


def test_a_users_model_config_may_add_the_targets_arguments(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_net.yaml").write_text(
        "defaults: [custom, _self_]\n_target_: metaseg_pgn.models.compact\nnum_classes: 7\ninit: random\n")
    model = c.compose(["model=my_net"], config_dir=tmp_path)["model"]
    assert model["num_classes"] == 7 and model["init"] == "random" and model["name"] == "custom"


def test_stage_all_expands_in_pipeline_order():
    everything = ["infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta", "report"]
    assert c.stages_to_run(c.compose([])) == everything
    assert c.stages_to_run(c.compose(["stage=[infer,features]"])) == ["infer", "features"]
    assert c.stages_to_run(c.compose(["stage=[train,all]"])) == ["train", *everything]


@pytest.mark.parametrize("name, safe", [
    ("meta.n_runs=2", "meta.n_runs=2"),
    ("model.checkpoint=/a/b.pt", None),
    ("pgn.ps=[0.5,2]", None),
])
def test_run_names_are_safe_folder_names_and_distinct(name, safe):
    out = c.run_name(name)
    assert "/" not in out and all(ch.isalnum() or ch in "._,=+-" for ch in out)
    if safe is not None:
        assert out == safe
    assert c.run_name("model.checkpoint=/a/b.pt") != c.run_name("model.checkpoint=/a_b.pt")


def test_the_configuration_docs_are_generated_from_the_schema():
    from metaseg_pgn.config_doc import render

    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == render(), "docs/configuration.md is stale: run python -m metaseg_pgn.config_doc"
    for name, cls in c.SECTIONS.items():
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(f.type) and f.type not in ("MCDropoutConfig", "EnsembleConfig"):
                assert f"`{name}.{f.name}`" in doc
