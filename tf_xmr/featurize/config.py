"""The featurize config (``configs/featurize/<preset>.yaml``): which image and text featurizers, how to split, how to
write the records. Loaded strictly, like the training configs: an unknown key or a wrong type is a one-line error."""

from __future__ import annotations

import dataclasses

from tf_xmr.config.base import cfg_field, from_dict, load_yaml
from tf_xmr.featurize.image import ImageFeaturizerConfig
from tf_xmr.featurize.text import TextFeaturizerConfig


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The seeded split by class, used when the manifest has no ``split`` column."""

    # The Wikipedia benchmark holds out about a quarter of its items for test (693 of 2866) and the training configs
    # carve a tenth of train for validation; these defaults give a similar shape on a new dataset.
    val_fraction: float = cfg_field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = cfg_field(0.2, ge=0.0, lt=1.0)
    seed: int = cfg_field(0, ge=0)


@dataclasses.dataclass(frozen=True)
class FeaturizeConfig:
    """What ``python -m tf_xmr.featurize`` does with a manifest."""

    # The feature set's name (dataset.json "name"; a run's data.json quotes it).
    name: str = "featurized"
    # The image featurizer; null leaves images out (a text-only manifest, or texts only wanted).
    image: ImageFeaturizerConfig | None = None
    # The text featurizer, fitted on the train split only; null leaves texts out.
    text: TextFeaturizerConfig | None = None
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    # Shard files per file family of the written records (tf_xmr.data.records).
    num_shards: int = cfg_field(4, ge=1)
    # Items featurized per resumable step: each finished chunk is kept on disk, so an interrupted run repeats at most
    # one chunk per modality. 256 images of the papers' backbones take well under a minute on 2 CPU cores.
    chunk_size: int = cfg_field(256, ge=1)


def load_featurize_config(path: str, overrides=()) -> FeaturizeConfig:
    """Read a featurize YAML (``includes:`` and ``--set`` overrides as for training configs)."""
    from tf_xmr.config.base import apply_overrides

    data, sources = load_yaml(path)
    data = apply_overrides(data, list(overrides), sources)
    return from_dict(FeaturizeConfig, data, sources=sources)
