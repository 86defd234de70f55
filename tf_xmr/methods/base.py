"""Base classes shared by every method: per-modality encoders and the adversarial ``train_step`` template.

A method subclasses ``AdversarialModel`` (or ``CrossModalModel`` with a plain ``compute_loss`` for single-optimiser
methods), builds its sub-models in ``__init__``, lists its players and supplies each player's loss dictionary. The
template does the rest: one ``tf.GradientTape`` per player, each player's variables taken from its own sub-model
objects (never filtered by name), an optional "update every k-th step" schedule per player, and one loss tracker per
reported term so TensorBoard shows every loss and every discriminator's accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_xmr.layers import FeatureStandardizer, GradientReversal


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data, and nothing more (a model never loads data).

    Attributes:
        modalities: modality names in feature-set order, e.g. ``("image", "text")``.
        dims: modality -> input feature dimension.
        num_classes: number of semantic classes.
        standardize: ``"none" | "zscore" | "l2"``, applied inside each encoder so exports take raw features.
        stats: modality -> (mean (d,), std (d,)) of the training split, needed for ``"zscore"``.
        class_embeddings: optional (num_classes, e) class-embedding matrix.
        unseen_classes: zero-shot runs: class ids absent from the training data (their class embeddings are known;
            a method may synthesise them, JFSE Eqs. 17-19); empty for standard retrieval.
        word_embeddings: optional (V + 1, e) word-vector matrix (row 0 pads) for a text path over token ids,
            read from the model config's ``word_vectors`` file by the data layer (DA-GAN's sequence text encoder).
    """

    modalities: tuple[str, ...]
    dims: Mapping[str, int]
    num_classes: int
    standardize: str = "none"
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    class_embeddings: np.ndarray | None = None
    unseen_classes: tuple[int, ...] = ()
    word_embeddings: np.ndarray | None = None

    def standardizer(self, modality: str) -> FeatureStandardizer:
        """A fresh standardisation layer for ``modality`` with the training statistics baked in."""
        mean, std = (self.stats or {}).get(modality, (None, None))
        return FeatureStandardizer(self.standardize, mean=mean, std=std, name=f"{modality}_standardize")


@dataclasses.dataclass(frozen=True)
class Player:
    """One side of the min-max game.

    Attributes:
        name: optimiser key (``train.optimizers.<name>`` in the config) and prefix of the logged loss names.
        modules: sub-models whose ``trainable_variables`` this player updates.
        losses: names of the terms ``player_losses`` returns for this player (``"loss"`` is the optimised total).
        every: the player updates on global steps where ``step % every == every - 1``; ACMR's Algorithm 1 uses
            ``every=k`` for the modality classifier (k embedding steps, then one discriminator step on the last batch).
        learning_rate_scale: multiplies the configured learning rate (ACMR's lambda_D, Algorithm 1 line 8).
        repeats: consecutive updates on the same batch whenever the player updates (WGAN-GP's n_critic critic steps
            per generator step, JFSE Algorithm 1 lines 3-5); each repeat recomputes the losses (fresh noise).
    """

    name: str
    modules: tuple
    losses: tuple[str, ...] = ("loss",)
    every: int = 1
    learning_rate_scale: float = 1.0
    repeats: int = 1

    @property
    def variables(self) -> list:
        out = []
        for module in self.modules:
            out.extend(module.trainable_variables)
        return out


def replica_batch_weight(batch):
    """This replica's share ``b_r / B`` of the global batch, or None outside a multi-replica step.

    Keras 3's TF optimizer sums gradients over replicas; scaling each replica's loss by its share turns that sum into
    the gradient of the global-batch loss (exact for batch means, also when the last batch splits unevenly, and for
    terms computed on the whole gathered batch, whose weights then sum to one).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    local = tf.cast(tf.shape(tf.nest.flatten(batch)[0])[0], tf.float32)
    # tf.identity gives the value this replica's device; collectives refuse device-less tensors.
    return local / ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(local))


def gather_replicas(values):
    """The global batch of ``values`` (a tensor or nest, concatenated over replicas on axis 0); identity on one device.

    For batch-level loss terms (in-batch triplet mining, ...) that must see the whole batch to equal the single-device
    loss. Gradients flow back to each replica's own slice (``ReplicaContext.all_gather`` sums the upstream gradients
    over replicas, then slices).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_gather(tf.nest.map_structure(tf.identity, values), axis=0)


class CrossModalModel(keras.Model):
    """One encoder per modality into a common space; subclasses add heads and losses.

    Subclasses must set ``self.encoders`` (modality -> ``keras.Model`` from raw features (batch, d_m) to embeddings
    (batch, d_common)) in ``__init__``; the encoders are what evaluation uses and what gets exported.
    """

    def __init__(self, spec: DataSpec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.modalities = tuple(spec.modalities)

    def encoder(self, modality: str) -> keras.Model:
        """The encoder of ``modality``: raw features (batch, d_m) -> common-space embedding (batch, d_common)."""
        if modality not in self.encoders:
            raise KeyError(f"no encoder for modality {modality!r}; this model has {sorted(self.encoders)}")
        return self.encoders[modality]

    def call(self, inputs, training=False):
        return {m: self.encoders[m](inputs[m], training=training) for m in self.modalities if m in inputs}

    def gradient_reversal_layers(self) -> list[GradientReversal]:
        """Gradient reversal layers whose strength a schedule callback should drive; none by default."""
        return []

    def gradient_reversal_schedule(self) -> tuple[str, float]:
        """``(schedule, max_strength)`` for ``gradient_reversal_layers``: ``"constant"`` or ``"dann"``."""
        return "constant", 1.0

    def prepare_training_stream(self, stream, *, one_pass, first_step: int):
        """Hook for per-batch additions to the training input (DA-GAN's semantic groups); identity by default.

        Args:
            stream: the training batches from the resume point on (``tf_xmr.data.make_training_stream``).
            one_pass: one unshuffled pass over the training split (for statistics such as class pools).
            first_step: the global step of the stream's first batch. Random draws added here must be a function of
                the global step (not of an iterator), so that a resumed run sees the batches of an uninterrupted one.
        """
        return stream

    def build_for_training(self) -> None:
        """Create every variable before ``fit`` (optimiser slots cannot be created inside a compiled branch)."""
        dummy = {m: tf.zeros((2, self.spec.dims[m])) for m in self.modalities}
        dummy["labels"] = tf.zeros((2, self.spec.num_classes))
        self.player_losses_for_build(dummy)
        # Subclassed models only count as built after a call through __call__; everything exists now.
        self.built = True

    def player_losses_for_build(self, batch) -> None:
        self(batch, training=False)


class AdversarialModel(CrossModalModel):
    """The adversarial ``train_step`` template (design rule 2).

    Subclasses implement ``players()`` and ``player_losses(player, batch, training)``; the latter returns a dict with
    at least ``"loss"`` (what the player minimises) and any extra terms named in ``Player.losses`` (logged as
    ``<player>_<term>``).
    """

    def __init__(self, spec: DataSpec, **kwargs):
        super().__init__(spec, **kwargs)
        # Global step of the min-max schedule; a weight so that the training backup resumes the k-step phase exactly.
        # only_first_replica: every replica advances it in the step; under tf.distribute one increment must count.
        self.schedule_step = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="schedule_step",
            aggregation="only_first_replica",
        )

    # -- to be supplied by each method -------------------------------------------------------------------------
    def players(self) -> Sequence[Player]:
        raise NotImplementedError

    def player_losses(self, player: str, batch, training: bool) -> dict:
        raise NotImplementedError

    # -- template ----------------------------------------------------------------------------------------------
    def player_losses_for_build(self, batch) -> None:
        for player in self.players():
            self.player_losses(player.name, batch, training=False)

    def compile(self, optimizers: Mapping[str, keras.optimizers.Optimizer], jit_compile=False, **kwargs):
        """Attach one optimiser per player.

        Args:
            optimizers: player name -> optimiser; every player of ``players()`` needs one.
            jit_compile: compile the train step with XLA (about 2x faster on CPU for these models).
        """
        # optimizer=None: Keras would otherwise attach an unused default RMSprop that pollutes checkpoints.
        super().compile(optimizer=None, jit_compile=jit_compile, **kwargs)
        self._players = tuple(self.players())
        missing = [p.name for p in self._players if p.name not in optimizers]
        if missing:
            raise ValueError(f"no optimiser for player(s) {missing}; got {sorted(optimizers)}")
        self.player_optimizers = {p.name: optimizers[p.name] for p in self._players}
        self.loss_trackers = {
            (p.name, term): keras.metrics.Mean(name=f"{p.name}_{term}") for p in self._players for term in p.losses
        }
        for player in self._players:
            # Building the slots now keeps variable creation out of the traced (possibly conditional) update.
            self.player_optimizers[player.name].build(player.variables)

    @property
    def metrics(self):
        # Listing the trackers here is what makes Keras reset them at each epoch start.
        return list(getattr(self, "loss_trackers", {}).values())

    def _update(self, player: Player, batch, weight=None):
        """One step of ``player``; ``weight`` is the replica's batch share under tf.distribute (else None)."""
        optimizer = self.player_optimizers[player.name]
        with tf.GradientTape() as tape:
            losses = self.player_losses(player.name, batch, training=True)
            objective = losses["loss"] if weight is None else losses["loss"] * weight
        variables = player.variables
        gradients = tape.gradient(objective, variables)
        if weight is not None:
            gradients = self._replica_gradients(gradients, weight, optimizer)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        for term in player.losses:
            value = losses[term]
            if weight is not None:
                # A replica that got no items (last batch smaller than the replica count) must not log its NaN means.
                value, sample_weight = tf.where(weight > 0, value, 0.0), tf.cast(weight > 0, tf.float32)
                self.loss_trackers[(player.name, term)].update_state(value, sample_weight=sample_weight)
            else:
                self.loss_trackers[(player.name, term)].update_state(value)

    @staticmethod
    def _replica_gradients(gradients, weight, optimizer):
        # An empty replica's means are NaN; weight 0 does not cancel NaN (0 * NaN = NaN), so its gradients become 0.
        gradients = [None if g is None else tf.where(weight > 0, tf.convert_to_tensor(g), 0.0) for g in gradients]
        if not optimizer.global_clipnorm:
            return gradients
        # Keras clips inside apply() BEFORE summing over replicas, i.e. each replica's part; clip the summed gradient
        # here instead and hand the optimiser 1/R of it: its own clip is then a no-op (norm <= clipnorm / R) and its
        # sum over the R replicas gives back the clipped global gradient.
        ctx = tf.distribute.get_replica_context()
        present = [i for i, g in enumerate(gradients) if g is not None]
        summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [gradients[i] for i in present])
        clipped, _ = tf.clip_by_global_norm(summed, optimizer.global_clipnorm)
        share = 1.0 / ctx.num_replicas_in_sync
        out = list(gradients)
        for i, g in zip(present, clipped, strict=True):
            out[i] = g * share
        return out

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 (TF backend) peeks at one batch from a FRESH iterator here when the model was created under a
        # strategy. For the seeded reshuffle-each-iteration training pipeline that consumes one permutation, so
        # distributed epoch e would see single-device epoch e+1's order. build_for_training() created every
        # variable and compile() attached no Keras loss or metric, so there is nothing left to build from a batch.
        if iterator is not None and self.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def make_train_function(self, force=False):
        """Under tf.distribute with a scheduled player (``every > 1``): one compiled step per schedule phase.

        An optimiser update synchronises the replicas (a ``merge_call`` on CPU), and TensorFlow cannot place that
        inside the ``tf.cond`` the single-device step uses for "update on every k-th step". So the phase is decided
        here, in Python, from the step counter before each step, and each phase's step updates a fixed set of
        players. Same updates, same order as the single-device step.
        """
        scheduled = any(p.every > 1 for p in getattr(self, "_players", ()))
        # Any real strategy, even with ONE replica (mirrored on a single CPU device): its optimiser update is a
        # merge_call, which tf.cond cannot hold. Only TensorFlow's default (no-op) strategy keeps the in-graph cond.
        default_strategy = type(self.distribute_strategy).__name__ == "_DefaultDistributionStrategy"
        if default_strategy or not scheduled:
            return super().make_train_function(force)
        if self.train_function is not None and not force:
            return self.train_function
        if self.steps_per_execution != 1:
            raise ValueError("a scheduled adversarial player under tf.distribute needs steps_per_execution=1")
        phases = {}

        def train_function(iterator):
            step = int(self.schedule_step.numpy())
            active = tuple(p.every == 1 or step % p.every == p.every - 1 for p in self._players)
            if active not in phases:
                phases[active] = self._make_function(lambda data, a=active: self._train_players(data, a))
            return phases[active](iterator)

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        return self._train_players(data)

    def _train_players(self, data, active=None):
        """Update the players; ``active`` (one bool per player) fixes who updates instead of the in-graph schedule."""
        step = self.schedule_step
        weight = replica_batch_weight(data)
        for i, player in enumerate(self._players):
            if active is not None:
                if active[i]:
                    for _ in range(player.repeats):
                        self._update(player, data, weight)
            elif player.every == 1:
                for _ in range(player.repeats):
                    self._update(player, data, weight)
            else:
                def update(p=player):
                    for _ in range(p.repeats):
                        self._update(p, data, weight)
                    return tf.constant(True)

                tf.cond(tf.equal(step % player.every, player.every - 1), update, lambda: tf.constant(False))
        step.assign_add(1)
        logs = {tracker.name: tracker.result() for tracker in self.metrics}
        strategy = tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.num_replicas_in_sync > 1:
            # Keras reduces multi-worker step outputs with strategy.reduce(MEAN, axis=0), which needs a batch axis.
            # (A one-replica cluster's outputs are not per-replica values: Keras passes them through unreduced, so
            # they must stay scalars there.)
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs


class IndependentModalities:
    """Opt-in contract for methods whose modality networks share no trainable weights (SDML).

    A model class that inherits this mixin is trained by ``tf_xmr.training.independent`` instead of one joint
    ``fit``: every modality gets its own network (built by ``modality_model``), its own optimiser
    (``train.optimizers.<modality>``, else ``train.optimizers.default``), its own ``fit`` and its own checkpoint,
    chosen on its own ``validation_loss`` (lower is better). Networks train one after another or in separate worker
    processes (``train.parallel_modalities``), and a finished run can be extended with new modalities
    (``resume_from``) without touching the stored networks. What the networks do share is fixed, untrained state
    (SDML's projection P), created once per run by ``create_shared_state``, saved with the run and reloaded for every
    later modality.

    A modality network is a ``keras.Model`` that trains with plain ``fit`` (it overrides ``compute_loss``) on
    batches ``{modality: (b, d), "labels": (b, c)}``, and has an ``encoder`` attribute (raw features (b, d) ->
    embeddings (b, d_common), what is scored and exported) and a ``validation_loss(dataset) -> float`` method.
    """

    independent_modalities = True

    @classmethod
    def create_shared_state(cls, config, spec: DataSpec, seed: int) -> dict[str, np.ndarray]:
        """Fixed arrays every modality network of a run uses (never trained); ``{}`` if none."""
        return {}

    @classmethod
    def check_shared_state(cls, config, spec: DataSpec, state: Mapping[str, np.ndarray], source: str) -> None:
        """Raise ``ConfigError`` naming ``source`` when stored shared state does not fit this config and data."""

    @classmethod
    def modalities_to_train(cls, config, available: Sequence[str]) -> tuple[str, ...] | None:
        """The modalities whose networks this run trains; ``None`` = every modality not trained yet."""
        return None

    @classmethod
    def modality_model(cls, config, spec: DataSpec, modality: str, state: Mapping[str, np.ndarray]) -> keras.Model:
        """A fresh, built network for ``modality`` (see the class docstring for its contract)."""
        raise NotImplementedError
