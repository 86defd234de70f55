"""Tests for the generic config machinery (tf_xmr.config.base)."""

# Postponed annotations on purpose: the schema below must work when annotations are strings.
from __future__ import annotations

import dataclasses
import os
import textwrap
from typing import Any, Literal

import pytest

from tf_xmr.config import (
    SourceMap,
    apply_overrides,
    cfg_field,
    dump_yaml,
    field_spec,
    from_dict,
    load_yaml,
    replace_path,
    to_dict,
)
from tf_xmr.errors import ConfigError

# --------------------------------------------------------------------------------------------------------------------
# Example schema
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adam", "sgd"] = "adam"
    learning_rate: float = cfg_field(1e-3, gt=0, doc="step size")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = cfg_field(10, ge=1)
    batch_size: int = cfg_field(64, ge=1)
    shuffle: bool = True
    dropout: float = cfg_field(0.5, ge=0, lt=1)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    dims: tuple[int, ...] = cfg_field((1024, 512), ge=1)
    loss_weights: dict[str, float] = cfg_field(default_factory=lambda: {"adv": 1.0}, ge=0)
    seed: int | None = None
    extra: Any = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    distance: Literal["cosine", "euclidean", "inner"] = "cosine"
    k: int | None = cfg_field(None, ge=1)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    root: str  # required
    name: str = "synthetic"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig
    run_dir: str = "saved_models/run"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


@dataclasses.dataclass(frozen=True)
class CheckedConfig:
    low: int = 0
    high: int = 1

    def __post_init__(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def load(path: str, overrides=()) -> ExperimentConfig:
    data, sources = load_yaml(path)
    data = apply_overrides(data, overrides, sources)
    return from_dict(ExperimentConfig, data, sources=sources)


@pytest.fixture
def config_tree(tmp_path):
    """configs/exp/run.yaml includes ../base/common.yaml, which includes defaults.yaml (two levels)."""
    write(tmp_path / "configs/base/defaults.yaml", """
        data:
          root: /data/default
          name: wiki
        train:
          epochs: 3
          batch_size: 8
        model:
          dims: [64, 32]
          loss_weights: {adv: 0.5, cls: 1.0}
        """)
    write(tmp_path / "configs/base/common.yaml", """
        includes: [defaults.yaml]
        train:
          epochs: 4
          optimizer: {name: sgd}
        eval: {distance: euclidean}
        """)
    return write(tmp_path / "configs/exp/run.yaml", """
        includes:
          - ../base/common.yaml
        train:
          epochs: 5
          dropout: 0
        model:
          dims: [16]
          loss_weights: {cls: 2.0}
        """)


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def test_includes_merge_two_levels_with_override_precedence(config_tree):
    data, sources = load_yaml(config_tree)
    assert "includes" not in data
    config = from_dict(ExperimentConfig, data, sources=sources)

    assert config.data == DataConfig(root="/data/default", name="wiki")  # only in the deepest include
    assert config.train.epochs == 5  # own key beats both includes
    assert config.train.batch_size == 8  # from defaults.yaml, untouched by the others
    assert config.train.optimizer == OptimizerConfig(name="sgd")  # section merged from the middle file
    assert config.train.dropout == 0.0 and isinstance(config.train.dropout, float)  # int accepted for float
    assert config.model.dims == (16,)  # lists are replaced, not merged
    assert config.model.loss_weights == {"adv": 0.5, "cls": 2.0}  # mappings are merged
    assert config.eval.distance == "euclidean"
    assert config.eval.k is None and config.run_dir == "saved_models/run"  # defaults

    base = os.path.join(os.path.dirname(config_tree), "..", "base")
    assert sources.get("train.epochs") == config_tree
    assert sources.get("train.batch_size") == os.path.normpath(os.path.join(base, "defaults.yaml"))
    assert sources.get("eval.distance") == os.path.normpath(os.path.join(base, "common.yaml"))
    assert sources.root == config_tree


def test_relative_includes_from_a_subdirectory_cwd(config_tree, tmp_path, monkeypatch):
    # Include paths are relative to the including file, not to the working directory.
    monkeypatch.chdir(tmp_path / "configs")
    config = load(os.path.join("exp", "run.yaml"))
    assert config.train.batch_size == 8


def test_later_include_beats_earlier(tmp_path):
    write(tmp_path / "a.yaml", "train: {epochs: 1, batch_size: 2}\n")
    write(tmp_path / "b.yaml", "train: {epochs: 7}\n")
    path = write(tmp_path / "main.yaml", "includes: [a.yaml, b.yaml]\ndata: {root: r}\n")
    config = load(path)
    assert (config.train.epochs, config.train.batch_size) == (7, 2)


def test_diamond_includes_are_not_a_cycle(tmp_path):
    write(tmp_path / "d.yaml", "data: {root: r}\n")
    write(tmp_path / "b.yaml", "includes: [d.yaml]\n")
    write(tmp_path / "c.yaml", "includes: [d.yaml]\n")
    path = write(tmp_path / "a.yaml", "includes: [b.yaml, c.yaml]\n")
    assert load(path).data.root == "r"


def test_yaml_dialect_numbers_and_bools(tmp_path):
    # YAML 1.1 (plain PyYAML) would read 1e-4 as a string and `yes` as true.
    path = write(tmp_path / "c.yaml", """
        data: {root: r, name: yes}
        train: {optimizer: {learning_rate: 1e-4}}
        run_dir: 2024-01-05
        """)
    config = load(path)
    assert config.train.optimizer.learning_rate == pytest.approx(1e-4)
    assert config.data.name == "yes"
    assert config.run_dir == "2024-01-05"


def test_empty_file_is_empty_config(tmp_path):
    path = write(tmp_path / "empty.yaml", "# nothing yet\n")
    assert load_yaml(path)[0] == {}


# --------------------------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------------------------


def test_overrides_parse_yaml_values_and_beat_the_file(config_tree):
    config = load(config_tree, [
        "train.epochs=9",
        "model.dims=[1, 2]",
        "run_dir=/tmp/x",
        "model.seed=null",
        "model.extra={a: [1, 2]}",
        "eval.k=50",
        "train.shuffle=false",
        "train.optimizer.learning_rate=0.01",
    ])
    assert config.train.epochs == 9
    assert config.model.dims == (1, 2)
    assert config.run_dir == "/tmp/x"
    assert config.model.seed is None
    assert config.model.extra == {"a": [1, 2]}
    assert config.eval.k == 50
    assert config.train.shuffle is False
    assert config.train.optimizer.learning_rate == 0.01


def test_overrides_do_not_mutate_input_and_create_sections():
    data = {"data": {"root": "r"}}
    sources = SourceMap("c.yaml")
    out = apply_overrides(data, ["eval.distance=inner", "data.root=s", "data.root=t"], sources)
    assert data == {"data": {"root": "r"}}
    assert out == {"data": {"root": "t"}, "eval": {"distance": "inner"}}
    assert sources.get("eval.distance") == "--set" and sources.get("eval") == "--set"
    assert sources.get("data.root") == "--set"


@pytest.mark.parametrize("override", ["train.epochs", "=5", "train..epochs=1", ".a=1"])
def test_malformed_override(override):
    message = error_of(apply_overrides, {}, [override], SourceMap())
    assert f"'{override}'" in message


def test_override_below_a_scalar():
    message = error_of(apply_overrides, {"train": {"epochs": 3}}, ["train.epochs.x=1"], SourceMap())
    assert "train.epochs.x=1" in message and "'train.epochs'" in message


def test_override_with_invalid_yaml_value():
    message = error_of(apply_overrides, {}, ["model.dims=[1, 2"], SourceMap())
    assert "model.dims=[1, 2" in message and "YAML" in message


def test_unknown_override_key_says_from_set(config_tree):
    message = error_of(load, config_tree, ["eval.distanse=cosine"])
    assert "'eval.distanse' from --set is not a valid key" in message
    assert "did you mean 'distance'?" in message


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


def test_unknown_key_names_key_file_suggestion_and_valid_keys(tmp_path):
    path = write(tmp_path / "acmr.yaml", "data: {root: r}\ntrain:\n  epcohs: 3\n")
    message = error_of(load, path)
    assert message == (f"config key 'train.epcohs' in {path} is not a valid key; did you mean 'epochs'? "
                       "valid keys under 'train': batch_size, dropout, epochs, optimizer, shuffle")


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path / "acmr.yaml", "data: {root: r}\nzzz: 1\n")
    message = error_of(load, path)
    assert "'zzz'" in message and "did you mean" not in message
    assert "valid keys at the top level: data, eval, model, run_dir, train" in message


def test_unknown_key_in_included_file_names_that_file(config_tree, tmp_path):
    defaults = tmp_path / "configs/base/defaults.yaml"
    defaults.write_text(defaults.read_text() + "eval: {kk: 1}\n")
    message = error_of(load, config_tree)
    assert "'eval.kk'" in message and "defaults.yaml" in message and "run.yaml" not in message


def test_range_error(tmp_path):
    path = write(tmp_path / "acmr.yaml", "data: {root: r}\ntrain: {epochs: -3}\n")
    assert error_of(load, path) == f"config key 'train.epochs' in {path} must be an int >= 1, got -3"


def test_range_error_two_bounds_and_float():
    message = error_of(from_dict, TrainConfig, {"dropout": 1.0})
    assert message == "config key 'dropout' must be a float >= 0 and < 1, got 1.0"
    message = error_of(from_dict, OptimizerConfig, {"learning_rate": 0})
    assert "must be a float > 0, got 0.0" in message


def test_range_applies_to_tuple_elements_dict_values_and_optional():
    message = error_of(from_dict, ModelConfig, {"dims": [4, 0]})
    assert message == "config key 'dims[1]' must be an int >= 1, got 0"
    message = error_of(from_dict, ModelConfig, {"loss_weights": {"adv": -1.0}})
    assert "'loss_weights.adv'" in message and ">= 0" in message
    assert from_dict(EvalConfig, {"k": None}).k is None  # None is not range-checked
    message = error_of(from_dict, EvalConfig, {"k": 0})
    assert "must be an int >= 1, got 0" in message


def test_literal_error_lists_choices():
    sources = SourceMap("c.yaml")
    data = apply_overrides({}, ["eval.distance=cosin"], sources)
    message = error_of(from_dict, ExperimentConfig, {**data, "data": {"root": "r"}}, sources=sources)
    assert message == ("config key 'eval.distance' from --set must be one of 'cosine', 'euclidean', 'inner', "
                       "got 'cosin'")


def test_bool_is_not_int_and_int_is_not_bool():
    assert "must be an int >= 1, got true" in error_of(from_dict, TrainConfig, {"epochs": True})
    assert "must be a bool (true or false), got 1" in error_of(from_dict, TrainConfig, {"shuffle": 1})
    assert "got 'yes'" in error_of(from_dict, TrainConfig, {"shuffle": "yes"})
    assert from_dict(TrainConfig, {"shuffle": False}).shuffle is False


def test_int_accepted_for_float_but_not_float_for_int():
    config = from_dict(TrainConfig, {"dropout": 0})
    assert config.dropout == 0.0 and type(config.dropout) is float
    assert "must be an int >= 1, got 2.5" in error_of(from_dict, TrainConfig, {"epochs": 2.5})
    assert "must be a float" in error_of(from_dict, TrainConfig, {"dropout": "0.1"})


def test_type_errors_for_containers_and_optional():
    assert "'dims' must be a list (each an int >= 1), got 5" in error_of(from_dict, ModelConfig, {"dims": 5})
    assert "must be a mapping" in error_of(from_dict, ModelConfig, {"loss_weights": [1]})
    assert "'seed' must be an int or null, got 'x'" in error_of(from_dict, ModelConfig, {"seed": "x"})
    assert "'train' must be a mapping" in error_of(from_dict, ExperimentConfig, {"data": {"root": "r"}, "train": 3})


def test_missing_required_key_and_missing_section(tmp_path):
    path = write(tmp_path / "acmr.yaml", "train: {epochs: 2}\n")
    message = error_of(load, path)
    assert message == f"config key 'data.root' (a string) is required but not set in {path} or its includes"
    # A missing section takes its defaults.
    path = write(tmp_path / "ok.yaml", "data: {root: r}\n")
    config = load(path)
    assert config.train == TrainConfig() and config.eval == EvalConfig()


def test_post_init_value_error_becomes_config_error():
    message = error_of(from_dict, CheckedConfig, {"low": 3, "high": 1}, prefix="range")
    assert message == "config section 'range' is invalid: low (3) must not exceed high (1)"


def test_missing_top_level_file(tmp_path):
    path = str(tmp_path / "x.yaml")
    assert error_of(load_yaml, path) == f"config file '{path}' does not exist"


def test_missing_include_names_both_files(tmp_path):
    path = write(tmp_path / "main.yaml", "includes: [nope.yaml]\n")
    message = error_of(load_yaml, path)
    assert "nope.yaml" in message and "does not exist" in message and f"included from '{path}'" in message


def test_include_cycle(tmp_path):
    write(tmp_path / "a.yaml", "includes: [b.yaml]\n")
    write(tmp_path / "b.yaml", "includes: [c.yaml]\n")
    write(tmp_path / "c.yaml", "includes: [a.yaml]\n")
    message = error_of(load_yaml, str(tmp_path / "a.yaml"))
    assert message.startswith("include cycle")
    assert "a.yaml -> " in message and message.endswith("a.yaml") and "b.yaml" in message and "c.yaml" in message


def test_self_include_is_a_cycle(tmp_path):
    path = write(tmp_path / "a.yaml", "includes: [a.yaml]\n")
    assert "include cycle" in error_of(load_yaml, path)


def test_yaml_syntax_error_has_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "train:\n  epochs: 3\n  batch_size: [1, 2\n")
    message = error_of(load_yaml, path)
    assert f"'{path}'" in message and "not valid YAML" in message and "line " in message


def test_syntax_error_line_number(tmp_path):
    path = write(tmp_path / "bad.yaml", "a: 1\nb: 2\nc: d: e\n")
    assert "line 3" in error_of(load_yaml, path)


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path / "dup.yaml", "train:\n  epochs: 3\n  epochs: 4\n")
    message = error_of(load_yaml, path)
    assert "duplicate key 'epochs'" in message and "line 3" in message


def test_non_mapping_top_level(tmp_path):
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    message = error_of(load_yaml, path)
    assert f"'{path}'" in message and "mapping" in message


def test_malformed_includes(tmp_path):
    path = write(tmp_path / "m.yaml", "includes: base.yaml\n")
    message = error_of(load_yaml, path)
    assert "'includes'" in message and path in message


# --------------------------------------------------------------------------------------------------------------------
# Writing, editing
# --------------------------------------------------------------------------------------------------------------------


def test_to_dict_is_plain_and_ordered():
    config = from_dict(ExperimentConfig, {"data": {"root": "r"}})
    data = to_dict(config)
    assert list(data) == ["data", "run_dir", "train", "model", "eval"]
    assert data["model"]["dims"] == [1024, 512]
    assert data["train"]["optimizer"] == {"name": "adam", "learning_rate": 1e-3}


def test_dump_yaml_round_trip_and_no_temp_files(config_tree, tmp_path):
    config = load(config_tree, ["model.extra={a: [1, 2]}", "data.name='1e-3'", "run_dir=yes"])
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    out = out_dir / "config.yaml"
    dump_yaml(config, out)
    dump_yaml(config, out)  # overwriting works too
    assert os.listdir(out_dir) == ["config.yaml"]
    text = out.read_text()
    assert text.index("data:") < text.index("run_dir:") < text.index("train:")  # declaration order
    data, sources = load_yaml(out)
    assert from_dict(ExperimentConfig, data, sources=sources) == config
    # Strings that look like numbers or YAML 1.1 booleans were quoted, so they stay strings.
    assert data["data"]["name"] == "1e-3" and data["run_dir"] == "yes"


def test_dump_yaml_failure_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        dump_yaml({"a": object()}, tmp_path / "c.yaml")
    assert os.listdir(tmp_path) == []


def test_replace_path():
    config = from_dict(ExperimentConfig, {"data": {"root": "r"}})
    new = replace_path(config, "train.optimizer.learning_rate", 0.1)
    assert new.train.optimizer.learning_rate == 0.1
    assert config.train.optimizer.learning_rate == 1e-3  # original untouched
    assert new.model is config.model  # untouched branches are shared, not copied

    assert replace_path(config, "model.dims", [8, 4]).model.dims == (8, 4)
    assert replace_path(config, "model.loss_weights.cls", 2).model.loss_weights == {"adv": 1.0, "cls": 2.0}
    assert replace_path(config, "train.dropout", 0).train.dropout == 0.0
    assert replace_path(config, "train", {"epochs": 2}).train == TrainConfig(epochs=2)


def test_replace_path_validates():
    config = from_dict(ExperimentConfig, {"data": {"root": "r"}})
    assert "must be an int >= 1, got 0" in error_of(replace_path, config, "train.epochs", 0)
    assert "did you mean 'epochs'?" in error_of(replace_path, config, "train.epoch", 3)
    assert "must be one of" in error_of(replace_path, config, "eval.distance", "l2")
    assert "not a section" in error_of(replace_path, config, "train.epochs.x", 1)
    checked = CheckedConfig()
    assert "is invalid" in error_of(replace_path, checked, "low", 5)


# --------------------------------------------------------------------------------------------------------------------
# Fields and registry
# --------------------------------------------------------------------------------------------------------------------


def test_cfg_field_metadata_and_default_check():
    spec = field_spec({f.name: f for f in dataclasses.fields(OptimizerConfig)}["learning_rate"])
    assert (spec.gt, spec.doc) == (0, "step size")
    with pytest.raises(ValueError, match="violates"):
        cfg_field(0, ge=1)
    with pytest.raises(ValueError, match="violates"):
        cfg_field((1, 0), ge=1)
    with pytest.raises(TypeError):
        cfg_field(1, default_factory=int)
