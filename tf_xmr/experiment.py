"""Loading an experiment config: YAML with includes and ``--set`` overrides -> a typed ``ExperimentConfig``.

The ``model`` section is typed by the registered method's config dataclass, so this sits above ``tf_xmr.methods``;
``tf_xmr.config`` itself (the dataclasses and the strict loader) stays a leaf that knows no method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tf_xmr.config.base import SourceMap, apply_overrides, from_dict, load_yaml
from tf_xmr.config.schema import ExperimentConfig, TuneConfig
from tf_xmr.errors import ConfigError
from tf_xmr.methods.registry import get_method


def load_experiment(path: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a YAML config with its includes, apply ``--set`` overrides and build the typed config strictly.

    Raises:
        ConfigError: one line naming the key, the file (or --set) and the valid keys / choices / range.
    """
    data, sources = load_yaml(path)
    data = apply_overrides(data, overrides, sources)
    return experiment_from_dict(data, sources)


def experiment_from_dict(data: dict, sources: SourceMap | None = None) -> ExperimentConfig:
    """Build an ``ExperimentConfig`` from a plain dict (the ``model`` section typed by ``method``)."""
    data = dict(data)
    method_name = data.get("method", ExperimentConfig.method)
    if not isinstance(method_name, str):
        raise ConfigError(f"config key 'method' must be a string, got {method_name!r}")
    model_section = data.pop("model", None) or {}
    if not isinstance(model_section, dict):
        raise ConfigError(f"config key 'model' must be a mapping, got {type(model_section).__name__}")
    spec = get_method(method_name)
    model = from_dict(spec.config_class, model_section, sources=sources, prefix="model")
    # Built on its own like `model`: inside the `TuneConfig | None` union, an error deep in the section (a typo'd
    # `kind`) would otherwise be reported as "tune must be a mapping or null" instead of naming the key.
    tune_section = data.pop("tune", None)
    tune = None if tune_section is None else from_dict(TuneConfig, tune_section, sources=sources, prefix="tune")
    experiment = from_dict(ExperimentConfig, data, sources=sources)
    return dataclasses.replace(experiment, model=model, tune=tune)
