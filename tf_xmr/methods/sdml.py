"""SDML: Scalable Deep Multimodal Learning for Cross-Modal Retrieval (Hu, Zhen, Peng, Liu; SIGIR 2019).

The common space is PREDEFINED: a fixed, seeded matrix P (d_common x c) with orthonormal columns, column k the
direction of class k. Each modality i gets its own deep supervised auto-encoder (DSAE): an encoder f_i (d_i -> 1024 ->
1024 -> 512, ReLU except on the code layer) whose code h is pulled onto P y by the supervised term of Eq. 1, and a
decoder g_i (512 -> 1024 -> 1024 -> d_i) that reconstructs the input. The networks share no trainable parameter and P
is never trained, so each modality trains on its own (in parallel, one after another, or later for a new modality)
and the encoders still land in one common space. Cross-modal pairing is never used. Retrieval ranks by the cosine
between encoder outputs; the decoder is dropped at test time.

    J^i = (1/n_i) sum_j [ lambda ||x_hat_j - x_j||_2 + (1 - lambda) ||P^T h_j - y_j||_2 ]        (Eq. 1)

Training is driven by ``tf_xmr.training.independent`` through the ``IndependentModalities`` hook; the ``SDML``
container below holds every modality's DSAE at once, for evaluation from checkpoints and for the joint-training
baseline of the benchmarks (SDML-1 of Table 6: all networks in one graph, one step over every modality).

Every gap the paper leaves is a field of ``SDMLConfig`` whose comment gives the source: [PAPER] the paper,
[CODE] the authors' PyTorch code (penghu-cs/SDML, as described in specs/sdml.md), [REC] the project's spec where
neither settles it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from tf_xmr.config import cfg_field
from tf_xmr.errors import ConfigError
from tf_xmr.methods.base import CrossModalModel, DataSpec, IndependentModalities
from tf_xmr.methods.registry import register_method

#: Key of P in the run's shared state (``<run_dir>/shared_state.npz``).
PROJECTION_KEY = "projection"


@dataclasses.dataclass(frozen=True)
class SDMLConfig:
    """SDML hyperparameters (``model:`` section of an SDML config)."""

    # d, the common-space dimension = the code layer's width: 512 [CODE --output_shape 512; PAPER Sec. 3.3 middle
    # layer of 512 units]. P is d x c, so c <= d is required.
    common_dim: int = cfg_field(512, ge=1)
    # Hidden widths of the encoder f_i before the code layer [PAPER Sec. 3.3 "1024, 1024, 512, 1024, 1024"].
    encoder_units: tuple[int, ...] = cfg_field((1024, 1024), ge=1)
    # Hidden widths of the decoder g_i before its d_i-wide output layer [PAPER Sec. 3.3; CODE Dense_Net].
    decoder_units: tuple[int, ...] = cfg_field((1024, 1024), ge=1)
    # h = z / ||z||_2 on the code layer [CODE Dense_Net; not in the paper, spec 12.3]. Without it the supervised
    # term does not constrain the part of h outside span(P).
    normalize_code: bool = True
    # x_hat = o / ||o||_2 on the reconstruction, compared with the raw x [CODE: the same Dense_Net class is reused;
    # spec 12.3]; false = the paper-literal linear reconstruction.
    normalize_reconstruction: bool = True
    # lambda of Eq. 1, the weight of the reconstruction term J_r (1 - lambda weights J_s) [PAPER Sec. 4.4: 0.5;
    # the code's --alpha 0.5].
    lambda_rec: float = cfg_field(0.5, ge=0.0, le=1.0)
    # Added inside the square root of the unsquared norms of Eq. 1 so the gradient at 0 is finite [REC 12.4].
    norm_epsilon: float = cfg_field(1e-12, gt=0.0)
    # The supervised term J_s averages over rows with at least one positive label only [CODE; spec 12.23]; the
    # validation loss that picks the checkpoint uses all rows [CODE].
    supervised_labelled_only: bool = True
    # Seed of P, the first c columns of a seeded d x d orthogonal matrix (QR of a Gaussian matrix with the sign fix,
    # as torch.nn.init.orthogonal) [PAPER Sec. 3.3 "randomly generated column orthogonal matrix"; CODE 512 x 512
    # OrthP]; null = the run seed [REC 12.9]. P is saved with the run and reused for every later modality.
    projection_seed: int | None = cfg_field(None, ge=0)
    # Weight/bias initialisation: PyTorch nn.Linear defaults U(+-1/sqrt(fan_in)) like the released code ("torch")
    # [CODE; REC 12.22], or Keras' glorot_uniform / zeros.
    initializer: Literal["torch", "glorot"] = "torch"
    # Which modality networks this run trains; null = every modality of the data (or, with resume_from, every
    # modality the stored run lacks). Adding a modality: --set resume_from=RUN --set model.train_modalities=[NEW].
    train_modalities: tuple[str, ...] | None = None


def generate_projection(common_dim: int, num_classes: int, seed: int) -> np.ndarray:
    """The fixed matrix P (d x c) with orthonormal columns (SDML Sec. 3.2-3.3).

    As the released code: a d x d orthogonal matrix (QR of a seeded Gaussian matrix, columns sign-fixed by diag(R)
    like ``torch.nn.init.orthogonal_``), of which the first c columns are P. Column k is the direction of class k.

    Returns:
        float32 (common_dim, num_classes) with P^T P = I_c.

    Raises:
        ConfigError: more classes than common-space dimensions (no c orthonormal columns exist).
    """
    if num_classes > common_dim:
        raise ConfigError(
            f"SDML needs num_classes <= model.common_dim for P to have orthonormal columns; got {num_classes} classes "
            f"and common_dim {common_dim}"
        )
    rng = np.random.default_rng(int(seed))
    q, r = np.linalg.qr(rng.standard_normal((common_dim, common_dim)))
    q = q * np.sign(np.diag(r))
    return np.ascontiguousarray(q[:, :num_classes], dtype=np.float32)


def mean_row_distance(a, b, epsilon: float = 1e-12, weights=None):
    """Mean unsquared Euclidean distance between matching rows: ``(1/n) sum_j ||a_j - b_j||_2`` (SDML Eq. 1).

    Args:
        a, b: (n, k) tensors.
        epsilon: added under the square root (finite gradient at a_j = b_j).
        weights: optional (n,) 0/1 row mask; the mean is then over the selected rows (0 when none is selected).

    Returns:
        Scalar tensor.
    """
    rows = tf.sqrt(tf.reduce_sum(tf.square(a - b), axis=-1) + epsilon)
    if weights is None:
        return tf.reduce_mean(rows)
    weights = tf.cast(weights, rows.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(rows * weights), tf.reduce_sum(weights))


def _dense(units: int, fan_in: int, activation, initializer: str, name: str):
    if initializer == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        return keras.layers.Dense(
            units, activation=activation, name=name,
            kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        )
    return keras.layers.Dense(units, activation=activation, name=name)


def _tower(in_dim: int, hidden, out_dim: int, initializer: str, name: str) -> keras.Sequential:
    """Dense_Net of the code: ReLU hidden layers, a linear output layer."""
    layers, fan_in = [], in_dim
    for i, width in enumerate(hidden):
        layers.append(_dense(int(width), fan_in, "relu", initializer, f"{name}_dense_{i}"))
        fan_in = int(width)
    layers.append(_dense(out_dim, fan_in, None, initializer, f"{name}_output"))
    return keras.Sequential([keras.Input((in_dim,)), *layers], name=name)


class DSAE(keras.Model):
    """One modality's deep supervised auto-encoder (SDML Sec. 3.2, Fig. 1): a single-optimiser Keras model.

    Trains with plain ``fit`` on batches ``{modality: (b, d), "labels": (b, c)}``; ``compute_loss`` is Eq. 1 and logs
    its two terms as ``reconstruction`` and ``supervised``.

    Args:
        config: ``SDMLConfig``.
        spec: ``DataSpec`` (this network uses only ``spec.dims[modality]`` and the standardisation of ``modality``).
        modality: the modality this network encodes.
        projection: P, float32 (common_dim, c), fixed.
    """

    def __init__(self, config: SDMLConfig, spec: DataSpec, modality: str, projection, **kwargs):
        super().__init__(name=f"{modality}_dsae", **kwargs)
        projection = np.asarray(projection, np.float32)
        if projection.shape != (config.common_dim, spec.num_classes):
            raise ConfigError(
                f"SDML projection P has shape {projection.shape}, expected (common_dim {config.common_dim}, "
                f"classes {spec.num_classes})"
            )
        self.config = config
        self.modality = modality
        dim = int(spec.dims[modality])
        self.standardizer = spec.standardizer(modality)
        self.encoder_tower = _tower(dim, config.encoder_units, config.common_dim, config.initializer,
                                    f"{modality}_encoder_tower")
        self.decoder = _tower(config.common_dim, config.decoder_units, dim, config.initializer, f"{modality}_decoder")
        encoder_layers = [keras.Input((dim,), name=f"{modality}_features"), self.standardizer, self.encoder_tower]
        if config.normalize_code:
            encoder_layers.append(keras.layers.UnitNormalization(axis=-1, name=f"{modality}_code_l2"))
        # What retrieval uses and what gets exported: raw features -> h.
        self.encoder = keras.Sequential(encoder_layers, name=f"{modality}_encoder")
        self.reconstruction_norm = (
            keras.layers.UnitNormalization(axis=-1, name=f"{modality}_reconstruction_l2")
            if config.normalize_reconstruction else None
        )
        # P is a constant, not a weight: nothing can train it, and it is saved once per run (shared_state.npz).
        self.projection = tf.constant(projection)
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.supervised_tracker = keras.metrics.Mean(name="supervised")

    def call(self, inputs, training=False):
        x = inputs[self.modality] if isinstance(inputs, Mapping) else inputs
        standardized = self.standardizer(x)
        code = self.encoder(x, training=training)
        reconstruction = self.decoder(code, training=training)
        if self.reconstruction_norm is not None:
            reconstruction = self.reconstruction_norm(reconstruction)
        return {"code": code, "reconstruction": reconstruction, "target": standardized}

    def build_for_training(self) -> None:
        dim = int(self.encoder.input_shape[-1])
        self({self.modality: tf.zeros((2, dim))})
        self.built = True

    def loss_terms(self, batch, outputs) -> dict:
        """Eq. 1 on one batch: ``{"loss", "reconstruction" (J_r), "supervised" (J_s)}``."""
        cfg = self.config
        labels = tf.cast(batch["labels"], tf.float32)
        reconstruction = mean_row_distance(outputs["reconstruction"], outputs["target"], cfg.norm_epsilon)
        mask = tf.reduce_sum(labels, axis=-1) > 0 if cfg.supervised_labelled_only else None
        predicted = tf.matmul(outputs["code"], self.projection)  # P^T h, (b, c)
        supervised = mean_row_distance(predicted, labels, cfg.norm_epsilon, weights=mask)
        loss = cfg.lambda_rec * reconstruction + (1.0 - cfg.lambda_rec) * supervised
        return {"loss": loss, "reconstruction": reconstruction, "supervised": supervised}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.loss_terms(x, y_pred)
        self.reconstruction_tracker.update_state(terms["reconstruction"])
        self.supervised_tracker.update_state(terms["supervised"])
        return terms["loss"]

    def validation_loss(self, dataset) -> float:
        """The checkpoint criterion [CODE]: mean_j ||P^T h_j - y_j||_2 over the whole split, every row, unweighted."""
        total, count = 0.0, 0
        for batch in dataset:
            code = self.encoder(batch[self.modality], training=False)
            rows = tf.norm(tf.matmul(code, self.projection) - tf.cast(batch["labels"], tf.float32), axis=-1)
            total += float(tf.reduce_sum(rows))
            count += int(rows.shape[0])
        return total / max(count, 1)


@register_method("sdml", SDMLConfig, "Scalable Deep Multimodal Learning (Hu et al., SIGIR 2019)")
class SDML(CrossModalModel, IndependentModalities):
    """Every modality's DSAE in one container (evaluation, export, and the joint-training baseline).

    Trained per modality by ``tf_xmr.training.independent`` (the ``IndependentModalities`` hook); compiled with one
    optimiser per modality, ``fit`` on paired batches is the joint baseline: one step updates every network on the
    sum of the J^i (spec 12.18, "SDML-1").

    Args:
        config: ``SDMLConfig``.
        spec: ``DataSpec`` with any number >= 2 of modalities (>= 1 for a single network).
        shared: ``{"projection": P}``; default generated from ``config.projection_seed`` (or 0).
    """

    def __init__(self, config: SDMLConfig, spec: DataSpec, shared: Mapping[str, np.ndarray] | None = None, **kwargs):
        super().__init__(spec, name="sdml", **kwargs)
        self.config = config
        shared = shared if shared is not None else self.create_shared_state(config, spec, config.projection_seed or 0)
        self.check_shared_state(config, spec, shared, "the given shared state")
        self.shared = dict(shared)
        self.dsaes = {m: DSAE(config, spec, m, shared[PROJECTION_KEY]) for m in spec.modalities}
        self.encoders = {m: net.encoder for m, net in self.dsaes.items()}

    # -- IndependentModalities hook --------------------------------------------------------------------------------
    @classmethod
    def create_shared_state(cls, config, spec, seed):
        seed = config.projection_seed if config.projection_seed is not None else seed
        return {PROJECTION_KEY: generate_projection(config.common_dim, spec.num_classes, seed)}

    @classmethod
    def check_shared_state(cls, config, spec, state, source):
        if PROJECTION_KEY not in state:
            raise ConfigError(f"{source} holds no SDML projection P (key {PROJECTION_KEY!r})")
        rows, classes = np.shape(state[PROJECTION_KEY])
        if classes != spec.num_classes:
            raise ConfigError(
                f"the data has {spec.num_classes} classes but the stored SDML projection P in {source} was made for "
                f"{classes}; a new modality must use the stored run's classes"
            )
        if rows != config.common_dim:
            raise ConfigError(
                f"the stored SDML projection P in {source} is {rows}-dimensional but model.common_dim is "
                f"{config.common_dim}"
            )

    @classmethod
    def modalities_to_train(cls, config, available):
        return None if config.train_modalities is None else tuple(config.train_modalities)

    @classmethod
    def modality_model(cls, config, spec, modality, state):
        net = DSAE(config, spec, modality, state[PROJECTION_KEY])
        net.build_for_training()
        return net

    # -- joint baseline ------------------------------------------------------------------------------------------
    def build_for_training(self) -> None:
        for net in self.dsaes.values():
            net.build_for_training()
        self.built = True

    def compile(self, optimizers: Mapping[str, keras.optimizers.Optimizer], jit_compile=False, **kwargs):
        """One optimiser per modality network (their learning rates differ, Sec. 7 of the spec)."""
        super().compile(optimizer=None, jit_compile=jit_compile, **kwargs)
        self.modality_optimizers = {m: optimizers[m] for m in self.modalities}
        self.loss_trackers = {m: keras.metrics.Mean(name=f"{m}_loss") for m in self.modalities}
        for m, net in self.dsaes.items():
            self.modality_optimizers[m].build(net.trainable_variables)

    @property
    def metrics(self):
        return list(getattr(self, "loss_trackers", {}).values())

    def train_step(self, data):
        """One step over a batch of every modality: ``{m: (b, d_m), "labels": (b, c)}`` (paired) or with
        ``"labels": {m: (b_m, c)}`` (unpaired streams, one batch per modality)."""
        labels = data["labels"]

        def batch_of(m):
            return {m: data[m], "labels": labels[m] if isinstance(labels, Mapping) else labels}

        with tf.GradientTape() as tape:
            losses = {}
            for m, net in self.dsaes.items():
                batch = batch_of(m)
                losses[m] = net.loss_terms(batch, net(batch, training=True))["loss"]
            total = tf.add_n(list(losses.values()))
        variables = {m: net.trainable_variables for m, net in self.dsaes.items()}
        gradients = tape.gradient(total, variables)
        for m in self.modalities:
            self.modality_optimizers[m].apply_gradients(zip(gradients[m], variables[m], strict=True))
            self.loss_trackers[m].update_state(losses[m])
        return {tracker.name: tracker.result() for tracker in self.metrics}
