"""Feature sets, loaders (.mat/.h5/.npz/TFRecord), the synthetic benchmark and tf.data pipelines.

Importing this package does not import TensorFlow: only :func:`make_dataset` and :func:`write_records` need it,
and they import it when called.
"""

from tf_xmr.data.arrays import load_arrays
from tf_xmr.data.feature_set import (
    FeatureSet,
    RecordSplit,
    Split,
    feature_stats,
    split_validation,
    stratified_split,
    to_multi_hot,
)
from tf_xmr.data.pipeline import make_dataset, make_training_stream
from tf_xmr.data.records import load_records, write_records
from tf_xmr.data.synthetic import make_synthetic
from tf_xmr.data.wikipedia import load_wikipedia

__all__ = [
    "FeatureSet",
    "Split",
    "RecordSplit",
    "make_dataset",
    "make_training_stream",
    "make_synthetic",
    "load_wikipedia",
    "load_arrays",
    "write_records",
    "load_records",
    "stratified_split",
    "split_validation",
    "to_multi_hot",
    "feature_stats",
]
