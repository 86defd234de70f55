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
    """

    modalities: tuple[str, ...]
    dims: Mapping[str, int]
    num_classes: int
    standardize: str = "none"
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    class_embeddings: np.ndarray | None = None
    unseen_classes: tuple[int, ...] = ()

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
        self.schedule_step = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="schedule_step"
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

    def _update(self, player: Player, batch):
        with tf.GradientTape() as tape:
            losses = self.player_losses(player.name, batch, training=True)
        variables = player.variables
        gradients = tape.gradient(losses["loss"], variables)
        self.player_optimizers[player.name].apply_gradients(zip(gradients, variables))
        for term in player.losses:
            self.loss_trackers[(player.name, term)].update_state(losses[term])

    def train_step(self, data):
        step = self.schedule_step
        for player in self._players:
            if player.every == 1:
                for _ in range(player.repeats):
                    self._update(player, data)
            else:
                def update(p=player):
                    for _ in range(p.repeats):
                        self._update(p, data)
                    return tf.constant(True)

                tf.cond(tf.equal(step % player.every, player.every - 1), update, lambda: tf.constant(False))
        step.assign_add(1)
        return {tracker.name: tracker.result() for tracker in self.metrics}


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
